"""Tests of Table 1's metrics, the invariant fidelity (R^2 of a readout) and the tilt."""

from __future__ import annotations

import pytest
import torch

from concernet_ode import conservation_violation, invariant_fidelity, trajectory_mse
from concernet_ode.metrics import Evaluation, evaluate, gradient_tilt
from concernet_ode.systems import SpringMass


def energy(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).sum(-1)


# ---------------------------------------------------------------- invariant_fidelity


def test_fidelity_is_one_for_an_affine_map(rng, dtype):
    true = torch.randn(200, 2, generator=rng, dtype=dtype)
    mix = torch.tensor([[2.0, -1.0, 0.5], [0.3, 4.0, 1.0]], dtype=dtype)
    learned = true @ mix + torch.tensor([5.0, -3.0, 1.0], dtype=dtype)
    r2 = invariant_fidelity(learned, true)
    assert r2.shape == (2,)
    assert r2.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-5  # round-off of the float32 inputs
    assert torch.all((r2 - 1).abs() < tol)


def test_fidelity_known_value_for_a_quadratic_readout():
    # y = u^2 from learned = u on the symmetric grid {-2,...,2}: the best line is constant
    # (u and u^2 are uncorrelated there), so R^2 = 0 exactly.
    u = torch.arange(-2.0, 3.0, dtype=torch.float64).unsqueeze(-1)
    assert abs(float(invariant_fidelity(u, u**2))) < 1e-12
    # On {0, 1, 2}: u^2 = (0, 1, 4) against u gives the line 2u - 1/3; residuals (1/3, -2/3,
    # 1/3) sum of squares 2/3; total sum of squares 26/3; R^2 = 1 - (2/3)/(26/3) = 12/13.
    u = torch.arange(0.0, 3.0, dtype=torch.float64).unsqueeze(-1)
    assert abs(float(invariant_fidelity(u, u**2)) - 12 / 13) < 1e-12


def test_fidelity_is_squared_correlation_for_one_feature(rng):
    a = torch.randn(300, 1, generator=rng, dtype=torch.float64)
    b = a + 0.5 * torch.randn(300, 1, generator=rng, dtype=torch.float64)
    corr = torch.corrcoef(torch.cat([a, b], 1).T)[0, 1]
    assert abs(float(invariant_fidelity(a, b)) - float(corr**2)) < 1e-12


def test_fidelity_uses_all_learned_features(rng):
    z = torch.randn(300, 2, generator=rng, dtype=torch.float64)
    true = (z[:, :1] - 2 * z[:, 1:])
    assert float(invariant_fidelity(z, true)) > 1 - 1e-12
    assert float(invariant_fidelity(z[:, :1], true)) < 0.5


def test_fidelity_ignores_gradients(rng):
    learned = torch.randn(50, 1, generator=rng, requires_grad=True)
    r2 = invariant_fidelity(learned, 2 * learned.detach())
    assert not r2.requires_grad


def test_fidelity_device_follows_true(device, rng):
    true = torch.randn(50, 1, generator=rng).to(device)
    assert invariant_fidelity(true.clone(), true).device == true.device


def test_fidelity_rejects_non_tensor():
    with pytest.raises(TypeError, match=r"`learned` must be a torch.Tensor.*got list"):
        invariant_fidelity([[1.0]], torch.zeros(3, 1))


@pytest.mark.parametrize(("learned", "true", "name"), [
    (torch.zeros(10), torch.zeros(10, 1), "learned"),
    (torch.zeros(10, 1), torch.zeros(10, 1, 1), "true"),
])
def test_fidelity_rejects_wrong_rank(learned, true, name):
    with pytest.raises(ValueError, match=f"`{name}` must be a 2-D tensor"):
        invariant_fidelity(learned, true)


@pytest.mark.parametrize(("learned_shape", "true_shape"), [((10, 1), (9, 1)), ((3, 2), (3, 1))])
def test_fidelity_rejects_mismatched_or_too_few_rows(learned_shape, true_shape):
    with pytest.raises(ValueError, match=r"same number N > m1 \+ 1 of rows"):
        invariant_fidelity(torch.randn(learned_shape), torch.randn(true_shape))


def test_fidelity_rejects_constant_true_invariant(rng):
    true = torch.cat([torch.randn(20, 1, generator=rng), torch.ones(20, 1)], 1)
    with pytest.raises(ValueError, match="constant column"):
        invariant_fidelity(torch.randn(20, 1, generator=rng), true)


def test_fidelity_rejects_nan():
    learned = torch.zeros(5, 1)
    learned[2] = float("nan")
    with pytest.raises(ValueError, match="`learned` contains NaN"):
        invariant_fidelity(learned, torch.arange(5.0).unsqueeze(-1))


def test_cubic_readout_sees_through_a_curved_invertible_map(rng):
    # Two invariants learned as a curved invertible map of the true ones: the affine readout
    # falls short, the held-out cubic one recovers them.
    true = torch.rand(2000, 2, generator=rng, dtype=torch.float64) + 0.5
    learned = torch.stack([true[:, 0].log() + true[:, 1], true[:, 1] ** 2], -1)
    affine = invariant_fidelity(learned, true)
    cubic = invariant_fidelity(learned, true, degree=3)
    assert float(affine.min()) < 0.99
    assert float(cubic.min()) > 0.999
    # scored on the half it was not fitted on: a readout of pure noise scores no better
    noise = torch.randn(2000, 2, generator=rng, dtype=torch.float64)
    assert float(invariant_fidelity(noise, true, degree=3).max()) < 0.01
    assert torch.equal(invariant_fidelity(learned, true, degree=3, seed=1),
                       invariant_fidelity(learned, true, degree=3, seed=1))


def test_readout_errors(rng):
    with pytest.raises(ValueError, match=r"`degree` must be an int >= 1 \(1: affine"):
        invariant_fidelity(torch.zeros(10, 1), torch.zeros(10, 1), degree=0)
    with pytest.raises(ValueError, match=r"N >= 20 \(twice the 10 coefficients of a degree-3"):
        invariant_fidelity(torch.randn(19, 2, generator=rng), torch.randn(19, 1), degree=3)


# ---------------------------------------------------------------- gradient_tilt


def body(x: torch.Tensor) -> torch.Tensor:
    """|m|^2 and a rigid body's energy with moments (1, 2, 3)."""
    sq = x.square()
    return torch.stack([sq.sum(-1), (sq / sq.new_tensor([1.0, 2.0, 3.0])).sum(-1)], -1)


def test_tilt_is_zero_for_any_invertible_map_of_the_invariants(rng):
    x = torch.randn(50, 3, generator=rng, dtype=torch.float64)

    def remapped(x):
        h = body(x)
        return torch.stack([h[..., 0] + h[..., 1] ** 2, torch.exp(h[..., 1])], -1)

    tilt = gradient_tilt(remapped, body, x)
    assert tilt.shape == (50, 2) and tilt.dtype == torch.float64
    assert float(tilt.max()) < 1e-12


def test_tilt_known_angles(rng):
    # H = x0 against the plane span(e0, e1): one invariant inside it (angle 0); the plane
    # span(e0, e2) against span(e0, e1): the angles 0 and 90 degrees, largest first.
    x = torch.randn(5, 3, generator=rng, dtype=torch.float64)
    plane = lambda x: x[..., :2]  # noqa: E731
    assert float(gradient_tilt(lambda x: x[..., 0], plane, x).max()) < 1e-15
    other = lambda x: x[..., ::2]  # noqa: E731
    assert torch.allclose(gradient_tilt(other, plane, x), x.new_tensor([[1.0, 0.0]] * 5))
    # a direction tilted by 30 degrees out of the plane
    tilted = lambda x: x[..., 0] * 3**0.5 / 2 + x[..., 2] / 2  # noqa: E731
    assert torch.allclose(gradient_tilt(tilted, plane, x), x.new_full((5, 1), 0.5))


def test_tilt_counts_a_lost_gradient_as_a_right_angle(rng):
    x = torch.randn(4, 3, generator=rng, dtype=torch.float64)
    lost = lambda x: torch.stack([x[..., 0], 0 * x[..., 1]], -1)  # noqa: E731
    tilt = gradient_tilt(lost, lambda x: x[..., :2], x)
    assert torch.allclose(tilt, x.new_tensor([[1.0, 0.0]] * 4))


# ---------------------------------------------------------------- trajectory_mse / violation


def test_trajectory_mse_hand_computed():
    true = torch.zeros(2, 1, 2, dtype=torch.float64)  # (T, B, n)
    pred = torch.tensor([[[1.0, 3.0]], [[0.0, 2.0]]], dtype=torch.float64)
    # squared errors (1, 9) at t0 and (0, 4) at t1: mean 14/4; per time (5, 2).
    assert float(trajectory_mse(pred, true)) == 3.5
    assert trajectory_mse(pred, true, time_dim=0).tolist() == [5.0, 2.0]
    assert trajectory_mse(pred, true, time_dim=-3).tolist() == [5.0, 2.0]


def test_conservation_violation_hand_computed():
    true = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)  # H = 1 throughout
    pred = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]], dtype=torch.float64)  # H = 1, then 4
    assert float(conservation_violation(pred, true, energy)) == 4.5  # (0 + 9) / 2
    assert conservation_violation(pred, true, energy, time_dim=0).tolist() == [0.0, 9.0]


def test_conservation_violation_averages_over_invariants():
    def two(x):
        return torch.stack([x[..., 0], 2 * x[..., 1]], -1)

    true = torch.zeros(3, 2, 2)
    pred = torch.ones(3, 2, 2)
    # differences (1, 2) at every point: mean of squares (1 + 4) / 2.
    assert float(conservation_violation(pred, true, two)) == 2.5


def test_time_curves_along_dim_one(rng):
    pred = torch.randn(4, 7, 3, generator=rng)  # (B, T, n) layout of TrajectoryData
    true = torch.zeros_like(pred)
    curve = trajectory_mse(pred, true, time_dim=1)
    assert curve.shape == (7,)
    assert torch.allclose(curve, pred.pow(2).mean(dim=(0, 2)))
    assert torch.allclose(curve.mean(), trajectory_mse(pred, true))


def test_metrics_follow_dtype(dtype):
    x = torch.ones(2, 3, 2, dtype=dtype)
    assert trajectory_mse(x, 2 * x).dtype == dtype
    assert conservation_violation(x, 2 * x, energy).dtype == dtype


def test_metrics_reject_non_tensor():
    with pytest.raises(TypeError, match=r"`pred` must be a torch.Tensor, got list"):
        trajectory_mse([1.0], torch.zeros(1))
    with pytest.raises(TypeError, match=r"`true` must be a torch.Tensor, got float"):
        conservation_violation(torch.zeros(1), 1.0, energy)


def test_metrics_reject_shape_mismatch():
    with pytest.raises(ValueError, match=r"same shape, got \(2, 3\) and \(3, 2\)"):
        trajectory_mse(torch.zeros(2, 3), torch.zeros(3, 2))


@pytest.mark.parametrize("time_dim", [3, -4, 1.0])
def test_metrics_reject_bad_time_dim(time_dim):
    x = torch.zeros(2, 3, 2)
    with pytest.raises(ValueError, match=r"`time_dim` must be None or an int in \[-3, 3\)"):
        trajectory_mse(x, x, time_dim=time_dim)


# ---------------------------------------------------------------- evaluate


def test_evaluate_exact_model_scores_zero():
    spring = SpringMass()
    x0 = spring.sample_initial(4, seed=0)
    t = torch.linspace(0, 5, 51, dtype=torch.float64)
    ev = evaluate(spring.vector_field, x0, t, spring.invariants,
                  true=spring.solve(x0, t).movedim(-2, 0))
    assert isinstance(ev, Evaluation)
    assert ev.mse < 1e-12 and ev.violation < 1e-14
    assert ev.mse_curve.shape == (51,) and ev.violation_per_traj.shape == (4,)
    slow = evaluate(lambda t, x: 0.9 * spring.vector_field(t, x), x0, t, spring.invariants,
                    true_field=spring.vector_field)
    assert slow.mse > 1e-3 and slow.violation < 1e-12  # a slower rotation keeps the radius
    assert float(slow.mse_curve[-1]) > float(slow.mse_curve[1])


def test_evaluate_errors():
    spring = SpringMass()
    x0 = spring.sample_initial(2, seed=0)
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="pass exactly one of `true`"):
        evaluate(spring.vector_field, x0, t, spring.invariants)
    with pytest.raises(ValueError, match=r"`x0` must be a tensor of shape \(B, n\)"):
        evaluate(spring.vector_field, x0[0], t, spring.invariants,
                 true_field=spring.vector_field)
    with pytest.raises(ValueError, match=r"`pred` must have shape \(T, B, n\)"):
        Evaluation.from_trajectories(t[:2], torch.zeros(3, 2, 2), torch.zeros(3, 2, 2),
                                     spring.invariants)
