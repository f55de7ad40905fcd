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

import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

from ._jacobian import (
    call_field,
    check_callable,
    check_state,
    field_arity,
    format_indices,
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

    Rows too large for their squared norm to be represented (``|J_i| > sqrt(finfo.max)``,
    e.g. ``|x| >= 1e19`` in float32 for ``H = |x|^2``) are orthonormalised after scaling each
    by its largest entry, which leaves the row space as it is; that path is taken only for the
    samples that need it, found by one ``isfinite`` test of the row norms already computed.

    Args:
        jac: rows to orthonormalise.
        eps: relative rank cutoff; default ``64 * torch.finfo(jac.dtype).eps``.

    Returns:
        ``Q`` with orthonormal or zero rows, spanning the row space of ``jac``.

    Raises:
        ValueError: ``jac`` has NaN or infinite entries (their row space is undefined).

    Shapes:
        jac: ``(..., m, n)``; returns ``(..., m, n)``.
    """
    q, norms = _gram_schmidt(jac, _rank_cutoff(jac.dtype, eps))
    if not bool(torch.isfinite(norms).all()):
        bad = ~torch.isfinite(jac).all(-1).all(-1)
        if bool(bad.any()):
            msg = (f"`jac` has NaN or infinite entries at {int(bad.sum())} of {bad.numel()} "
                   f"sample(s) (indices {format_indices(bad)}); their row space is undefined. "
                   "Check the states and the function they are the Jacobian of")
            raise ValueError(msg)
        q = _rescaled_rows(jac, eps, q, norms)
    return q


def _gram_schmidt(jac: torch.Tensor, rel: float,
                  row_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram-Schmidt twice on the rows; returns ``Q`` and the rows' norms ``(..., m)``.

    ``row_scale`` (``(..., m, 1)``), when given, is the factor each row of ``jac`` was
    divided by: the test for a zero or subnormal row is then made on the original size.
    """
    tiny = torch.finfo(jac.dtype).tiny
    basis: list[torch.Tensor] = []
    norms: list[torch.Tensor] = []
    for i in range(jac.shape[-2]):
        g = jac[..., i, :]
        u = g
        for _ in range(2):
            for q in basis:
                u = u - (u * q).sum(-1, keepdim=True) * q
        norm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
        g_norm = torch.linalg.vector_norm(g, dim=-1, keepdim=True)
        size = norm if row_scale is None else norm * row_scale[..., i, :]
        exists = (norm > rel * g_norm) & (size > tiny)
        # where() on a safe denominator keeps both the value and its gradient finite.
        q = torch.where(exists, u / torch.where(exists, norm, torch.ones_like(norm)), 0.0)
        basis.append(q)
        norms.append(g_norm)
    return torch.stack(basis, dim=-2), torch.cat(norms, dim=-1)


def _rescaled_rows(jac: torch.Tensor, eps: float | None, q: torch.Tensor,
                   norms: torch.Tensor) -> torch.Tensor:
    """``q`` with the samples whose row norms overflowed redone on rows scaled to max-abs 1.

    Scaling a row by a positive number changes neither the row space nor the rank test
    (relative to the row's own norm), so the result is that of exact arithmetic; samples
    whose norms were finite keep their bits.
    """
    overflow = ~torch.isfinite(norms).all(-1)  # (...)
    scale = jac.detach().abs().amax(-1, keepdim=True)  # (..., m, 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q_scaled, _ = _gram_schmidt(jac / scale, _rank_cutoff(jac.dtype, eps), row_scale=scale)
    return torch.where(overflow[..., None, None], q_scaled, q)


def _remove_components(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v`` minus its components along the orthonormal (or zero) rows of ``q``."""
    coeff = (q * v.unsqueeze(-2)).sum(-1, keepdim=True)  # (..., m, 1)
    return v - (coeff * q).sum(-2)


# From this state dimension on, ProjectedVectorField projects through the Gram matrix
# (:func:`_gram_project`): Gram-Schmidt's elementwise passes over ``(..., m, n)`` rows then
# cost as much as ``f`` and ``dH/dx`` (``benchmarks/projection_overhead.py``). Below it the
# Gram-Schmidt path runs exactly as before: the Table 1 reproduction (n <= 101) depends on
# its bits.
_GRAM_MIN_N = 256

# One pass of normal equations errs by about eps * cond^2 (|v| units), Gram-Schmidt by
# eps * cond; below this bound on cond^2 of the unit rows the two agree within 64 ulps.
_ONE_PASS_COND2 = 64.0


def _gram_project(jac: torch.Tensor, v: torch.Tensor, rel: float,
                  h: torch.Tensor | None = None) -> torch.Tensor | None:
    """``v`` minus its components in the row space of ``jac``, through ``J J^T``; or ``None``.

    The Gram matrix of the rows scaled to unit norm, ``S J J^T S = L L^T`` (Cholesky, ``S``
    diagonal), decides per call. ``L_ii`` is the sine of the angle between row ``i`` and the
    rows before it, and ``cond(S J)^2 <= m |L^{-1}|_F^2``. Where that bound is at most
    ``_ONE_PASS_COND2`` for every sample (the common case; always for ``m = 1``), one pass
    of normal equations, ``v - J^T S L^{-T} L^{-1} S J v``, is as accurate as Gram-Schmidt
    and reads the big rows three times. Otherwise :func:`_cholesky_qr2` projects, and
    Gram-Schmidt takes the samples whose rows are nearly dependent (or, as it decides, are).

    Returns ``None`` where the per-call test of :meth:`ProjectedVectorField._basis` (``h``
    finite, row norms in ``(tiny, inf)``) fails somewhere, or no sample suits CholeskyQR2:
    the caller then takes the Gram-Schmidt path with its checks.

    Shapes:
        jac: ``(..., m, n)``; v: ``(..., n)``; h: ``(..., m)``; returns ``(..., n)``.
    """
    m, n = jac.shape[-2:]
    count = v[..., 0].numel()
    rows, vec = jac.reshape(count, m, n), v.reshape(count, 1, n)  # (S, m, n), (S, 1, n)
    gram = rows @ rows.mT  # (S, m, m)
    sq = gram.diagonal(dim1=-2, dim2=-1)  # squared row norms, (S, m)
    finfo = torch.finfo(jac.dtype)
    norms = sq.sqrt()
    regular = ((norms > finfo.tiny) & (norms < math.inf)).all()
    if not bool(regular if h is None else regular & torch.isfinite(h).all()):
        return None
    normal = sq >= finfo.tiny  # a subnormal |J_i|^2 has lost precision: Gram-Schmidt
    scale = torch.where(normal, sq, 1.0).rsqrt().unsqueeze(-1)  # (S, m, 1)
    unit_gram = gram * scale * scale.mT
    low, info = torch.linalg.cholesky_ex(unit_gram)
    factored = (info == 0) & normal.all(-1)
    pivot = torch.where(factored, low.diagonal(dim1=-2, dim2=-1).amin(-1), 0.0)  # (S,)
    eye = torch.eye(m, dtype=jac.dtype, device=jac.device)
    inv = torch.linalg.solve_triangular(low, eye, upper=False)  # L^{-1}
    one_pass = (pivot > rel) & (m * inv.square().sum((-2, -1)) <= _ONE_PASS_COND2)
    if bool(one_pass.all()):
        coeff = scale * (inv.mT @ (inv @ (scale * (rows @ vec.mT))))  # (S, m, 1)
        return torch.baddbmm(vec, coeff.mT, rows, alpha=-1).reshape(v.shape)
    ok = pivot > max(finfo.eps ** 0.25, rel)  # CholeskyQR2 is accurate; the row is kept
    if not bool(ok.any()):
        return None
    out = _cholesky_qr2(rows, vec, unit_gram, scale, ok)
    if out is None:
        return None
    if not bool(ok.all()):
        bad = torch.nonzero(~ok).squeeze(-1)
        q, _ = _gram_schmidt(rows[bad], rel)
        out = out.index_put((bad,), _remove_components(q, vec[bad, 0]))
    return out.reshape(v.shape)


def _cholesky_qr2(rows: torch.Tensor, vec: torch.Tensor, unit_gram: torch.Tensor,
                  scale: torch.Tensor, ok: torch.Tensor) -> torch.Tensor | None:
    """``vec`` projected by CholeskyQR2 where ``ok``; arbitrary (finite) values elsewhere.

    ``Q1 = L^{-1} S J`` has orthonormal rows up to ``eps * cond(S J)^2``; the projector onto
    its rows, ``Q1^T (Q1 Q1^T)^{-1} Q1``, applies the second Cholesky factor through a solve
    (CholeskyQR2 without forming ``Q2``) and is orthogonal to working precision while
    ``cond(S J) << eps^{-1/2}``. Where not ``ok`` the identity is factored instead, so that
    values and gradients stay finite. ``None`` if the second factorisation fails (not
    expected: ``Q1 Q1^T`` is then close to the identity).

    Shapes:
        rows: ``(S, m, n)``; vec: ``(S, 1, n)``; unit_gram: ``(S, m, m)``; scale:
        ``(S, m, 1)``; ok: ``(S,)``; returns ``(S, n)``.
    """
    m = rows.shape[-2]
    eye = torch.eye(m, dtype=rows.dtype, device=rows.device)
    keep = ok[:, None, None]
    low = torch.linalg.cholesky(torch.where(keep, unit_gram, eye))
    # Forward substitution on J, not L^{-1} times J: each row of Q1 is then a combination of
    # the rows of J up to eps, not eps * cond (which would tilt the projected subspace by that).
    # Row by row, as torch's triangular solve is slow for (m, n) right-hand sides.
    low = low / scale  # factor of J J^T itself
    q1_rows: list[torch.Tensor] = []
    for i in range(m):
        rest = rows[:, i]  # (S, n)
        for k in range(i):
            rest = torch.addcmul(rest, low[:, i, k:k + 1], q1_rows[k], value=-1)
        q1_rows.append(rest / low[:, i, i:i + 1])
    q1 = torch.stack(q1_rows, -2)  # (S, m, n)
    low1, info1 = torch.linalg.cholesky_ex(torch.where(keep, q1 @ q1.mT, eye))
    if bool(info1.any()):
        return None
    coeff = torch.cholesky_solve(q1 @ vec.mT, low1)  # (S, m, 1)
    return torch.baddbmm(vec, coeff.mT, q1, alpha=-1).squeeze(-2)


def tangent_project(jac: torch.Tensor, v: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """Remove from ``v`` its component in the row space of ``jac``.

    Equal to ``v - J^T (J J^T)^+ J v`` with a rank cutoff (see :func:`orthonormal_rows`).

    Raises:
        ValueError: ``jac`` has NaN or infinite entries.

    Shapes:
        jac: ``(..., m, n)``; v: ``(..., n)``; returns ``(..., n)``.
    """
    return _remove_components(orthonormal_rows(jac, eps), v)


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
        # The first call also audits zero rows of J (a piecewise-constant H, e.g. rounded).
        h, jac = invariant_jacobian(self.invariants, x, name=self._fn_name, create_graph=keep,
                                    m=stacked_rows(self.invariants, self._m),
                                    audit=self._m is None)
        self._m = h.shape[-1]
        return h, jac

    def _check_finite(self, x: torch.Tensor, h: torch.Tensor, jac: torch.Tensor) -> None:
        """Raise, naming the function and the states, where its value or gradient is not finite.

        Called only on the slow path, after the per-call test found something irregular.
        """
        batch = x.shape[:-1]
        bad_h = ~torch.isfinite(h).all(-1)
        bad_j = ~torch.isfinite(jac).reshape(*batch, -1).all(-1)
        bad = bad_h | bad_j
        if not bool(bad.any()):
            return
        name = self._fn_name
        first = tuple(int(i) for i in torch.nonzero(bad)[0]) if bad.dim() else ()
        state = [float(f"{float(v):.4g}") for v in x[first].detach().reshape(-1)]
        if bool(bad_h[first]):
            what = f"`{name}(x)` = {[float(v) for v in h[first].detach().reshape(-1)]}"
        else:
            what = f"d{name}/dx = {[float(v) for v in jac[first].detach().reshape(-1)]}"
        where = (f"at {int(bad.sum())} of {bad.numel()} state(s), indices "
                 f"{format_indices(bad)}" if bad.dim() else "at the state")
        msg = (f"`{name}` is not finite {where} where the field was evaluated: {what} at x = "
               f"{state}. The projection needs finite values and gradients of `{name}` "
               "wherever the field is evaluated: check those states (finite? inside the domain "
               f"of `{name}`, e.g. of a log, a sqrt or a division?), or make `{name}` finite there")
        raise ValueError(msg)


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

    Raises:
        TypeError: ``f`` or ``H`` is not callable; at call time, ``x`` is not a floating-point
            tensor, or ``f``/``H`` does not return a floating-point one.
        ValueError: at call time, ``m >= n``, ``f(x)`` has the wrong shape, ``H`` or ``dH/dx``
            is NaN or infinite at a state, or ``H`` is not differentiable in ``x`` (not
            connected to it by autograd: ``.detach()``, NumPy; or piecewise constant: rounded),
            which would otherwise switch the projection off without a word.

    Critical points:
        Where ``grad H_i = 0`` (exactly, or below the smallest normal number) the direction
        does not exist and ``f`` is left alone along it. Near such a point the level sets of
        ``H`` shrink to it and the projected field, which keeps the speed of ``f`` on ever
        smaller level sets, turns ever faster: it is stiff, and an adaptive solver's steps
        shrink with the distance to the point (from ``H = |x|^2`` at ``|x0| = 1e-4``,
        thousands of evaluations where the unprojected field takes some 30; from ``x0 = 0``
        plain ``odeint``, which has no step limit, may not finish). The first evaluation at a
        critical point warns (``RuntimeWarning``, once per field). Start away from critical
        points, or bound the work: ``odeint_projected(..., max_steps=...)``, or
        ``odeint(..., options={"max_num_steps": ...})`` for adaptive solvers.

    Cost:
        The checks on every call are one test on values already computed (the row norms of
        ``J`` and ``H(x)``): finite, and no row zero. Only when it fails does a slower path
        find which: an error for NaN/inf, a rescaled orthonormalisation for rows whose squared
        norm overflows (``|grad H| > sqrt(finfo.max)``), the warning for a critical point.
        For ``n >= 256`` (float32/float64) the projection goes through the ``(m, m)`` Gram
        matrix ``J J^T`` (Cholesky; CholeskyQR2 where the gradients are nearly parallel;
        Gram-Schmidt per state where they are nearly dependent), which agrees with
        Gram-Schmidt to ``eps * cond`` and reads the ``(..., m, n)`` rows a few times instead
        of a dozen; below, Gram-Schmidt exactly as in earlier versions.

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
        self._warned_critical = False

    def project(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Project ``v`` onto the tangent space of the level set of ``H`` through ``x``.

        Shapes:
            x, v: ``(..., n)``; returns ``(..., n)``.
        """
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            msg = f"`v` must be a tensor of the shape of `x`, {tuple(x.shape)}; got {got}"
            raise ValueError(msg)
        h, jac = self._jacobian(x)
        return self._project(x, h, jac, v)

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the projected field at time ``t`` and states ``x``."""
        h, jac = self._jacobian(x)
        v = call_field(self.f, self._arity, t, x, "f")
        return self._project(x, h, jac, v)

    def _project(self, x: torch.Tensor, h: torch.Tensor, jac: torch.Tensor,
                 v: torch.Tensor) -> torch.Tensor:
        """``v`` projected: through ``J J^T`` for large ``n``, else (or irregular) Gram-Schmidt."""
        if x.shape[-1] >= _GRAM_MIN_N and jac.dtype in (torch.float32, torch.float64):
            out = _gram_project(jac, v, _rank_cutoff(jac.dtype, self.eps), h)
            if out is not None:
                return out
        return _remove_components(self._basis(x, h, jac), v)

    def _basis(self, x: torch.Tensor, h: torch.Tensor, jac: torch.Tensor) -> torch.Tensor:
        """Orthonormal rows of ``J``, with the one per-call test of ``H`` and ``J``."""
        q, norms = _gram_schmidt(jac, _rank_cutoff(jac.dtype, self.eps))
        tiny = torch.finfo(norms.dtype).tiny
        # NaN fails both comparisons; a row norm of inf is an overflow or an inf entry.
        regular = ((norms > tiny) & (norms < math.inf)).all() & torch.isfinite(h).all()
        if not bool(regular):
            q = self._irregular(x, h, jac, q, norms)
        return q

    def _irregular(self, x: torch.Tensor, h: torch.Tensor, jac: torch.Tensor, q: torch.Tensor,
                   norms: torch.Tensor) -> torch.Tensor:
        """The slow path: raise for NaN/inf, redo overflowed rows, warn at a critical point."""
        self._check_finite(x, h, jac)
        if not bool(torch.isfinite(norms).all()):
            q = _rescaled_rows(jac, self.eps, q, norms)
        critical = (norms <= torch.finfo(norms.dtype).tiny).any(-1)
        if bool(critical.any()) and not self._warned_critical:
            self._warned_critical = True
            where = (f"{int(critical.sum())} of {critical.numel()} state(s), indices "
                     f"{format_indices(critical)}" if critical.dim() else "the state")
            msg = (f"ProjectedVectorField: dH/dx vanishes at {where}: a critical point of `H`, "
                   "where that direction is left unprojected. Near it the level sets of `H` "
                   "shrink to a point and the projected field turns ever faster (it is stiff): "
                   "an adaptive solver takes ever smaller steps, and plain `odeint` (no step "
                   "limit) may run for very long. Start away from critical points of `H`, or "
                   "bound the work with `odeint_projected(..., max_steps=...)` or "
                   "`odeint(..., options={'max_num_steps': ...})`. (Shown once per field.)")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return q

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
        TypeError: ``f`` or ``V`` is not callable; at call time, ``x`` is not a floating-point
            tensor or ``f``/``V`` does not return one.
        ValueError: ``alpha`` is negative or not finite; at call time, ``V`` returns more than
            one value per state, ``f(x)`` has the wrong shape, ``V`` or ``grad V`` is NaN or
            infinite at a state, or ``V`` is not differentiable in ``x`` (see
            :class:`ProjectedVectorField`). A ``|grad V|`` too large to square is handled by
            rescaling, on a slow path taken only when the one per-call test finds it.

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
        f = call_field(self.f, self._arity, t, x, "f")
        norm = torch.linalg.vector_norm(grad, dim=-1, keepdim=True)
        # One test per call on values already computed: NaN/inf in V or grad V, or |g| overflow.
        if not bool(torch.isfinite(norm).all() & torch.isfinite(v).all()):
            self._check_finite(x, v, grad)  # raises for NaN/inf; what is left overflowed
            overflow = ~torch.isfinite(norm)
            scale = grad.detach().abs().amax(-1, keepdim=True)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            grad_s = grad / scale
            rescaled = self._correct(v, grad_s, f, torch.linalg.vector_norm(
                grad_s, dim=-1, keepdim=True), scale)
            return torch.where(overflow, rescaled, self._correct(v, grad, f, norm))
        return self._correct(v, grad, f, norm)

    def _correct(self, v: torch.Tensor, grad: torch.Tensor, f: torch.Tensor, norm: torch.Tensor,
                 scale: torch.Tensor | None = None) -> torch.Tensor:
        """The correction of ``f`` given ``V``, ``grad V`` and ``|grad V|`` at the same states.

        ``scale``, when given, is the factor ``grad`` (and so ``norm``) was divided by to keep
        ``|grad V|`` representable.

        Shapes:
            v: ``(..., 1)``; grad: ``(..., n)``; f: ``(..., n)``; norm, scale: ``(..., 1)``;
            returns ``(..., n)``.
        """
        size = norm if scale is None else norm * scale
        exists = size > torch.finfo(norm.dtype).tiny ** 0.5  # |g|^2 is a normal number
        safe = torch.where(exists, norm, torch.ones_like(norm))
        unit = torch.where(exists, grad / safe, 0.0)
        # Excess decay rate of V along f, in units of |g|: <u, f> + alpha V / |g|.
        rate = self.alpha * v / safe if scale is None else self.alpha * v / scale / safe
        excess = (unit * f).sum(-1, keepdim=True) + torch.where(exists, rate, 0.0)
        return f - unit * torch.relu(excess)

    def _jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v, jac = super()._jacobian(x)
        if v.shape[-1] != 1:
            msg = (f"`V` must return one value per state, shape (...,) or (..., 1); got "
                   f"{v.shape[-1]} values (shape {tuple(v.shape)})")
            raise ValueError(msg)
        return v, jac.squeeze(-2)
