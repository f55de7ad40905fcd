"""Tests of the symbolic readout and of the count of independent invariants."""

from __future__ import annotations

import numpy as np
import pytest
import sympy
import torch

from concernet_ode import InvariantNet, TrajectoryData
from concernet_ode.discovery import (
    InvariantCount,
    SymbolicReadout,
    estimate_num_invariants,
    symbolic_readout,
)
from concernet_ode.systems import ChemicalKinetics, SpringMass


def _disguise(h: torch.Tensor, rng: torch.Generator, rel_noise: float = 1e-3) -> torch.Tensor:
    """A learned invariant as a network gives it: scaled, shifted, slightly noisy."""
    y = -2.7 * h + 4.1
    return y + rel_noise * y.std() * torch.randn(y.shape, generator=rng, dtype=y.dtype)


def _spring_states(rng):
    return SpringMass().trajectories(40, t_end=3.0, n_times=30, seed=1).x.reshape(-1, 2)


def _chemical_states(rng):
    return ChemicalKinetics().trajectories(40, t_end=3.0, n_times=30, seed=1).x.reshape(-1, 2)


def _kepler_states(rng):
    return 2 * torch.rand(1200, 4, generator=rng, dtype=torch.float64) - 1


def _body_states(rng):
    return torch.randn(1200, 3, generator=rng, dtype=torch.float64)


LAWS = [
    ("q p", _spring_states, lambda x: x[:, 0] ** 2 + x[:, 1] ** 2,
     {"q**2": 1.0, "p**2": 1.0}),
    ("A C", _chemical_states, lambda x: x[:, 0] + x[:, 1], {"A": 1.0, "C": 1.0}),
    ("x y vx vy", _kepler_states, lambda x: x[:, 0] * x[:, 3] - x[:, 1] * x[:, 2],
     {"vy*x": 1.0, "vx*y": -1.0}),
    ("m1 m2 m3", _body_states, lambda x: x[:, 0] ** 2 + x[:, 1] ** 2 / 2 + x[:, 2] ** 2 / 3,
     {"m1**2": 1.0, "m2**2": 0.5, "m3**2": 1 / 3}),
]


@pytest.mark.parametrize(("names", "states", "law", "expected"), LAWS,
                         ids=["spring", "chemical", "angular-momentum", "rigid-body"])
def test_readout_recovers_the_law(names, states, law, expected, rng):
    x = states(rng)
    readout = symbolic_readout(_disguise(law(x), rng), x, names=names.split())
    assert isinstance(readout, SymbolicReadout)
    # Up to the affine freedom: the sign is free, so compare to +-expected.
    coef = readout.coefficients
    assert set(coef) == set(expected)
    sign = 1.0 if np.sign(coef[next(iter(expected))]) == np.sign(next(iter(
        expected.values()))) else -1.0
    for mono, value in expected.items():
        assert abs(sign * coef[mono] - value) <= 0.02 * abs(value)
    assert max(abs(c) for c in coef.values()) == 1.0
    assert readout.r2 > 0.999
    assert readout.expression.free_symbols <= set(sympy.symbols(names.split()))


def test_readout_expression_is_rounded_and_has_no_constant(rng):
    x = torch.randn(500, 2, generator=rng, dtype=torch.float64)
    readout = symbolic_readout(3 * (x**2).sum(-1) - 1, x, names=("q", "p"))
    q, p = sympy.symbols("q p")
    assert sympy.simplify(readout.expression - (q**2 + p**2)) == 0
    assert "R^2" in str(readout)


def test_readout_of_a_module_and_of_numpy_values(rng):
    torch.manual_seed(0)
    net = InvariantNet(2, 1, hidden=8).double()
    x = torch.randn(400, 2, generator=rng, dtype=torch.float64)
    from_module = symbolic_readout(net, x, names=("a", "b"), threshold=0.0)
    with torch.no_grad():
        values = net(x).numpy()
    from_numpy = symbolic_readout(values, x.numpy(), names=("a", "b"), threshold=0.0)
    assert from_module.coefficients == pytest.approx(from_numpy.coefficients)
    assert 0 < from_module.r2 < 1  # a random network is not a cubic polynomial


def test_readout_threshold_is_scale_free(rng):
    x = torch.randn(800, 2, generator=rng, dtype=torch.float64)
    h = x[:, 0] ** 2 + x[:, 1] ** 2
    a = symbolic_readout(h, x, names=("q", "p"))
    b = symbolic_readout(1e6 * h, 1e-3 * x, names=("q", "p"))
    assert set(a.coefficients) == set(b.coefficients) == {"q**2", "p**2"}


def test_readout_errors(rng):
    x = torch.randn(50, 2, generator=rng, dtype=torch.float64)
    y = x.pow(2).sum(-1)
    with pytest.raises(TypeError, match=r"`x` must be a torch.Tensor or a numpy array, got list"):
        symbolic_readout(y, x.tolist(), names=("q", "p"))
    with pytest.raises(TypeError, match=r"`fn` must be a torch.Tensor or a numpy array, got str"):
        symbolic_readout("H", x, names=("q", "p"))
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, n\), got \(50,\)"):
        symbolic_readout(y, x[:, 0], names=("q",))
    with pytest.raises(ValueError, match="`names` must be a sequence of 2 names"):
        symbolic_readout(y, x, names=("q",))
    with pytest.raises(ValueError, match="`names` must be a sequence of 2 names"):
        symbolic_readout(y, x, names="qp")
    with pytest.raises(ValueError, match="`max_degree` must be an int >= 1, got 0"):
        symbolic_readout(y, x, names=("q", "p"), max_degree=0)
    with pytest.raises(ValueError, match=r"`threshold` must be a number in \[0, 1\), got 1"):
        symbolic_readout(y, x, names=("q", "p"), threshold=1)
    with pytest.raises(ValueError, match=r"one value per state, shape \(50,\).*got \(50, 2\)"):
        symbolic_readout(lambda x: x, x, names=("q", "p"))
    with pytest.raises(ValueError, match="constant or not finite"):
        symbolic_readout(torch.ones(50), x, names=("q", "p"))
    with pytest.raises(ValueError, match="no monomial of degree <= 3 survives"):
        symbolic_readout(y, x, names=("q", "p"), threshold=0.9)


# ---------------------------------------------------------------- estimate_num_invariants


@pytest.mark.parametrize("system", [SpringMass(), ChemicalKinetics()], ids=lambda s: s.name)
def test_estimate_num_invariants_finds_one(system):
    train, _ = system.train_data(0, dtype=torch.float32)
    result = estimate_num_invariants(train, progress=False)  # 150 epochs
    assert isinstance(result, InvariantCount)
    assert result.count == 1
    assert result.flow_fractions.shape == (2,)
    assert result.flow_fractions[0] < 0.01  # the counted feature is conserved


def test_estimate_num_invariants_does_not_count_an_untrained_feature():
    # One epoch leaves the network an arbitrary function: half its gradient lies along the
    # flow, so nothing is counted (the count is not just a cap at n - 1 = 1).
    train, _ = SpringMass().train_data(0, dtype=torch.float32)
    result = estimate_num_invariants(train, epochs=1, progress=False)
    assert result.count == 0
    assert result.flow_fractions.min() > 0.3


def euler_rigid_body(n_traj: int, seed: int) -> TrajectoryData:
    """Free rigid body (Euler's equations, moments 1, 2, 3): two invariants in 3-d."""
    from torchdiffeq import odeint

    inertia = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)

    def field(t, m):
        return torch.linalg.cross(m, m / inertia)

    gen = torch.Generator().manual_seed(seed)
    m0 = torch.randn(n_traj, 3, generator=gen, dtype=torch.float64)
    t = torch.linspace(0, 3, 30, dtype=torch.float64)
    x = odeint(field, m0, t, rtol=1e-9, atol=1e-9).transpose(0, 1)
    return TrajectoryData(t, x, field(t, x)).with_noise(0.01, seed=seed).to(torch.float32)


@pytest.mark.slow
def test_estimate_num_invariants_finds_two_for_a_rigid_body():
    result = estimate_num_invariants(euler_rigid_body(40, 0), epochs=400, progress=False)
    assert result.count == 2


def test_estimate_num_invariants_is_deterministic():
    train, _ = SpringMass().train_data(1, dtype=torch.float32)
    a = estimate_num_invariants(train[:6], epochs=2, progress=False)
    b = estimate_num_invariants(train[:6], epochs=2, progress=False)
    assert torch.equal(a.singular_ratios, b.singular_ratios)


def test_estimate_num_invariants_errors():
    data = TrajectoryData(torch.arange(3.0), torch.randn(4, 3, 2), torch.randn(4, 3, 2))
    with pytest.raises(TypeError, match="`data` must be a TrajectoryData, got Tensor"):
        estimate_num_invariants(data.x)
    with pytest.raises(ValueError, match=r"`max_m` must be an int in \[1, 2\].*got 3"):
        estimate_num_invariants(data, max_m=3)
    with pytest.raises(ValueError, match=r"`rtol` must be a number in \(0, 1\), got 0"):
        estimate_num_invariants(data, rtol=0)
