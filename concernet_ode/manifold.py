"""Exact conservation in discrete time: Newton projection onto level sets of invariants.

:class:`~concernet_ode.ProjectedVectorField` makes ``dH/dt = 0`` for the exact flow, but a
solver's finite steps still drift by its truncation error. The standard remedy of geometric
numerical integration (Hairer, Lubich & Wanner, *Geometric Numerical Integration*, sec. IV.4)
is to project the state back onto ``{x : H(x) = H(x0)}`` after each step by a simplified
Newton iteration, so that the invariants hold to a tolerance rather than to a step size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchdiffeq import odeint

from ._checks import finite_states, matching_dtype, positive_int, solver_tolerance
from ._convergence import ConvergenceError, report_failure
from ._jacobian import (
    call_field,
    check_callable,
    check_state,
    difference_jacobian,
    evaluate_invariants,
    field_arity,
    format_indices,
    invariant_jacobian,
    is_closed_form,
    stacked_rows,
)
from ._torchdiffeq_stepper import make_stepper

__all__ = ["ConvergenceError", "ProjectionInfo", "odeint_projected", "project_to_level_set"]

_ON_FAILURE = ("raise", "warn")
_JACOBIAN = ("auto", "autograd", "differences")
# ``jacobian="auto"`` takes differences where the stacked batch (n + 1 copies of the states)
# has at most this many elements: there one call of a closed-form ``H`` costs mostly its fixed
# per-operation overhead, less than autograd's forward and backward pass; for larger batches
# autograd wins (``python benchmarks/jacobian_cost.py``).
_DIFFERENCES_MAX_NUMEL = 4096
_ODEINT_KWARGS = ("atol", "method", "options", "rtol")
_SLOW = 0.1  # a residual contraction worse than this re-evaluates J
_ADAPTIVE = ("adaptive_heun", "bosh3", "dopri5", "dopri8", "fehlberg2")


@dataclass(frozen=True)
class ProjectionInfo:
    """Per-projection diagnostics returned by ``odeint_projected(..., return_info=True)``.

    Attributes:
        times: the times at which the state was projected, ``(K,)`` with
            ``K = (T - 1) * substeps`` (with ``interpolate=True``, the ends of solver steps
            that passed several of these times are projected too, and not listed).
        iterations: Newton iterations each trajectory needed at each projection, ``(K, ...)``
            (0 where the state was already within tolerance).
        residuals: ``max_i |H_i(x) - target_i|`` per trajectory after each projection,
            ``(K, ...)``.
    """

    times: torch.Tensor
    iterations: torch.Tensor
    residuals: torch.Tensor


def _check_tol(tol: object) -> None:
    ok = isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 < tol < math.inf
    if tol is not None and not ok:
        msg = f"`tol` must be a positive finite float or None (default from the dtype), got {tol!r}"
        raise ValueError(msg)


def _tolerance(target: torch.Tensor, tol: float | None) -> torch.Tensor:
    """Per-invariant absolute tolerance: ``tol``, or ``eps^(4/5) * max(1, |target|)``."""
    if tol is not None:
        return torch.full_like(target, float(tol)).detach()
    eps = torch.finfo(target.dtype).eps
    return (eps ** 0.8 * target.detach().abs().clamp_min(1.0)).detach()


def _newton_operator(jac: torch.Tensor) -> torch.Tensor:
    """``P = J^T (J J^T)^+``, ``(..., n, m)``, so that a Newton correction is ``P r``.

    ``J J^T`` is factored once per Jacobian (Hairer IV.4, eq. (4.5)): for ``m = 1`` a division,
    otherwise Cholesky, with a pseudo-inverse (by ``eigh``) where ``J`` is rank-deficient
    (dependent invariants, a critical point), so those directions are left alone.
    """
    m = jac.shape[-2]
    jac_t = jac.transpose(-1, -2)
    gram = jac @ jac_t
    if not bool(torch.isfinite(gram).all()):
        return _guarded_operator(jac)
    if m == 1:  # no linear algebra needed: G is a scalar per sample
        g = gram[..., 0, 0]
        # Each sample on its own (as the pseudo-inverse does for m > 1): singular only where
        # |J|^2 is zero or subnormal. A cutoff relative to the batch's largest |J|^2 let one
        # far or NaN sample stop every other one from moving.
        ok = g > torch.finfo(g.dtype).tiny
        inv = torch.where(ok, 1.0 / torch.where(ok, g, torch.ones_like(g)), 0.0)
        return jac_t * inv[..., None, None]
    chol, info = torch.linalg.cholesky_ex(gram)
    if not bool(info.any()):
        return torch.cholesky_solve(jac, chol).transpose(-1, -2)
    pinv = torch.linalg.pinv(gram, hermitian=True, rtol=m * torch.finfo(jac.dtype).eps)
    return jac_t @ pinv


def _guarded_operator(jac: torch.Tensor) -> torch.Tensor:
    """:func:`_newton_operator` where some sample's ``J J^T`` is not finite.

    Samples whose ``J`` has NaN/inf entries get no step (they fail, and the failure report
    says why); samples whose ``J`` is finite but too large to square (``|J| > sqrt(max)``)
    get the operator of ``J`` with each row scaled to max-abs 1, ``J^+ = Jhat^+ D^{-1}``.
    The other samples' operator is computed as usual, so it keeps its bits.

    Shapes:
        jac: ``(..., m, n)``; returns ``(..., n, m)``.
    """
    finite = torch.isfinite(jac).flatten(-2).all(-1)  # (...)
    safe = torch.where(finite[..., None, None], jac, 0.0)
    scale = safe.detach().abs().amax(-1, keepdim=True)  # (..., m, 1)
    huge = finite & (scale > torch.finfo(jac.dtype).max ** 0.5 / jac.shape[-1]).any(-2)[..., 0]
    plain = _newton_operator(torch.where(huge[..., None, None], 0.0, safe))
    if not bool(huge.any()):
        return plain
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scaled = _newton_operator(safe / scale) / scale.transpose(-1, -2)
    return torch.where(huge[..., None, None], scaled, plain)


def _jacobian_rule(H: Callable, x: torch.Tensor, keep: bool, m: int | None,
                   choice: str) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``y -> (H(y), dH/dy)`` by the method ``choice`` names (see ``project_to_level_set``)."""
    if choice == "auto":
        small = (x.shape[-1] + 1) * x.numel() <= _DIFFERENCES_MAX_NUMEL
        choice = "differences" if (small and is_closed_form(H) and not keep) else "autograd"
    if choice == "autograd":
        return lambda y: invariant_jacobian(H, y, create_graph=keep, m=m)
    if keep:  # the values carry the graph; J is a constant of the iteration
        return lambda y: (evaluate_invariants(H, y), difference_jacobian(H, y)[1])
    return lambda y: difference_jacobian(H, y)


def _newton(x: torch.Tensor, H: Callable, target: torch.Tensor, tol: torch.Tensor,
            max_iter: int, *, eager_jacobian: bool = False, jacobian: str = "auto",
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Simplified Newton iteration; returns (best x, iterations, residual, converged).

    A sample's progress is measured by ``max_i |H_i - target_i| / tol_i`` (converged at <= 1;
    NaN never converges); the residual returned is the absolute ``max_i |H_i - target_i|`` of
    its best iterate. The loop avoids per-sample masking while every sample is still moving
    and improving (the usual case: one or two iterations), since its cost is mostly the
    number of tensor operations, not their size.

    ``J`` is needed only if some sample is off the level set. By default ``H`` is evaluated
    alone first; ``eager_jacobian=True`` takes ``H`` and ``J`` in one go, which saves an
    evaluation when a correction is expected (a caller projecting step after step knows).
    """
    keep = _needs_graph(x, H, target)
    take_jacobian = _jacobian_rule(H, x, keep, stacked_rows(H, target.shape[-1]), jacobian)
    jac = None
    if eager_jacobian:
        h, jac = take_jacobian(x)
    else:
        with torch.set_grad_enabled(keep):
            h = evaluate_invariants(H, x)
    resid = h - target
    err = resid.detach().abs()
    ratio = (err / tol).amax(-1)
    active = ~(ratio <= 1.0)
    iters = torch.zeros(x.shape[:-1], dtype=torch.int64, device=x.device)
    n_active = int(active.sum())
    if n_active == 0:  # ``x`` itself comes back: callers may test identity
        return x, iters, err.amax(-1), ~active
    best_x, best_ratio, best_resid = x, ratio, resid
    if jac is None:
        _, jac = take_jacobian(x)
    op = _newton_operator(jac)
    for _ in range(max_iter):
        step = (op @ resid.unsqueeze(-1)).squeeze(-1)
        x = x - step if n_active == active.numel() else torch.where(active[..., None], x - step, x)
        iters = iters + active
        resid = evaluate_invariants(H, x) - target
        err = resid.detach().abs()
        prev, ratio = ratio, (err / tol).amax(-1)
        done = ratio <= 1.0
        if bool(done.all()):
            # Every sample converged, so each one's best iterate is this one: a sample that
            # moved improved on a ratio > 1, one that had converged before did not move.
            return x, iters, err.amax(-1), done
        better = ratio < best_ratio
        if bool(better.all()):
            best_x, best_ratio, best_resid = x, ratio, resid
        else:
            best_x = torch.where(better[..., None], x, best_x)
            best_ratio = torch.where(better, ratio, best_ratio)
            best_resid = torch.where(better[..., None], resid, best_resid)
        active = ~done
        n_active = int(active.sum())
        if bool((active & (ratio > _SLOW * prev)).any()):
            # Far from the level set J(x0) is a poor model: refresh it (full Newton step).
            _, jac = take_jacobian(x)
            op = _newton_operator(jac)
    return best_x, iters, best_resid.detach().abs().amax(-1), best_ratio <= 1.0


def _needs_graph(x: torch.Tensor, H: Callable, target: torch.Tensor) -> bool:
    """Whether ``J`` must keep its graph: grad mode on and something to differentiate."""
    if not torch.is_grad_enabled():
        return False
    if x.requires_grad or target.requires_grad:
        return True
    if isinstance(H, torch.nn.Module):
        return any(p.requires_grad for p in H.parameters())
    return True  # a plain function may close over trainable tensors


def _prepare_target(x: torch.Tensor, H: Callable, target: object) -> torch.Tensor:
    with torch.no_grad():
        m = evaluate_invariants(H, x.detach()).shape[-1]
    if m > x.shape[-1]:
        msg = (f"`H` returns m = {m} invariants for a state of dimension n = {x.shape[-1]}; a "
               "level set can be reached only for m <= n")
        raise ValueError(msg)
    tgt = torch.as_tensor(target, dtype=x.dtype, device=x.device)
    shape = (*x.shape[:-1], m)
    try:
        return tgt.expand(shape)
    except RuntimeError:
        msg = (f"`target` must broadcast to the invariants' shape (..., m) = {shape}, got shape "
               f"{tuple(tgt.shape)}")
        raise ValueError(msg) from None


def project_to_level_set(x: torch.Tensor, H: Callable, target: torch.Tensor | float, *,
                         tol: float | None = None, max_iter: int = 20,
                         on_failure: str = "raise", jacobian: str = "auto") -> torch.Tensor:
    """Project states onto the level set ``{y : H(y) = target}`` by simplified Newton.

    Implements the standard projection of Hairer, Lubich & Wanner (*Geometric Numerical
    Integration*, sec. IV.4): with ``J = dH/dx`` evaluated once at the unprojected ``x`` and
    ``J J^T`` factored once (Cholesky; a pseudo-inverse where ``J`` is rank-deficient),
    iterate

        x_{k+1} = x_k - J^T lambda_k,     (J J^T) lambda_k = H(x_k) - target,

    until ``max_i |H_i(x) - target_i| <= tol`` for each sample. Samples that have converged
    stop moving. For ``m = 1`` the "factorisation" is a division. Should an iteration reduce
    the residual by less than a factor of 10 (a large correction, far from the level set),
    ``J`` is re-evaluated at the current iterate, so large projections still converge fast.

    The iteration is differentiable by unrolled autograd: with gradients enabled, gradients
    flow to ``x``, ``target`` and the parameters of ``H`` through every iteration. ``dH/dx``
    is computed even under ``torch.no_grad()``.

    ``J`` comes from autograd or from forward differences (``H`` evaluated once on the
    ``n + 1`` stacked states ``x`` and ``x + h_j e_j``, steps as in SciPy's
    ``approx_derivative``). Since the iteration only needs ``J`` approximately (the residual
    is always that of ``H`` itself), differences converge as fast, to the same tolerance; the
    projected point differs by the Jacobian's relative error (a few ``sqrt(eps)``) times the
    correction. The default, ``"auto"``, takes differences where nothing needs gradients,
    ``H`` is not an ``nn.Module`` (a closed-form ``H``, cheap per operation) and the stacked
    batch is small (at most 4096 elements), where one call of ``H`` costs less than
    autograd's forward and backward pass: ``python benchmarks/jacobian_cost.py`` times them
    side by side. With ``"differences"`` and gradients enabled, ``J`` is a constant of the
    iteration: gradients flow through the evaluations of ``H`` but not through ``J``, so
    they miss the term of ``dJ/dx`` times the correction.

    Each sample is decided on its own: whether its ``J`` is singular (``|J|^2`` zero or
    subnormal for ``m = 1``; the pseudo-inverse's cutoff relative to its own ``J J^T`` for
    ``m > 1``), when it has converged, and its best iterate. A NaN sample, or one far from the
    level set, leaves the others to converge as they would alone. ``J`` too large to square
    (``|J| > sqrt(finfo.max)``) is rescaled row by row first; a sample whose ``J`` is NaN or
    infinite does not move. A failure names the failing samples' indices and, per group of
    them, the cause found: a non-finite ``target`` or ``x``, ``H`` not finite at the state,
    ``H`` computed in a lower precision than ``x`` (the residual stalls near float32's
    resolution for float64 states), a critical point of ``H``, a residual still falling when
    ``max_iter`` ran out, or a level set out of reach.

    Args:
        x: states to project.
        H: the invariants, ``H(x) -> (..., m)`` or ``(...,)``, acting on each state separately.
        target: the level, broadcastable to ``(..., m)`` (a float for every sample alike).
        tol: absolute tolerance on ``|H_i(x) - target_i|``; default
            ``eps^(4/5) * max(1, |target_i|)`` with ``eps`` of ``x.dtype``.
        max_iter: the most Newton iterations.
        on_failure: ``"raise"`` a :class:`ConvergenceError`, or ``"warn"`` and return the best
            iterate of each sample.
        jacobian: how to take ``J = dH/dx``: ``"autograd"``, ``"differences"`` (forward
            differences), or ``"auto"`` (see above).

    Returns:
        The projected states, same shape, dtype and device as ``x``.

    Raises:
        ConvergenceError: a sample did not reach the tolerance within ``max_iter`` iterations,
            with ``on_failure="raise"`` (the message names the samples and the cause).
        ValueError: bad ``tol``, ``max_iter``, ``on_failure``, ``jacobian``, ``target`` shape,
            or ``m > n``.
        TypeError: ``x`` is not a floating-point tensor, ``H`` not callable or not returning
            floating-point values.

    Shapes:
        x: ``(..., n)``; target: broadcastable to ``(..., m)``; returns ``(..., n)``.

    Example:
        >>> x = torch.tensor([[1.1, 0.0], [0.0, 0.7]], dtype=torch.float64)
        >>> y = project_to_level_set(x, lambda x: x.pow(2).sum(-1), 1.0)
        >>> bool(torch.allclose(y.pow(2).sum(-1), torch.ones(2, dtype=torch.float64)))
        True
    """
    x, tgt, tol_t = _check_projection_args(x, H, target, tol, max_iter, on_failure, jacobian)
    y, iters, err, ok = _newton(x, H, tgt, tol_t, max_iter, jacobian=jacobian)
    report_failure(err, ok, iters, tol_t, on_failure, x=x, y=y, H=H, target=tgt,
                   newton=_newton)
    return y


def _check_projection_args(x: object, H: Callable, target: object, tol: object,
                           max_iter: object, on_failure: object, jacobian: object):
    check_state(x)
    check_callable(H, "H")
    matching_dtype(H, "H", x.dtype, "x")
    _check_tol(tol)
    positive_int(max_iter, "max_iter")
    if on_failure not in _ON_FAILURE:
        msg = f"`on_failure` must be one of {_ON_FAILURE}, got {on_failure!r}"
        raise ValueError(msg)
    if not isinstance(jacobian, str) or jacobian not in _JACOBIAN:
        msg = f"`jacobian` must be one of {_JACOBIAN}, got {jacobian!r}"
        raise ValueError(msg)
    tgt = _prepare_target(x, H, target)
    return x, tgt, _tolerance(tgt, tol)


class _SteppedField:
    """``f(t, x)`` for torchdiffeq that remembers the last accepted adaptive step size.

    torchdiffeq restarts its step-size selection on every call; carrying the last accepted
    step over as ``first_step`` saves the selection's evaluations and its first rejections.
    Solver callbacks of the wrapped field are forwarded; the step is recorded only with
    ``record`` (for the adaptive Runge-Kutta solvers restarted once per piece; other solvers
    would warn about an unsupported callback, and one persistent solver needs no record).
    """

    def __init__(self, f: Callable, record: bool, max_steps: int | None = None) -> None:
        self.f = f
        self.arity = field_arity(f)
        self.last_step: float | None = None
        for name in ("callback_step", "callback_reject_step"):
            if hasattr(f, name):
                setattr(self, name, getattr(f, name))
        inner = getattr(f, "callback_accept_step", None)
        if record:
            self.callback_accept_step = self._recorder(inner)
        elif inner is not None:
            self.callback_accept_step = inner
        # The step budget: torchdiffeq calls ``callback_step`` before every step (accepted or
        # rejected) of its own solvers; the count restarts at each piece (``start_piece``).
        self.max_steps = max_steps
        self.steps = 0
        self.piece: tuple[torch.Tensor | float, torch.Tensor | float] = (0.0, 0.0)
        if max_steps is not None:
            self.callback_step = self._counter(getattr(f, "callback_step", None))

    def start_piece(self, t0: torch.Tensor, t1: torch.Tensor) -> None:
        """Restart the step count for the piece from ``t0`` to ``t1``."""
        self.steps = 0
        self.piece = (t0, t1)  # read as floats only for an error message

    def _counter(self, inner: Callable | None) -> Callable:
        def count(t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
            self.steps += 1
            if self.steps > self.max_steps:
                msg = (f"odeint_projected: more than max_steps = {self.max_steps} solver steps "
                       f"between t = {float(self.piece[0]):.6g} and t = "
                       f"{float(self.piece[1]):.6g} (now at "
                       f"t = {float(t0):.6g}, step {float(dt):.3g}). The field is stiff there: "
                       "e.g. near a critical point of `H` (dH/dx -> 0), where a projected "
                       "field turns ever faster, or the tolerances are too tight for it. Start "
                       "away from critical points of `H`, loosen rtol/atol, or raise "
                       "`max_steps` (None: no limit)")
                raise RuntimeError(msg)
            if inner is not None:
                inner(t0, y0, dt)
        return count

    def _recorder(self, inner: Callable | None) -> Callable:
        def record(t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
            self.last_step = float(dt)
            if inner is not None:
                inner(t0, y0, dt)
        return record

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return call_field(self.f, self.arity, t, x, "func")


def _check_odeint_args(func: Callable, x0: object, t: object, H: Callable, substeps: object,
                       max_steps: object, odeint_kwargs: dict) -> None:
    check_callable(func, "func")
    if not isinstance(x0, torch.Tensor) or x0.dim() == 0:
        got = f"shape {tuple(x0.shape)}" if isinstance(x0, torch.Tensor) else type(x0).__name__
        msg = f"`x0` must be a torch.Tensor of shape (..., n), got {got}"
        raise TypeError(msg) if not isinstance(x0, torch.Tensor) else ValueError(msg)
    check_state(x0, "x0")
    finite_states(x0, "x0")
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.numel() < 1:
        got = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        msg = f"`t` must be a 1-D tensor of output times, got {got}"
        raise ValueError(msg)
    positive_int(substeps, "substeps")
    if max_steps is not None:
        positive_int(max_steps, "max_steps")
    unknown = sorted(set(odeint_kwargs) - set(_ODEINT_KWARGS))
    if unknown:
        msg = (f"odeint_projected() got unexpected keyword argument(s) {unknown}; the solver "
               f"arguments passed on to torchdiffeq.odeint are {list(_ODEINT_KWARGS)}")
        raise TypeError(msg)
    for name in ("rtol", "atol"):
        if name in odeint_kwargs:
            solver_tolerance(odeint_kwargs[name], name)
    check_callable(H, "H")
    matching_dtype(func, "func", x0.dtype, "x0")
    matching_dtype(H, "H", x0.dtype, "x0")


def odeint_projected(func: Callable, x0: torch.Tensor, t: torch.Tensor, H: Callable, *,
                     target: torch.Tensor | float | None = None, tol: float | None = None,
                     max_iter: int = 20, substeps: int = 1, interpolate: bool = False,
                     jacobian: str = "auto", return_info: bool = False,
                     max_steps: int | None = 10_000, **odeint_kwargs: object):
    """``torchdiffeq.odeint`` with a Newton projection onto ``H(x) = H(x0)`` after each step.

    Integrates from each output time to the next (split into ``substeps`` equal pieces) and
    after each piece projects the state onto the level set by :func:`project_to_level_set`
    (Hairer, Lubich & Wanner, sec. IV.4), so that every invariant holds to ``tol`` at every
    output time, independently of the step size. For torchdiffeq's adaptive Runge-Kutta
    methods (dopri5, the default, dopri8, bosh3, fehlberg2, adaptive_heun) one solver runs
    through all pieces, its steps shortened to end on each piece's end and its state replaced
    by the projected one, so step-size control carries over as in one ``odeint`` call; other
    methods (and ``min_step``, ``step_t`` or ``jump_t`` options) call
    :func:`torchdiffeq.odeint` once per piece, starting from the previous piece's last step.
    ``func`` may itself be a :class:`~concernet_ode.ProjectedVectorField` (continuous and
    discrete projection).
    Gradients flow through the solver and the projections (unrolled autograd).

    Cost: one evaluation of ``H`` per piece, plus its Jacobian and one or two more evaluations
    where a correction is needed; the field is re-evaluated after a projection only if the
    state moved by more than the solver's tolerance. Since every piece ends a solver step, an
    output grid finer than the solver's own steps costs a step per output
    (``python benchmarks/manifold_cost.py --t-end 1``), unless ``interpolate=True``: then,
    wherever the solver's next step would pass two or more pieces' ends, it takes that step
    whole, reads the states at those times off its dense-output polynomial (as
    ``torchdiffeq.odeint`` does) and projects them together with the step's end in one
    batched Newton call, going on from the projected end. The outputs still hold ``H`` to
    ``tol``; the solver's path differs from the default one by the solver's tolerance.

    Args:
        func: the vector field, ``func(t, x)`` or ``func(x)``.
        x0: initial states; returned unchanged as the first output.
        t: output times, increasing or decreasing.
        H: the invariants, ``H(x) -> (..., m)`` or ``(...,)``.
        target: the level to hold, broadcastable to ``(..., m)``; default ``H(x0)`` per
            trajectory.
        tol: absolute tolerance of the projection; default ``eps^(4/5) * max(1, |target|)``.
        max_iter: the most Newton iterations per projection.
        substeps: projections per output interval; more for coarse output grids.
        interpolate: for output grids finer than the solver's steps, interpolate within a
            step and project the interpolated states, instead of ending a step on each output
            time (adaptive Runge-Kutta methods only).
        jacobian: how the projection takes ``dH/dx``: ``"auto"``, ``"autograd"`` or
            ``"differences"`` (see :func:`project_to_level_set`).
        return_info: also return a :class:`ProjectionInfo`.
        max_steps: the most solver steps (accepted and rejected) between two projections,
            i.e. within one piece; ``None`` for no limit (and for ``method="scipy_solver"``,
            which takes no step callback). The default is far above what a non-stiff field
            needs per output interval, and stops a run that would otherwise go on for
            hours: near a critical point of ``H`` the projected field is stiff (see
            :class:`~concernet_ode.ProjectedVectorField`).
        **odeint_kwargs: ``rtol``, ``atol`` (finite, ``>= 0``), ``method``, ``options`` for
            torchdiffeq.odeint.

    Returns:
        The states at ``t``, ``(T, ..., n)``; with ``return_info=True`` the pair
        ``(states, info)``.

    Checked before any work: ``x0`` non-empty and finite (plain ``torchdiffeq.odeint`` from a
    NaN/inf or empty ``x0`` stops with "underflow in dt 0.0", or integrates NaN with a fixed
    step), ``rtol``/``atol`` finite and ``>= 0``, and ``func`` and ``H``, where they are
    ``nn.Module`` s, holding parameters of ``x0``'s dtype (float64 data, such as the systems'
    ``trajectories`` return, and a float32 network, as ``MLP`` creates, do not mix).

    Raises:
        ConvergenceError: a projection did not converge (see :func:`project_to_level_set`);
            the message gives the time and the cause, e.g. a solver step that moved ``H``
            far off its level (a step too large for the field).
        RuntimeError: more than ``max_steps`` solver steps in one piece.
        TypeError: ``func``/``H`` not callable, ``x0`` not a floating-point tensor, an
            ``nn.Module`` ``func``/``H`` with parameters of another dtype than ``x0``, unknown
            keyword argument.
        ValueError: ``x0`` empty or not finite; bad ``t``, ``target``, ``tol``, ``max_iter``,
            ``substeps``, ``max_steps``, ``rtol``, ``atol`` or ``jacobian``;
            ``interpolate=True`` with a method that is not an adaptive Runge-Kutta one.

    Shapes:
        x0: ``(..., n)``; t: ``(T,)``; returns ``(T, ..., n)``; info fields ``(K,)`` and
        ``(K, ...)`` with ``K = (T - 1) * substeps``.

    Example:
        >>> f = lambda t, x: torch.stack([2 * x[..., 1], -2 * x[..., 0]], -1)
        >>> H = lambda x: x.pow(2).sum(-1)
        >>> x0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
        >>> t = torch.linspace(0, 20, 21, dtype=torch.float64)
        >>> xs = odeint_projected(f, x0, t, H, method="rk4", options={"step_size": 0.25})
        >>> float((H(xs) - 1).abs().max()) < 1e-12
        True
    """
    _check_odeint_args(func, x0, t, H, substeps, max_steps, odeint_kwargs)
    if not isinstance(interpolate, bool):
        msg = f"`interpolate` must be True or False, got {interpolate!r}"
        raise TypeError(msg)
    level = evaluate_invariants(H, x0) if target is None else target
    _, tgt, tol_t = _check_projection_args(x0, H, level, tol, max_iter, "raise", jacobian)
    _check_level(tgt, target is None)
    user_options = dict(odeint_kwargs.pop("options", None) or {})
    odeint_kwargs.setdefault("method", "dopri5")
    times = _piece_times(t.to(x0.dtype) if not t.is_floating_point() else t, substeps)
    # torchdiffeq's SciPy wrapper takes no step callbacks (and would warn about one).
    budget = max_steps if odeint_kwargs["method"] != "scipy_solver" else None
    field = _SteppedField(func, record=False, max_steps=budget)
    stepper = make_stepper(field, x0, times, {**odeint_kwargs, "options": user_options})
    if stepper is None:  # one odeint call per piece, each starting with the last step
        if interpolate and times.shape[0] > 1:
            msg = (f"`interpolate=True` needs one of the adaptive Runge-Kutta methods {_ADAPTIVE} "
                   "without the options min_step, step_t or jump_t; got "
                   f"method={odeint_kwargs['method']!r}, options={user_options}")
            raise ValueError(msg)
        field = _SteppedField(func, record=odeint_kwargs["method"] in _ADAPTIVE,
                              max_steps=budget)
    states, log = [x0], []
    x = x0
    corrected = False  # whether the last projection moved the state: then expect another
    k, last = 0, times.shape[0] - 1
    while k < last:
        field.start_piece(times[k], times[k + 1])
        if interpolate and stepper.outputs_in_next_step(k + 1) >= 2:
            done = _project_step(stepper, k, H, tgt, tol_t, max_iter, jacobian, times[k])
            for piece, (xk, iters, err) in enumerate(done, start=k + 1):
                log.append((iters, err))
                if piece % substeps == 0:
                    states.append(xk)
            k += len(done)
            continue
        if stepper is not None:
            x = stepper.advance(k + 1)
        else:
            options = dict(user_options)
            if field.last_step is not None:
                options["first_step"] = field.last_step
            x = odeint(field, x, times[k:k + 2], options=options, **odeint_kwargs)[-1]
        unprojected = x
        x, iters, err, ok = _newton(x, H, tgt, tol_t, max_iter, eager_jacobian=corrected,
                                    jacobian=jacobian)
        corrected = x is not unprojected
        if stepper is not None and corrected:  # else the solver's state stands
            stepper.restart_from(x, stepper.times[k + 1])
        report_failure(err, ok, iters, tol_t, "raise", x=unprojected, y=x, H=H, target=tgt,
                       newton=_newton,
                        piece=(times[k], times[k + 1]))
        log.append((iters, err))
        k += 1
        if k % substeps == 0:
            states.append(x)
    out = torch.stack(states)
    if not return_info:
        return out
    batch = x0.shape[:-1]
    empty = x0.new_zeros((0, *batch), dtype=torch.int64)
    iters = torch.stack([i for i, _ in log]) if log else empty
    errs = torch.stack([e.detach() for _, e in log]) if log else x0.new_zeros((0, *batch))
    return out, ProjectionInfo(times=times[1:].detach(), iterations=iters, residuals=errs)


def _project_step(stepper, k: int, H: Callable, target: torch.Tensor, tol: torch.Tensor,
                  max_iter: int, jacobian: str, start: torch.Tensor,
                  ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One solver step of its own size across several output times, projected in one go.

    The states at the output times inside the step come from the solver's dense output; they
    and the step's end are projected together (one Newton call on the stacked batch) and the
    solver goes on from the projected end. Returns ``(state, iterations, residual)`` for each
    output time reached, in order (none if the step, shortened after a rejection, reached
    none).
    """
    j, inner, on_end, end = stepper.step_across(k + 1)
    if j == 0 and not on_end:
        return []
    batch = end.unsqueeze(0) if inner is None else torch.cat([inner, end.unsqueeze(0)])
    x, iters, err, ok = _newton(batch, H, target, tol, max_iter, eager_jacobian=True,
                                jacobian=jacobian)
    report_failure(err, ok, iters, tol, "raise", x=batch, y=x, H=H, target=target,
                   newton=_newton,
                    piece=(start, None))
    stepper.restart_from(x[-1], stepper.times[k + 1 + j] if on_end else None)
    return [(x[i], iters[i], err[i]) for i in range(j + on_end)]


def _check_level(target: torch.Tensor, from_x0: bool) -> None:
    """Raise before integrating if the level to hold is NaN/inf for some trajectory."""
    bad = ~torch.isfinite(target.detach()).all(-1)
    if not bool(bad.any()):
        return
    where = f" at sample(s) {format_indices(bad)}" if bad.dim() else ""
    msg = (f"`H(x0)` is not finite (NaN or inf){where}: there is no level to hold; check that "
           "`x0` lies in the domain of `H`, or pass `target`" if from_x0 else
           f"`target` is not finite (NaN or inf){where}: there is no level to hold; check "
           "`target`")
    raise ValueError(msg)


def _piece_times(t: torch.Tensor, substeps: int) -> torch.Tensor:
    """Output times with ``substeps - 1`` evenly spaced points inserted in each interval."""
    if substeps == 1 or t.numel() < 2:
        return t
    frac = torch.arange(substeps, dtype=t.dtype, device=t.device) / substeps
    inner = t[:-1, None] + (t[1:] - t[:-1])[:, None] * frac
    return torch.cat([inner.reshape(-1), t[-1:]])
