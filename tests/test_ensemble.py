"""The Table 1 ensemble against the library's own pieces, member by member."""

from __future__ import annotations

import copy

import pytest
import torch
from torchdiffeq import odeint

from concernet_ode import MLP, ProjectedVectorField, fit_dynamics
from concernet_ode.reproduce.ensemble import Ensemble, EnsembleField, fit_ensemble
from concernet_ode.systems import Kepler, SpringMass


def _invariant(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).sum(-1, keepdim=True) + x[..., :1]


def _members(k: int, dim: int = 2, dtype: torch.dtype = torch.float32) -> list[MLP]:
    out = []
    for i in range(k):
        torch.manual_seed(i)
        out.append(MLP(dim, dim).to(dtype))
    return out


@pytest.mark.parametrize("schedule", [None, "cosine"])
def test_ensemble_training_equals_fit_dynamics_member_by_member(schedule):
    """Training side by side changes nothing: each member follows fit_dynamics alone."""
    data = SpringMass().trajectories(6, t_end=1.0, n_times=20, noise=0.01, seed=0,
                                     dtype=torch.float64)
    mlps = _members(2, dtype=torch.float64)
    ensemble = Ensemble(copy.deepcopy(mlps))
    fit_ensemble(EnsembleField(ensemble, [None, _invariant]), data, epochs=3, batch_size=16,
                 seed=5, lr_schedule=schedule)
    trained = ensemble.write_back()
    fit_dynamics(mlps[0], data, epochs=3, batch_size=16, seed=5, progress=False,
                 lr_schedule=schedule)
    fit_dynamics(ProjectedVectorField(mlps[1], _invariant), data, epochs=3, batch_size=16,
                 seed=5, progress=False, lr_schedule=schedule)
    start = _members(2, dtype=torch.float64)
    for ours, ref, init in zip(trained, mlps, start, strict=True):
        for p, q, p0 in zip(ours.parameters(), ref.parameters(), init.parameters(),
                            strict=True):
            assert float((p - p0).abs().max()) > 1e-4
            assert torch.allclose(p, q, rtol=1e-10, atol=1e-12)


def test_projectors_are_the_tangent_projection(rng):
    kep = Kepler()
    x = torch.randn(7, 4, generator=rng, dtype=torch.float64)
    v = torch.randn(7, 4, generator=rng, dtype=torch.float64)
    field = EnsembleField(Ensemble(_members(2, dim=4, dtype=torch.float64)),
                          [None, kep.invariants])
    proj = field.projectors(x)
    expected = ProjectedVectorField(lambda y: v, kep.invariants).project(x, v)
    assert torch.allclose((proj[1] @ v.unsqueeze(-1)).squeeze(-1), expected, atol=1e-12)
    assert torch.equal(proj[0], torch.eye(4, dtype=x.dtype).expand(7, 4, 4))


def test_ensemble_forward_equals_each_member(rng):
    mlps = _members(3, dim=4, dtype=torch.float64)
    x = torch.randn(3, 5, 7, 4, generator=rng, dtype=torch.float64)
    out = Ensemble(mlps)(x)
    for k, mlp in enumerate(mlps):
        assert torch.allclose(out[k], mlp(x[k]), rtol=1e-14, atol=1e-15)


def test_ensemble_field_integrates_like_each_member():
    mlps = _members(2, dtype=torch.float64)
    field = EnsembleField(Ensemble(mlps), [None, _invariant])
    x0 = torch.tensor([[0.5, 0.1], [-0.3, 0.7]], dtype=torch.float64)
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    opts = {"rtol": 1e-10, "atol": 1e-12}
    with torch.no_grad():
        both = field.untile(odeint(field, field.tile(x0), t, **opts))
        alone = odeint(ProjectedVectorField(mlps[1], _invariant), x0, t, **opts)
        plain = odeint(mlps[0], x0, t, **opts)
    assert torch.allclose(both[..., 1, :], alone, atol=1e-8)
    assert torch.allclose(both[..., 0, :], plain, atol=1e-8)
    # The projected member keeps its invariant; the plain one does not.
    drift = (_invariant(both[..., 1, :]) - _invariant(x0)).abs().max()
    assert drift < 1e-7 < (_invariant(both[..., 0, :]) - _invariant(x0)).abs().max()


def test_write_back_copies_the_trained_weights():
    mlps = _members(2)
    ensemble = Ensemble(mlps)
    with torch.no_grad():
        ensemble.weights[0][1].add_(1.0)
    trained = ensemble.write_back()
    assert trained[1] is mlps[1]
    assert torch.equal(mlps[1].net[0].weight, ensemble.weights[0][1])
    assert not torch.equal(mlps[0].net[0].weight, mlps[1].net[0].weight)


def test_double_copy_evaluates_in_float64(rng):
    ensemble = copy.deepcopy(Ensemble(_members(2))).double()
    x = torch.randn(2, 3, 2, generator=rng, dtype=torch.float64)
    assert ensemble(x).dtype == torch.float64


def test_bad_members_and_projections():
    with pytest.raises(ValueError, match="non-empty sequence of modules of one type"):
        Ensemble([])
    with pytest.raises(ValueError, match="same parameter names and shapes"):
        Ensemble([MLP(2, 2), MLP(3, 3)])
    with pytest.raises(ValueError, match="one entry per member"):
        EnsembleField(Ensemble(_members(2)), [None])
    with pytest.raises(ValueError, match=r"shape \(K, \.\.\., n\) with K = 2"):
        Ensemble(_members(2))(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., K \* n\) with K = 2"):
        EnsembleField(Ensemble(_members(2)), [None, None]).untile(torch.zeros(4, 3))
