"""Projection of a vector field onto the tangent space of an invariant set's level sets.

This is the ConCerNet projection layer (eqs. (5)-(6) of Zhang et al., ICML 2023): given a field
``f`` and invariants ``H: R^n -> R^m``, the projected field

    P f = f - J^T (J J^T)^+ J f,      J = dH/dx  (m x n),

satisfies ``dH/dt = J P f = 0``, so its exact flow keeps every ``H_i`` constant.

Its inequality version for dissipative systems, :class:`DissipativeVectorField`, removes only
the part of ``f`` that would make a function ``V`` decrease too slowly (Kolter & Manek, 2019).
Both evaluate ``dH/dx`` through :func:`~concernet_ode._jacobian.invariant_jacobian`, in the
common base :class:`_GradientConstrainedField`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._jacobian import (
    call_field,
    check_callable,
    check_state,
    field_arity,
    invariant_jacobian,
    stacked_rows,
)

__all__ = [
    "DissipativeVectorField",
    "ProjectedVectorField",
    "orthonormal_rows",
    "tangent_project",
]


def _rank_cutoff(dtype: torch.dtype, eps: float | None) -> float:
    # A Gram-Schmidt residual below this fraction of the original row's norm is round-off:
    # after two orthogonalisation passes, an exactly dependent row leaves a residual of a few
    # machine epsilons. 64 eps keeps genuinely (if nearly) independent rows.
    return 64.0 * torch.finfo(dtype).eps if eps is None else eps


def orthonormal_rows(jac: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Orthonormal basis of the row space of ``jac``, batched, rank-revealing.

    Classical Gram-Schmidt with one reorthogonalisation ("twice is enough"), which is
    orthogonal to working precision without forming ``J J^T`` (that would square the
    condition number of nearly dependent gradients). A row whose residual after
    orthogonalisation is at most ``eps`` times its own norm (a dependent invariant), or whose
    norm is zero or subnormal (a critical point of ``H_i``), is replaced by zeros: its
    direction does not exist and is left alone.

    Args:
        jac: rows to orthonormalise.
        eps: relative rank cutoff; default ``64 * torch.finfo(jac.dtype).eps``.

    Returns:
        ``Q`` with orthonormal or zero rows, spanning the row space of ``jac``.

    Shapes:
        jac: ``(..., m, n)``; returns ``(..., m, n)``.
    """
    rel = _rank_cutoff(jac.dtype, eps)
    tiny = torch.finfo(jac.dtype).tiny
    basis: list[torch.Tensor] = []
    for i in range(jac.shape[-2]):
        g = jac[..., i, :]
        u = g
        for _ in range(2):
            for q in basis:
                u = u - (u * q).sum(-1, keepdim=True) * q
        norm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
        g_norm = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
        exists = (norm > rel * g_norm) & (norm > tiny)
        # where() on a safe denominator keeps both the value and its gradient finite.
        q = torch.where(exists, u / torch.where(exists, norm, torch.ones_like(norm)), 0.0)
        basis.append(q)
    return torch.stack(basis, dim=-2)


def tangent_project(jac: torch.Tensor, v: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Remove from ``v`` its component in the row space of ``jac``.

    Equal to ``v - J^T (J J^T)^+ J v`` with a rank cutoff (see :func:`orthonormal_rows`).

    Shapes:
        jac: ``(..., m, n)``; v: ``(..., n)``; returns ``(..., n)``.
    """
    q = orthonormal_rows(jac, eps)
    coeff = (q * v.unsqueeze(-2)).sum(-1, keepdim=True)  # (..., m, 1)
    return v - (coeff * q).sum(-2)


class _GradientConstrainedField(nn.Module):
    """Shared machinery of fields built from ``f`` and the gradients of a function of state.

    Stores ``f`` (``f(t, x)`` or ``f(x)``) and the function (as attribute ``_fn_name``; an
    ``nn.Module`` is registered), validates the state and evaluates ``(h, J)`` with
    :func:`~concernet_ode._jacobian.invariant_jacobian`, keeping the graph through ``J``
    only when something upstream wants gradients from it.
    """

    _fn_name = "H"

    def __init__(self, f: Callable, fn: Callable) -> None:
        super().__init__()
        check_callable(f, "f")
        check_callable(fn, self._fn_name)
        self.f = f
        setattr(self, self._fn_name, fn)
        self._arity = field_arity(f)
        # The number of values the function returns, known after its first call: with it, a
        # closed-form function's Jacobian rows come from one backward pass (``stacked_rows``).
        self._m: int | None = None

    @property
    def field(self) -> Callable:
        """The unconstrained vector field ``f``."""
        return self.f

    @property
    def invariants(self) -> Callable:
        """The function whose gradient constrains ``f`` (``H`` or ``V``)."""
        return getattr(self, self._fn_name)

    def _invariants_trainable(self) -> bool:
        fn = self.invariants
        if isinstance(fn, nn.Module):
            return any(p.requires_grad for p in fn.parameters())
        return True  # a plain callable may close over trainable tensors: keep the graph

    def _jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_state(x)
        # The graph through J is needed only if something upstream wants gradients from it:
        # x itself, or trainable parameters of H (e.g. not while H is frozen in fit_dynamics).
        keep = torch.is_grad_enabled() and (x.requires_grad or self._invariants_trainable())
        h, jac = invariant_jacobian(self.invariants, x, name=self._fn_name, create_graph=keep,
                                    m=stacked_rows(self.invariants, self._m))
        self._m = h.shape[-1]
        return h, jac


class ProjectedVectorField(_GradientConstrainedField):
    """A vector field with its component along the gradients of ``H`` removed.

    ``odeint(ProjectedVectorField(f, H), x0, t)`` conserves every invariant ``H_i`` up to the
    solver's truncation error (eqs. (5)-(6) of the ConCerNet paper); see
    :func:`~concernet_ode.odeint_projected` for conservation to a tolerance.

    The Jacobian ``J = dH/dx`` is computed with autograd even under ``torch.no_grad()`` and
    keeps its graph when gradients are enabled, so parameters of both ``f`` and ``H`` train
    through the projection, and ``odeint_adjoint`` works. Where ``J`` is rank-deficient
    (``grad H_i = 0``, or dependent invariants) the directions that exist are projected out
    and the rest of ``f`` is left as it is; the output stays finite.

    Args:
        f: the vector field, ``f(t, x)`` or ``f(x)``; an ``nn.Module`` is registered.
        H: the invariants, ``H(x) -> (..., m)`` or ``(...,)``; an ``nn.Module`` is registered.
            ``m`` must stay the same from call to call: after the first, the Jacobian rows of
            a closed-form ``H`` (not an ``nn.Module``) come from one backward pass.
        eps: relative rank cutoff for dependent gradients; default
            ``64 * torch.finfo(x.dtype).eps``.

    Shapes:
        x: ``(..., n)``; output: ``(..., n)``, dtype and device of ``x``.

    Example:
        >>> import torch
        >>> from torchdiffeq import odeint
        >>> f = lambda t, x: torch.stack([2 * x[..., 1], -2.1 * x[..., 0]], -1)
        >>> H = lambda x: x.pow(2).sum(-1)
        >>> x = odeint(ProjectedVectorField(f, H), torch.tensor([1.0, 0.0]),
        ...            torch.linspace(0, 5, 11), rtol=1e-7, atol=1e-9)
        >>> float((H(x) - 1).abs().max()) < 1e-5
        True
    """

    def __init__(self, f: Callable, H: Callable, *, eps: float | None = None) -> None:
        super().__init__(f, H)
        if eps is not None and not (isinstance(eps, (int, float)) and 0 < eps < 1):
            msg = f"`eps` must be a float in (0, 1) or None, got {eps!r}"
            raise ValueError(msg)
        self.eps = eps

    def project(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Project ``v`` onto the tangent space of the level set of ``H`` through ``x``.

        Shapes:
            x, v: ``(..., n)``; returns ``(..., n)``.
        """
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            msg = f"`v` must be a tensor of the shape of `x`, {tuple(x.shape)}; got {got}"
            raise ValueError(msg)
        _, jac = self._jacobian(x)
        return tangent_project(jac, v, self.eps)

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the projected field at time ``t`` and states ``x``."""
        _, jac = self._jacobian(x)
        v = call_field(self.f, self._arity, t, x, "f")
        return tangent_project(jac, v, self.eps)

    def _jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, jac = super()._jacobian(x)
        m, n = h.shape[-1], x.shape[-1]
        if m >= n:
            msg = (f"`H` returns m = {m} invariants for a state of dimension n = {n}; the "
                   "projection needs m < n, or nothing is left to move along")
            raise ValueError(msg)
        return h, jac


class DissipativeVectorField(_GradientConstrainedField):
    """A vector field corrected so that ``V`` decays along its flow: ``dV/dt <= -alpha V``.

    The inequality version of the ConCerNet projection, after Kolter & Manek (2019): with
    ``g = grad V(x)``,

        F(x) = f(x) - g * relu(<g, f(x)> + alpha V(x)) / |g|^2,

    so that ``dV/dt = <g, F> = min(<g, f>, -alpha V)``. Where ``f`` already makes ``V`` decay
    fast enough, ``F = f``; otherwise only the component of ``f`` along ``g`` changes. Use it
    for dissipative systems, with ``V`` e.g. an energy learned by
    :func:`~concernet_ode.fit_invariants` with a ranking loss: the model can then never
    create energy.

    ``alpha = 0`` needs nothing of ``V``. For ``alpha > 0``, ``V`` should be positive
    definite about an equilibrium (``V >= 0`` with ``grad V = 0`` only where ``V = 0``): where
    ``grad V`` is nearly zero but ``alpha V`` is not, the correction is as large as the
    formula says. Where ``|g|^2``, the formula's denominator, is zero or subnormal (below
    ``torch.finfo(x.dtype).tiny``), no direction exists to correct along and ``f`` is
    returned unchanged: the output stays finite.

    ``grad V`` is computed with autograd even under ``torch.no_grad()`` and keeps its graph
    when gradients are enabled, exactly as in :class:`ProjectedVectorField`.

    Args:
        f: the vector field, ``f(t, x)`` or ``f(x)``; an ``nn.Module`` is registered.
        V: the Lyapunov-like function, ``V(x) -> (...,)`` or ``(..., 1)``; an ``nn.Module``
            is registered.
        alpha: the decay rate to guarantee, ``>= 0``.

    Raises:
        TypeError: ``f`` or ``V`` is not callable; at call time, ``x`` is not a tensor or
            ``f``/``V`` does not return one.
        ValueError: ``alpha`` is negative or not finite; at call time, ``V`` returns more than
            one value per state, or ``f(x)`` has the wrong shape.

    Shapes:
        x: ``(..., n)``; output: ``(..., n)``, dtype and device of ``x``.

    Example:
        >>> import torch
        >>> f = lambda t, x: torch.stack([x[..., 1], 3 * x[..., 0]], -1)  # a saddle
        >>> V = lambda x: x.pow(2).sum(-1)
        >>> field = DissipativeVectorField(f, V, alpha=0.5)
        >>> x = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
        >>> dV = (2 * x * field(0.0, x)).sum(-1)
        >>> bool((dV <= -0.5 * V(x) + 1e-6).all())
        True
    """

    _fn_name = "V"

    def __init__(self, f: Callable, V: Callable, *, alpha: float = 0.0) -> None:
        super().__init__(f, V)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
                0 <= alpha < float("inf")):
            msg = f"`alpha` must be a finite number >= 0, got {alpha!r}"
            raise ValueError(msg)
        self.alpha = float(alpha)

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the corrected field at time ``t`` and states ``x``."""
        v, grad = self._jacobian(x)
        return self._correct(v, grad, call_field(self.f, self._arity, t, x, "f"))

    def _correct(self, v: torch.Tensor, grad: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """The correction of ``f`` given ``V`` and ``grad V`` at the same states.

        Shapes:
            v: ``(..., 1)``; grad: ``(..., n)``; f: ``(..., n)``; returns ``(..., n)``.
        """
        norm = torch.linalg.vector_norm(grad, dim=-1, keepdim=True)
        exists = norm > torch.finfo(norm.dtype).tiny ** 0.5  # |g|^2 is a normal number
        safe = torch.where(exists, norm, torch.ones_like(norm))
        unit = torch.where(exists, grad / safe, 0.0)
        # Excess decay rate of V along f, in units of |g|: <u, f> + alpha V / |g|.
        excess = (unit * f).sum(-1, keepdim=True) + torch.where(
            exists, self.alpha * v / safe, 0.0)
        return f - unit * torch.relu(excess)

    def _jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v, jac = super()._jacobian(x)
        if v.shape[-1] != 1:
            msg = (f"`V` must return one value per state, shape (...,) or (..., 1); got "
                   f"{v.shape[-1]} values (shape {tuple(v.shape)})")
            raise ValueError(msg)
        return v, jac.squeeze(-2)
