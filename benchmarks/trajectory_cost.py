"""Cost of fitting trajectories against fitting derivatives, and odeint against the adjoint.

One epoch of ``fit_trajectories`` (windows rolled out by RK4 through ``odeint``) against
one epoch of ``fit_dynamics`` (points against their derivatives) on the same data: the Kepler
training set of the paper's protocol (50 trajectories of 100 samples), the Table 1 MLP
(two hidden layers of 100), float32, one thread. The rollouts run as the trajectory recipe
runs them (windows of 3 samples, 8 RK4 steps per sample interval, batches of 256 windows,
free window starts) and, for the memory, also over windows of 10 samples; each with
``odeint`` and with ``odeint_adjoint``. Wall time in ABBA blocks against ``fit_dynamics``
(median ratios; see ``_timing.time_paired``); peak memory in a fresh process per set-up: how
far one epoch raises the peak resident memory, after a one-trajectory warm-up of both
trainers has made the runtime's one-off allocations.

    python benchmarks/trajectory_cost.py [--repeats 3] [--projected]
"""

from __future__ import annotations

import argparse
import copy
import math
import resource
import subprocess
import sys

import torch
import torchdiffeq
from _timing import machine_line, time_paired

from concernet_ode import MLP, ProjectedVectorField, TrajectoryData, fit_dynamics, fit_trajectories
from concernet_ode.systems import Kepler


def peak_increase(name: str, projected: bool) -> int:
    """Bytes by which one epoch of set-up ``name`` raises the peak resident memory of a
    fresh process (its ``ru_maxrss`` after the epoch less before it)."""
    cmd = [sys.executable, __file__, "--measure", name] + (["--projected"] if projected else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def _max_rss() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--projected", action="store_true",
                        help="the MLP behind the projection onto Kepler's E and L")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.measure is None:
        print(machine_line(f"torchdiffeq {torchdiffeq.__version__}") + "; float32")
    system = Kepler()
    data, _ = system.train_data(0, dtype=torch.float32)
    states = TrajectoryData(data.t, data.x)
    torch.manual_seed(0)
    net = MLP(4, 4)
    model = ProjectedVectorField(net, system.invariants) if args.projected else net
    if args.measure is None:
        print(f"Kepler training set {tuple(data.x.shape)}; model "
              f"{'MLP behind the projection onto (E, L)' if args.projected else 'MLP'}\n")

    def derivatives() -> None:
        fit_dynamics(model, data, epochs=1, batch_size=100, progress=False)

    def trajectories(window: int, adjoint: bool):
        def run() -> None:
            fit_trajectories(model, states, window=window, epochs=1, batch_size=256,
                             substeps=8, adjoint=adjoint, progress=False)
        return run

    setups = {"fit_dynamics": derivatives}
    for window in (3, 10):
        for adjoint in (False, True):
            setups[f"fit_trajectories w={window} " + ("adjoint" if adjoint else "odeint")] = (
                trajectories(window, adjoint))
    if args.measure is not None:  # the child process of peak_increase
        # the runtime's one-off allocations first, on one trajectory, so they are not counted
        fit_dynamics(copy.deepcopy(model), data[:1], epochs=1, progress=False)
        fit_trajectories(copy.deepcopy(model), states[:1], window=2, epochs=1, progress=False,
                         adjoint="adjoint" in args.measure)
        before = _max_rss()
        setups[args.measure]()
        print(_max_rss() - before)
        return
    steps = {"fit_dynamics": math.ceil(data.n_traj * data.n_times / 100)}
    for name in setups:
        if name != "fit_dynamics":
            window = int(name.split("w=")[1].split()[0])
            steps[name] = math.ceil(data.n_traj * (data.n_times - window + 1) / 256)
    timings, _ = time_paired(setups, "fit_dynamics", args.repeats)
    peaks = {name: max(peak_increase(name, args.projected), 1) for name in setups}
    print("| one epoch of | steps | seconds | time / fit_dynamics | per step | peak rise MiB |")
    print("|---|---|---|---|---|---|")
    for name, (seconds, ratio) in timings.items():
        per_step = ratio * steps["fit_dynamics"] / steps[name]
        print(f"| {name} | {steps[name]} | {seconds:.3f} | {ratio:.1f} | {per_step:.1f} | "
              f"{peaks[name] / 2**20:.1f} |", flush=True)
    for window in (3, 10):
        plain = f"fit_trajectories w={window} odeint"
        adj = f"fit_trajectories w={window} adjoint"
        print(f"\nw={window}: adjoint / odeint: time "
              f"{timings[adj][1] / timings[plain][1]:.2f}, peak memory "
              f"{peaks[adj] / peaks[plain]:.2f}")


if __name__ == "__main__":
    main()
