"""Cost of fitting trajectories against fitting derivatives, and odeint against the adjoint.

One epoch of ``fit_trajectories`` (windows rolled out by RK4 through ``odeint``) against
one epoch of ``fit_dynamics`` (points against their derivatives) on the same data: the Kepler
training set of the paper's protocol (50 trajectories of 100 samples), the Table 1 MLP
(two hidden layers of 100), float32, one thread. The rollouts run as the trajectory recipe
runs them (windows of 3 samples, 8 RK4 steps per sample interval, batches of 256 windows,
free window starts) and, for the memory, also over windows of 10 samples; each with
``odeint`` and with ``odeint_adjoint``. Wall time in ABBA blocks against ``fit_dynamics``
(median ratios; see ``_timing.time_paired``), and the adjoint against ``odeint`` in ABBA
blocks of their own; peak memory in a fresh process per set-up: how
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
from pathlib import Path

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
    """Peak resident memory of this process, in bytes.

    Linux's ``ru_maxrss`` starts a child at its parent's peak (kept across fork and exec), so
    the peak of this process's own address space (``VmHWM``) is read where there is one."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
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
    plain = [name for name in setups if not name.endswith("adjoint")]
    timings, _ = time_paired({name: setups[name] for name in plain}, "fit_dynamics",
                             args.repeats)
    peaks = {name: max(peak_increase(name, args.projected), 1) for name in setups}
    print("| one epoch of | steps | seconds | time / fit_dynamics | per step | peak rise MiB |")
    print("|---|---|---|---|---|---|")
    for name, (seconds, ratio) in timings.items():
        per_step = ratio * steps["fit_dynamics"] / steps[name]
        print(f"| {name} | {steps[name]} | {seconds:.3f} | {ratio:.1f} | {per_step:.1f} | "
              f"{peaks[name] / 2**20:.1f} |", flush=True)
    print("\n| windows | odeint s | odeint_adjoint s | time adjoint / odeint | peak rise MiB "
          "odeint | adjoint | memory adjoint / odeint |")
    print("|---|---|---|---|---|---|---|")
    for window in (3, 10):  # the adjoint against odeint in ABBA blocks of their own
        names = (f"fit_trajectories w={window} odeint", f"fit_trajectories w={window} adjoint")
        pair, _ = time_paired({name: setups[name] for name in names}, names[0], args.repeats)
        (t_plain, _), (t_adj, ratio) = pair[names[0]], pair[names[1]]
        m_plain, m_adj = peaks[names[0]], peaks[names[1]]
        print(f"| {window} | {t_plain:.3f} | {t_adj:.3f} | {ratio:.2f} | "
              f"{m_plain / 2**20:.1f} | {m_adj / 2**20:.1f} | {m_adj / m_plain:.2f} |",
              flush=True)

if __name__ == "__main__":
    main()
