"""fit_trajectories: a vector field trained on observed states alone, through odeint."""

from __future__ import annotations

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
    ({"starts": "free"}, ValueError, r"`starts` must be one of \('smoothed', 'observed'\)"),
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
