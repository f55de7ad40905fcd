"""What refining a contrastive invariant against the observed derivatives changes.

For each system and seed, the Table 1 run's invariant (``InvariantNet``, the recipe of
``RunConfig`` and ``INVARIANT_OPTIONS``, 1000 epochs) is trained once and then refined with
``refine_invariants`` as the Table 1 run does (batches of ``RunConfig.refine_batch_size``
points, Adam at ``RunConfig.refine_lr`` annealed along a cosine, as many epochs as make about
the requested number of steps), and measured before and after:

- **tilt**: how far the learned gradient leaves the span of the true invariants' gradients,
  ``|g - P g| / |g|`` (the sine of the angle), mean and worst over states of 100 evaluation
  trajectories (the evaluation distribution and horizon: for chemical kinetics masses
  beyond the training range) at 50 times each. The projection of eq. (6) uses only the
  direction of ``g``.
- **normal flow**: ``normal_flow_loss`` on the held-out half of the training trajectories
  (their noisy derivatives; isotropic noise of std 0.01 alone gives ``1e-4``).
- **R^2**: the affine fidelity of each true invariant on 1000 fresh noise-free
  trajectories, as ``concernet-ode reproduce`` reports it (in float64).

    python benchmarks/refinement.py [--systems spring chemical kepler] [--seeds 0 1 2]
        [--steps 1000 3000]

Each refinement length starts again from the contrastive invariant, so each row is the
invariant a Table 1 run with ``--refine-steps N`` would use.
"""

from __future__ import annotations

import argparse
import copy
import platform
from dataclasses import replace

import torch

from concernet_ode import (
    InvariantNet,
    fit_invariants,
    invariant_fidelity,
    normal_flow_loss,
    refine_invariants,
)
from concernet_ode._jacobian import invariant_jacobian
from concernet_ode.benchmark import (
    EVAL_SEED_OFFSET,
    FIDELITY_SEED_OFFSET,
    INVARIANT_OPTIONS,
    RunConfig,
)
from concernet_ode.projection import orthonormal_rows
from concernet_ode.systems import ChemicalKinetics, Kepler, SpringMass

SYSTEMS = {"spring": SpringMass, "chemical": ChemicalKinetics, "kepler": Kepler}


def tilt(H, system, x: torch.Tensor) -> tuple[float, float]:
    """Mean and worst sine of the angle between grad H and the true gradients' span."""
    with torch.no_grad():
        g = invariant_jacobian(H, x.float())[1][..., 0, :].double()
        basis = orthonormal_rows(invariant_jacobian(system.invariants, x)[1])
    g = g / g.norm(dim=-1, keepdim=True)
    inside = ((basis @ g.unsqueeze(-1)) * basis).sum(-2)
    sine = (g - inside).norm(dim=-1)
    return float(sine.mean()), float(sine.max())


def contrastive(system, seed: int, config: RunConfig, train):
    """The Table 1 run's contrastive invariant, as ``run_conservative_seed`` trains it."""
    options = INVARIANT_OPTIONS.get(system.name, {})
    torch.manual_seed(seed)
    H = InvariantNet(system.state_dim, system.latent_dim, activation=system.activation)
    fit_invariants(H, train, epochs=config.contrastive_epochs, batch_size=10, seed=seed,
                   progress=False, **config.invariant_options(**options))
    return H


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", nargs="+", type=int, default=[RunConfig.refine_steps])
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = RunConfig()
    print(f"machine: {platform.machine()}, 1 torch thread; float32 models; torch "
          f"{torch.__version__}; refine lr {config.refine_lr:g}, batches of "
          f"{config.refine_batch_size} points")
    print("| system | seed | refine steps (epochs) | mean tilt | worst tilt | held-out normal "
          "flow | R^2 |")
    print("|---|---|---|---|---|---|---|")
    for name in args.systems:
        system = SYSTEMS[name]()
        for seed in args.seeds:
            train, held_out = system.train_data(seed, dtype=torch.float32)
            x0 = system.sample_initial(100, seed=EVAL_SEED_OFFSET + seed, evaluation=True)
            t = torch.linspace(0, system.eval_t_end, 50, dtype=torch.float64)
            x_eval = system.solve(x0, t).reshape(-1, system.state_dim)
            clean = system.trajectories(1000, t_end=system.train_t_end,
                                        n_times=system.train_n_times,
                                        seed=FIDELITY_SEED_OFFSET + seed)
            x_clean = clean.x.reshape(-1, system.state_dim)
            xh, vh = held_out.points()
            base = contrastive(system, seed, config, train)
            for steps in [0, *args.steps]:
                H = copy.deepcopy(base)
                epochs = replace(config, refine_steps=steps).refine_epochs(
                    train.n_traj * train.n_times)
                if epochs:
                    refine_invariants(H, train, epochs=epochs,
                                      batch_size=config.refine_batch_size,
                                      lr=config.refine_lr, seed=seed, progress=False,
                                      lr_schedule=config.schedule(epochs))
                mean, worst = tilt(H, system, x_eval)
                with torch.no_grad():
                    normal = float(normal_flow_loss(H, xh, vh))
                    r2 = invariant_fidelity(copy.deepcopy(H).double()(x_clean),
                                            system.invariants(x_clean))
                r2s = ", ".join(f"{v:.7f}" for v in r2.tolist())
                print(f"| {name} | {seed} | {steps} ({epochs}) | {mean:.2e} | {worst:.2e} | "
                      f"{normal:.3e} | {r2s} |", flush=True)


if __name__ == "__main__":
    main()
