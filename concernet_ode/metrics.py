"""Metrics of Table 1 (trajectory error, conservation violation) and invariant fidelity."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._jacobian import evaluate_invariants

__all__ = ["conservation_violation", "invariant_fidelity", "trajectory_mse"]


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
        ValueError: shapes are not ``(N, m1)`` and ``(N, m2)`` with ``N > m1 + 1``, or a true
            invariant is constant (its R^2 is undefined).

    Shapes:
        learned: ``(N, m1)``; true: ``(N, m2)``; returns ``(m2,)``.
    """
    for name, value in (("learned", learned), ("true", true)):
        if not isinstance(value, torch.Tensor) or value.dim() != 2:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            msg = f"`{name}` must be a 2-D tensor (N, m), got {got}"
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
    return (1 - resid / total).to(true.dtype)
