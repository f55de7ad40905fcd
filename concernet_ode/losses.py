"""Contrastive losses that train a network to output a system's invariants.

Points of one trajectory share the values of every conserved quantity and, generically, differ
from the points of other trajectories; treating each trajectory as a class, a contrastive loss
pulls a trajectory's features together and pushes other trajectories' away (eq. (4) of the
ConCerNet paper), which the conserved quantities minimise.

For dissipative systems, :func:`ranking_loss` adds the direction of time: a learned "energy"
must not increase along a trajectory, which fixes the sign that the contrastive loss leaves free.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._jacobian import invariant_jacobian
from .projection import orthonormal_rows

_POSITIVES = ("sum", "mean")

__all__ = [
    "contrastive_invariant_loss",
    "flow_alignment_loss",
    "normal_flow_loss",
    "ranking_loss",
    "standardize_features",
]


def _check_features(features: object, name: str = "features") -> torch.Tensor:
    if not isinstance(features, torch.Tensor):
        msg = f"`{name}` must be a torch.Tensor of shape (B, T, m), got {type(features).__name__}"
        raise TypeError(msg)
    if features.dim() != 3:
        msg = (f"`{name}` must have shape (B, T, m) (trajectories, times, invariants), got "
               f"{tuple(features.shape)}; add a trailing dimension for m = 1")
        raise ValueError(msg)
    return features


def standardize_features(features: torch.Tensor) -> torch.Tensor:
    """Standardise each feature to zero mean and unit variance over the batch (eq. (8)).

    Without it the loss can be driven down by inflating the scale of the features; with it,
    only how the trajectories are arranged relative to one another matters.

    Shapes:
        features: ``(B, T, m)``; returns ``(B, T, m)``.
    """
    flat = features.reshape(-1, features.shape[-1])
    mean = flat.mean(0)
    std = flat.std(0, unbiased=False)
    std = std.clamp_min(torch.finfo(features.dtype).eps ** 0.5)
    return (features - mean) / std


def _squared_distances(points: torch.Tensor) -> torch.Tensor:
    """``||p_i - p_j||^2`` for all pairs of the last-but-one dim, ``(..., P, m) -> (..., P, P)``.

    Distances are summed from per-feature differences, not by the ``|a|^2 + |b|^2 - 2ab``
    expansion, which cancels catastrophically for nearby points -- exactly the positives that
    matter here -- and never forms a ``(P, P, m)`` tensor.
    """
    sq = None
    # Contiguous columns: broadcasting a strided column (m > 1) makes every elementwise op on
    # the (P, P) result several times slower.
    for col in points.movedim(-1, 0).contiguous():
        term = (col.unsqueeze(-1) - col.unsqueeze(-2)).square_()
        sq = term if sq is None else sq.add_(term)
    return sq


def _self_excluded_logits(points: torch.Tensor) -> torch.Tensor:
    """``-||p_i - p_j||^2`` for all pairs, ``-inf`` where ``i = j``.

    Shapes:
        points: ``(..., P, m)``; returns ``(..., P, P)``.
    """
    n_points = points.shape[-2]
    self_inf = torch.diag(points.new_full((n_points,), float("inf")))
    return -_squared_distances(points) - self_inf


def check_positives(positives: object) -> str:
    """Return ``positives`` if it names a form of the loss, else raise a ``ValueError``."""
    if positives not in _POSITIVES:
        msg = f"`positives` must be one of {_POSITIVES}, got {positives!r}"
        raise ValueError(msg)
    return positives


_EXP_FLOOR = -80.0
_LOG2E = math.log2(math.e)


def _exp_neg_(dist: torch.Tensor) -> torch.Tensor:
    """``exp(-dist)`` in place, the exponent floored at ``_EXP_FLOOR``.

    Computed as ``exp2(-dist * log2(e))``, which torch evaluates several times faster than
    ``exp`` on common CPUs (docs/performance.md has the measurement), for the rounding of one
    product, of the size of the rounding ``dist`` carries already. The floor keeps every term
    a normal number, so that a row sum far above ``P e^-80`` is exact to rounding (the test
    of the symmetric path below).
    """
    return dist.mul_(-_LOG2E).clamp_(min=_EXP_FLOOR * _LOG2E).exp2_()


class _LogSumExpOthers(torch.autograd.Function):
    """``L_i = log sum_{j != i} exp(-||h_i - h_j||^2)`` for points ``h`` of shape ``(P, m)``.

    The denominator of eq. (4) over the whole batch, the costly part of the loss, with its
    backward pass written out (differentiable once; the trainers never need more).

    Symmetric path (the usual one). The kernel ``K_ij = exp(-||h_i - h_j||^2)`` (``K_ii =
    0``) is symmetric, so with ``t = K 1`` and ``c = g / t`` for incoming gradient ``g``,

        dL/dh_a = 2 sum_j K_aj (c_a + c_j) (h_j - h_a)
                = 2 (c_a (K h)_a + (K (c h))_a - h_a (g_a + (K c)_a)),

    one matrix product with ``2m + 1`` columns: about seven passes over the ``(P, P)``
    matrix in all. It is exact to rounding while every row sum ``t_i`` stays far above the
    floored terms (``P e^-80`` below ``eps t_i``), which holds whenever each point has a
    neighbour within a few kernel widths, as its own trajectory's points are.

    Row-shifted path (the fallback, or ``rows_shifted=True``). Where some point is far from
    all others, its row is shifted by its largest logit first (``log-sum-exp``), and the
    backward pass uses the row softmax ``W``:
    ``dL/dh_a = -2 g_a (h_a - sum_j W_aj h_j) + 2 sum_i g_i W_ia (h_i - h_a)``.

    Both work on the points less their mean (the loss depends only on differences), which
    keeps the sums of the backward pass from cancelling on features far from the origin.
    """

    @staticmethod
    def forward(ctx, points: torch.Tensor, rows_shifted: bool = False) -> torch.Tensor:
        centred = points - points.mean(0)
        if not rows_shifted:
            kernel = _exp_neg_(_squared_distances(centred))
            kernel.fill_diagonal_(0.0)
            total = kernel.sum(-1)
            floored = points.shape[0] * math.exp(_EXP_FLOOR)
            if float(total.amin()) * torch.finfo(points.dtype).eps >= floored:
                ctx.symmetric = True
                ctx.save_for_backward(centred, kernel, total)
                return total.log()
            del kernel, total
        dist = _squared_distances(centred)
        dist.fill_diagonal_(float("inf"))
        nearest = dist.amin(-1, keepdim=True)  # the largest logit of each row
        weights = _exp_neg_(dist.sub_(nearest))
        weights.fill_diagonal_(0.0)
        total = weights.sum(-1, keepdim=True)
        weights.div_(total)  # the row softmax
        ctx.symmetric = False
        ctx.save_for_backward(centred, weights)
        return (total.log() - nearest).squeeze(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if ctx.symmetric:
            centred, kernel, total = ctx.saved_tensors
            c = (grad / total).unsqueeze(-1)
            m = centred.shape[-1]
            # (R^T K)^T = K R for symmetric K; torch multiplies a skinny R faster from the left
            rhs = torch.cat([centred, c * centred, c], dim=-1)
            kh, kch, kc = (rhs.T @ kernel).T.split([m, m, 1], dim=-1)
            return 2.0 * (c * kh + kch - centred * (grad.unsqueeze(-1) + kc)), None
        centred, weights = ctx.saved_tensors
        weights = weights * grad.unsqueeze(-1)  # W_ij g_i; its rows sum to g_i
        col = weights.sum(0).unsqueeze(-1)
        row = grad.unsqueeze(-1)
        return 2.0 * ((weights @ centred) - row * centred + (centred.T @ weights).T
                      - col * centred), None


def contrastive_invariant_loss(features: torch.Tensor, *, normalize: bool = True,
                               positives: str = "mean") -> torch.Tensor:
    """Contrastive loss of eqs. (4) and (8): each trajectory is a class.

    The defaults are those of :func:`~concernet_ode.fit_invariants` (standardised features,
    ``positives="mean"``); ``normalize=False, positives="sum"`` is eq. (4) as printed.

    For every point ``i`` with feature ``h_i``, with similarities ``s_ij = exp(-||h_i - h_j||^2)``,

        l_i = -log( sum_{j in traj(i), j != i} s_ij / sum_{j != i} s_ij ),

    and the loss is the mean of ``l_i`` over all ``B * T`` points. It is computed from one
    ``(BT, BT)`` matrix of squared distances with ``logsumexp``, so it is stable however far
    apart the features are.

    With ``positives="mean"`` the log moves outside the sum over positives (the
    "outside" supervised contrastive loss, Khosla et al., NeurIPS 2020, eq. (2)):

        l_i = mean_{j in traj(i), j != i} ||h_i - h_j||^2 + log sum_{j != i} s_ij.

    The sum of eq. (4) is already large when each point is close to its neighbours in time,
    so with room to spare (``m >= 2``) a trajectory can lie along a curve in feature space
    instead of collapsing to a point; the mean pulls every pair of a trajectory together, so
    only invariants minimise it. The positive term needs no ``(T, T)`` blocks: it is
    ``(T ||h_i - mu||^2 + S) / (T - 1)`` with ``mu`` the trajectory's mean feature and ``S``
    its summed squared deviations.

    Args:
        features: the learned invariants at every point of ``B`` trajectories of ``T`` points.
        normalize: standardise each feature over the batch first (eq. (8), the default),
            which prevents the trivial decrease of the loss by scaling the features up.
        positives: ``"mean"`` (log outside the sum, the default) or ``"sum"`` (eq. (4)).

    Returns:
        A scalar tensor.

    Raises:
        TypeError: ``features`` is not a tensor.
        ValueError: it is not 3-D, or ``B < 2`` or ``T < 2`` (the loss needs a positive and a
            negative for every point); ``positives`` is not ``"sum"`` or ``"mean"``.

    Shapes:
        features: ``(B, T, m)``; returns ``()``.
    """
    features = _check_features(features)
    n_traj, n_times, _ = features.shape
    if n_traj < 2 or n_times < 2:
        msg = (f"`features` needs at least 2 trajectories and 2 times per trajectory, got "
               f"B = {n_traj}, T = {n_times}")
        raise ValueError(msg)
    check_positives(positives)
    if normalize:
        features = standardize_features(features)
    flat = features.reshape(n_traj * n_times, -1)
    log_all = _LogSumExpOthers.apply(flat)
    if positives == "mean":
        dev = (features - features.mean(1, keepdim=True)).square().sum(-1)  # (B, T)
        mean_sq = (n_times * dev + dev.sum(1, keepdim=True)) / (n_times - 1)
        return (mean_sq.reshape(-1) + log_all).mean()
    # The denominator needs every pair of the batch; the numerator only the (T, T) blocks of
    # each trajectory, so it is computed blockwise instead of by masking the (BT, BT) matrix,
    # which is much faster at the paper's batch sizes. A point's similarity to itself
    # is excluded by setting its logit to -inf (logsumexp ignores it).
    log_pos = torch.logsumexp(_self_excluded_logits(features), dim=-1).reshape(-1)
    return (log_all - log_pos).mean()


def ranking_loss(features: torch.Tensor, *, margin: float = 0.0) -> torch.Tensor:
    """Hinge penalty on every later point whose feature exceeds an earlier point's.

    For a dissipative system the quantity to learn decreases along each trajectory, so for
    every pair of times ``s < t`` of one trajectory and every feature ``k``,

        l = relu(h_k(x_t) - h_k(x_s) + margin),

    averaged over all ``B * T (T - 1) / 2`` ordered pairs and the ``m`` features. The
    contrastive loss of eq. (4) cannot tell ``H`` from ``-H``; this term picks the sign for
    which ``H`` decreases with time (the ranking loss of the paper's Section 5.1). Pairs are
    formed within each trajectory only, from one ``(B, T, T, m)`` tensor of differences.

    Args:
        features: the learned quantities along ``B`` trajectories of ``T`` points, **in time
            order** (as ``TrajectoryData.x`` stores them).
        margin: how much each later value must lie below each earlier one before the pair
            stops contributing; 0 penalises only increases. In the units of ``features`` (after
            standardisation, when :func:`~concernet_ode.fit_invariants` normalises them).

    Returns:
        A scalar tensor, zero exactly when every feature decreases by at least ``margin``
        between any two times of every trajectory.

    Raises:
        TypeError: ``features`` is not a tensor.
        ValueError: it is not 3-D, ``T < 2`` (no pair of times), or ``margin`` is negative or
            not finite.

    Shapes:
        features: ``(B, T, m)``; returns ``()``.
    """
    features = _check_features(features)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not (
            0 <= margin < float("inf")):
        msg = f"`margin` must be a finite number >= 0, got {margin!r}"
        raise ValueError(msg)
    n_times = features.shape[1]
    if n_times < 2:
        msg = f"`features` needs at least 2 times per trajectory to rank, got T = {n_times}"
        raise ValueError(msg)
    # rise[b, s, t, k] = h_k(x_t) - h_k(x_s): positive where the later point t is higher.
    rise = features.unsqueeze(1) - features.unsqueeze(2)
    later = torch.ones(n_times, n_times, dtype=torch.bool, device=features.device).triu(1)
    return torch.relu(rise[:, later] + margin).mean()


def _jacobian_along(H: Callable, x: torch.Tensor, dxdt: object) -> torch.Tensor:
    """``dH/dx`` at ``x`` (with a graph when training), once ``dxdt`` is checked against ``x``.

    Shapes:
        x, dxdt: ``(..., n)``; returns ``(..., m, n)``.
    """
    if not isinstance(dxdt, torch.Tensor) or dxdt.shape != x.shape:
        got = tuple(dxdt.shape) if isinstance(dxdt, torch.Tensor) else type(dxdt).__name__
        msg = f"`dxdt` must be a tensor of the shape of `x`, {tuple(x.shape)}; got {got}"
        raise ValueError(msg)
    return invariant_jacobian(H, x)[1]


def flow_alignment_loss(H: Callable, x: torch.Tensor, dxdt: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between each invariant's gradient and the observed flow.

    A conserved quantity satisfies ``<grad H_i(x), dx/dt> = 0`` everywhere; the squared cosine
    ``<g, v>^2 / (|g|^2 |v|^2)`` measures how far a learned ``H_i`` is from that, scale-free
    in both ``H`` and the data. Alone it is minimised by a constant ``H``; next to the
    contrastive loss (which rules that out) it sharpens the *direction* of ``grad H``, which is
    all the projection of eq. (6) uses. This uses the derivative data, which the paper's
    contrastive step does not: an extension, off unless asked for.

    Args:
        H: the learned invariants, ``(..., n) -> (..., m)``.
        x: states.
        dxdt: their observed time derivatives.

    Returns:
        A scalar in ``[0, 1]``; samples where either vector vanishes count as aligned.

    Shapes:
        x, dxdt: ``(..., n)``; returns ``()``.
    """
    jac = _jacobian_along(H, x, dxdt)
    inner = (jac * dxdt.unsqueeze(-2)).sum(-1)
    norms = jac.pow(2).sum(-1) * dxdt.pow(2).sum(-1, keepdim=True)
    tiny = torch.finfo(jac.dtype).tiny
    vanishing = norms <= tiny  # NaN norms are not vanishing: they propagate
    safe = torch.where(vanishing, torch.ones_like(norms), norms)
    return torch.where(vanishing, 0.0, inner.pow(2) / safe).mean()


def normal_flow_loss(H: Callable, x: torch.Tensor, dxdt: torch.Tensor) -> torch.Tensor:
    """Mean squared component of the observed flow normal to the level sets of ``H``.

    ``|Q(x) dxdt|^2``, with ``Q`` the orthonormalised rows of ``dH/dx``
    (:func:`~concernet_ode.projection.orthonormal_rows`), is exactly the part of an observed
    derivative that a field projected onto ``H``'s level sets (eq. (6)) cannot fit, whatever
    its ``f``: the floor that ``H`` puts under the projected model's training loss. It depends
    only on the level sets, not on how ``H`` labels them. Unlike the squared cosine of
    :func:`flow_alignment_loss` it weights each sample by ``|dxdt|^2``, so samples near a rest
    point, whose observed derivative is mostly noise, count little; and for isotropic noise of
    variance ``s^2`` on ``dxdt`` it only adds the constant ``m s^2``, so its minimiser is
    unbiased. Alone it is also minimised by a constant ``H``: use it to refine invariants
    learned contrastively (:func:`~concernet_ode.refine_invariants`), not to learn them.

    Args:
        H: the learned invariants, ``(..., n) -> (..., m)``.
        x: states.
        dxdt: their observed time derivatives.

    Returns:
        A scalar: the mean over samples of the squared normal component (per unit time
        squared, in the units of ``dxdt``).

    Shapes:
        x, dxdt: ``(..., n)``; returns ``()``.
    """
    jac = _jacobian_along(H, x, dxdt)
    if jac.shape[-2] == 1:  # one invariant: <g, v>^2 / |g|^2, no Gram-Schmidt needed
        g = jac[..., 0, :]
        sq = g.pow(2).sum(-1)
        tiny = torch.finfo(g.dtype).tiny
        inner = (g * dxdt).sum(-1)
        # a vanishing gradient counts as no normal flow; a NaN one stays NaN, not 0
        vanishing = sq <= tiny
        return torch.where(vanishing, 0.0,
                           inner.pow(2) / torch.where(vanishing, 1.0, sq)).mean()
    normal = (orthonormal_rows(jac) * dxdt.unsqueeze(-2)).sum(-1)  # (..., m)
    return normal.pow(2).sum(-1).mean()
