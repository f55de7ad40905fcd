"""Tests of ProjectedVectorField: the algebra (property-based), autograd, solvers, errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchdiffeq import odeint, odeint_adjoint

from concernet_ode import MLP, ProjectedVectorField
from concernet_ode._jacobian import invariant_jacobian
from concernet_ode.projection import orthonormal_rows

from .conftest import RTOL

# ----------------------------------------------------------------------------------------
# Random fields and invariants for the property tests


class QuadraticInvariants(torch.nn.Module):
    """H_i(x) = x^T A_i x / 2 + b_i^T x + sin(c_i^T x): generic, nonlinear, cheap."""

    def __init__(self, n: int, m: int, gen: torch.Generator, dtype: torch.dtype):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(m, n, n, generator=gen, dtype=dtype))
        self.b = torch.nn.Parameter(torch.randn(m, n, generator=gen, dtype=dtype))
        self.c = torch.nn.Parameter(torch.randn(m, n, generator=gen, dtype=dtype))

    def forward(self, x):
        quad = 0.5 * torch.einsum("...i,kij,...j->...k", x, self.a, x)
        return quad + x @ self.b.T + torch.sin(x @ self.c.T)


def make_problem(seed: int, n: int, m: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(seed)
    H = QuadraticInvariants(n, m, gen, dtype)
    w = torch.randn(n, n, generator=gen, dtype=dtype)

    def f(t, x):
        return torch.tanh(x @ w.T) + x.flip(-1)

    return f, H, gen


problems = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31 - 1),
    "n": st.integers(2, 6),
    "m_frac": st.floats(0.0, 0.99),
    "batch": st.lists(st.integers(1, 4), min_size=0, max_size=2),
    "dtype": st.sampled_from([torch.float32, torch.float64]),
})


def build(p):
    n = p["n"]
    m = 1 + int(p["m_frac"] * (n - 1))  # 1 <= m < n
    f, H, gen = make_problem(p["seed"], n, m, p["dtype"])
    x = torch.randn(*p["batch"], n, generator=gen, dtype=p["dtype"])
    return f, H, x


@settings(max_examples=60, deadline=None)
@given(problems)
def test_projected_field_is_orthogonal_to_every_invariant_gradient(p):
    f, H, x = build(p)
    out = ProjectedVectorField(f, H)(0.0, x)
    _, jac = invariant_jacobian(H, x)
    inner = (jac * out.unsqueeze(-2)).sum(-1)
    scale = f(0.0, x).norm(dim=-1, keepdim=True) * jac.norm(dim=-1)
    assert bool((inner.abs() <= RTOL[x.dtype] * scale).all()), (inner / scale).abs().max()


@settings(max_examples=40, deadline=None)
@given(problems)
def test_projection_is_idempotent(p):
    f, H, x = build(p)
    field = ProjectedVectorField(f, H)
    once = field(0.0, x)
    twice = field.project(x, once)
    scale = f(0.0, x).norm(dim=-1, keepdim=True)
    assert bool(((twice - once).abs() <= RTOL[x.dtype] * scale).all())


@settings(max_examples=40, deadline=None)
@given(problems)
def test_batched_equals_per_sample(p):
    f, H, x = build(p)
    field = ProjectedVectorField(f, H)
    batched = field(0.0, x)
    flat = x.reshape(-1, x.shape[-1])
    loop = torch.stack([field(0.0, xi) for xi in flat]).reshape(x.shape)
    torch.testing.assert_close(batched, loop, rtol=RTOL[x.dtype] * 100, atol=RTOL[x.dtype] * 100)


def kepler_field(t, x):
    pos, vel = x[..., :2], x[..., 2:]
    r3 = pos.norm(dim=-1, keepdim=True) ** 3
    return torch.cat([vel, -pos / r3], dim=-1)


def kepler_invariants(x):
    pos, vel = x[..., :2], x[..., 2:]
    energy = 0.5 * vel.pow(2).sum(-1) - 1 / pos.norm(dim=-1)
    momentum = pos[..., 0] * vel[..., 1] - pos[..., 1] * vel[..., 0]
    return torch.stack([energy, momentum], dim=-1)


def test_tangent_field_is_left_unchanged(dtype, device):
    # The Kepler field conserves E and L: it is already tangent to their level sets.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen, dtype=dtype).to(device) + 2.0
    out = ProjectedVectorField(kepler_field, kepler_invariants)(0.0, x)
    f = kepler_field(0.0, x)
    assert out.dtype == dtype and out.device == x.device
    torch.testing.assert_close(out, f, rtol=0, atol=RTOL[dtype] * 10 * float(f.abs().max()))


# ----------------------------------------------------------------------------------------
# Rank deficiency


def test_critical_point_leaves_field_unchanged_and_finite(dtype):
    def f(x):
        return torch.ones_like(x)

    field = ProjectedVectorField(f, lambda x: x.pow(2).sum(-1))
    x = torch.zeros(3, 2, dtype=dtype, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="critical point"):
        out = field(0.0, x)
    torch.testing.assert_close(out, torch.ones_like(out))
    out.sum().backward()
    assert bool(torch.isfinite(x.grad).all())


def test_dependent_invariants_project_like_one(dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, generator=gen, dtype=dtype)

    def f(x):
        return torch.sin(x) + 1.0

    def h(x):
        return x.pow(2).sum(-1) + x[..., 0]

    single = ProjectedVectorField(f, h)(0.0, x)
    for doubled in (lambda x: torch.stack([h(x), 2 * h(x)], -1),
                    lambda x: torch.stack([h(x), h(x)], -1)):
        out = ProjectedVectorField(f, doubled)(0.0, x)
        assert bool(torch.isfinite(out).all())
        torch.testing.assert_close(out, single, rtol=RTOL[dtype] * 100, atol=RTOL[dtype] * 100)


def test_orthonormal_rows_drops_only_dependent_rows():
    jac = torch.tensor([[[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1e-6, 0.0]]], dtype=torch.float64)
    q = orthonormal_rows(jac)
    norms = q.norm(dim=-1)[0]
    assert norms.tolist() == pytest.approx([1.0, 0.0, 1.0])


# ----------------------------------------------------------------------------------------
# Grad modes and autograd


def test_works_under_no_grad_and_returns_no_graph():
    torch.manual_seed(0)
    field = ProjectedVectorField(MLP(4, 4), MLP(4, 2))
    with torch.no_grad():
        out = field(0.0, torch.randn(5, 4))
    assert not out.requires_grad


def test_gradients_reach_parameters_of_field_and_invariants():
    torch.manual_seed(0)
    f, H = MLP(4, 4), MLP(4, 2)
    field = ProjectedVectorField(f, H)
    assert {id(p) for p in field.parameters()} == {id(p) for p in [*f.parameters(),
                                                                    *H.parameters()]}
    field(0.0, torch.randn(8, 4)).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in f.parameters())
    # J = dH/dx does not depend on H's output bias; every other parameter gets a gradient.
    hidden = list(H.parameters())[:-1]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hidden)


def test_gradcheck_in_float64():
    torch.manual_seed(0)
    f, H = MLP(3, 3, hidden=8).double(), MLP(3, 1, hidden=8).double()
    field = ProjectedVectorField(f, H)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: field(0.0, x), (x,))
    assert torch.autograd.gradgradcheck(lambda x: field(0.0, x), (x,))


def test_closed_form_invariants_take_all_jacobian_rows_in_one_pass(monkeypatch):
    # The first call learns m; later ones ask invariant_jacobian for stacked copies of a
    # closed-form H (one backward pass), while a network goes row by row (stacked copies
    # would multiply its matrix products; benchmarks/jacobian_cost.py). Same field, same
    # gradients either way.
    import concernet_ode.projection as projection

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("m"))
        return invariant_jacobian(*args, **kwargs)

    monkeypatch.setattr(projection, "invariant_jacobian", spy)
    torch.manual_seed(0)
    f = MLP(3, 3, hidden=8).double()

    def closed_form(x):
        return torch.stack([x.pow(2).sum(-1), x[..., 0] * x[..., 2]], -1)

    field = ProjectedVectorField(f, closed_form)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    first = field(0.0, x)
    (g1,) = torch.autograd.grad(first.pow(2).sum(), x)
    second = field(0.0, x)
    (g2,) = torch.autograd.grad(second.pow(2).sum(), x)
    assert seen == [None, 2]
    assert torch.allclose(first, second, rtol=0, atol=1e-14)
    assert torch.allclose(g1, g2, rtol=0, atol=1e-13)
    assert torch.autograd.gradcheck(lambda x: field(0.0, x), (x,))

    seen.clear()
    network = ProjectedVectorField(f, MLP(3, 2, hidden=8).double())
    network(0.0, x)
    network(0.0, x)
    assert seen == [None, None]


def test_field_called_with_x_only_and_with_t_x_agree():
    torch.manual_seed(0)
    mlp, H = MLP(3, 3), MLP(3, 1)
    x = torch.randn(6, 3)
    a = ProjectedVectorField(lambda x: mlp(x), H)(0.0, x)
    b = ProjectedVectorField(lambda t, x: mlp(x), H)(0.0, x)
    torch.testing.assert_close(a, b)


def test_odeint_adjoint_gradients_match_odeint():
    torch.manual_seed(0)
    f, H = MLP(4, 4, hidden=16).double(), MLP(4, 2, hidden=16).double()
    field = ProjectedVectorField(f, H)
    x0 = torch.randn(3, 4, dtype=torch.float64)
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    opts = {"rtol": 1e-10, "atol": 1e-10}

    def grads(solver):
        field.zero_grad()
        solver(field, x0, t, **opts).pow(2).sum().backward()
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                for p in field.parameters()]

    direct = grads(odeint)
    adjoint = grads(lambda *a, **k: odeint_adjoint(*a, adjoint_params=tuple(field.parameters()),
                                                   **k))
    for g1, g2 in zip(direct, adjoint, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------
# Conservation along a solver


def _perturbed(field, scale, seed, n):
    gen = torch.Generator().manual_seed(seed)
    w = scale * torch.randn(n, n, generator=gen, dtype=torch.float64)

    def f(t, x):
        return field(t, x) + torch.tanh(x @ w.T)

    return f


@pytest.mark.parametrize("name", ["spring", "chemical", "kepler"])
def test_conservation_along_dopri5(name):
    from concernet_ode.systems import ChemicalKinetics, Kepler, SpringMass

    system = {"spring": SpringMass, "chemical": ChemicalKinetics, "kepler": Kepler}[name]()
    x0 = system.sample_initial(4, seed=0).double()
    if name == "chemical":
        x0 = x0 / x0.sum(-1, keepdim=True)  # unit mass keeps the perturbation relevant
    f = _perturbed(system.vector_field, 0.05, 0, system.state_dim)
    t = torch.linspace(0, 5, 51, dtype=torch.float64)
    opts = {"method": "dopri5", "rtol": 1e-9, "atol": 1e-12}
    with torch.no_grad():
        plain = odeint(f, x0, t, **opts)
        proj = odeint(ProjectedVectorField(f, system.invariants), x0, t, **opts)
    h0 = system.invariants(x0)
    drift_plain = float((system.invariants(plain) - h0).abs().max())
    drift_proj = float((system.invariants(proj) - h0).abs().max())
    assert drift_proj < 1e-6
    assert drift_plain > 1e3 * drift_proj


# ----------------------------------------------------------------------------------------
# Errors


def _f(t, x):
    return x


def _h(x):
    return x.sum(-1)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    ({"f": 3, "H": _h}, TypeError, r"`f` must be callable, got .*int"),
    ({"f": _f, "H": "energy"}, TypeError, r"`H` must be callable, got .*str"),
    ({"f": _f, "H": _h, "eps": 2.0}, ValueError, r"`eps` must be a float in \(0, 1\)"),
])
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ProjectedVectorField(kwargs.pop("f"), kwargs.pop("H"), **kwargs)


@pytest.mark.parametrize(("f", "H", "x", "match"), [
    (lambda t, x: x[..., :1], _h, torch.zeros(2, 3),
     r"`f\(x\)` must have the same shape as `x`: expected \(2, 3\), got \(2, 1\)"),
    (_f, lambda x: x.sum(), torch.zeros(2, 3),
     r"`H\(x\)` must have shape \(\.\.\., m\) or \(\.\.\.,\) with the batch shape of `x`"),
    (_f, lambda x: torch.cat([x, x], -1), torch.zeros(2, 3),
     r"m = 6 invariants for a state of dimension n = 3; the projection needs m < n"),
    (_f, lambda x: x, torch.zeros(2, 3), r"m = 3 invariants .* n = 3"),
    (lambda t, x: 1.0, _h, torch.zeros(2, 3), r"`f` must return a torch.Tensor, got float"),
    (_f, lambda x: 1.0, torch.zeros(2, 3), r"`H` must return a torch.Tensor, got float"),
])
def test_call_errors(f, H, x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ProjectedVectorField(f, H)(0.0, x)


def test_bad_state_and_vector_errors():
    field = ProjectedVectorField(_f, _h)
    with pytest.raises(TypeError, match=r"`x` must be a torch.Tensor, got list"):
        field(0.0, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"`x` must have at least one dimension"):
        field(0.0, torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"`v` must be a tensor of the shape of `x`, \(2, 3\)"):
        field.project(torch.zeros(2, 3), torch.zeros(3))


def test_properties_give_back_field_and_invariants():
    field = ProjectedVectorField(_f, _h)
    assert field.field is _f and field.invariants is _h


def test_no_nan_from_nonfinite_free_input():
    # The projection never creates NaN from finite inputs, even at huge scales.
    x = torch.tensor([[1e30, -1e30, 3.0]], dtype=torch.float64)
    out = ProjectedVectorField(_f, lambda x: x[..., 0] + x[..., 1])(0.0, x)
    assert bool(torch.isfinite(out).all())
    assert math.isclose(float(out[0, 0] + out[0, 1]), 0.0, abs_tol=1e15)


# ----------------------------------------------------------------------------------------
# Never silently wrong (issue 19): the projection does not switch itself off without a word


def _spring(t, x):
    return torch.stack([2 * x[..., 1], -2.1 * x[..., 0]], -1)  # does not conserve |x|^2


def _circle(x):
    return x.pow(2).sum(-1)


@pytest.mark.parametrize(("H", "exc", "match"), [
    # each made the projection return plain f: |x|^2 drifted 4.4e-2 along odeint, as unprojected
    (lambda x: _circle(x.detach()), ValueError,
     r"`H\(x\)` is not connected to `x` by autograd \(its output does not require grad\)"),
    (lambda x: torch.from_numpy((x.detach().numpy() ** 2).sum(-1)), ValueError,
     r"`H\(x\)` is not connected to `x` by autograd .*`\.numpy\(\)` or NumPy functions"),
    (lambda x: torch.round(_circle(x), decimals=6), ValueError,
     r"dH/dx is zero at 1 of 1 state\(s\) \(indices \[0\]\) without a critical point of `H`: "
     r"it goes through torch\.round"),
    (lambda x: (_circle(x) * 1e6).long(), TypeError,
     r"`H` must return floating-point values, got a tensor of dtype torch\.int64"),
])
def test_an_h_not_differentiable_in_x_is_an_error(H, exc, match):
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    with pytest.raises(exc, match=match):
        odeint(ProjectedVectorField(_spring, H), x0, torch.linspace(0, 5, 11,
                                                                   dtype=torch.float64))


def test_an_h_of_parameters_only_is_an_error():
    net = MLP(2, 1, hidden=8).double()
    field = ProjectedVectorField(_spring, lambda x: net(x.detach()))
    with pytest.raises(ValueError, match=r"depends on parameters, not on `x`"):
        field(0.0, torch.ones(3, 2, dtype=torch.float64))


@pytest.mark.parametrize(("H", "bad", "match"), [
    (lambda x: _circle(x) + torch.log(x[..., 0]), [-1.0, 0.5],  # <Pf, grad H> was 0.73
     r"`H` is not finite at 1 of 2 state\(s\), indices \[1\] where the field was evaluated: "
     r"`H\(x\)` = \[nan\] at x = \[-1\.0, 0\.5\]"),
    (lambda x: _circle(x) + torch.sqrt(x[..., 0].abs()), [0.0, 0.5],  # gradient NaN
     r"`H` is not finite at 1 of 2 state\(s\), indices \[1\] .*dH/dx = \[nan, 1\.0\] at "
     r"x = \[0\.0, 0\.5\]"),
])
def test_an_h_not_finite_at_a_state_is_an_error_naming_it(H, bad, match):
    x = torch.tensor([[1.0, 0.5], bad], dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        ProjectedVectorField(_spring, H)(0.0, x)
    with pytest.raises(ValueError, match=r"`H` is not finite at the state"):
        ProjectedVectorField(_spring, H)(0.0, x[1])


def test_an_overflowing_h_is_an_error():
    # |x| = 1e160 in float64: H = |x| overflows (and its gradient x / |x| is then 0)
    x = torch.tensor([[1e160, 0.5e160]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`H\(x\)` = \[inf\] at x = \[1e\+160, 5e\+159\]"):
        ProjectedVectorField(_spring, lambda x: x.norm(dim=-1))(0.0, x)


@pytest.mark.parametrize(("dtype", "H", "x"), [
    # |grad H|^2 overflows (|x| >= 1e19 in float32, |grad H| >= 1e154 in float64): the
    # projection was skipped, <Pf, grad H> / (|f| |grad H|) = 1 and -0.34
    (torch.float32, _circle, [[1e19, 0.5e19], [0.6, 0.8]]),
    (torch.float64, lambda x: 1e160 * (x[..., 0] + 2 * x[..., 1]), [[1.0, 1.0], [0.6, 0.8]]),
])
def test_gradients_too_large_to_square_are_still_projected_out(dtype, H, x):
    x = torch.tensor(x, dtype=dtype)
    out = ProjectedVectorField(_spring, H)(0.0, x)
    _, jac = invariant_jacobian(H, x)
    g = jac[..., 0, :] / jac[..., 0, :].abs().amax(-1, keepdim=True)  # representable direction
    cosine = (out * g).sum(-1) / (_spring(0, x).norm(dim=-1) * g.norm(dim=-1))
    assert bool((cosine.abs() <= RTOL[dtype]).all()), cosine
    assert bool(torch.isfinite(out).all())
    # the ordinary sample keeps its bits: the slow path is taken for the overflowing one only
    assert torch.equal(out[1], ProjectedVectorField(_spring, H)(0.0, x[1:])[0])


def test_orthonormal_rows_rescales_huge_rows_and_rejects_nonfinite_ones():
    jac = torch.tensor([[[3e30, 4e30, 0.0], [1e30, 0.0, 1e30]],
                        [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]], dtype=torch.float32)
    q = orthonormal_rows(jac)
    torch.testing.assert_close(q @ q.transpose(-1, -2), torch.eye(2).expand(2, 2, 2))
    assert torch.equal(q[1], orthonormal_rows(jac[1:])[0])
    jac[1, 0, 0] = math.nan
    with pytest.raises(ValueError, match=r"`jac` has NaN or infinite entries at 1 of 2 "
                                         r"sample\(s\) \(indices \[1\]\)"):
        orthonormal_rows(jac)


def test_critical_point_warns_once_per_field():
    # From x0 = 0, H = |x|^2, plain odeint did not finish in 240 s: the field is stiff there.
    field = ProjectedVectorField(lambda t, x: _spring(t, x) + 0.3, _circle)
    x0 = torch.zeros(2, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"dH/dx vanishes at the state: a critical point of "
                                            r"`H`.*stiff.*max_steps"):
        field(0.0, x0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        field(0.0, x0)  # once per field
        field(0.0, torch.ones(2, dtype=torch.float64))  # no warning away from it
    # the documented bound for plain odeint: torchdiffeq's own step limit
    with pytest.warns(RuntimeWarning, match="critical point"), pytest.raises(
            AssertionError, match="max_num_steps exceeded"):
        odeint(ProjectedVectorField(lambda t, x: _spring(t, x) + 0.3, _circle), x0,
               torch.linspace(0, 1, 3, dtype=torch.float64), options={"max_num_steps": 200})
