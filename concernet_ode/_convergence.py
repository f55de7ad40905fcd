"""Why a Newton projection failed: the error type and the diagnosis of failed samples.

:func:`~concernet_ode.project_to_level_set` and :func:`~concernet_ode.odeint_projected` call
:func:`_report_failure` only when some sample did not converge; the causes (non-finite input,
an ``H`` of lower precision than the states, an unstable solver step, a critical point, too
few iterations, an unreachable level) are looked for then, so the common path pays nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ._jacobian import (
    evaluate_invariants,
    format_indices,
    invariant_jacobian,
)

__all__ = ["ConvergenceError", "report_failure"]

# A failed projection after a solver step that moved H by more than this fraction of
# max(1, |target|) is blamed on the step (an accurate step moves H by about its tolerance).
_LARGE_STEP = 0.01


class ConvergenceError(RuntimeError):
    """Raised when the Newton projection cannot reach the requested level set."""


def report_failure(err: torch.Tensor, ok: torch.Tensor, iters: torch.Tensor,
                    tol: torch.Tensor, on_failure: str, *, x: torch.Tensor, y: torch.Tensor,
                    H: Callable, target: torch.Tensor, newton: Callable,
                    piece: tuple | None = None) -> None:
    """Raise or warn where a sample did not converge, naming the samples and the cause.

    ``x`` are the states Newton started from, ``y`` its best iterates; ``piece``, the times
    ``(t0, t1)`` of the solver step that led there (``t1`` None: output times inside one
    step), in ``odeint_projected``; ``newton``, the iteration itself, retried from ``y`` to
    tell a slow convergence from a stalled one. The causes are looked for only here.
    """
    if bool(ok.all()):
        return
    when = ""
    if piece is not None:
        t0, t1 = piece
        when = (f" after the solver's step from t = {float(t0):.6g} to t = {float(t1):.6g}"
                if t1 is not None else f" within a solver step after t = {float(t0):.6g}")
    bad = ~ok
    worst = torch.where(bad, err, -torch.inf).argmax()
    # tol may broadcast against the states (one tolerance for a stack of them)
    tol = tol.expand(*err.shape, tol.shape[-1])
    flat_tol = tol.reshape(-1, tol.shape[-1])
    causes = _failure_causes(bad, x, y, H, target.expand(*err.shape, target.shape[-1]), err,
                             iters, tol, in_solver=piece is not None, newton=newton)
    msg = (f"Newton projection onto the level set did not converge for {int(bad.sum())} of "
           f"{ok.numel()} sample(s){when}: worst residual max|H - target| = "
           f"{float(err.reshape(-1)[worst]):.3e} after {int(iters.reshape(-1)[worst])} "
           f"iteration(s), tolerance {float(flat_tol[worst].min()):.3e}. {causes}")
    if on_failure == "raise":
        raise ConvergenceError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _failure_causes(bad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, H: Callable,
                    target: torch.Tensor, err: torch.Tensor, iters: torch.Tensor,
                    tol: torch.Tensor, *, in_solver: bool, newton: Callable) -> str:
    """Text naming, for each group of failed samples, what went wrong, first cause first.

    ``x`` are the states Newton started from, ``y`` its best iterates.
    """
    parts: list[str] = []
    left = bad.clone()

    def take(mask: torch.Tensor, text: Callable[[torch.Tensor], str]) -> None:
        nonlocal left
        mask = mask & left
        if bool(mask.any()):
            label = f"sample(s) {format_indices(mask)}: " if mask.dim() else ""
            parts.append(label + text(mask))
            left = left & ~mask

    with torch.no_grad():
        x, y, target = x.detach(), y.detach(), target.detach()
        scale = target.abs().clamp_min(1.0).amax(-1)
        take(~torch.isfinite(target).all(-1),
             lambda _: "`target` is not finite (NaN or inf), so there is no level to reach; "
                       "check `target`")
        take(~torch.isfinite(x).all(-1), lambda _: (
            "the solver's state is not finite (NaN or inf) after the step: the step is too "
            "large for the field (unstable), or the field is not finite there; reduce the step "
            "size (options={'step_size': ...}), add `substeps`, or use an adaptive method"
            if in_solver else "`x` is not finite (NaN or inf): there is nothing to project; "
                              "check `x`"))
        if bool(left.any()):
            h = evaluate_invariants(H, x)
            start = (h - target).abs().amax(-1)
            take(~torch.isfinite(h).all(-1),
                 lambda _: "`H(x)` is not finite (NaN or inf) at the state: check that the "
                           "state lies in the domain of `H` (a log, a sqrt, a division?)")
            low = _lower_precision(evaluate_invariants(H, y), x, err, scale)
            take(low, lambda mask: _precision_text(h.dtype, x.dtype, err, tol, scale, mask, True))
            if in_solver:  # an accurate step moves H by about the solver's tolerance
                take(start > _LARGE_STEP * scale, lambda mask: (
                    f"the solver step moved `H` off its level by up to "
                    f"{float(start[mask].max()):.3g} (over {_LARGE_STEP:.0%} of max(1, "
                    "|target|)), too far for Newton to bring it back: the step is too large "
                    "for the field (unstable or inaccurate); reduce the step size "
                    "(options={'step_size': ...}), add `substeps`, or use an adaptive method"))
            take(_singular(H, x), lambda _: (
                "dH/dx is zero or not finite at the state (a critical point of `H`): Newton "
                "has no direction to move along; start from another state"))
            take(_still_falling(left, y, H, target, tol, err, newton), lambda mask: (
                f"the residual was still falling after {int(iters[mask].max())} iteration(s) "
                f"(from {float(start[mask].max()):.3g} to {float(err[mask].max()):.3g}): the "
                "state is far from the level set; raise `max_iter`"))
            # Stalled, close to the level set, far above the states' resolution.
            near = err <= 1e3 * torch.finfo(torch.float32).eps * scale
            if x.dtype == torch.float64:
                take(near, lambda mask: _precision_text(h.dtype, x.dtype, err, tol, scale, mask,
                                                        False))
        take(left, lambda _: (
            "the residual stopped decreasing: the level set may be unreachable from the state "
            "(e.g. a negative target for a sum of squares) or dH/dx nearly singular there; "
            "check `target`, or raise `tol` / `max_iter`"))
    return "Cause: " + "; ".join(parts)


def _lower_precision(h: torch.Tensor, x: torch.Tensor, err: torch.Tensor,
                     scale: torch.Tensor) -> torch.Tensor:
    """Samples where ``H`` evidently computes in a lower precision than ``x``."""
    if torch.finfo(h.dtype).eps > torch.finfo(x.dtype).eps:
        return torch.ones_like(err, dtype=torch.bool)
    if x.dtype != torch.float64:
        return torch.zeros_like(err, dtype=torch.bool)
    # Values that are all float32 numbers, and a residual stuck near float32's resolution:
    # H casts the state down and its result back up (chance for a float64 H: ~1e-9 a value).
    single = (h == h.float().to(h.dtype)).all(-1)
    return single & (err <= 1e3 * torch.finfo(torch.float32).eps * scale)


def _precision_text(h_dtype: torch.dtype, x_dtype: torch.dtype, err: torch.Tensor,
                    tol: torch.Tensor, scale: torch.Tensor, mask: torch.Tensor,
                    evident: bool) -> str:
    low = h_dtype if torch.finfo(h_dtype).eps > torch.finfo(x_dtype).eps else torch.float32
    floor = torch.finfo(low).eps * float(scale[mask].max())
    why = (f"`H` computes in {low} for {x_dtype} states (its values are {low} numbers)"
           if evident else
           f"`H` is evaluated less precisely than the states (e.g. in {low} inside, a "
           "`.float()`, or noise)")
    return (f"{why}: the residual stalls at {float(err[mask].max()):.1e}, near {low}'s "
            f"resolution {floor:.1e} and above the tolerance {float(tol[mask].min()):.1e} "
            f"meant for {x_dtype}; compute `H` in {x_dtype} (e.g. `H.to({x_dtype})`, no "
            f"`.float()` inside it), or pass `tol` >= {4 * floor:.0e}")


def _still_falling(mask: torch.Tensor, y: torch.Tensor, H: Callable, target: torch.Tensor,
                   tol: torch.Tensor, err: torch.Tensor, newton: Callable) -> torch.Tensor:
    """Samples whose residual a few more Newton iterations from ``y`` still halve."""
    out = torch.zeros_like(mask)
    if not bool(mask.any()):
        return out
    try:
        _, _, more, _ = newton(y[mask], H, target[mask], tol[mask], 5)
    except (TypeError, ValueError, RuntimeError):
        return out
    out[mask] = more < 0.5 * err[mask]
    return out


def _singular(H: Callable, x: torch.Tensor) -> torch.Tensor:
    """Samples where ``dH/dx`` has a zero row or a NaN/inf entry (none if it can't be taken)."""
    try:
        _, jac = invariant_jacobian(H, x, create_graph=False)
    except (TypeError, ValueError, RuntimeError):  # e.g. an H that autograd cannot follow
        return torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
    return (jac == 0).all(-1).any(-1) | ~torch.isfinite(jac).flatten(-2).all(-1)
