"""Tests of DissipativeVectorField: the guarantee (property-based), conventions, odeint, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchdiffeq import odeint

from concernet_ode import MLP, DissipativeVectorField, InvariantNet, fit_dynamics, fit_invariants
from concernet_ode._jacobian import invariant_jacobian
from concernet_ode.systems import DampedSpring

from .conftest import RTOL

# ----------------------------------------------------------------------------------------
# Random fields and Lyapunov-like functions


class QuadraticV(torch.nn.Module):
    """V(x) = |A x|^2 / 2 + sin(c^T x) / 4: smooth, generic, trainable, shape (...,)."""

    def __init__(self, n: int, gen: torch.Generator, dtype: torch.dtype):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(n, n, generator=gen, dtype=dtype))
        self.c = torch.nn.Parameter(torch.randn(n, generator=gen, dtype=dtype))

    def forward(self, x):
        return 0.5 * (x @ self.a.T).pow(2).sum(-1) + 0.25 * torch.sin(x @ self.c)


def make_problem(seed: int, n: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(seed)
    V = QuadraticV(n, gen, dtype)
    w = torch.randn(n, n, generator=gen, dtype=dtype)

    def f(t, x):
        return 2 * torch.tanh(x @ w.T) + x.flip(-1)

    return f, V, gen


problems = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31 - 1),
    "n": st.integers(1, 5),
    "alpha": st.sampled_from([0.0, 0.1, 1.0, 5.0]),
    "batch": st.lists(st.integers(1, 4), min_size=0, max_size=2),
    "dtype": st.sampled_from([torch.float32, torch.float64]),
})


def rate(V, x, v):
    """dV/dt along v, with grad V from the shared Jacobian helper."""
    with torch.no_grad():
        vals, jac = invariant_jacobian(V, x)
    return vals[..., 0], (jac[..., 0, :] * v).sum(-1)


@settings(max_examples=60, deadline=None)
@given(problems)
def test_guarantee_and_minimal_change(p):
    f, V, gen = make_problem(p["seed"], p["n"], p["dtype"])
    x = torch.randn(*p["batch"], p["n"], generator=gen, dtype=p["dtype"])
    field = DissipativeVectorField(f, V, alpha=p["alpha"])
    with torch.no_grad():
        out = field(0.0, x)
        fx = f(0.0, x)
    v, rate_f = rate(V, x, fx)
    _, rate_out = rate(V, x, out)
    bound = -p["alpha"] * v
    scale = 1 + rate_f.abs() + bound.abs()
    tol = RTOL[p["dtype"]] * 10
    # dV/dt along the output is exactly min(dV/dt along f, -alpha V) ...
    torch.testing.assert_close(rate_out, torch.minimum(rate_f, bound),
                               atol=tol * float(scale.max()), rtol=0)
    assert bool((rate_out <= bound + tol * scale).all())
    # ... f is unchanged where it already satisfies the bound ...
    ok = rate_f <= bound
    assert torch.equal(out[ok], fx[ok])
    # ... and elsewhere only its component along grad V changes.
    with torch.no_grad():
        _, jac = invariant_jacobian(V, x)
    g = jac[..., 0, :]
    change = out - fx
    cross = change - g * (change * g).sum(-1, keepdim=True) / g.pow(2).sum(-1, keepdim=True)
    assert float(cross.abs().max()) <= tol * float((1 + fx.abs()).max())


@settings(max_examples=20, deadline=None)
@given(problems)
def test_batched_equals_per_sample(p):
    f, V, gen = make_problem(p["seed"], p["n"], p["dtype"])
    x = torch.randn(5, p["n"], generator=gen, dtype=p["dtype"])
    field = DissipativeVectorField(f, V, alpha=p["alpha"])
    batched = field(0.0, x)
    single = torch.stack([field(0.0, xi) for xi in x])
    torch.testing.assert_close(batched, single, rtol=RTOL[p["dtype"]] * 10,
                               atol=RTOL[p["dtype"]] * 10)


# ----------------------------------------------------------------------------------------
# Conventions: signatures, shapes, dtype/device, grad mode, zero gradients


def test_f_of_x_and_v_with_a_trailing_dimension(dtype, device):
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=dtype, device=device)

    def grow(t, y):
        return y  # dV/dt = 2 |x|^2 > 0 for V = |x|^2 / 2: the whole field is removed

    a = DissipativeVectorField(grow, lambda y: 0.5 * y.pow(2).sum(-1))(0.0, x)
    b = DissipativeVectorField(lambda y: y, lambda y: 0.5 * y.pow(2).sum(-1, keepdim=True))(
        0.0, x)
    assert a.dtype == dtype and a.device == x.device
    torch.testing.assert_close(a, torch.zeros_like(x), atol=RTOL[dtype], rtol=0)
    torch.testing.assert_close(a, b)


def test_alpha_imposes_a_decay_rate(dtype):
    # f = 0 satisfies dV/dt <= 0 but not dV/dt <= -alpha V: the field becomes -alpha V g/|g|^2,
    # for V = |x|^2 exactly -alpha x / 2.
    x = torch.tensor([[3.0, -4.0], [0.5, 0.25]], dtype=dtype)
    out = DissipativeVectorField(lambda y: torch.zeros_like(y), lambda y: y.pow(2).sum(-1),
                                 alpha=0.8)(0.0, x)
    torch.testing.assert_close(out, -0.4 * x)


def test_finite_where_grad_v_vanishes(dtype):
    f = lambda t, y: torch.ones_like(y)  # noqa: E731
    x = torch.zeros(3, 2, dtype=dtype)  # the minimum of |x|^2: grad V = 0 exactly
    out = DissipativeVectorField(f, lambda y: y.pow(2).sum(-1), alpha=1.0)(0.0, x)
    assert torch.equal(out, torch.ones_like(x))
    # a subnormal gradient (a V that ignores x is an error: test_v_not_differentiable_in_x)
    tiny = torch.finfo(dtype).tiny
    flat = DissipativeVectorField(f, lambda y: tiny * y.sum(-1), alpha=1.0)(0.0, x + 1)
    assert torch.equal(flat, torch.ones_like(x))


def test_no_grad_mode_and_training_through_the_field():
    gen = torch.Generator().manual_seed(0)
    V = QuadraticV(3, gen, torch.float64)
    f = torch.nn.Linear(3, 3).double()
    with torch.no_grad():  # f(x) = x + bias makes V grow: the correction is active
        f.weight.copy_(torch.eye(3))
        f.bias.copy_(torch.randn(3, generator=gen, dtype=torch.float64))
    field = DissipativeVectorField(f, V, alpha=0.5)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        out = field(0.0, x)
        assert not torch.allclose(out, f(x))
    assert not out.requires_grad
    field(0.0, x).pow(2).sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in field.parameters())
    assert set(dict(field.named_children())) == {"f", "V"}  # both modules registered
    assert field.field is f and field.invariants is V and field.V is V


def test_gradcheck_in_x():
    gen = torch.Generator().manual_seed(1)
    f, V, _ = make_problem(3, 3, torch.float64)
    x = torch.randn(2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    field = DissipativeVectorField(f, V, alpha=0.5)
    assert torch.autograd.gradcheck(lambda y: field(0.0, y), (x,))


# ----------------------------------------------------------------------------------------
# Along odeint on the damped spring, with V learned by contrastive + ranking loss

SYSTEM = DampedSpring()


@pytest.fixture(scope="module")
def learned_energy() -> InvariantNet:
    train = SYSTEM.trajectories(30, t_end=3.0, n_times=20, noise=0.01, seed=0,
                                dtype=torch.float32)
    torch.manual_seed(0)
    model = InvariantNet(2, 1, hidden=32)
    fit_invariants(model, train, epochs=50, lr=3e-3, progress=False, ranking_weight=1.0)
    return model.requires_grad_(False)


def test_learned_v_never_grows_along_odeint(learned_energy):
    # A wrong model that pumps energy in (negative damping) ...
    def pump(t, x):
        return SYSTEM.vector_field(t, x) + 0.5 * x

    x0 = SYSTEM.sample_initial(6, seed=3, dtype=torch.float32)
    t = torch.linspace(0, 5, 101)
    plain = odeint(pump, x0, t, rtol=1e-6, atol=1e-8)
    safe = odeint(DissipativeVectorField(pump, learned_energy), x0, t, rtol=1e-6, atol=1e-8)
    with torch.no_grad():
        v = learned_energy(safe)[..., 0]  # (T, B)
    energy = SYSTEM.invariants(safe)[..., 0]
    energy_plain = SYSTEM.invariants(plain)[..., 0]
    # ... pumps energy in: E grows as exp(4 (0.5 - gamma) t), by e^4 by t = 5, along it,
    assert bool((energy_plain[-1] > 50 * energy_plain[0]).all())
    # while the learned V never increases along the corrected one (up to solver error),
    assert float(v.diff(dim=0).max()) <= 1e-4
    # so each trajectory stays in the sublevel set {V <= V(x0)}, and E stays below its
    # largest value there (found on a grid of spacing h, where |grad E| = 2|x| <= 4 * sqrt(2)
    # bounds E's change to the nearest grid point by 4 h). A learned V's level sets are not
    # exactly circles, so E itself may rise a little -- but only to that bound.
    h = 0.01
    axis = torch.arange(-2.0, 2.0 + h / 2, h)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        v_grid = learned_energy(grid)[:, 0]
    e_grid = SYSTEM.invariants(grid)[:, 0]
    bound = torch.stack([e_grid[v_grid <= vi].max() for vi in v[0]])
    assert bool((energy <= bound + 4 * h).all())
    assert bool((bound < energy_plain[-1] / 10).all())


def test_true_field_is_left_alone_and_faster_decay_is_imposed():
    energy = lambda x: SYSTEM.invariants(x)  # noqa: E731  # dE/dt = -4 gamma E exactly
    x0 = SYSTEM.sample_initial(4, seed=0)
    t = torch.linspace(0, 3, 31, dtype=torch.float64)
    field = DissipativeVectorField(SYSTEM.vector_field, energy, alpha=2 * SYSTEM.gamma)
    torch.testing.assert_close(field(0.0, x0), SYSTEM.vector_field(0.0, x0))
    fast = 8 * SYSTEM.gamma  # twice the true rate: E must fall at least as exp(-fast t)
    sol = odeint(DissipativeVectorField(SYSTEM.vector_field, energy, alpha=fast), x0, t,
                 rtol=1e-10, atol=1e-12)
    e = SYSTEM.invariants(sol)[..., 0]
    bound = e[0] * torch.exp(-fast * t).unsqueeze(-1)
    assert bool((e <= bound * (1 + 1e-7)).all())
    torch.testing.assert_close(e, bound, rtol=1e-7, atol=0)  # the bound is attained


def test_fit_dynamics_keeps_v_frozen_unless_asked():
    data = SYSTEM.trajectories(4, t_end=1.0, n_times=10, seed=0, dtype=torch.float32)
    torch.manual_seed(0)
    for train_v in (False, True):
        V = InvariantNet(2, 1, hidden=8)
        before = [p.detach().clone() for p in V.parameters()]
        field = DissipativeVectorField(MLP(2, 2, hidden=8), V)
        fit_dynamics(field, data, epochs=2, batch_size=20, progress=False,
                     train_invariants=train_v)
        same = all(torch.equal(a, b) for a, b in zip(before, V.parameters(), strict=True))
        assert same is not train_v
        assert all(p.requires_grad for p in V.parameters())  # unfrozen afterwards


# ----------------------------------------------------------------------------------------
# Errors


def _f(t, x):
    return x


def _v(x):
    return x.pow(2).sum(-1)


@pytest.mark.parametrize(("args", "kwargs", "exc", "match"), [
    ((3, _v), {}, TypeError, r"`f` must be callable, got .*int"),
    ((_f, "energy"), {}, TypeError, r"`V` must be callable, got .*str"),
    ((_f, _v), {"alpha": -1.0}, ValueError, r"`alpha` must be a finite number >= 0, got -1.0"),
    ((_f, _v), {"alpha": math.inf}, ValueError, r"`alpha` must be .* got inf"),
    ((_f, _v), {"alpha": True}, ValueError, r"`alpha` must be .* got True"),
])
def test_constructor_errors(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DissipativeVectorField(*args, **kwargs)


@pytest.mark.parametrize(("f", "V", "x", "exc", "match"), [
    (_f, lambda x: x, torch.zeros(2, 3), ValueError,
     r"`V` must return one value per state, shape \(\.\.\.,\) or \(\.\.\., 1\); got 3 values"),
    (_f, lambda x: x.sum(), torch.zeros(2, 3), ValueError,
     r"`V\(x\)` must have shape \(\.\.\., m\) or \(\.\.\.,\) with the batch shape of `x`"),
    (_f, lambda x: 1.0, torch.zeros(2, 3), TypeError, r"`V` must return a torch.Tensor, got float"),
    (lambda t, x: x[..., :1], _v, torch.zeros(2, 3), ValueError,
     r"`f\(x\)` must have the same shape as `x`: expected \(2, 3\), got \(2, 1\)"),
    (lambda t, x: 1.0, _v, torch.zeros(2, 3), TypeError, r"`f` must return a torch.Tensor"),
    (_f, _v, [1.0, 2.0], TypeError, r"`x` must be a torch.Tensor, got list"),
    (_f, _v, torch.tensor(1.0), ValueError, r"`x` must have at least one dimension"),
])
def test_call_errors(f, V, x, exc, match):
    with pytest.raises(exc, match=match):
        DissipativeVectorField(f, V)(0.0, x)


# ----------------------------------------------------------------------------------------
# The damped spring itself


def test_damped_spring_energy_decays_exactly_and_matches_its_field():
    data = SYSTEM.trajectories(5, t_end=3.0, n_times=31, seed=2)
    e = SYSTEM.invariants(data.x)[..., 0]
    expected = e[:, :1] * torch.exp(-4 * SYSTEM.gamma * data.t)
    torch.testing.assert_close(e, expected, rtol=1e-12, atol=0)
    assert bool((e.diff(dim=1) < 0).all())
    # the closed-form solution solves the field it declares
    numeric = odeint(SYSTEM.vector_field, data.x[:, 0], data.t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(numeric.movedim(0, 1), data.x, rtol=0, atol=1e-8)
    assert repr(DampedSpring(0.2)) == "DampedSpring(gamma=0.2)"


@pytest.mark.parametrize("gamma", [0.0, -0.1, math.nan, True, "0.1"])
def test_damped_spring_rejects_bad_gamma(gamma):
    with pytest.raises(ValueError, match=r"`gamma` must be a positive finite number, got"):
        DampedSpring(gamma)


# ----------------------------------------------------------------------------------------
# Never silently wrong (issue 19)


def _saddle(t, x):
    return torch.stack([x[..., 1], 3 * x[..., 0]], -1)


def test_v_not_finite_at_a_state_is_an_error_naming_it():
    # V NaN at x_0 < 0: the field came back with dV/dt > 0 where it promises <= -alpha V.
    x = torch.tensor([[1.0, 1.0], [-1.0, 0.5]], dtype=torch.float64)
    field = DissipativeVectorField(_saddle, lambda x: x.pow(2).sum(-1) * torch.sqrt(x[..., 0]),
                                   alpha=0.5)
    with pytest.raises(ValueError, match=r"`V` is not finite at 1 of 2 state\(s\), indices \[1\] "
                                         r"where the field was evaluated: `V\(x\)` = \[nan\]"):
        field(0.0, x)


@pytest.mark.parametrize(("V", "match"), [
    (lambda x: x.detach().pow(2).sum(-1), r"`V\(x\)` is not connected to `x` by autograd"),
    (lambda x: x.new_ones(x.shape[:-1]), r"`V\(x\)` is not connected to `x` by autograd"),
    (lambda x: torch.floor(x.pow(2).sum(-1)), r"dV/dx is zero .* torch\.floor"),
])
def test_v_not_differentiable_in_x(V, match):
    with pytest.raises(ValueError, match=match):
        DissipativeVectorField(_saddle, V, alpha=1.0)(0.0, torch.ones(3, 2))


def test_gradient_too_large_to_square_keeps_the_guarantee():
    # |grad V| = 1e160 * sqrt(5): |g|^2 overflows float64; the correction was skipped.
    x = torch.tensor([[1.0, 1.0], [0.5, -0.25]], dtype=torch.float64)
    w = torch.tensor([1.0, 2.0], dtype=torch.float64)

    def V(x):
        return 1e160 * (x @ w).exp()

    out = DissipativeVectorField(_saddle, V, alpha=0.5)(0.0, x)
    rate = (out @ w) * V(x)  # dV/dt = <grad V, F> with grad V = V w
    assert bool((rate <= -0.5 * V(x) * (1 - 1e-12)).all()), rate / V(x)
    small = DissipativeVectorField(_saddle, lambda x: (x @ w).exp(), alpha=0.5)(0.0, x)
    torch.testing.assert_close(out, small, rtol=1e-14, atol=1e-14)
