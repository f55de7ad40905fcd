"""Several same-shaped MLP vector fields trained and integrated side by side as one.

The benchmark trains a baseline MLP and the same MLP behind a projection (with a learned and
with the true invariant) on identical data, batches and optimiser. With the invariant frozen,
the projection at each training point is a fixed matrix ``P(x) = I - Q^T Q`` (eq. (6)), so
the projected model's loss ``|P(x) f(x) - xdot|^2`` can be trained with no autograd through
``H`` at all. Stacking the K members' weights into batched matrices then gives one optimiser
step for all of them: the losses are summed, the parameters are disjoint and Adam acts
elementwise, so each member follows exactly the updates :func:`~concernet_ode.fit_dynamics`
would give it alone (up to floating-point summation order), at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._jacobian import invariant_jacobian, stacked_rows
from .data import TrajectoryData
from .models import MLP
from .projection import orthonormal_rows, tangent_project
from .training import _run

__all__ = ["StackedField", "StackedMLP", "fit_stacked_dynamics", "projector"]


class StackedMLP(nn.Module):
    """K MLPs of identical shape evaluated with batched matrix products.

    Args:
        mlps: the members; their weights are copied in (use :meth:`write_back` to copy the
            trained weights out again).

    Shapes:
        x: ``(K, ..., n)``; returns ``(K, ..., out)``.
    """

    def __init__(self, mlps: Sequence[MLP]) -> None:
        super().__init__()
        layers = [[m for m in mlp.net if isinstance(m, nn.Linear)] for mlp in mlps]
        acts = {type(m) for mlp in mlps for m in mlp.net if not isinstance(m, nn.Linear)}
        shapes = {tuple(lin.weight.shape for lin in ls) for ls in layers}
        if not mlps or len(shapes) != 1 or len(acts) > 1:
            msg = "`mlps` must be a non-empty sequence of MLPs of identical shape and activation"
            raise ValueError(msg)
        self.act = acts.pop()() if acts else nn.Identity()
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([ls[i].weight.detach().mT for ls in layers]).clone())
            for i in range(len(layers[0])))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([ls[i].bias.detach()[None] for ls in layers]).clone())
            for i in range(len(layers[0])))
        self.mlps = list(mlps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, batch = x.shape[0], x.shape[1:-1]
        h = x.reshape(k, -1, x.shape[-1])
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = self.act(h)
        return h.reshape(k, *batch, h.shape[-1])

    @torch.no_grad()
    def write_back(self) -> list[MLP]:
        """Copy the stacked weights into the member MLPs and return them."""
        for k, mlp in enumerate(self.mlps):
            lins = [m for m in mlp.net if isinstance(m, nn.Linear)]
            for lin, w, b in zip(lins, self.weights, self.biases, strict=True):
                lin.weight.copy_(w[k].mT)
                lin.bias.copy_(b[k, 0])
        return self.mlps


def projector(H: Callable | None, x: torch.Tensor) -> torch.Tensor:
    """The tangent projector ``I - Q^T Q`` of :func:`tangent_project` at each state.

    ``None`` gives the identity (an unprojected member).

    Shapes:
        x: ``(..., n)``; returns ``(..., n, n)``.
    """
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device).expand(*x.shape, -1)
    if H is None:
        return eye.clone()
    _, jac = invariant_jacobian(H, x, create_graph=False)
    q = orthonormal_rows(jac)
    return eye - q.mT @ q


def fit_stacked_dynamics(model: StackedMLP, projections: Sequence[Callable | None],
                         data: TrajectoryData, *, epochs: int, batch_size: int = 100,
                         lr: float = 1e-3, seed: int = 0, progress: bool = False,
                         lr_schedule: Callable[[int], float] | None = None) -> list[float]:
    """Train all members of ``model`` on the derivatives in ``data``, as ``fit_dynamics``.

    Member ``k`` minimises the mean squared error of ``P_k(x) f_k(x)`` against ``dxdt``, with
    ``P_k`` the projector of the frozen invariants ``projections[k]`` (``None``: no
    projection). The point order is drawn exactly as in ``fit_dynamics`` (a
    ``torch.Generator`` seeded with ``seed``, one permutation per epoch), and the training loop
    is ``fit_dynamics``'s own.

    Args:
        lr_schedule: optional ``epoch -> factor`` multiplying ``lr``, as in ``fit_dynamics``.

    Returns:
        The per-epoch mean loss summed over members.
    """
    x, y = data.points()
    proj = torch.stack([projector(H, x) for H in projections])  # (K, P, n, n)
    k = len(projections)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        out = (proj[:, idx] @ model(x[idx].expand(k, -1, -1)).unsqueeze(-1)).squeeze(-1)
        return (out - y[idx]).pow(2).mean(dim=(1, 2)).sum()

    return _run(model.parameters(), x.shape[0], batch_size, batch_loss, epochs=epochs, lr=lr,
                seed=seed, progress=progress, desc="dynamics", lr_schedule=lr_schedule)["loss"]


class StackedField(nn.Module):
    """The K members as one right-hand side on stacked states, projected where asked.

    Lets a single adaptive ``odeint`` call integrate every member from the same initial
    states (the solver's error norm then covers all of them).

    Shapes:
        x: ``(K, B, n)``; returns ``(K, B, n)``.
    """

    def __init__(self, model: StackedMLP, projections: Sequence[Callable | None]) -> None:
        super().__init__()
        self.model, self.projections = model, list(projections)
        self._m: list[int | None] = [None] * len(self.projections)  # see ProjectedVectorField

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        v = self.model(x)
        out = []
        for k, H in enumerate(self.projections):
            if H is None:
                out.append(v[k])
            else:
                h, jac = invariant_jacobian(H, x[k], create_graph=False,
                                            m=stacked_rows(H, self._m[k]))
                self._m[k] = h.shape[-1]
                out.append(tangent_project(jac, v[k]))
        return torch.stack(out)
