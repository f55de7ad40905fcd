"""Tests of flow_alignment_loss and fit_invariants(flow_weight=...)."""

from __future__ import annotations

import pytest
import torch

from concernet_ode import InvariantNet, fit_invariants, flow_alignment_loss
from concernet_ode._jacobian import invariant_jacobian
from concernet_ode.systems import ChemicalKinetics


def _rotation(x):
    return torch.stack([2 * x[..., 1], -2 * x[..., 0]], -1)


def test_zero_for_a_true_invariant_and_one_for_the_flow_direction(rng):
    x = torch.randn(50, 2, generator=rng, dtype=torch.float64)
    v = _rotation(x)
    with torch.no_grad():
        assert float(flow_alignment_loss(lambda x: x.pow(2).sum(-1), x, v)) < 1e-28
    # A linear H whose gradient is the (constant) flow itself: maximally misaligned.
    const = torch.tensor([[1.0, 2.0]], dtype=torch.float64).expand(5, 2)
    loss = flow_alignment_loss(lambda x: x[..., 0] + 2 * x[..., 1], torch.zeros(5, 2,
                               dtype=torch.float64), const)
    assert float(loss) == pytest.approx(1.0)


def test_matches_the_cosine_by_hand(rng):
    x = torch.randn(7, 3, generator=rng, dtype=torch.float64)
    v = torch.randn(7, 3, generator=rng, dtype=torch.float64)

    def H(x):
        return torch.stack([x.pow(3).sum(-1), torch.sin(x[..., 0]) * x[..., 2]], -1)

    _, jac = invariant_jacobian(H, x)
    cos = torch.nn.functional.cosine_similarity(jac, v.unsqueeze(-2).expand_as(jac), dim=-1)
    torch.testing.assert_close(flow_alignment_loss(H, x, v), cos.pow(2).mean())


def test_vanishing_vectors_count_as_aligned():
    x = torch.zeros(4, 2)
    assert float(flow_alignment_loss(lambda x: x.pow(2).sum(-1), x, torch.ones(4, 2))) == 0.0


def test_shape_error_is_named():
    with pytest.raises(ValueError, match=r"`dxdt` must be a tensor of the shape of `x`, \(4, 2\)"):
        flow_alignment_loss(lambda x: x.sum(-1), torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"`flow_weight` must be a finite number >= 0, got -1"):
        data = ChemicalKinetics().trajectories(4, t_end=1.0, n_times=5, seed=0)
        fit_invariants(InvariantNet(2, 1), data, epochs=1, flow_weight=-1, progress=False)


def test_flow_weight_sharpens_the_gradient_direction():
    # Chemical kinetics: the learned invariant's gradient should point along (1, 1).
    system = ChemicalKinetics()
    data = system.trajectories(20, t_end=3.0, n_times=10, seed=0, dtype=torch.float32)
    errors = {}
    for weight in (0.0, 100.0):
        torch.manual_seed(0)
        H = InvariantNet(2, 1, hidden=32, activation="relu")
        fit_invariants(H, data, epochs=150, batch_size=10, normalize=False, seed=0,
                       progress=False, flow_weight=weight)
        _, jac = invariant_jacobian(H, data.x.reshape(-1, 2))
        g = jac[..., 0, :]
        cos = g.sum(-1).abs() / (g.norm(dim=-1) * 2 ** 0.5)
        errors[weight] = float((1 - cos).mean())
    assert errors[100.0] < 0.5 * errors[0.0], errors
