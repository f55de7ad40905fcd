"""How well a learned invariant's gradient points, with and without the flow-alignment term.

The projection of eq. (6) uses only the direction of ``grad H``. This script trains the
paper's invariant network with the paper's recipe and the task's departures
(``get_task(name).recipe_for(Recipe.paper())``: protocol data, noisy, half held out; 1000
epochs, batches of 10 trajectories; raw features for chemical kinetics) with the contrastive
loss alone and with ``flow_weight`` added, and prints, side by side, the mean and worst
``1 - |cos|`` between the learned and the true invariant's gradient on evaluation-distribution
states (for chemical kinetics, beyond the training range), and the affine R^2 on fresh
training-distribution states.

Run:  python experiments/flow_alignment.py [--systems spring chemical] [--seeds 0 1 2]
          [--weight 100] [--epochs 1000]
      python experiments/flow_alignment.py --table1 [--systems ...] [--seeds ...]

``--table1`` instead runs the whole Table 1 pipeline (``run_seed`` with ``Recipe.table1()``,
the full protocol) with the flow term in the invariant's training (``flow_weight``), and
without the refinement stage (``refine_steps=0``), and prints the ``concernet`` and
``concernet_manifold`` scores per seed, to compare with ``concernet-ode reproduce
--refine-steps 0`` (the contrastive loss alone); the committed ``results/`` refine the
invariant instead.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch

from concernet_ode import invariant_fidelity
from concernet_ode._jacobian import invariant_jacobian
from concernet_ode.reproduce import Recipe, get_task, run_seed
from concernet_ode.reproduce.pipeline import (
    EVAL_SEED_OFFSET,
    FIDELITY_SEED_OFFSET,
    contrastive_stage,
)

SYSTEMS = ("spring", "chemical")


def direction_error(H, true_H, x):
    g = invariant_jacobian(H, x)[1][..., 0, :]
    gt = invariant_jacobian(true_H, x.double())[1][..., 0, :].to(g.dtype)
    cos = (g * gt).sum(-1).abs() / (g.norm(dim=-1) * gt.norm(dim=-1))
    err = 1 - cos
    return float(err.mean()), float(err.max())


def run(name, seed, weight, epochs):
    task = get_task(name)
    system = task.system
    recipe = task.recipe_for(Recipe.paper()).with_changes(
        {"contrastive_epochs": epochs, "flow_weight": weight})
    train, _ = system.train_data(seed, dtype=torch.float32)
    H = contrastive_stage(train, seed, recipe)
    x0 = system.sample_initial(100, seed=EVAL_SEED_OFFSET + seed, evaluation=True)
    t = torch.linspace(0, system.eval_t_end, 50, dtype=torch.float64)
    x_eval = system.solve(x0, t).reshape(-1, system.state_dim).float()
    clean = system.trajectories(1000, t_end=system.train_t_end, n_times=system.train_n_times,
                                seed=FIDELITY_SEED_OFFSET + seed)
    clean = clean.x.reshape(-1, system.state_dim).float()
    with torch.no_grad():
        r2 = float(invariant_fidelity(H(clean), system.invariants(clean))[0])
    return (*direction_error(H, system.invariants, x_eval), r2)


def table1(args) -> None:
    print(f"Table 1 pipeline, contrastive loss + flow_weight={args.weight:g}; torch "
          f"{torch.__version__}, 1 thread")
    print("| system | seed | method | MSE | violation | invariant R^2 |")
    print("|---|---|---|---|---|---|")
    recipe = Recipe.table1().with_changes({"refine_steps": 0, "flow_weight": args.weight})
    for name in args.systems:
        for seed in args.seeds:
            res = run_seed(get_task(name), seed, recipe)
            r2 = ", ".join(f"{v:.6f}" for v in res.invariant_r2.values())
            for method in ("baseline", "concernet", "concernet_manifold"):
                ev = res.evaluations[method]
                print(f"| {name} | {seed} | {method} | {ev.mse:.3g} | {ev.violation:.3g} | "
                      f"{r2} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--weight", type=float, default=100.0)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--table1", action="store_true", help="run the Table 1 pipeline")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.table1:
        table1(args)
        return
    print(f"machine: {platform.machine()}, 1 torch thread; float32; torch {torch.__version__}")
    print("| system | flow_weight | seed | mean 1-|cos| (eval states) | worst | affine R^2 |")
    print("|---|---|---|---|---|---|")
    for name in args.systems:
        summary = {}
        for weight in (0.0, args.weight):
            rows = [run(name, seed, weight, args.epochs) for seed in args.seeds]
            for seed, (mean, worst, r2) in zip(args.seeds, rows, strict=True):
                print(f"| {name} | {weight:g} | {seed} | {mean:.2e} | {worst:.2e} | {r2:.6f} |",
                      flush=True)
            summary[weight] = statistics.median(r[0] for r in rows)
        print(f"| {name} | ratio of medians | | {summary[0.0] / summary[args.weight]:.1f}x "
              "smaller with the flow term | | |", flush=True)


if __name__ == "__main__":
    main()
