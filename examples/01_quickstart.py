"""Quickstart: stop a slightly wrong vector field from drifting in energy.

A mass on a spring (q' = 2p, p' = -2q) conserves H = q^2 + p^2. A learned model of it is never
exact; here a small fixed perturbation plays the learned error. Integrated for 50 time units,
the perturbed field gains or loses energy; wrapped in ``ProjectedVectorField`` with H, it keeps
H to the solver's accuracy. Prints both drifts and saves a plot of energy against time.

Run:  python examples/01_quickstart.py [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torchdiffeq import odeint

from concernet_ode import ProjectedVectorField
from concernet_ode.systems import SpringMass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the plot")
    parser.add_argument("--quick", action="store_true", help="accepted for the test runner")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="concernet_quickstart_"))
    out.mkdir(parents=True, exist_ok=True)

    spring = SpringMass()
    gen = torch.Generator().manual_seed(0)
    w = 0.02 * torch.randn(2, 2, generator=gen, dtype=torch.float64)

    def learned(t, x):  # the true field plus a small "learning error"
        return spring.vector_field(t, x) + torch.tanh(x @ w.T)

    projected = ProjectedVectorField(learned, spring.invariants)
    x0 = torch.tensor([[1.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    t = torch.linspace(0.0, 50.0, 1001, dtype=torch.float64)
    with torch.no_grad():
        plain = odeint(learned, x0, t, rtol=1e-8, atol=1e-10)
        proj = odeint(projected, x0, t, rtol=1e-8, atol=1e-10)

    h0 = spring.invariants(x0)
    drift_plain = (spring.invariants(plain) - h0).abs().max().item()
    drift_proj = (spring.invariants(proj) - h0).abs().max().item()
    print(f"max energy drift over t in [0, 50]: unprojected {drift_plain:.3e}, "
          f"projected {drift_proj:.3e} (ratio {drift_plain / drift_proj:.1e})")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i in range(x0.shape[0]):
        ax.plot(t, spring.invariants(plain)[:, i, 0], color=f"C{i}", ls="--",
                label=f"orbit {i}, unprojected")
        ax.plot(t, spring.invariants(proj)[:, i, 0], color=f"C{i}",
                label=f"orbit {i}, projected")
    ax.set(xlabel="t", ylabel="energy $q^2 + p^2$", title="Spring energy along the learned flow")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "quickstart_energy.png"
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
