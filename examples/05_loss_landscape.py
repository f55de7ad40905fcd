"""Why a contrastively learned invariant is an affine function of the true one (Section 5.2).

The paper's Conjecture 1: with a continuous label ``g(x)`` (a conserved quantity) and a
contrastive loss whose positives are the points with ``|g(x') - g(x)| < epsilon`` (eq. (11)),
the loss is minimised by an ``h`` that is an affine function of ``g``. Here ``x`` is uniform
on [-1, 1], ``h(x) = a x^2 + b x + c`` and epsilon = 0.05, as in the paper's Fig. 6:

* ``g(x) = x``:   the minimum should lie on the linear ``h`` (``a = 0``);
* ``g(x) = x^2``: the minimum should lie on ``b = 0`` (``h`` a function of ``x^2``).

``h`` is standardised over ``x`` first (eq. (8), as ``fit_invariants`` does by default), so
``c`` drops out and the loss depends on the direction of ``(a, b)`` only: we report the angle
``theta = atan2(a, b)`` of the best direction (0 degrees: ``h = b x``; 90: ``h = a x^2``).

    python examples/05_loss_landscape.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch


def continuous_label_loss(h: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """Eq. (11) on a sample: point ``j`` is a positive of ``i`` if ``|g_i - g_j| < eps``.

    ``l_i = -log(sum_{j pos} exp(-(h_i - h_j)^2) / sum_{j != i} exp(-(h_i - h_j)^2))``, averaged
    over ``i``; ``h`` is standardised over the sample first.
    Shapes: h ``(..., N)`` (a batch of candidate functions), g ``(N,)``; returns ``(...)``.
    """
    h = (h - h.mean(-1, keepdim=True)) / h.std(-1, unbiased=False, keepdim=True)
    logits = -(h.unsqueeze(-1) - h.unsqueeze(-2)).square()
    eye = torch.eye(g.shape[0], dtype=torch.bool)
    positive = ((g.unsqueeze(-1) - g.unsqueeze(-2)).abs() < eps) & ~eye
    low = torch.finfo(h.dtype).min
    log_all = torch.logsumexp(logits.masked_fill(eye, low), dim=-1)
    log_pos = torch.logsumexp(logits.masked_fill(~positive, low), dim=-1)
    return (log_all - log_pos).mean(-1)


def loss_of(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, g: torch.Tensor,
            eps: float) -> torch.Tensor:
    """The loss of ``h = a x^2 + b x`` for each pair ``(a, b)``, in chunks to bound memory."""
    a, b = torch.broadcast_tensors(a, b)
    h = a.reshape(-1, 1) * x.square() + b.reshape(-1, 1) * x
    out = torch.cat([continuous_label_loss(chunk, g, eps) for chunk in h.split(32)])
    return out.reshape(a.shape)


def _num(value: float, digits: int = 2) -> str:
    return f"{round(float(value), 6) + 0.0:+.{digits}f}"  # no "-0.00"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="landscape_")))
    parser.add_argument("--quick", action="store_true", help="coarser grids, for tests")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    n_x, n_grid, n_angle = (101, 20, 91) if args.quick else (201, 40, 361)
    eps = 0.05

    x = torch.linspace(-1, 1, n_x, dtype=torch.float64)
    half = n_grid // 2
    axis = torch.arange(-half, half + 1, dtype=torch.float64) * (2 / half)  # exact 0
    theta = torch.linspace(-math.pi / 2, math.pi / 2, n_angle, dtype=torch.float64)
    labels = {"g(x) = x": x, "g(x) = x^2": x.square()}

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for k, (name, g) in enumerate(labels.items()):
        # Along directions (a, b) = (sin theta, cos theta): the loss depends on nothing else.
        per_angle = loss_of(theta.sin(), theta.cos(), x, g, eps)
        best = int(per_angle.argmin())
        deg = math.degrees(float(theta[best]))
        print(f"{name}: minimum {float(per_angle[best]):.4f} at theta = {_num(deg)} deg, "
              f"(a, b) ~ ({_num(math.sin(theta[best]), 3)}, {_num(math.cos(theta[best]), 3)}); "
              f"linear h (theta = 0): {float(per_angle[n_angle // 2]):.4f}, "
              f"h = x^2 (theta = 90): {float(per_angle[-1]):.4f}")

        grid = loss_of(axis.unsqueeze(-1), axis, x, g, eps)  # rows: a, columns: b
        # At a = b = 0, h is constant and cannot be standardised: the loss is NaN there.
        i, j = divmod(int(grid.nan_to_num(math.inf).argmin()), grid.shape[1])
        line = grid[i] if abs(float(axis[i])) < 1e-9 else grid[:, j]  # the a = 0 or b = 0 line
        spread = float(line.nan_to_num(float(grid[i, j])).max() - grid[i, j])
        print(f"    on the {len(axis)}x{len(axis)} grid of (a, b) in [-2, 2]^2: minimum "
              f"{float(grid[i, j]):.4f} at a = {_num(axis[i])}, b = {_num(axis[j])} "
              f"(the same along that whole axis, to {spread:.1e})")
        ax = axes[k]
        levels = ax.contourf(axis, axis, grid, levels=30, cmap="viridis")
        ax.plot(float(axis[j]), float(axis[i]), "r*", markersize=12)
        fig.colorbar(levels, ax=ax)
        ax.set(xlabel="b (coefficient of x)", ylabel="a (coefficient of x^2)",
               title=f"{name}, eps = {eps}")
        axes[2].plot(torch.rad2deg(theta), per_angle, label=name)
    axes[2].set(xlabel="theta = atan2(a, b) [deg]", ylabel="loss", title="loss by direction")
    axes[2].legend()
    fig.tight_layout()
    path = args.out / "loss_landscape.png"
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
