"""py-pde both ways: py-pde makes the data, then runs the trained surrogate as a py-pde PDE.

py-pde solves the 1-D heat equation with insulated ends from random Gaussian bumps. Two
full-space surrogates of its right-hand side are trained on the rates: a plain MLP (baseline)
and the same MLP projected onto the known invariant, the total heat (ConCerNet with a known
law). ``SurrogatePDE`` turns each into a py-pde ``PDEBase``; py-pde's adaptive Runge-Kutta
solver runs them with a ``MemoryStorage`` tracker, like the true ``DiffusionPDE``, and one
py-pde plot (kymographs) shows the three side by side. The printout gives PDEBench's nRMSE
and the cRMSE of the total heat over the rollout.

Run:  python examples/08_py_pde_surrogate.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pde
import torch

from concernet_ode import MLP, ProjectedVectorField, fit_dynamics
from concernet_ode.integrations.py_pde import HeatEquation1D, SurrogatePDE
from concernet_ode.metrics_pde import crmse, nrmse


def rollout(equation: pde.PDEBase, state: pde.FieldBase, t_end: float,
            n_out: int) -> pde.MemoryStorage:
    """Solve ``equation`` with py-pde's adaptive solver, storing ``n_out`` states."""
    storage = pde.MemoryStorage()
    equation.solve(state, t_range=t_end, dt=1e-4, solver="runge-kutta", adaptive=True,
                   tolerance=1e-6, tracker=[storage.tracker(t_end / (n_out - 1))])
    return storage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the plot")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="py_pde_surrogate_"))
    out.mkdir(parents=True, exist_ok=True)
    epochs = 20 if args.quick else 300
    start = time.perf_counter()

    heat = HeatEquation1D(n_nodes=50)
    data = heat.trajectories(30, t_end=2.0, n_times=40, noise=heat.noise, seed=args.seed,
                             dtype=torch.float32)
    print(f"py-pde data: {data.n_traj} trajectories in {time.perf_counter() - start:.1f} s")

    torch.manual_seed(args.seed)
    baseline = MLP(heat.state_dim, heat.state_dim)
    concernet = ProjectedVectorField(MLP(heat.state_dim, heat.state_dim), heat.invariants)
    for model in (baseline, concernet):
        fit_dynamics(model, data, epochs=epochs, batch_size=100, seed=args.seed, lr=3e-3)

    # The surrogates as py-pde PDEs, rolled out twice as long as the training window.
    x0 = heat.sample_initial(1, seed=1000 + args.seed)[0]
    t_end, n_out = 4.0, 41
    runs = {"true": rollout(heat.equation, heat.to_field(x0), t_end, n_out)}
    for name, model in (("ConCerNet", concernet), ("baseline", baseline)):
        runs[name] = rollout(SurrogatePDE(model), heat.to_field(x0), t_end, n_out)
    states = {name: torch.stack([heat.from_field(f) for f in run]) for name, run in runs.items()}
    for name in ("ConCerNet", "baseline"):
        # (T, n) -> (T, 1, n): one sample
        pred, true = states[name][:, None], states["true"][:, None]
        print(f"{name:>9}: nRMSE {float(nrmse(pred, true)):.3e}, total-heat cRMSE "
              f"{float(crmse(pred, true, heat.invariants)[0]):.3e}")

    # One py-pde plot: kymographs of the true PDE and both surrogates.
    frames = [pde.FieldCollection([pde.ScalarField(heat.grid, run[i].data, label=name)
                                   for name, run in runs.items()])
              for i in range(len(runs["true"]))]
    combined = pde.MemoryStorage.from_fields(runs["true"].times, frames)
    path = out / "py_pde_surrogate.png"
    pde.plot_kymographs(combined, filename=str(path), action="close",
                        title="1-D heat: py-pde vs surrogates run by py-pde")
    print(f"saved {path} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
