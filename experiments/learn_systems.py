"""Acceptance run of the practitioner's issue: ``learn`` with its defaults on systems it was
not tuned on.

Per system and seed: ``--n-traj`` noisy trajectories of the system's training protocol
(noise 0.01 on the states, derivatives *not* given: ``learn`` estimates them), one call of
``concernet_ode.learn(data, seed=seed)`` with every default (the invariants counted), then
scores on data ``learn`` never saw:

- R^2 of each true invariant read out from the learned ones on fresh states (200 new
  trajectories of the training distribution, 25 times each): affine, and a cubic polynomial
  of the standardised learned features fitted on half of the states and scored on the other
  half (``invariant_fidelity(..., degree=3)``: the contrastive loss fixes a set of
  invariants only up to an invertible map; the goal's readout for m > 1, printed for m = 1
  too, where it tells a curved labelling from a noisy one); with the tilt of the learned
  gradients' span against the true one (``gradient_tilt``: the sine of the largest principal
  angle, mean and 95th percentile over those states);
- rollouts of the baseline and of the projected model from 20 fresh initial states over the
  system's evaluation horizon (1001 points, float64, rtol 1e-7): the violation of the *true*
  invariants (Table 1's: mean over trajectories, times and invariants of
  ``(H(x_hat) - H(x))^2``), its ratio projected / baseline, and the MSE of both.

The goals (issue "the practitioner's job in one call"): the count right; R^2 >= 0.99 for each
true invariant (affine for m = 1, the cubic readout for m > 1); violation ratio <= 0.1 at an
MSE no worse than the baseline's; ``learn`` within two minutes for 100 trajectories. Each line
ends with the seconds ``learn`` took and its stages; the machine's load (``os.getloadavg``)
is printed before and after, since the machine may be shared.

    python experiments/learn_systems.py                          # all systems, seeds 0 1 2
    python experiments/learn_systems.py --systems rigid_body --seeds 0 --n-traj 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from concernet_ode import TrajectoryData, learn
from concernet_ode.metrics import evaluate, gradient_tilt, invariant_fidelity
from concernet_ode.systems import LotkaVolterra, Pendulum, RigidBody

SYSTEMS = {
    "pendulum_k3": Pendulum(3.0),
    "pendulum_k0.5": Pendulum(0.5),
    "lotka_volterra": LotkaVolterra(),
    "rigid_body": RigidBody(),
}
STATE_SEED, ROLLOUT_SEED = 10_000, 20_000  # offsets: evaluation data never seen by learn


def run_one(system, seed: int, n_traj: int) -> dict:
    data = system.trajectories(n_traj, t_end=system.train_t_end,
                               n_times=system.train_n_times, noise=system.noise, seed=seed)
    start = time.perf_counter()
    model = learn(TrajectoryData(data.t, data.x), names=system.state_names, seed=seed,
                  progress=False)
    seconds = time.perf_counter() - start
    m_true = system.n_invariants
    fresh = system.trajectories(200, t_end=system.train_t_end, n_times=25,
                                seed=STATE_SEED + seed)
    x = fresh.states()
    with torch.no_grad():
        learned = model.invariants(x)
    true = system.invariants(x)
    out = {"count": model.n_invariants, "m_true": m_true, "seconds": seconds,
           "stages": model.report["seconds"], "laws": model.laws,
           "r2_affine": invariant_fidelity(learned, true).tolist()}
    out["r2_cubic"] = invariant_fidelity(learned, true, degree=3, seed=seed).tolist()
    tilt = gradient_tilt(model.invariants, system.invariants, x)[:, 0]
    out["tilt"] = [float(tilt.mean()), float(tilt.quantile(0.95))]
    x0 = system.sample_initial(20, seed=ROLLOUT_SEED + seed, evaluation=True)
    t = system.eval_grid()
    reference = system.solve(x0, t).movedim(-2, 0)
    for label, field in (("baseline", model.baseline), ("projected", model.field)):
        ev = evaluate(field, x0, t, system.invariants, true=reference, rtol=1e-7, atol=1e-9)
        out[label] = {"mse": ev.mse, "violation": ev.violation}
    out["ratio"] = out["projected"]["violation"] / out["baseline"]["violation"]
    out["goals"] = {
        "count": out["count"] == m_true,
        "r2": min(out["r2_cubic"] if m_true > 1 else out["r2_affine"]) >= 0.99,
        "ratio": out["ratio"] <= 0.1,
        "mse": out["projected"]["mse"] <= out["baseline"]["mse"],
    }
    return out


def _fmt(values: list[float]) -> str:
    return "/".join(f"{v:.4f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n-traj", type=int, default=60)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}; "
          f"torch {torch.__version__}; {args.n_traj} noisy trajectories, no derivatives")
    print("| system | seed | count | R² affine | R² cubic | tilt mean/p95 | violation baseline"
          " | violation projected | ratio | MSE baseline | MSE projected | s | goals |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = {}
    for name in args.systems:
        for seed in args.seeds:
            r = run_one(SYSTEMS[name], seed, args.n_traj)
            results[f"{name}/{seed}"] = r
            missed = [k for k, ok in r["goals"].items() if not ok]
            stages = " ".join(f"{k[:3]} {v:.0f}" for k, v in r["stages"].items())
            print(f"| {name} | {seed} | {r['count']} ({r['m_true']}) | {_fmt(r['r2_affine'])} "
                  f"| {_fmt(r['r2_cubic'])} | "
                  f"{r['tilt'][0]:.3f}/{r['tilt'][1]:.3f} | "
                  f"{r['baseline']['violation']:.3g} | {r['projected']['violation']:.3g} | "
                  f"{r['ratio']:.3g} | {r['baseline']['mse']:.3g} | "
                  f"{r['projected']['mse']:.3g} | {r['seconds']:.0f} ({stages}) | "
                  f"{'met' if not missed else 'missed: ' + ', '.join(missed)} |", flush=True)
    met = sum(all(r["goals"].values()) for r in results.values())
    print(f"\nall goals met in {met} of {len(results)} runs; load {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
