"""The ``learn`` and ``simulate`` verbs of the ``concernet-ode`` command.

``concernet-ode learn DATA --out DIR`` runs :func:`~concernet_ode.learn` on a ``.npz`` or
``.csv`` file (:meth:`~concernet_ode.TrajectoryData.load` documents both) and writes the
saved model, ``report.md`` and figures into ``DIR``; ``--example NAME`` generates the data
from a built-in system instead. ``concernet-ode simulate DIR --x0 ... --t-end ...`` integrates
a saved model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .data import TrajectoryData
from .systems import ChemicalKinetics, ConservativeSystem, Kepler, Pendulum, SpringMass
from .workflow import ConservationModel, learn, load

__all__ = ["EXAMPLES", "add_parsers", "run_learn", "run_simulate"]

# Built-in data sets for `learn --example NAME`: the paper's ODE systems and a pendulum
# whose potential is scaled unlike the usual one (a system nobody tuned the defaults on).
EXAMPLES: dict[str, Callable[[], ConservativeSystem]] = {
    "pendulum": lambda: Pendulum(k=3.0),
    "spring": SpringMass,
    "chemical": ChemicalKinetics,
    "kepler": Kepler,
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``learn`` and ``simulate`` to the command's subparsers."""
    lrn = sub.add_parser("learn", help="learn conservation laws and a conserving model from "
                                       "trajectories, and save them")
    src = lrn.add_mutually_exclusive_group(required=True)
    src.add_argument("data", nargs="?", type=Path,
                     help=".npz (arrays t (T,), x (N, T, n), optional dxdt) or .csv (columns "
                          "trajectory,t,<states>[,d<state>...])")
    src.add_argument("--example", choices=sorted(EXAMPLES),
                     help="generate noisy trajectories of a built-in system instead")
    lrn.add_argument("--out", type=Path, required=True, help="directory for the model, "
                     "report.md and figures")
    lrn.add_argument("--n-invariants", default="auto",
                     help="number of invariants, or 'auto' (default) to count them")
    lrn.add_argument("--names", default=None,
                     help="comma-separated names of the state coordinates")
    lrn.add_argument("--n-traj", type=int, default=None,
                     help="with --example: trajectories to generate (default: the system's)")
    lrn.add_argument("--seed", type=int, default=0, help="seeds data, split and training")
    lrn.add_argument("--no-progress", action="store_true", help="no progress bars")

    sim = sub.add_parser("simulate", help="integrate a model saved by `learn`")
    sim.add_argument("model", type=Path, help="the directory `learn --out` wrote")
    sim.add_argument("--x0", action="append", required=True,
                     help="an initial state, comma-separated; repeat for several")
    sim.add_argument("--t-end", type=float, required=True, help="final time")
    sim.add_argument("--n-times", type=int, default=201, help="output times (default 201)")
    sim.add_argument("--exact", action="store_true",
                     help="keep the invariants to a tolerance in discrete time too")
    sim.add_argument("--out", type=Path, required=True,
                     help="output file: .npz (arrays t, x) or .csv")


def _error(verb: str, message: str) -> int:
    print(f"concernet-ode {verb}: error: {message}", file=sys.stderr)
    return 2


def _example_data(name: str, n_traj: int | None, seed: int) -> tuple[TrajectoryData, tuple]:
    system = EXAMPLES[name]()
    n = system.train_traj if n_traj is None else n_traj
    data = system.trajectories(n, t_end=system.train_t_end, n_times=system.train_n_times,
                               noise=system.noise, seed=seed)
    return TrajectoryData(data.t, data.x), tuple(system.state_names)  # states only


def run_learn(args: argparse.Namespace) -> int:
    """``concernet-ode learn``: returns the exit code."""
    if args.out == Path(""):
        return _error("learn", "--out must name a directory, got an empty string")
    try:
        if args.example:
            if args.n_traj is not None and args.n_traj < 8:
                return _error("learn", f"--n-traj must be >= 8, got {args.n_traj}")
            data, names = _example_data(args.example, args.n_traj, args.seed)
        else:
            data, names = TrajectoryData.load(args.data), None
        if args.names:
            names = tuple(s.strip() for s in args.names.split(","))
        m = args.n_invariants if args.n_invariants == "auto" else int(args.n_invariants)
        args.out.mkdir(parents=True, exist_ok=True)
        if args.example:
            data.save(args.out / "data.npz")
        model = learn(data, n_invariants=m, names=names, seed=args.seed,
                      progress=not args.no_progress)
    except (FileNotFoundError, ValueError, TypeError) as err:
        return _error("learn", str(err))
    model.save(args.out / "model")
    (args.out / "report.md").write_text(model.report_markdown() + _figure_links())
    _write_figures(model, data, args.seed, args.out)
    print(model.report_markdown())
    print(f"wrote {args.out / 'model'}, {args.out / 'report.md'} and figures")
    return 0


def _figure_links() -> str:
    return ("\n![learned invariants](invariants.png)\n\n![drift](drift.png)\n")


def _write_figures(model: ConservationModel, data: TrajectoryData, seed: int,
                   out: Path) -> None:
    """Each learned invariant along held-out trajectories, and the drift of the learned
    invariants along the baseline's and the projected model's rollouts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, test = data.split(model.settings.test_fraction, seed=seed)  # learn's held-out split
    test = test[: min(test.n_traj, 8)]
    with torch.no_grad():
        h = model.invariants(test.x)  # (B, T, m)
    m = h.shape[-1]
    fig, axes = plt.subplots(1, m, figsize=(5 * m, 3.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        for b in range(test.n_traj):
            ax.plot(test.t, h[b, :, i], lw=1.2)
        law = model.laws[i] or "no sparse formula"
        ax.set(xlabel="t", ylabel=f"H{i}", title=f"H{i} along held-out data\n{law}")
    fig.tight_layout()
    fig.savefig(out / "invariants.png", dpi=110)
    plt.close(fig)

    x0 = test.x[:, 0]
    t = torch.linspace(float(test.t[0]), float(test.t[0]) + 4 * float(test.t[-1] - test.t[0]),
                       401, dtype=test.x.dtype)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    with torch.no_grad():
        h0 = model.invariants(x0)
        for label, kw, style in (("baseline", {"baseline": True}, "C3-"),
                                 ("projected", {}, "C0-")):
            pred = model.simulate(x0, t, **kw)
            drift = (model.invariants(pred) - h0).square().mean(dim=(1, 2))
            ax.semilogy(t[1:], drift[1:].clamp_min(1e-30), style, label=label)
    ax.axvline(float(test.t[-1]), color="0.6", ls=":", lw=1)
    ax.set(xlabel="t (dotted: end of the training horizon)",
           ylabel="mean squared drift of H", title="drift of the learned invariants")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "drift.png", dpi=110)
    plt.close(fig)


def run_simulate(args: argparse.Namespace) -> int:
    """``concernet-ode simulate``: returns the exit code."""
    try:
        model = load(args.model)
    except (FileNotFoundError, ValueError) as err:
        return _error("simulate", str(err))
    try:
        x0 = torch.tensor([[float(v) for v in s.split(",")] for s in args.x0],
                          dtype=torch.float64)
    except ValueError:
        return _error("simulate", f"--x0 must be comma-separated numbers, got {args.x0}")
    if x0.shape[-1] != model.state_dim:
        return _error("simulate", f"--x0 must have {model.state_dim} numbers "
                                  f"({', '.join(model.names)}), got {x0.shape[-1]}")
    if not (args.t_end > 0 and np.isfinite(args.t_end)) or args.n_times < 2:
        return _error("simulate", "--t-end must be a positive number and --n-times >= 2")
    if args.out.suffix not in (".npz", ".csv"):
        return _error("simulate", f"--out must end in .npz or .csv, got {str(args.out)!r}")
    t = torch.linspace(0.0, args.t_end, args.n_times, dtype=torch.float64)
    x = model.simulate(x0, t, exact=args.exact).movedim(0, 1)  # (B, T, n)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".npz":
        TrajectoryData(t, x).save(args.out)
    else:
        rows = [",".join(["trajectory", "t", *model.names])]
        rows += [",".join([str(b), repr(float(t[k])), *(repr(float(v)) for v in x[b, k])])
                 for b in range(x.shape[0]) for k in range(x.shape[1])]
        args.out.write_text("\n".join(rows) + "\n")
    print(f"wrote {args.out}: {x.shape[0]} trajectories of {x.shape[1]} times")
    return 0
