"""Tests of normal_flow_loss and refine_invariants."""

from __future__ import annotations

import pytest
import torch

from concernet_ode import InvariantNet, fit_invariants, normal_flow_loss, refine_invariants
from concernet_ode._jacobian import invariant_jacobian
from concernet_ode.systems import ChemicalKinetics, Kepler


def _energy(x):
    return x.pow(2).sum(-1)


def test_zero_for_true_invariants_and_the_radial_flow_otherwise(rng):
    x = torch.randn(50, 2, generator=rng, dtype=torch.float64)
    rotation = torch.stack([2 * x[..., 1], -2 * x[..., 0]], -1)
    with torch.no_grad():
        assert float(normal_flow_loss(_energy, x, rotation)) < 1e-28
        # The flow 3 x is all normal to the circles: the loss is the mean of |3 x|^2.
        loss = normal_flow_loss(_energy, x, 3 * x)
    torch.testing.assert_close(loss, (9 * x.pow(2).sum(-1)).mean())
    # Two invariants (Kepler's E and L) along the true flow: nothing is normal to both.
    kepler = Kepler()
    y = kepler.sample_initial(20, seed=0).double()
    with torch.no_grad():
        assert float(normal_flow_loss(kepler.invariants, y, kepler.vector_field(0.0, y))) < 1e-24


def test_one_invariant_agrees_with_the_general_path(rng):
    x = torch.randn(40, 3, generator=rng, dtype=torch.float64)
    v = torch.randn(40, 3, generator=rng, dtype=torch.float64)

    def H(x):
        return torch.sin(x[..., 0]) * x[..., 1] + x[..., 2].pow(3)

    def twice(x):  # the same invariant twice: its second row is dependent and dropped
        return torch.stack([H(x), 2 * H(x)], -1)

    torch.testing.assert_close(normal_flow_loss(H, x, v), normal_flow_loss(twice, x, v),
                               rtol=1e-12, atol=0)
    # A critical point (zero gradient) counts as no normal flow, on either path.
    zero = torch.zeros(3, 3, dtype=torch.float64)
    with torch.no_grad():
        assert float(normal_flow_loss(_energy, zero, torch.ones_like(zero))) == 0.0
        assert float(normal_flow_loss(lambda x: torch.stack([_energy(x)] * 2, -1), zero,
                                      torch.ones_like(zero))) == 0.0


def test_depends_on_the_level_sets_only(rng):
    x = torch.randn(30, 3, generator=rng, dtype=torch.float64)
    v = torch.randn(30, 3, generator=rng, dtype=torch.float64)

    def H(x):
        return torch.stack([x.pow(3).sum(-1), torch.sin(x[..., 0]) * x[..., 2]], -1)

    def relabelled(x):  # an invertible map of the two invariants: same level sets
        h = H(x)
        return torch.stack([5 * h[..., 0] - 2 * h[..., 1], torch.exp(h[..., 1])], -1)

    torch.testing.assert_close(normal_flow_loss(relabelled, x, v), normal_flow_loss(H, x, v),
                               rtol=1e-10, atol=0)
    # And it is the squared length of v's projection onto the row space of dH/dx.
    _, jac = invariant_jacobian(H, x)
    coef = torch.linalg.lstsq(jac.mT, v.unsqueeze(-1)).solution
    normal = (jac.mT @ coef).squeeze(-1)
    torch.testing.assert_close(normal_flow_loss(H, x, v), normal.pow(2).sum(-1).mean())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"`dxdt` must be a tensor of the shape of `x`, \(4, 2\)"):
        normal_flow_loss(_energy, torch.zeros(4, 2), torch.zeros(4, 3))
    data = ChemicalKinetics().trajectories(4, t_end=1.0, n_times=5, seed=0)
    with pytest.raises(TypeError, match=r"`model` must be an nn\.Module"):
        refine_invariants(_energy, data, epochs=1, progress=False)
    with pytest.raises(TypeError, match="`data` must be a TrajectoryData"):
        refine_invariants(InvariantNet(2, 1), data.x, epochs=1, progress=False)
    with pytest.raises(ValueError, match="`lr` must be a positive finite number, got 0"):
        refine_invariants(InvariantNet(2, 1), data, epochs=1, lr=0, progress=False)


def _tilt(H, x):
    """Mean 1 - |cos| between grad H and the chemical system's true gradient (1, 1)."""
    with torch.no_grad():
        g = invariant_jacobian(H, x)[1][..., 0, :]
    return float((1 - g.sum(-1).abs() / (g.norm(dim=-1) * 2 ** 0.5)).mean())


def _contrastive_chemical():
    system = ChemicalKinetics()
    data = system.trajectories(20, t_end=3.0, n_times=10, noise=0.01, seed=0,
                               dtype=torch.float32)
    torch.manual_seed(0)
    H = InvariantNet(2, 1, hidden=32, activation="relu")
    fit_invariants(H, data, epochs=100, batch_size=10, normalize=False, seed=0, progress=False)
    return system, data, H


def test_refinement_straightens_the_level_sets_and_is_deterministic():
    system, data, H = _contrastive_chemical()
    fresh = system.sample_initial(500, seed=1, evaluation=True).float()
    before = _tilt(H, fresh)
    state = {k: v.clone() for k, v in H.state_dict().items()}
    history = refine_invariants(H, data, epochs=40, batch_size=50, lr=1e-3, seed=0,
                                progress=False)
    after = _tilt(H, fresh)
    assert len(history["loss"]) == 40
    assert history["loss"][-1] < 0.5 * history["loss"][0], history["loss"][::10]
    assert after < 0.5 * before, (before, after)
    again = InvariantNet(2, 1, hidden=32, activation="relu")
    again.load_state_dict(state)
    refine_invariants(again, data, epochs=40, batch_size=50, lr=1e-3, seed=0, progress=False)
    for a, b in zip(H.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
