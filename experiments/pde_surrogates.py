"""Latent surrogates of the 2-D heat and the 1-D wave: projected vs unprojected, nRMSE/cRMSE.

For each system and seed: py-pde makes the protocol's noisy training set; an autoencoder
(convolutional for the 64 x 64 heat, dense for the wave's 2 x 64 values) is trained on it;
``LatentAdapter`` maps states and rates to the latent space; ``m = n_invariants`` latent
invariants (1 for heat, 2 for the wave) are learned contrastively; then two latent dynamics
models are fitted, a plain MLP (baseline) and the same MLP projected onto the learned
invariants (ConCerNet). Both run from 10 fresh states over the evaluation window (twice the
training window) and are decoded; a third row projects each decoded state of the ConCerNet
rollout onto the *known* invariants' level set of its initial state (Newton,
``project_to_level_set``), for a user who knows the laws. Scores: PDEBench's nRMSE and the
cRMSE of each true conserved quantity (``concernet_ode.metrics_pde``), per seed.

Run:  python experiments/pde_surrogates.py [--systems heat2d wave] [--seeds 0 1 2]
          [--epochs-scale 1.0] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from concernet_ode import (
    MLP,
    Autoencoder,
    InvariantNet,
    LatentAdapter,
    ProjectedVectorField,
    fit_autoencoder,
    fit_dynamics,
    fit_invariants,
    project_to_level_set,
)
from concernet_ode.integrations.py_pde import HeatEquation2D, WaveEquation1D
from concernet_ode.metrics_pde import crmse, nrmse
from concernet_ode.models import ConvAutoencoder

# system -> (constructor, channels of the state, autoencoder factory, latent size, epochs)
SETUPS = {
    "heat2d": (HeatEquation2D, 1,
               lambda s, k: ConvAutoencoder(s.shape, k, channels=(8, 16, 32)), 8,
               {"ae": 60, "inv": 300, "dyn": 300}),
    "wave": (WaveEquation1D, 2,
             lambda s, k: Autoencoder(s.state_dim, k, hidden=(128, 64)), 12,
             {"ae": 300, "inv": 300, "dyn": 300}),
}


def run(name: str, seed: int, scale: float) -> dict[str, dict[str, object]]:
    make, channels, make_ae, k, epochs = SETUPS[name]
    system = make()
    epochs = {key: max(1, round(v * scale)) for key, v in epochs.items()}
    start = time.perf_counter()
    data = system.trajectories(system.train_traj, t_end=system.train_t_end,
                               n_times=system.train_n_times, noise=system.noise, seed=seed,
                               dtype=torch.float32, progress=False)
    train, _ = data.split(system.test_fraction, seed=seed)
    t_data = time.perf_counter() - start
    torch.manual_seed(seed)
    adapter = LatentAdapter(make_ae(system, k))
    fit_autoencoder(adapter.autoencoder, train, epochs=epochs["ae"], batch_size=32,
                    seed=seed, progress=False)
    latent = adapter.to_latent(train)
    H = InvariantNet(k, system.n_invariants)
    fit_invariants(H, latent, epochs=epochs["inv"], batch_size=10, seed=seed, progress=False)
    baseline, concernet = MLP(k, k), ProjectedVectorField(MLP(k, k), H)
    for model in (baseline, concernet):
        fit_dynamics(model, latent, epochs=epochs["dyn"], batch_size=100, seed=seed,
                     progress=False)

    x0 = system.sample_initial(system.eval_traj, seed=1000 + seed, dtype=torch.float32)
    t = system.eval_grid(torch.float32)
    true = system.solve(x0, t, progress=False).movedim(1, 0)  # (T, B, n)
    with torch.no_grad():
        pred = {key: adapter.integrate(model, x0, t, method="dopri5", rtol=1e-6, atol=1e-8)
                for key, model in (("baseline", baseline), ("concernet", concernet))}
    known = system.invariants(x0.double()).float()
    pred["concernet+known"] = _project(pred["concernet"], system, known)
    scores = {}
    for key, x in pred.items():
        x = x.detach()
        scores[key] = {"nrmse": float(nrmse(x, true, channels=channels)),
                       "crmse": crmse(x.double(), true.double(), system.invariants).tolist()}
    scores["info"] = {"data_s": round(t_data, 1), "total_s": round(time.perf_counter() - start),
                      "epochs": epochs, "latent_dim": k}
    return scores


def _project(x: torch.Tensor, system, target: torch.Tensor) -> torch.Tensor:
    """Newton projection of decoded states onto the known invariants of their start."""
    flat = x.double().reshape(-1, x.shape[-1])
    goal = target.double().expand(x.shape[0], -1, -1).reshape(-1, target.shape[-1])
    return project_to_level_set(flat, system.invariants, goal, tol=1e-9, max_iter=100,
                                on_failure="warn").reshape(
        x.shape).to(x.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiply every stage's epochs (e.g. 0.1 for a smoke run)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.node()} {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, {args.threads} thread(s)")
    results: dict[str, dict[int, object]] = {}
    for name in args.systems:
        inv = ", ".join(SETUPS[name][0].invariant_names)
        for seed in args.seeds:
            scores = run(name, seed, args.epochs_scale)
            results.setdefault(name, {})[seed] = scores
            print(f"{name} seed {seed} ({scores['info']['total_s']} s, data "
                  f"{scores['info']['data_s']} s): cRMSE of ({inv})")
            for key in ("baseline", "concernet", "concernet+known"):
                s = scores[key]
                crm = ", ".join(f"{v:.3e}" for v in s["crmse"])
                print(f"  {key:>16}: nRMSE {s['nrmse']:.3e}  cRMSE ({crm})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
