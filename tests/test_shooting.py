"""fit_trajectories: a vector field trained on observed states alone, through odeint."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from concernet_ode import MLP, ProjectedVectorField, TrajectoryData, fit_trajectories
from concernet_ode.systems import SpringMass

A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)  # a damped rotation


def _linear_data(noise: float, seed: int = 0) -> TrajectoryData:
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(20, 2, generator=gen, dtype=torch.float64)
    t = torch.linspace(0, 3, 31, dtype=torch.float64)
    x = odeint(lambda t, x: x @ A.T, x0, t, rtol=1e-10, atol=1e-12).movedim(0, 1)
    return TrajectoryData(t, x + noise * torch.randn(x.shape, generator=gen, dtype=x.dtype))


def test_recovers_a_linear_field_from_noisy_states_without_derivatives():
    data = _linear_data(noise=0.01)
    assert data.dxdt is None
    torch.manual_seed(0)
    model = nn.Linear(2, 2, bias=False).double()
    history = fit_trajectories(model, data, window=8, epochs=60, batch_size=32, lr=3e-2,
                               progress=False)
    assert history["loss"][-1] < history["loss"][0]
    err = (model.weight.detach() - A).abs().max()
    assert float(err) < 0.03, model.weight


def test_adjoint_gives_the_same_gradients():
    data = _linear_data(noise=0.0)
    torch.manual_seed(1)
    f = MLP(2, 2, hidden=8).double()
    x0, t = data.x[:4, 0], data.t[:6]
    grads = []
    for integrate in (odeint, odeint_adjoint):
        f.zero_grad()
        pred = integrate(f, x0, t, method="dopri5", rtol=1e-10, atol=1e-12,
                         **({"adjoint_params": tuple(f.parameters())}
                            if integrate is odeint_adjoint else {}))
        pred.square().sum().backward()
        grads.append([p.grad.clone() for p in f.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    # and through the trainer: one epoch each way from the same weights
    weights = []
    for adjoint in (False, True):
        torch.manual_seed(1)
        g = MLP(2, 2, hidden=8).double()
        fit_trajectories(g, data, window=4, epochs=1, batch_size=50, progress=False,
                         method="dopri5", rtol=1e-10, atol=1e-12, adjoint=adjoint)
        weights.append([p.detach().clone() for p in g.parameters()])
    for a, b in zip(*weights, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_projected_field_trains_with_its_invariant_frozen():
    spring = SpringMass()
    data = spring.trajectories(8, t_end=2.0, n_times=21, noise=0.01, seed=0)
    torch.manual_seed(0)
    field = ProjectedVectorField(MLP(2, 2, hidden=16).double(), spring.invariants)
    before = [p.detach().clone() for p in field.parameters()]
    fit_trajectories(field, TrajectoryData(data.t, data.x), window=5, epochs=2,
                     batch_size=32, progress=False)
    after = list(field.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"window": 1}, ValueError, "`window` must be an int >= 2, got 1"),
    ({"window": 40}, ValueError, r"`window` = 40 is longer than the trajectories \(31"),
    ({"starts": "free"}, ValueError,
     r"`starts` must be one of \('estimated', 'smoothed', 'observed'\)"),
    ({"lr": 0}, ValueError, "`lr` must be a positive finite number, got 0"),
    ({"adapter": 3}, TypeError, "`adapter` must be a LatentAdapter or None, got int"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        fit_trajectories(nn.Linear(2, 2).double(), _linear_data(0.0), progress=False,
                         **kwargs)


def test_bad_data_and_model():
    data = _linear_data(0.0)
    with pytest.raises(TypeError, match=r"`model` must be an nn\.Module with parameters"):
        fit_trajectories(lambda x: x, data)
    with pytest.raises(TypeError, match="`data` must be a TrajectoryData, got Tensor"):
        fit_trajectories(nn.Linear(2, 2), data.x)
    uneven = TrajectoryData(data.t**2, data.x)
    with pytest.raises(ValueError, match=r"`data\.t` must be uniformly spaced"):
        fit_trajectories(nn.Linear(2, 2).double(), uneven)
    with pytest.raises(ValueError, match="NaN or infinite"):
        TrajectoryData(data.t, data.x * torch.nan)


def test_estimated_starts_fit_closer_than_observed_ones_on_noisy_states():
    # Errors in the variables: with noisy window starts the fit is biased; free starts,
    # trained with the field, remove most of that bias (here on a linear field).
    data = _linear_data(noise=0.1, seed=3)
    errors = {}
    for starts in ("observed", "estimated"):
        torch.manual_seed(0)
        model = nn.Linear(2, 2, bias=False).double()
        fit_trajectories(model, data, window=3, epochs=40, batch_size=64, lr=3e-2,
                         starts=starts, progress=False)
        errors[starts] = float((model.weight.detach() - A).abs().max())
    # measured: 0.153 observed, 0.045 estimated
    assert errors["estimated"] < 0.06 and errors["estimated"] < 0.5 * errors["observed"], errors


def test_substeps_put_a_grid_through_every_sample_time():
    # rk4 at 8 steps per interval on a fast rotation matches the exact flow; at 1 it does not
    theta = 2.5  # radians per sample interval
    rot = torch.tensor([[0.0, theta], [-theta, 0.0]], dtype=torch.float64)
    t = torch.arange(6, dtype=torch.float64)
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    exact = odeint(lambda t, x: x @ rot.T, x0, t, method="dopri5", rtol=1e-12, atol=1e-12)
    data = TrajectoryData(t, exact.movedim(0, 1))
    losses = {}
    for substeps in (1, 8):
        model = nn.Linear(2, 2, bias=False).double()
        with torch.no_grad():
            model.weight.copy_(rot)
        # lr tiny: the first epoch's loss is that of the exact field
        history = fit_trajectories(model, data, window=6, epochs=1, lr=1e-12,
                                   starts="observed", substeps=substeps, progress=False)
        losses[substeps] = history["loss"][0]
    assert losses[8] < 1e-6 < losses[1], losses


def test_an_ensemble_trains_its_members_as_each_would_train_alone():
    # One fit_trajectories call on the product state of an EnsembleField (the trajectory
    # recipe's) gives each member the updates it gets alone, projection included: the
    # gradient through a rollout needs the curvature of the level sets (dJ/dx).
    from concernet_ode.reproduce.ensemble import Ensemble, EnsembleField

    spring = SpringMass()
    data = spring.trajectories(6, t_end=2.0, n_times=11, noise=0.01, seed=0)
    data = TrajectoryData(data.t, data.x)
    kwargs = {"window": 3, "epochs": 2, "batch_size": 16, "substeps": 2, "progress": False}
    torch.manual_seed(0)
    members = [MLP(2, 2, hidden=8).double() for _ in range(2)]
    alone = [copy.deepcopy(members[0]),
             ProjectedVectorField(copy.deepcopy(members[1]), spring.invariants)]
    for model in alone:
        fit_trajectories(model, data, **kwargs)
    ensemble = Ensemble(members)
    field = EnsembleField(ensemble, [None, spring.invariants])
    fit_trajectories(field, TrajectoryData(data.t, field.tile(data.x)), **kwargs)
    trained = ensemble.write_back()
    for member, single in zip(trained, (alone[0], alone[1].field), strict=True):
        for a, b in zip(member.parameters(), single.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"substeps": 0}, "`substeps` must be an int >= 1, got 0"),
    ({"substeps": 4, "method": "dopri5"}, r"`substeps` = 4 needs a fixed-grid `method`"),
    ({"substeps": 4, "options": {"step_size": 0.01}}, "both set the grid; pass one of them"),
])
def test_bad_substeps(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_trajectories(nn.Linear(2, 2).double(), _linear_data(0.0), progress=False,
                         **kwargs)
