"""Projection of a vector field onto the tangent space of an invariant set's level sets.

This is the ConCerNet projection layer (eqs. (5)-(6) of Zhang et al., ICML 2023): given a field
``f`` and invariants ``H: R^n -> R^m``, the projected field

    P f = f - J^T (J J^T)^+ J f,      J = dH/dx  (m x n),

satisfies ``dH/dt = J P f = 0``, so its exact flow keeps every ``H_i`` constant.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._jacobian import call_field, check_callable, field_arity, invariant_jacobian

__all__ = ["ProjectedVectorField", "orthonormal_rows", "tangent_project"]


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


class ProjectedVectorField(nn.Module):
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
        super().__init__()
        check_callable(f, "f")
        check_callable(H, "H")
        if eps is not None and not (isinstance(eps, (int, float)) and 0 < eps < 1):
            msg = f"`eps` must be a float in (0, 1) or None, got {eps!r}"
            raise ValueError(msg)
        self.f = f
        self.H = H
        self.eps = eps
        self._arity = field_arity(f)

    @property
    def field(self) -> Callable:
        """The unprojected vector field ``f``."""
        return self.f

    @property
    def invariants(self) -> Callable:
        """The invariant set ``H``."""
        return self.H

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

    def _invariants_trainable(self) -> bool:
        if isinstance(self.H, nn.Module):
            return any(p.requires_grad for p in self.H.parameters())
        return True  # a plain callable may close over trainable tensors: keep the graph

    def _jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor):
            msg = f"`x` must be a torch.Tensor, got {type(x).__name__}"
            raise TypeError(msg)
        if x.dim() == 0:
            msg = "`x` must have at least one dimension (the state), got a scalar"
            raise ValueError(msg)
        # The graph through J is needed only if something upstream wants gradients from it:
        # x itself, or trainable parameters of H (e.g. not while H is frozen in fit_dynamics).
        keep = torch.is_grad_enabled() and (x.requires_grad or self._invariants_trainable())
        h, jac = invariant_jacobian(self.H, x, create_graph=keep)
        m, n = h.shape[-1], x.shape[-1]
        if m >= n:
            msg = (f"`H` returns m = {m} invariants for a state of dimension n = {n}; the "
                   "projection needs m < n, or nothing is left to move along")
            raise ValueError(msg)
        return h, jac
