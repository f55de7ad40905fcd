"""What refining a contrastive invariant against the observed derivatives changes.

For each system and seed, the Table 1 run's invariant (``contrastive_stage`` with the task's
recipe, ``get_task(name).recipe_for(Recipe.table1())``, 1000 epochs) is trained once and then
refined with ``refine_stage`` as the Table 1 run does (batches of ``Recipe.refine_batch``
points, Adam at the task's peak step annealed along a cosine, as many epochs as make about
the requested number of steps), and measured before and after:

- **tilt**: how far the learned gradient leaves the span of the true invariants' gradients,
  ``|g - P g| / |g|`` (the sine of the angle), mean and worst over states of 100 evaluation
  trajectories (the evaluation distribution and horizon: for chemical kinetics masses
  beyond the training range) at 50 times each. The projection of eq. (6) uses only the
  direction of ``g``.
- **normal flow**: ``normal_flow_loss`` on the held-out half of the training trajectories
  (their noisy derivatives; isotropic noise of std 0.01 alone gives ``1e-4``).
- **R^2**: the affine fidelity of each true invariant on 1000 fresh noise-free
  trajectories, computed as ``concernet-ode reproduce`` computes it (in float64).

    python experiments/refinement.py [--systems spring chemical kepler] [--seeds 0 1 2]
        [--steps 1000 3000] [--lr 1e-3 1e-2]

``--lr`` compares peak steps (default: each task's own, ``Recipe.refine_lr`` or the task's
departure in ``Task.departures``); the held-out normal flow is what chose them.

Each refinement length starts again from the contrastive invariant, so each row is the
invariant a Table 1 run with ``--refine-steps N`` would use.
"""

from __future__ import annotations

import argparse
import copy
import platform

import torch

from concernet_ode import normal_flow_loss
from concernet_ode._jacobian import invariant_jacobian
from concernet_ode.projection import tangent_project
from concernet_ode.reproduce import Recipe, get_task
from concernet_ode.reproduce.pipeline import (
    EVAL_SEED_OFFSET,
    contrastive_stage,
    invariant_r2,
    refine_stage,
)

SYSTEMS = ("spring", "chemical", "kepler")


def tilt(H, system, x: torch.Tensor) -> tuple[float, float]:
    """Mean and worst sine of the angle between grad H and the true gradients' span."""
    with torch.no_grad():
        g = invariant_jacobian(H, x.float())[1][..., 0, :].double()
        true_jac = invariant_jacobian(system.invariants, x)[1]
    sine = tangent_project(true_jac, g / g.norm(dim=-1, keepdim=True)).norm(dim=-1)
    return float(sine.mean()), float(sine.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", nargs="+", type=int, default=[Recipe.table1().refine_steps])
    parser.add_argument("--lr", nargs="+", type=float, default=None,
                        help="peak steps to compare (default: each task's own)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()}, 1 torch thread; float32 models; torch "
          f"{torch.__version__}; batches of {Recipe.table1().refine_batch} points")
    print("| system | seed | refine steps (epochs) | peak lr | mean tilt | worst tilt | "
          "held-out normal flow | R^2 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.systems:
        task = get_task(name)
        recipe = task.recipe_for(Recipe.table1())
        lrs = args.lr or [recipe.refine_lr]
        system = task.system
        for seed in args.seeds:
            train, held_out = system.train_data(seed, dtype=torch.float32)
            x0 = system.sample_initial(100, seed=EVAL_SEED_OFFSET + seed, evaluation=True)
            t = torch.linspace(0, system.eval_t_end, 50, dtype=torch.float64)
            x_eval = system.solve(x0, t).reshape(-1, system.state_dim)
            xh, vh = held_out.points()
            base = contrastive_stage(train, seed, recipe)
            runs = [(0, None)] + [(steps, lr) for steps in args.steps for lr in lrs]
            for steps, lr in runs:
                H = copy.deepcopy(base)
                refined = recipe.with_changes({"refine_steps": steps,
                                               "refine_lr": lr or recipe.refine_lr})
                epochs = refine_stage(H, train, seed, refined)
                mean, worst = tilt(H, system, x_eval)
                with torch.no_grad():
                    normal = float(normal_flow_loss(H, xh, vh))
                r2 = invariant_r2(task, None, copy.deepcopy(H).double(), seed, recipe)
                r2s = ", ".join(f"{v:.7f}" for v in r2.values())
                print(f"| {name} | {seed} | {steps} ({epochs}) | {lr or '-'} | {mean:.2e} | "
                      f"{worst:.2e} | {normal:.3e} | {r2s} |", flush=True)


if __name__ == "__main__":
    main()
