"""Field metrics of PDE surrogates as PDEBench reports them: nRMSE and cRMSE.

PDEBench (Takamoto et al., NeurIPS 2022 Datasets and Benchmarks, "PDEBench: an extensive
benchmark for scientific machine learning", its ``metrics.py``) scores a rollout by

- **nRMSE**: for each sample ``b``, channel ``c`` and time ``t`` the RMS error over the grid
  points divided by the RMS of the reference there, ``||pred - true||_2 / ||true||_2``;
  averaged over samples, then over channels and times;
- **cRMSE** ("conserved variables", ``err_CSV``): for each channel and time the RMS over
  samples of the error in the channel's spatial mean, ``sqrt(mean_b (mean_x pred -
  mean_x true)^2)``; averaged over channels and times.

:func:`crmse` generalises the second to any conserved quantities: given ``invariants``
``H: (..., n) -> (..., m)`` it returns, for each ``H_j``, ``sqrt(mean_b (H_j(pred) -
H_j(true))^2)`` averaged over time; without it, PDEBench's spatial mean of each channel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._jacobian import evaluate_invariants

__all__ = ["crmse", "nrmse"]


def _check(pred: object, true: object, time_dim: object, channels: object) -> int:
    for name, value in (("pred", pred), ("true", true)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            got = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            msg = f"`{name}` must be a floating-point torch.Tensor, got {got}"
            raise TypeError(msg)
    if pred.shape != true.shape:
        msg = (f"`pred` and `true` must have the same shape, got {tuple(pred.shape)} and "
               f"{tuple(true.shape)}")
        raise ValueError(msg)
    if pred.dim() < 2:
        msg = f"`pred` must have shape (..., n) with a time dimension, got {tuple(pred.shape)}"
        raise ValueError(msg)
    if isinstance(time_dim, bool) or not isinstance(time_dim, int) or not (
            -pred.dim() <= time_dim < pred.dim()) or time_dim % pred.dim() == pred.dim() - 1:
        msg = (f"`time_dim` must be an int naming a dimension of {tuple(pred.shape)} other "
               f"than the last (the state), got {time_dim!r}")
        raise ValueError(msg)
    n = pred.shape[-1]
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1 or (
            n % channels):
        msg = (f"`channels` must be a positive int dividing the state size {n}, got "
               f"{channels!r}")
        raise ValueError(msg)
    return time_dim % pred.dim()


def _over_time(per_time: torch.Tensor, time_dim: int, curve: bool) -> torch.Tensor:
    """Move time first and average it out unless ``curve``."""
    per_time = per_time.movedim(time_dim, 0)
    return per_time if curve else per_time.mean(0)


def nrmse(pred: torch.Tensor, true: torch.Tensor, *, time_dim: int = 0, channels: int = 1,
          curve: bool = False) -> torch.Tensor:
    """PDEBench's normalised RMSE of a rollout.

    For each sample, channel and time: ``sqrt(mean_x (pred - true)^2) / sqrt(mean_x
    true^2)`` over the channel's grid points ``x``; then the mean over samples, channels and
    (unless ``curve``) times.

    Args:
        pred, true: predicted and reference rollouts; the state (last dimension) holds
            ``channels`` fields of equal size one after the other (``(u, v)`` for the wave).
        time_dim: the time dimension (0 for ``odeint``'s ``(T, B, n)``, 1 for
            ``TrajectoryData``'s ``(B, T, n)``); every other leading dimension is samples.
        channels: the number of fields in the state.
        curve: return the value at each time instead of its mean over time.

    Returns:
        A scalar, or ``(T,)`` with ``curve``.

    Raises:
        TypeError: ``pred`` or ``true`` is not a floating-point tensor.
        ValueError: different shapes, a bad ``time_dim`` or ``channels``, or a reference
            channel that is zero at some sample and time (nRMSE is undefined there).

    Shapes:
        pred, true: ``(..., T, ..., n)``; returns ``()`` or ``(T,)``.

    Example:
        >>> true = torch.ones(3, 2, 4)
        >>> float(nrmse(true + 0.5, true))
        0.5
    """
    time_dim = _check(pred, true, time_dim, channels)
    split = (*pred.shape[:-1], channels, pred.shape[-1] // channels)
    err = (pred - true).reshape(split).pow(2).mean(-1).sqrt()
    norm = true.reshape(split).pow(2).mean(-1).sqrt()
    zero = norm == 0
    if bool(zero.any()):
        msg = (f"`true` has {int(zero.sum())} field(s) that are zero everywhere at some "
               "sample and time: nRMSE divides by the reference's norm there; leave those "
               "times out or use an unnormalised error")
        raise ValueError(msg)
    ratio = (err / norm).mean(-1)  # over channels
    dims = [d for d in range(ratio.dim()) if d != time_dim]
    return _over_time(ratio.mean(dim=dims, keepdim=True), time_dim, curve).reshape(
        -1 if curve else ())


def crmse(pred: torch.Tensor, true: torch.Tensor, invariants: Callable | None = None, *,
          time_dim: int = 0, channels: int = 1, curve: bool = False) -> torch.Tensor:
    """RMS error of each conserved quantity over a rollout (PDEBench's cRMSE, generalised).

    For each conserved quantity ``H_j`` and time: ``sqrt(mean_b (H_j(pred) -
    H_j(true))^2)`` over the samples ``b``; then the mean over (unless ``curve``) times.
    With ``invariants=None`` the quantities are PDEBench's: the spatial mean of each of the
    ``channels`` fields (so ``m = channels``); PDEBench then also averages over channels,
    which is ``crmse(...).mean()``.

    Args:
        pred, true: predicted and reference rollouts.
        invariants: the conserved quantities ``H(x) -> (..., m)`` (or ``(...,)``), e.g. a
            system's ``invariants``; ``None`` for the spatial mean of each channel.
        time_dim: the time dimension; every other leading dimension is samples.
        channels: fields in the state (used only without ``invariants``).
        curve: return the value at each time instead of its mean over time.

    Returns:
        ``(m,)``, or ``(T, m)`` with ``curve``.

    Raises:
        TypeError: ``pred`` or ``true`` is not a floating-point tensor.
        ValueError: different shapes, a bad ``time_dim`` or ``channels``.

    Shapes:
        pred, true: ``(..., T, ..., n)``; returns ``(m,)`` or ``(T, m)``.

    Example:
        >>> true = torch.zeros(3, 2, 4)
        >>> crmse(true + 0.5, true, lambda x: x.sum(-1))
        tensor([2.])
    """
    time_dim = _check(pred, true, time_dim, channels)
    if invariants is None:
        def invariants(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(*x.shape[:-1], channels, -1).mean(-1)
    with torch.no_grad():
        diff = evaluate_invariants(invariants, pred, "invariants") - evaluate_invariants(
            invariants, true, "invariants")  # (..., m)
    dims = [d for d in range(diff.dim() - 1) if d != time_dim]
    per_time = diff.pow(2).mean(dim=dims, keepdim=True).sqrt()
    out = _over_time(per_time, time_dim, curve)
    m = diff.shape[-1]
    return out.reshape(-1, m) if curve else out.reshape(m)
