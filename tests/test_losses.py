"""Tests of the contrastive invariant loss (eq. (4)) and its batch-normalised form (eq. (8))."""

from __future__ import annotations

import math

import pytest
import torch

from concernet_ode import contrastive_invariant_loss
from concernet_ode.losses import standardize_features


def naive_loss(features: torch.Tensor) -> float:
    """Eq. (4) point by point, in plain Python floats: the reference for the vectorised loss."""
    n_traj, n_times, _ = features.shape
    pts = [(b, features[b, t].tolist()) for b in range(n_traj) for t in range(n_times)]
    total = 0.0
    for i, (bi, hi) in enumerate(pts):
        pos = all_ = 0.0
        for j, (bj, hj) in enumerate(pts):
            if i == j:
                continue
            s = math.exp(-sum((a - b) ** 2 for a, b in zip(hi, hj, strict=True)))
            all_ += s
            pos += s if bi == bj else 0.0
        total += -math.log(pos / all_)
    return total / len(pts)


@pytest.mark.parametrize("shape", [(2, 2, 1), (3, 4, 1), (4, 3, 2), (5, 6, 3)])
def test_matches_naive_loop(shape, rng):
    feats = torch.randn(shape, generator=rng, dtype=torch.float64)
    got = contrastive_invariant_loss(feats, normalize=False, positives="sum")
    assert got.shape == ()
    assert got.dtype == torch.float64
    assert abs(float(got) - naive_loss(feats)) < 1e-10


def test_normalize_equals_naive_loop_on_standardised_features(rng):
    feats = 3.0 + 5.0 * torch.randn(4, 5, 2, generator=rng, dtype=torch.float64)
    flat = feats.reshape(-1, 2)
    standardised = (feats - flat.mean(0)) / flat.std(0, unbiased=False)
    got = contrastive_invariant_loss(feats, normalize=True, positives="sum")
    assert abs(float(got) - naive_loss(standardised)) < 1e-10


def test_normalize_is_invariant_to_feature_affine_maps(rng):
    feats = torch.randn(5, 4, 2, generator=rng, dtype=torch.float64)
    scaled = feats * torch.tensor([7.0, -0.01], dtype=torch.float64) + 11.0
    a = contrastive_invariant_loss(feats, normalize=True, positives="sum")
    b = contrastive_invariant_loss(scaled, normalize=True, positives="sum")
    assert abs(float(a) - float(b)) < 1e-10
    # Without normalisation the loss depends on the scale: that is what eq. (8) removes.
    raw = contrastive_invariant_loss(scaled, normalize=False, positives="sum")
    assert abs(float(raw) - float(a)) > 1e-3


def test_normalize_constant_feature_stays_finite(rng):
    feats = torch.zeros(3, 4, 1, dtype=torch.float64, requires_grad=True)
    loss = contrastive_invariant_loss(feats, normalize=True, positives="sum")
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(feats.grad).all()


def test_perfect_invariant_reaches_the_lower_bound():
    # Each trajectory constant and the trajectories far apart: every point's own trajectory
    # carries all the similarity, so the loss tends to 0.
    feats = (100.0 * torch.arange(4, dtype=torch.float64)).reshape(4, 1, 1).expand(4, 5, 1)
    assert float(contrastive_invariant_loss(feats, normalize=False, positives="sum")) < 1e-12


def test_invariant_beats_time_like_feature():
    t = torch.linspace(0, 1, 6, dtype=torch.float64)
    invariant = torch.arange(4, dtype=torch.float64)[:, None, None].expand(4, 6, 1)
    time_like = t[None, :, None].expand(4, 6, 1)
    options = {"normalize": True, "positives": "sum"}
    assert contrastive_invariant_loss(invariant, **options) < contrastive_invariant_loss(
        time_like, **options)


def test_far_apart_features_stay_finite_with_gradients():
    # exp(-d^2) underflows for every negative here; logsumexp must keep the loss finite.
    feats = torch.tensor([[[0.0], [0.1]], [[1e3], [1e3 + 0.1]]], requires_grad=True)
    loss = contrastive_invariant_loss(feats, normalize=False, positives="sum")
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(feats.grad).all()


def test_gradcheck(rng):
    feats = torch.randn(3, 3, 2, generator=rng, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f: contrastive_invariant_loss(f, normalize=True, positives="sum"), (feats,))


def test_float32_agrees_with_float64(rng):
    feats = torch.randn(6, 10, 2, generator=rng, dtype=torch.float64)
    a = contrastive_invariant_loss(feats, normalize=True, positives="sum")
    b = contrastive_invariant_loss(feats.float(), normalize=True, positives="sum")
    assert b.dtype == torch.float32
    assert abs(float(a) - float(b)) < 1e-5 * float(a)


def test_permuting_trajectories_or_times_leaves_loss_unchanged(rng):
    feats = torch.randn(4, 5, 2, generator=rng, dtype=torch.float64)
    base = contrastive_invariant_loss(feats, normalize=False, positives="sum")
    shuffled = feats[torch.randperm(4, generator=rng)][:, torch.randperm(5, generator=rng)]
    again = contrastive_invariant_loss(shuffled, normalize=False, positives="sum")
    assert abs(float(base) - float(again)) < 1e-12


def test_device_follows_input(device):
    feats = torch.randn(3, 4, 1, device=device)
    assert contrastive_invariant_loss(feats, normalize=True, positives="sum").device == feats.device


def test_rejects_non_tensor():
    with pytest.raises(TypeError, match=r"`features` must be a torch.Tensor.*got list"):
        contrastive_invariant_loss([[[0.0]]], normalize=False, positives="sum")


@pytest.mark.parametrize("shape", [(4,), (4, 3), (2, 3, 4, 1)])
def test_rejects_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"must have shape \(B, T, m\).*add a trailing"):
        contrastive_invariant_loss(torch.zeros(shape))


@pytest.mark.parametrize(("shape", "got"), [((1, 5, 1), "B = 1, T = 5"),
                                            ((5, 1, 1), "B = 5, T = 1")])
def test_rejects_too_few_trajectories_or_times(shape, got):
    with pytest.raises(ValueError, match=f"at least 2 trajectories and 2 times.*{got}"):
        contrastive_invariant_loss(torch.zeros(shape))


def naive_mean_loss(features: torch.Tensor) -> float:
    """The "outside" form point by point: mean over positives of -log(s_ij / sum_k s_ik)."""
    n_traj, n_times, _ = features.shape
    pts = [(b, features[b, t].tolist()) for b in range(n_traj) for t in range(n_times)]
    total = 0.0
    for i, (bi, hi) in enumerate(pts):
        sims = [(bj, math.exp(-sum((a - b) ** 2 for a, b in zip(hi, hj, strict=True))))
                for j, (bj, hj) in enumerate(pts) if j != i]
        denom = sum(s for _, s in sims)
        pos = [-math.log(s / denom) for bj, s in sims if bj == bi]
        total += sum(pos) / len(pos)
    return total / len(pts)


@pytest.mark.parametrize("shape", [(2, 2, 1), (3, 4, 1), (4, 3, 2), (5, 6, 3)])
def test_mean_positives_match_naive_loop(shape, rng):
    feats = torch.randn(*shape, generator=rng, dtype=torch.float64)
    got = contrastive_invariant_loss(feats, normalize=False, positives="mean")
    assert abs(float(got) - naive_mean_loss(feats)) < 1e-10


def test_mean_positives_need_collapse_where_the_sum_does_not():
    # Two trajectories laid out as curves in 2-D, far apart: each point has a close neighbour
    # in time, so eq. (4)'s sum is nearly satisfied, but the pairs of one trajectory are not
    # together, which the "mean" form still penalises; collapsed trajectories satisfy both.
    t = torch.linspace(0, 3, 30, dtype=torch.float64)
    curve = torch.stack([t, torch.zeros_like(t)], -1)
    curves = torch.stack([curve, curve + torch.tensor([0.0, 20.0], dtype=torch.float64)])
    points = torch.zeros_like(curves)
    points[1, :, 1] = 20.0
    assert float(contrastive_invariant_loss(curves, normalize=False, positives="sum")) < 1e-12
    collapsed = float(contrastive_invariant_loss(points, normalize=False, positives="mean"))
    assert abs(collapsed - math.log(29)) < 1e-12  # its minimum: log(T - 1)
    spread = float(contrastive_invariant_loss(curves, normalize=False, positives="mean"))
    assert spread > collapsed + 0.5


def test_positives_must_be_known():
    feats = torch.zeros(2, 3, 1)
    match = r"`positives` must be one of \('sum', 'mean'\), got 'max'"
    with pytest.raises(ValueError, match=match):
        contrastive_invariant_loss(feats, positives="max")


@pytest.mark.parametrize("rows_shifted", [False, True])
@pytest.mark.parametrize("m", [1, 2])
def test_batch_denominator_gradient_matches_plain_autograd(m, rows_shifted, rng):
    # The batch-wide log-sum-exp has a hand-written backward pass (two of them: the
    # symmetric kernel and the row-shifted fallback); check both against autograd through
    # the generic ops on the same (P, P) matrix.
    from concernet_ode.losses import _LogSumExpOthers, _self_excluded_logits

    points = torch.randn(40, m, generator=rng, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(40, generator=rng, dtype=torch.float64)
    ref = torch.logsumexp(_self_excluded_logits(points), dim=-1)
    got = _LogSumExpOthers.apply(points, rows_shifted)
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), points)
    (g_got,) = torch.autograd.grad((got * weights).sum(), points)
    assert torch.allclose(g_got, g_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_denominator_falls_back_for_a_point_far_from_all_others(dtype, rng):
    # One point 30 kernel widths from the rest: its unshifted row sum, e^-900, is far below
    # the floored terms, so the row-shifted path must take over and stay exact (and finite).
    from concernet_ode.losses import _LogSumExpOthers, _self_excluded_logits

    points = torch.randn(50, 2, generator=rng, dtype=torch.float64)
    points[7] += 30.0
    points = points.to(dtype).requires_grad_(True)
    weights = torch.randn(50, generator=rng, dtype=dtype)
    ref = torch.logsumexp(_self_excluded_logits(points), dim=-1)
    got = _LogSumExpOthers.apply(points)
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    assert torch.isfinite(got).all() and float(got[7].detach()) < -800
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), points)
    (g_got,) = torch.autograd.grad((got * weights).sum(), points)
    torch.testing.assert_close(g_got, g_ref, rtol=tol, atol=tol)


def test_batch_denominator_is_translation_invariant_in_float32(rng):
    # Features far from the origin (raw concentrations near 100) give the same loss and
    # gradient as the same features near it: the sums work on centred points.
    from concernet_ode.losses import _LogSumExpOthers

    base = torch.randn(300, 1, generator=rng, dtype=torch.float64)
    weights = torch.randn(300, generator=rng, dtype=torch.float64)
    out = []
    for shift in (0.0, 100.0):
        points = (base + shift).float().requires_grad_(True)
        loss = _LogSumExpOthers.apply(points)
        (g,) = torch.autograd.grad((loss * weights.float()).sum(), points)
        out.append((loss.double(), g.double()))
    (l0, g0), (l1, g1) = out
    # float32 rounds the shifted features themselves by up to 4e-6, so compare at that scale
    torch.testing.assert_close(l1, l0, rtol=0, atol=1e-4)
    torch.testing.assert_close(g1, g0, rtol=0, atol=1e-4 * float(g0.abs().max()))


def test_batch_denominator_takes_the_symmetric_path_on_trajectory_like_features(rng):
    # The fast path must be the usual one: standardised features where each point has its
    # own trajectory's points nearby (the test above covers the fallback's accuracy).
    from concernet_ode.losses import _LogSumExpOthers

    level = torch.randn(10, 1, 2, generator=rng)
    feats = standardize_features(level + 0.05 * torch.randn(10, 100, 2, generator=rng))
    points = feats.reshape(-1, 2).requires_grad_(True)
    assert _LogSumExpOthers.apply(points).grad_fn.symmetric
    far = points.detach().clone()
    far[0] += 40.0
    assert not _LogSumExpOthers.apply(far.requires_grad_(True)).grad_fn.symmetric
