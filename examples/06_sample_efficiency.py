"""How well is the spring's invariant learned from N trajectories, and from batches of B?

The paper's Section 5.3 reports the fitting error of a contrastively learned invariant falling
about as N^(-1/2) with the number N of training trajectories, and depending on the batch size.
This script reruns that on the spring (50-trajectory protocol, noise 0.01, 30 points on
[0, 3]) for N = 10 ... 400 and 3 seeds, twice: every run with the same number of optimiser
steps (so that more data, not more training, is what changes), and every run with the same
number of epochs (the paper's protocol, where N times more data also means N times more
steps; 60 epochs here, 1000 in the paper). It prints two errors on fresh, noise-free
trajectories:

* ``affine``: the RMSE of the best affine fit of the true ``q^2 + p^2`` from the learned
  ``h``, relative to the spread of ``q^2 + p^2`` (``sqrt(1 - R^2)``, from
  ``invariant_fidelity``) -- the paper's measure;
* ``spread``: how far ``h`` is from conserved, the mean over test trajectories of the std of
  ``h`` along the trajectory, relative to the std of ``h`` across trajectories -- free of the
  monotone distortion an affine fit cannot undo.

The slope of log(error) against log(N) is fitted by least squares over all runs.

    python examples/06_sample_efficiency.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from tqdm.auto import tqdm

from concernet_ode import InvariantNet, fit_invariants, invariant_fidelity
from concernet_ode.systems import SpringMass

SYSTEM = SpringMass()


def errors(model: InvariantNet, test) -> tuple[float, float]:
    """(affine, spread) errors of a learned invariant on noise-free test trajectories."""
    with torch.no_grad():
        h = model(test.x)[..., 0]  # (N, T)
    true = SYSTEM.invariants(test.x).reshape(-1, 1)
    r2 = float(invariant_fidelity(h.reshape(-1, 1), true)[0])
    spread = float(h.std(dim=1).mean() / h.mean(dim=1).std())
    return math.sqrt(max(1.0 - r2, 0.0)), spread


def run(n_traj: int, batch: int, seed: int, epochs: int, test) -> tuple[float, float]:
    data = SYSTEM.trajectories(n_traj, t_end=SYSTEM.train_t_end, n_times=SYSTEM.train_n_times,
                               noise=SYSTEM.noise, seed=seed, dtype=torch.float32)
    torch.manual_seed(seed)
    model = InvariantNet(2, 1)
    # The paper's recipe (eq. (4) as printed, no weight decay, a constant step): Section 5.3's.
    fit_invariants(model, data, epochs=epochs, batch_size=batch, seed=seed, progress=False,
                   positives="sum", weight_decay=0.0, lr_schedule=None)
    return errors(model, test)


def loglog_slope(x: list[float], y: list[float]) -> float:
    lx, ly = torch.tensor(x).log(), torch.tensor(y).log()
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / lx.square().sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="efficiency_")))
    parser.add_argument("--quick", action="store_true", help="tiny sweep, for tests")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # networks this small only lose time to thread start-up
    if args.quick:
        sizes, batches, seeds, steps, epochs, n_base = [10, 20, 40], [5, 10], range(2), 60, 20, 20
    else:
        sizes, batches, seeds, steps, epochs, n_base = [10, 20, 50, 100, 200, 400], \
            [2, 5, 10, 25], range(3), 800, 60, 100
    test = SYSTEM.trajectories(100, t_end=SYSTEM.train_t_end, n_times=SYSTEM.train_n_times,
                               seed=12345, dtype=torch.float32)

    def for_steps(n: int, b: int) -> int:
        return max(1, round(steps * b / n))  # epochs giving about `steps` optimiser steps

    jobs = [("steps", n, n, 10, s, for_steps(n, 10)) for n in sizes for s in seeds]
    jobs += [("epochs", n, n, 10, s, epochs) for n in sizes for s in seeds]
    jobs += [("batch", b, n_base, b, s, for_steps(n_base, b)) for b in batches for s in seeds]
    results: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for kind, key, n, b, s, ep in tqdm(jobs, disable=not sys.stderr.isatty(), desc="runs"):
        results.setdefault(kind, {}).setdefault(key, []).append(run(n, b, s, ep, test))

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    titles = {"steps": f"same budget: {steps} steps per run",
              "epochs": f"same epochs: {epochs} per run (steps grow with N)"}
    print(f"batch 10 trajectories, seeds {list(seeds)}")
    for col, kind in enumerate(("steps", "epochs")):
        print(titles[kind])
        for k, label in enumerate(("affine", "spread")):
            xs = [n for n, runs in results[kind].items() for _ in runs]
            ys = [r[k] for runs in results[kind].values() for r in runs]
            slope = loglog_slope(xs, ys)
            means = {n: sum(r[k] for r in runs) / len(runs) for n, runs in results[kind].items()}
            print(f"  {label} error vs N: "
                  + ", ".join(f"N={n}: {m:.4f}" for n, m in means.items())
                  + f"; log-log slope {slope:+.3f}")
            axes[col].loglog(xs, ys, "o", alpha=0.4, color=f"C{k}")
            axes[col].loglog(list(means), list(means.values()), "-", color=f"C{k}",
                             label=f"{label} (slope {slope:+.2f})")
        first = sum(r[0] for r in results[kind][min(sizes)]) / len(results[kind][min(sizes)])
        n_ref = torch.tensor([min(sizes), max(sizes)], dtype=torch.float64)
        axes[col].loglog(n_ref, first * (n_ref / n_ref[0]) ** -0.5, "k--", label="N^(-1/2)")
        axes[col].set(xlabel="training trajectories N", ylabel="error", title=titles[kind])
    print(f"same budget ({steps} steps), N = {n_base}, by batch size:")
    for k, label in enumerate(("affine", "spread")):
        means = {b: sum(r[k] for r in runs) / len(runs) for b, runs in results["batch"].items()}
        print(f"  {label} error vs batch size: "
              + ", ".join(f"B={b}: {m:.4f}" for b, m in means.items()))
        axes[2].loglog(list(means), list(means.values()), "o-", label=label)
    axes[2].set(xlabel="batch size B (trajectories)", ylabel="error",
                title=f"error vs batch size, N = {n_base}, {steps} steps")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    path = args.out / "sample_efficiency.png"
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
