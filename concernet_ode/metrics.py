"""Metrics of Table 1 (trajectory error, conservation violation) and invariant fidelity."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchdiffeq import odeint

from ._jacobian import evaluate_invariants

__all__ = [
    "Evaluation",
    "conservation_violation",
    "evaluate",
    "invariant_fidelity",
    "trajectory_mse",
]


def _same_shape(pred: object, true: object) -> None:
    for name, value in (("pred", pred), ("true", true)):
        if not isinstance(value, torch.Tensor):
            msg = f"`{name}` must be a torch.Tensor, got {type(value).__name__}"
            raise TypeError(msg)
    if pred.shape != true.shape:
        msg = (f"`pred` and `true` must have the same shape, got {tuple(pred.shape)} and "
               f"{tuple(true.shape)}")
        raise ValueError(msg)


def _reduce(sq: torch.Tensor, time_dim: int | None) -> torch.Tensor:
    if time_dim is None:
        return sq.mean()
    if isinstance(time_dim, bool) or not isinstance(time_dim, int) or not (
            -sq.dim() <= time_dim < sq.dim()):
        msg = (f"`time_dim` must be None or an int in [{-sq.dim()}, {sq.dim()}) for "
               f"trajectories of shape {tuple(sq.shape)}, got {time_dim!r}")
        raise ValueError(msg)
    dims = [d for d in range(sq.dim()) if d != time_dim % sq.dim()]
    return sq.mean(dim=dims)


def trajectory_mse(pred: torch.Tensor, true: torch.Tensor, *,
                   time_dim: int | None = None) -> torch.Tensor:
    """Mean over trajectories, times and coordinates of ``(pred - true)^2`` (Table 1's MSE).

    Args:
        pred, true: predicted and reference trajectories of the same shape.
        time_dim: if given, average over every other dimension and return the curve over time.

    Shapes:
        pred, true: e.g. ``(T, B, n)`` as returned by ``odeint``; returns ``()`` or ``(T,)``.
    """
    _same_shape(pred, true)
    return _reduce((pred - true).pow(2), time_dim)


def conservation_violation(pred: torch.Tensor, true: torch.Tensor, invariants: Callable, *,
                           time_dim: int | None = None) -> torch.Tensor:
    """Mean over trajectories, times and invariants of ``(H(pred) - H(true))^2``.

    Args:
        pred, true: predicted and reference trajectories of the same shape.
        invariants: the true invariants ``H(x) -> (..., m)`` or ``(...,)``.
        time_dim: if given, return the curve over that dimension.

    Shapes:
        pred, true: ``(T, B, n)``; returns ``()`` or ``(T,)``.
    """
    _same_shape(pred, true)
    with torch.no_grad():
        diff = evaluate_invariants(invariants, pred, "invariants") - evaluate_invariants(
            invariants, true, "invariants")
    return _reduce(diff.pow(2), time_dim)


def invariant_fidelity(learned: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """R^2 of the best affine fit of each true invariant from all learned features.

    A learned invariant is defined only up to an invertible map of the true ones (for m = 1 the
    paper's Section 5.2 argues the map is affine), so each true invariant is regressed on
    ``[1, learned]`` by least squares (in float64) and the coefficient of determination of that
    fit is reported. For m = 1 this is the squared correlation; for several features it is
    the squared multiple correlation.

    Args:
        learned: learned features at ``N`` states.
        true: true invariants at the same states.

    Returns:
        ``R^2`` for each true invariant, in ``(-inf, 1]`` (1 is a perfect affine readout).

    Raises:
        TypeError: ``learned`` or ``true`` is not a tensor.
        ValueError: shapes are not ``(N, m1)`` and ``(N, m2)`` with ``N > m1 + 1``, a value
            is not finite, or a true invariant is constant (its R^2 is undefined).

    Shapes:
        learned: ``(N, m1)``; true: ``(N, m2)``; returns ``(m2,)``.
    """
    for name, value in (("learned", learned), ("true", true)):
        if not isinstance(value, torch.Tensor):
            msg = f"`{name}` must be a torch.Tensor of shape (N, m), got {type(value).__name__}"
            raise TypeError(msg)
        if value.dim() != 2:
            msg = f"`{name}` must be a 2-D tensor (N, m), got {tuple(value.shape)}"
            raise ValueError(msg)
        if not bool(torch.isfinite(value).all()):
            msg = f"`{name}` contains NaN or infinite values"
            raise ValueError(msg)
    if learned.shape[0] != true.shape[0] or learned.shape[0] <= learned.shape[1] + 1:
        msg = (f"`learned` and `true` need the same number N > m1 + 1 of rows, got "
               f"{tuple(learned.shape)} and {tuple(true.shape)}")
        raise ValueError(msg)
    a = torch.cat([learned.new_ones(learned.shape[0], 1), learned], dim=1).double().cpu()
    y = true.detach().double().cpu()
    centred = y - y.mean(0)
    total = centred.pow(2).sum(0)
    if bool((total <= torch.finfo(torch.float64).tiny).any()):
        msg = "`true` has a constant column: its R^2 is undefined"
        raise ValueError(msg)
    coef = torch.linalg.lstsq(a.detach(), y, driver="gelsd").solution
    resid = (y - a.detach() @ coef).pow(2).sum(0)
    return (1 - resid / total).to(device=true.device, dtype=true.dtype)


@dataclass(frozen=True)
class Evaluation:
    """Predicted and reference trajectories with Table 1's metrics, overall and broken down.

    Attributes:
        t: evaluation times.
        pred, true: predicted and reference states.
        mse, violation: the scalar metrics (:func:`trajectory_mse`,
            :func:`conservation_violation`).
        mse_curve, violation_curve: the metrics at each time (mean over trajectories).
        mse_per_traj, violation_per_traj: the metrics of each trajectory (mean over time).

    Shapes:
        t: ``(T,)``; pred, true: ``(T, B, n)``; curves ``(T,)``; per-trajectory ``(B,)``.
    """

    t: torch.Tensor
    pred: torch.Tensor
    true: torch.Tensor
    mse: float
    violation: float
    mse_curve: torch.Tensor
    violation_curve: torch.Tensor
    mse_per_traj: torch.Tensor
    violation_per_traj: torch.Tensor

    @classmethod
    def from_trajectories(cls, t: torch.Tensor, pred: torch.Tensor, true: torch.Tensor,
                          invariants: Callable) -> Evaluation:
        """Compute every metric of ``pred`` against ``true`` (both ``(T, B, n)``)."""
        _same_shape(pred, true)
        if pred.dim() != 3 or t.shape != pred.shape[:1]:
            msg = (f"`pred` must have shape (T, B, n) with T = len(t) = {t.shape[0]}, got "
                   f"{tuple(pred.shape)}")
            raise ValueError(msg)
        sq = (pred - true).pow(2).mean(-1)  # (T, B)
        with torch.no_grad():
            dh = evaluate_invariants(invariants, pred, "invariants") - evaluate_invariants(
                invariants, true, "invariants")
        viol = dh.pow(2).mean(-1)
        return cls(t, pred, true, float(sq.mean()), float(viol.mean()), sq.mean(1),
                   viol.mean(1), sq.mean(0), viol.mean(0))


def evaluate(field: Callable, x0: torch.Tensor, t: torch.Tensor, invariants: Callable, *,
             true: torch.Tensor | None = None, true_field: Callable | None = None,
             integrator: Callable = odeint, rtol: float = 1e-9, atol: float = 1e-10,
             **integrator_kwargs: object) -> Evaluation:
    """Integrate a learned field and the true dynamics from the same states and score it.

    All trajectories are integrated in one batched call of ``integrator`` (by default
    ``torchdiffeq.odeint``, adaptive ``dopri5``) without gradients; pass
    :func:`~concernet_ode.odeint_projected` (with its ``H=...``) to add a manifold
    projection. The reference is either given (``true``, e.g. an exact solution) or
    integrated from ``true_field`` with the same solver settings. For the most faithful
    scores pass float64 ``x0`` and a float64 copy of the model: the metrics then measure the
    model, not the solver (the paper's evaluation used rtol 1e-10 but atol 1e-6).

    Args:
        field: the learned vector field ``f(t, x)``.
        x0: initial states.
        t: evaluation times.
        invariants: the true invariants ``H(x) -> (..., m)`` used by the violation.
        true: reference trajectories; exclusive with ``true_field``.
        true_field: the true vector field, integrated when ``true`` is not given.
        integrator: ``integrator(field, x0, t, rtol=..., atol=..., **kwargs) -> (T, B, n)``.
        rtol, atol: solver tolerances.
        **integrator_kwargs: passed on, e.g. ``method="dopri8"`` or ``H=...``.

    Returns:
        An :class:`Evaluation`.

    Raises:
        ValueError: neither or both of ``true`` and ``true_field`` are given, or ``x0`` is not
            ``(B, n)``.

    Shapes:
        x0: ``(B, n)``; t: ``(T,)``; true: ``(T, B, n)``.
    """
    if (true is None) == (true_field is None):
        msg = "pass exactly one of `true` (reference trajectories) and `true_field`"
        raise ValueError(msg)
    if not isinstance(x0, torch.Tensor) or x0.dim() != 2:
        got = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
        msg = f"`x0` must be a tensor of shape (B, n), got {got}"
        raise ValueError(msg)
    with torch.no_grad():
        pred = integrator(field, x0, t, rtol=rtol, atol=atol, **integrator_kwargs)
        if true is None:
            true = odeint(true_field, x0, t, rtol=rtol, atol=atol,
                          **{k: v for k, v in integrator_kwargs.items() if k == "method"})
    return Evaluation.from_trajectories(t, pred, true.to(pred.dtype), invariants)
