"""Tests of the ranking loss and of fit_invariants' ranking option, on the damped spring."""

from __future__ import annotations

import math

import pytest
import torch

from concernet_ode import InvariantNet, TrajectoryData, fit_invariants, ranking_loss
from concernet_ode.systems import DampedSpring

# ----------------------------------------------------------------------------------------
# The loss itself


def ranking_reference(features: torch.Tensor, margin: float) -> torch.Tensor:
    """The definition, written as loops over trajectories, pairs of times and features."""
    terms = []
    n_traj, n_times, m = features.shape
    for b in range(n_traj):
        for s in range(n_times):
            for t in range(s + 1, n_times):
                for k in range(m):
                    terms.append(torch.relu(features[b, t, k] - features[b, s, k] + margin))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_matches_the_definition(rng, dtype, device, margin):
    feats = torch.randn(3, 5, 2, generator=rng, dtype=dtype).to(device)
    got = ranking_loss(feats, margin=margin)
    assert got.dtype == dtype and got.device == device and got.shape == ()
    torch.testing.assert_close(got, ranking_reference(feats, margin))


def test_hand_computed_value():
    rising = torch.arange(4.0).view(1, 4, 1)  # pair rises 1, 2, 3, 1, 2, 1: mean 10 / 6
    assert float(ranking_loss(rising)) == pytest.approx(10 / 6)
    assert float(ranking_loss(-rising)) == 0.0
    # falling by 1 per step: only the three neighbouring pairs fall by less than 1.5
    assert float(ranking_loss(-rising, margin=1.5)) == pytest.approx(3 * 0.5 / 6)


def test_pairs_stay_within_a_trajectory():
    # Each trajectory falls, but the second starts above where the first ends: pairs across
    # trajectories would rise, pairs within them do not.
    feats = torch.tensor([[3.0, 2.0, 1.0], [9.0, 8.0, 7.0]]).unsqueeze(-1)
    assert float(ranking_loss(feats)) == 0.0


def test_invariant_to_a_shift_and_penalises_only_later_rises(rng):
    feats = torch.randn(2, 6, 1, generator=rng)
    torch.testing.assert_close(ranking_loss(feats + 5.0), ranking_loss(feats))
    # Reversing time turns every fall into a rise.
    falling = torch.linspace(1, 0, 6).view(1, 6, 1)
    assert float(ranking_loss(falling)) == 0.0 < float(ranking_loss(falling.flip(1)))


def test_gradient_pushes_later_points_down():
    feats = torch.tensor([[[0.0], [1.0]]], requires_grad=True)
    ranking_loss(feats).backward()
    assert feats.grad[0, 0, 0] < 0 < feats.grad[0, 1, 0]  # raise the earlier, lower the later


@pytest.mark.parametrize(("features", "kwargs", "exc", "match"), [
    ([[[1.0]]], {}, TypeError, r"`features` must be a torch.Tensor of shape \(B, T, m\), got list"),
    (torch.zeros(4, 3), {}, ValueError, r"`features` must have shape \(B, T, m\).*got \(4, 3\)"),
    (torch.zeros(2, 1, 1), {}, ValueError, r"at least 2 times per trajectory to rank, got T = 1"),
    (torch.zeros(2, 3, 1), {"margin": -0.1}, ValueError,
     r"`margin` must be a finite number >= 0, got -0.1"),
    (torch.zeros(2, 3, 1), {"margin": math.nan}, ValueError, r"`margin` must be .* got nan"),
    (torch.zeros(2, 3, 1), {"margin": True}, ValueError, r"`margin` must be .* got True"),
])
def test_errors(features, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ranking_loss(features, **kwargs)


# ----------------------------------------------------------------------------------------
# fit_invariants(..., ranking_weight=...)

SYSTEM = DampedSpring()


@pytest.fixture(scope="module")
def damped_data() -> tuple[TrajectoryData, torch.Tensor, torch.Tensor]:
    train = SYSTEM.trajectories(30, t_end=3.0, n_times=20, noise=0.01, seed=0,
                                dtype=torch.float32)
    test = SYSTEM.trajectories(20, t_end=3.0, n_times=20, seed=1, dtype=torch.float32)
    x = test.x.reshape(-1, 2)
    return train, x, SYSTEM.invariants(x)[:, 0]


def learned_correlation(data, seed: int, ranking_weight: float) -> float:
    """Pearson correlation of a learned invariant with the true energy on fresh states."""
    train, x, energy = data
    torch.manual_seed(seed)
    model = InvariantNet(2, 1, hidden=32)
    fit_invariants(model, train, epochs=50, lr=3e-3, seed=seed, progress=False,
                   ranking_weight=ranking_weight)
    with torch.no_grad():
        h = model(x)[:, 0]
    return float(torch.corrcoef(torch.stack([h, energy]))[0, 1])


SEEDS = range(4)


def test_without_ranking_the_sign_is_arbitrary(damped_data):
    # The contrastive loss alone cannot tell E from -E: across seeds, the invariant is learned
    # well (|r| > 0.9) with both signs.
    corr = [learned_correlation(damped_data, s, 0.0) for s in SEEDS]
    assert max(corr) > 0.9, corr
    assert min(corr) < -0.9, corr


def test_with_ranking_the_invariant_decreases_like_the_energy(damped_data):
    # The same seeds, the same data: the ranking loss makes the sign positive in every seed.
    corr = [learned_correlation(damped_data, s, 1.0) for s in SEEDS]
    assert min(corr) > 0.9, corr


def test_ranking_weight_zero_is_the_plain_contrastive_fit(damped_data):
    train = damped_data[0][:10]
    histories = []
    for kwargs in ({}, {"ranking_weight": 0.0, "ranking_margin": 0.5}):
        torch.manual_seed(0)
        model = InvariantNet(2, 1, hidden=8)
        histories.append(fit_invariants(model, train, epochs=2, progress=False, **kwargs))
    assert histories[0] == histories[1]


def test_validation_loss_includes_the_ranking_term(damped_data):
    train = damped_data[0][:10]
    rising = TrajectoryData(train.t, train.x.flip(1), train.dxdt.flip(1))  # time reversed
    torch.manual_seed(0)
    model = InvariantNet(2, 1, hidden=8)
    plain = fit_invariants(model, train, epochs=1, lr=1e-12, progress=False, val_data=rising,
                           positives="sum")
    torch.manual_seed(0)
    model = InvariantNet(2, 1, hidden=8)
    ranked = fit_invariants(model, train, epochs=1, lr=1e-12, progress=False, val_data=rising,
                            ranking_weight=1.0)
    assert ranked["val_loss"][0] > plain["val_loss"][0]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"ranking_weight": -1.0}, r"`ranking_weight` must be a finite number >= 0, got -1.0"),
    ({"ranking_weight": math.inf}, r"`ranking_weight` must be .* got inf"),
    ({"ranking_margin": -0.5}, r"`ranking_margin` must be a finite number >= 0, got -0.5"),
])
def test_fit_invariants_errors(damped_data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_invariants(InvariantNet(2, 1, hidden=4), damped_data[0], epochs=1, progress=False,
                       **kwargs)
