"""Metrics of Table 1 (trajectory error, conservation violation) and invariant fidelity."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchdiffeq import odeint

from ._jacobian import evaluate_invariants, invariant_jacobian
from .projection import orthonormal_rows

__all__ = [
    "Evaluation",
    "conservation_violation",
    "evaluate",
    "gradient_tilt",
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


def invariant_fidelity(learned: torch.Tensor, true: torch.Tensor, *, degree: int = 1,
                       seed: int = 0) -> torch.Tensor:
    """R^2 of the best readout of each true invariant from all learned features.

    A learned invariant set is defined only up to an invertible map of the true ones. For
    m = 1 the paper's Section 5.2 argues the map is affine, and ``degree=1`` (the default)
    regresses each true invariant on ``[1, learned]`` by least squares (in float64) over all
    states: for m = 1 this is the squared correlation; for several features the squared
    multiple correlation. For m > 1 the contrastive loss leaves any invertible map of the
    invariants, generally a curved one (it mixes ``|m|^2`` and the energy of a rigid body
    nonlinearly), so an affine readout understates how well the learned features
    *determine* the true ones. ``degree=d > 1`` regresses on every monomial of degree at most
    ``d`` of the learned features, each first standardised (zero mean, unit variance over
    all states, so that the monomials are well scaled), fits on a random half of the states
    and scores on the other half: a flexible readout scored out of sample, which an
    overfitted polynomial cannot game. ``degree=3`` is the readout the practitioner's
    goals quote for m > 1.

    Args:
        learned: learned features at ``N`` states.
        true: true invariants at the same states.
        degree: the readout's polynomial degree: 1 (affine, fitted and scored on all
            states) or more (fitted on half, scored on the other half).
        seed: seeds the split into halves (``degree > 1`` only).

    Returns:
        ``R^2`` for each true invariant, in ``(-inf, 1]`` (1 is a perfect readout).

    Raises:
        TypeError: ``learned`` or ``true`` is not a tensor.
        ValueError: shapes are not ``(N, m1)`` and ``(N, m2)`` with more states than the
            readout has coefficients (twice as many for ``degree > 1``), a value is not
            finite, a true invariant is constant (its R^2 is undefined), or a bad ``degree``.

    Shapes:
        learned: ``(N, m1)``; true: ``(N, m2)``; returns ``(m2,)``.

    Example:
        >>> x = torch.rand(400, 1, dtype=torch.float64) + 0.5
        >>> float(invariant_fidelity(x, x.log())) < 0.99 < float(
        ...     invariant_fidelity(x, x.log(), degree=3))
        True
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
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        msg = f"`degree` must be an int >= 1 (1: affine readout), got {degree!r}"
        raise ValueError(msg)
    x = learned.detach().double().cpu()
    y = true.detach().double().cpu()
    if degree > 1:
        x = _monomials((x - x.mean(0)) / x.std(0).clamp_min(torch.finfo(x.dtype).tiny), degree)
    n_coef = x.shape[1] + 1
    needed = n_coef + 1 if degree == 1 else 2 * n_coef
    if learned.shape[0] != true.shape[0] or learned.shape[0] < needed:
        what = "N > m1 + 1" if degree == 1 else (
            f"N >= {needed} (twice the {n_coef} coefficients of a degree-{degree} readout)")
        msg = (f"`learned` and `true` need the same number {what} of rows, got "
               f"{tuple(learned.shape)} and {tuple(true.shape)}")
        raise ValueError(msg)
    a = torch.cat([x.new_ones(x.shape[0], 1), x], dim=1)
    fit = score = torch.arange(x.shape[0])
    if degree > 1:
        perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
        fit, score = perm[: x.shape[0] // 2], perm[x.shape[0] // 2:]
    centred = y[score] - y[score].mean(0)
    total = centred.pow(2).sum(0)
    if bool((total <= torch.finfo(torch.float64).tiny).any()):
        msg = "`true` has a constant column: its R^2 is undefined"
        raise ValueError(msg)
    coef = torch.linalg.lstsq(a[fit], y[fit], driver="gelsd").solution
    resid = (y[score] - a[score] @ coef).pow(2).sum(0)
    return (1 - resid / total).to(device=true.device, dtype=true.dtype)


def _monomials(z: torch.Tensor, degree: int) -> torch.Tensor:
    """Every monomial of degree 1 to ``degree`` of the columns of ``z``, ``(N, k) -> (N, K)``."""
    cols = [z[:, i] for i in range(z.shape[1])]
    out = []
    for d in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(range(len(cols)), d):
            term = cols[combo[0]]
            for i in combo[1:]:
                term = term * cols[i]
            out.append(term)
    return torch.stack(out, dim=-1)


def gradient_tilt(learned: Callable, true: Callable, x: torch.Tensor) -> torch.Tensor:
    """Sines of the principal angles between the spans of the learned and true gradients.

    The projection of eq. (6) removes from a field its component in the span of the
    learned invariants' gradients; it conserves the true invariants exactly where that span
    equals theirs. At each state this returns the sines of the principal angles between the
    row space of the learned ``dH/dx`` and that of the true one (largest first): all zero
    where the spans agree, 1 where a true gradient direction is missing from the learned
    span (or the learned one has lost a row). Unlike an R^2 of values it sees the gradients'
    directions, which are what the projection uses, and it is unchanged by any invertible
    map of either set.

    Args:
        learned: the learned invariants ``(..., n) -> (..., m1)``.
        true: the true invariants ``(..., n) -> (..., m2)``.
        x: states.

    Returns:
        The sines in float64, largest first, ``min(m1, m2)`` per state.

    Shapes:
        x: ``(N, n)``; returns ``(N, min(m1, m2))``.
    """
    q = [orthonormal_rows(invariant_jacobian(H, x)[1].detach().double())
         for H in (learned, true)]
    a, b = q if q[0].shape[-2] <= q[1].shape[-2] else q[::-1]
    # The sines are the singular values of the part of the smaller basis outside the other
    # span (accurate for small angles, where 1 - cos^2 would lose half the digits); a lost
    # (zero) row of that basis has no part anywhere, so it counts as a right angle.
    sines = torch.linalg.svdvals(a - (a @ b.transpose(-1, -2)) @ b)
    lost = (a.pow(2).sum(-1) == 0).sum(-1, keepdim=True)
    j = torch.arange(sines.shape[-1], device=sines.device)
    shifted = sines.gather(-1, (j - lost).clamp_min(0))
    return torch.where(j < lost, torch.ones_like(shifted), shifted).clamp(0.0, 1.0)


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
