"""Several same-shaped vector fields trained and integrated side by side, as one module.

Table 1 trains a baseline MLP and the same MLP behind the projection of eq. (6) (onto the
learned and onto the true invariants) from the same initial weights, on the same batches,
with the same optimiser. :class:`Ensemble` stacks the members' weights with
``torch.func.stack_module_state`` and evaluates them with ``functional_call`` under ``vmap``;
:class:`EnsembleField` projects each member's output onto the tangent space of its own
invariants (or leaves it, for ``None``) through :func:`~concernet_ode.projection.tangent_project`,
the library's one implementation of eq. (6). :func:`fit_ensemble` trains the members with
the trainers' own loop: with the invariants frozen, the projection at each training point is
a fixed matrix, computed once, so training needs no ``dH/dx`` per step; the members' losses
are summed over disjoint parameters, so each follows exactly the updates
:func:`~concernet_ode.fit_dynamics` would give it alone (up to rounding).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from .._jacobian import invariant_jacobian, stacked_rows
from ..data import TrajectoryData
from ..projection import tangent_project
from ..training import History, Schedule, _check_schedule, _run

__all__ = ["Ensemble", "EnsembleField", "fit_ensemble"]


class Ensemble(nn.Module):
    """``K`` modules of one architecture evaluated as one with ``torch.func``.

    Args:
        members: modules of identical structure (parameter names and shapes); their weights
            are copied in, and :meth:`write_back` copies the trained ones out again.

    Raises:
        ValueError: ``members`` is empty or its modules differ in structure.

    Shapes:
        x: ``(K, ..., n)``, member ``k`` on ``x[k]``; returns ``(K, ..., out)``.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        members = list(members)
        shapes = {tuple((n, p.shape) for n, p in m.named_parameters()) for m in members}
        if not members or len(shapes) != 1 or len({type(m) for m in members}) != 1:
            msg = ("`members` must be a non-empty sequence of modules of one type with the "
                   f"same parameter names and shapes, got {len(members)} modules of "
                   f"{len(shapes)} structures")
            raise ValueError(msg)
        params, _ = stack_module_state(members)
        self._names = list(params)
        self.weights = nn.ParameterList(nn.Parameter(params[n].detach().clone())
                                        for n in self._names)
        self.members = members  # a plain list: not submodules, their weights are copies
        # A weightless copy of the architecture for functional_call (not a submodule either).
        self._base = [copy.deepcopy(members[0]).to("meta")]

    def __len__(self) -> int:
        return len(self.members)

    def _member(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self._base[0], params, (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[0] != len(self):
            msg = (f"`x` must have shape (K, ..., n) with K = {len(self)} members, got "
                   f"{tuple(x.shape)}")
            raise ValueError(msg)
        params = dict(zip(self._names, self.weights, strict=True))
        return torch.vmap(self._member)(params, x)

    @torch.no_grad()
    def write_back(self) -> list[nn.Module]:
        """Copy the stacked weights into the member modules and return them."""
        for k, member in enumerate(self.members):
            for name, stacked in zip(self._names, self.weights, strict=True):
                member.get_parameter(name).copy_(stacked[k])
        return self.members


class EnsembleField(nn.Module):
    """The members of an :class:`Ensemble` as one vector field on the product of their state
    spaces, each member projected onto the tangent space of its own invariants (eq. (6)).

    The state of all ``K`` members is one vector of size ``K * n`` (member ``k`` in
    ``[k * n, (k + 1) * n)``, :meth:`tile` and :meth:`untile`), so that the field is a plain
    torchdiffeq right-hand side: one adaptive ``odeint`` call integrates every member from
    the same initial states (the solver's error norm covers all of them), and
    :func:`fit_ensemble` trains all of them.

    Args:
        ensemble: the vector fields.
        projections: per member, frozen invariants ``H(x) -> (..., m)`` or ``None`` (no
            projection).

    Raises:
        ValueError: ``projections`` does not have one entry per member.

    Shapes:
        x: ``(..., K * n)``; returns ``(..., K * n)``.
    """

    def __init__(self, ensemble: Ensemble,
                 projections: Sequence[Callable[[torch.Tensor], torch.Tensor] | None]) -> None:
        super().__init__()
        if len(projections) != len(ensemble):
            msg = (f"`projections` must have one entry per member ({len(ensemble)}), got "
                   f"{len(projections)}")
            raise ValueError(msg)
        self.ensemble = ensemble
        self.projections = list(projections)  # frozen: not trained, not registered
        self._m: list[int | None] = [None] * len(self.projections)

    def tile(self, x: torch.Tensor) -> torch.Tensor:
        """One state ``(..., n)`` for every member: ``(..., K * n)``."""
        return x.repeat(*([1] * (x.dim() - 1)), len(self.ensemble))

    def untile(self, x: torch.Tensor) -> torch.Tensor:
        """The members' states ``(..., K, n)`` of a product state ``(..., K * n)``."""
        k = len(self.ensemble)
        if x.dim() == 0 or x.shape[-1] % k:
            msg = f"`x` must have shape (..., K * n) with K = {k}, got {tuple(x.shape)}"
            raise ValueError(msg)
        return x.unflatten(-1, (k, x.shape[-1] // k))

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        states = self.untile(x).movedim(-2, 0)  # (K, ..., n)
        v = self.ensemble(states)
        # Through a rollout the state depends on the weights, and the gradient needs dJ/dx
        # (the curvature of the level sets): keep the graph through J then, and only then.
        keep = torch.is_grad_enabled() and x.requires_grad
        out = []
        for k, H in enumerate(self.projections):
            if H is None:
                out.append(v[k])
                continue
            h, jac = invariant_jacobian(H, states[k], create_graph=keep,
                                        m=stacked_rows(H, self._m[k]))
            self._m[k] = h.shape[-1]
            out.append(tangent_project(jac, v[k]))
        return torch.stack(out, dim=-2).flatten(-2)

    def projectors(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's projection of eq. (6) at states ``x`` as a matrix.

        Row ``j`` is :func:`~concernet_ode.projection.tangent_project` of the unit vector
        ``e_j`` (the projector is symmetric); ``None`` gives the identity.

        Shapes:
            x: ``(P, n)``; returns ``(K, P, n, n)``.
        """
        eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        out = []
        for H in self.projections:
            if H is None:
                out.append(eye.expand(*x.shape, -1).clone())
                continue
            _, jac = invariant_jacobian(H, x, create_graph=False)
            out.append(tangent_project(jac.unsqueeze(-3), eye))
        return torch.stack(out)


def fit_ensemble(field: EnsembleField, data: TrajectoryData, *, epochs: int,
                 batch_size: int = 100, lr: float = 1e-3, seed: int = 0,
                 progress: bool = False, lr_schedule: Schedule = "cosine") -> History:
    """Train every member of ``field`` on the derivatives in ``data``, as
    :func:`~concernet_ode.fit_dynamics` trains one model.

    Member ``k`` minimises the mean squared error of its projected output against ``dxdt``;
    the point order is drawn as ``fit_dynamics`` draws it (seeded by ``seed``), and the
    step schedule is the same.

    Returns:
        ``{"loss": [...]}``: per-epoch mean loss, summed over members.
    """
    x, y = data.points()
    proj = field.projectors(x)  # (K, P, n, n), fixed: the invariants are frozen
    k = len(field.ensemble)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        v = field.ensemble(x[idx].expand(k, -1, -1))
        out = (proj[:, idx] @ v.unsqueeze(-1)).squeeze(-1)
        return (out - y[idx]).pow(2).mean(dim=(1, 2)).sum()

    return _run(field.ensemble.parameters(), x.shape[0], batch_size, batch_loss,
                epochs=epochs, lr=lr, seed=seed, progress=progress, desc="dynamics",
                lr_schedule=_check_schedule(lr_schedule, epochs))
