"""Tests of ProjectedVectorField: the algebra (property-based), autograd, solvers, errors."""

from __future__ import annotations

import math
import warnings
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchdiffeq import odeint, odeint_adjoint

from concernet_ode import MLP, ProjectedVectorField
from concernet_ode import projection as projection_module
from concernet_ode._jacobian import invariant_jacobian
from concernet_ode.projection import (
    _gram_project,
    _gram_schmidt,
    _remove_components,
    orthonormal_rows,
)

from .conftest import RTOL


def gram_path():
    """Make ProjectedVectorField take its large-n path (through ``J J^T``) at every ``n``."""
    return mock.patch.object(projection_module, "_GRAM_MIN_N", 1)


@pytest.fixture(params=["gram_schmidt", "gram"])
def path(request):
    """The projection's two paths: Gram-Schmidt (n < 256) and through ``J J^T`` (n >= 256)."""
    if request.param == "gram_schmidt":
        yield request.param
        return
    with gram_path():
        yield request.param


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


def test_tangent_field_is_left_unchanged(dtype, device, path):
    # The Kepler field conserves E and L: it is already tangent to their level sets.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen, dtype=dtype).to(device) + 2.0
    out = ProjectedVectorField(kepler_field, kepler_invariants)(0.0, x)
    f = kepler_field(0.0, x)
    assert out.dtype == dtype and out.device == x.device
    torch.testing.assert_close(out, f, rtol=0, atol=RTOL[dtype] * 10 * float(f.abs().max()))


# ----------------------------------------------------------------------------------------
# Rank deficiency


def test_critical_point_leaves_field_unchanged_and_finite(dtype, path):
    def f(x):
        return torch.ones_like(x)

    field = ProjectedVectorField(f, lambda x: x.pow(2).sum(-1))
    x = torch.zeros(3, 2, dtype=dtype, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="critical point"):
        out = field(0.0, x)
    torch.testing.assert_close(out, torch.ones_like(out))
    out.sum().backward()
    assert bool(torch.isfinite(x.grad).all())


def test_dependent_invariants_project_like_one(dtype, path):
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


def test_no_nan_from_nonfinite_free_input(path):
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
def test_an_h_not_finite_at_a_state_is_an_error_naming_it(H, bad, match, path):
    x = torch.tensor([[1.0, 0.5], bad], dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        ProjectedVectorField(_spring, H)(0.0, x)
    with pytest.raises(ValueError, match=r"`H` is not finite at the state"):
        ProjectedVectorField(_spring, H)(0.0, x[1])


def test_an_overflowing_h_is_an_error(path):
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
def test_gradients_too_large_to_square_are_still_projected_out(dtype, H, x, path):
    x = torch.tensor(x, dtype=dtype)
    out = ProjectedVectorField(_spring, H)(0.0, x)
    _, jac = invariant_jacobian(H, x)
    g = jac[..., 0, :] / jac[..., 0, :].abs().amax(-1, keepdim=True)  # representable direction
    cosine = (out * g).sum(-1) / (_spring(0, x).norm(dim=-1) * g.norm(dim=-1))
    assert bool((cosine.abs() <= RTOL[dtype]).all()), cosine
    assert bool(torch.isfinite(out).all())
    alone = ProjectedVectorField(_spring, H)(0.0, x[1:])[0]
    if path == "gram_schmidt":
        # the ordinary sample keeps its bits: the slow path is taken for the overflowing one only
        assert torch.equal(out[1], alone)
    else:  # the batch fell back to Gram-Schmidt; alone, the sample is projected through J J^T
        torch.testing.assert_close(out[1], alone, rtol=RTOL[dtype], atol=RTOL[dtype])


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


def test_critical_point_warns_once_per_field(path):
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


# ----------------------------------------------------------------------------------------
# Large n: the projection through J J^T (one pass of normal equations, CholeskyQR2, or
# Gram-Schmidt per sample where rows are nearly dependent), forced at small n by gram_path()


coupled_problems = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31 - 1),
    "n": st.integers(3, 8),
    "m": st.integers(1, 3),
    "batch": st.lists(st.integers(1, 5), min_size=0, max_size=2),
    "dtype": st.sampled_from([torch.float32, torch.float64]),
    # H_1 = H_0 + coupling * H_1': from independent gradients to nearly and exactly dependent
    # ones, across the one-pass, CholeskyQR2 and Gram-Schmidt tiers
    "coupling": st.sampled_from([1.0, 0.3, 3e-2, 1e-3, 1e-5, 1e-8, 0.0]),
})


def build_coupled(p):
    m = min(p["m"], p["n"] - 1)
    f, base, gen = make_problem(p["seed"], p["n"], m, p["dtype"])

    def H(x):
        h = base(x)
        if m < 2:
            return h
        return torch.cat([h[..., :1], h[..., :1] + p["coupling"] * h[..., 1:2], h[..., 2:]], -1)

    x = torch.randn(*p["batch"], p["n"], generator=gen, dtype=p["dtype"])
    return f, H, x


def _unit_row_cond(jac):
    """cond of the rows of ``jac`` scaled to unit norm, in float64, per sample."""
    rows = jac.double() / jac.double().norm(dim=-1, keepdim=True)
    sv = torch.linalg.svdvals(rows)
    return sv[..., 0] / sv[..., -1]


@settings(max_examples=80, deadline=None)
@given(coupled_problems)
def test_gram_path_is_orthogonal_idempotent_and_agrees_with_gram_schmidt(p):
    f, H, x = build_coupled(p)
    dtype = x.dtype
    reference = ProjectedVectorField(f, H)(0.0, x)  # Gram-Schmidt: n < 256
    with gram_path():
        field = ProjectedVectorField(f, H)
        out = field(0.0, x)
        twice = field.project(x, out)
    _, jac = invariant_jacobian(H, x)
    v_norm = f(0.0, x).norm(dim=-1)
    inner = (jac * out.unsqueeze(-2)).sum(-1)
    assert bool((inner.abs() <= RTOL[dtype] * v_norm.unsqueeze(-1) * jac.norm(dim=-1)).all())
    # The projection itself moves by eps * cond when J does by eps (here: J evaluated row by
    # row, then in one pass), on either path; and the two paths, both backward stable, differ
    # by as much.
    sensitivity = RTOL[dtype] * _unit_row_cond(jac).to(dtype) * v_norm
    assert bool(((twice - out).norm(dim=-1) <= sensitivity).all())
    gap = (out - reference).norm(dim=-1)
    assert bool((gap <= sensitivity).all()), (gap / v_norm).max()


@settings(max_examples=40, deadline=None)
@given(coupled_problems)
def test_gram_path_batched_equals_per_sample(p):
    f, H, x = build_coupled(p)
    with gram_path():
        field = ProjectedVectorField(f, H)
        batched = field(0.0, x)
        flat = x.reshape(-1, x.shape[-1])
        loop = torch.stack([field(0.0, xi) for xi in flat]).reshape(x.shape)
    # as above: a closed-form H's Jacobian is taken row by row on the first call and in one
    # pass after, which moves nearly dependent rows' projection by eps * cond
    _, jac = invariant_jacobian(H, x)
    tol = RTOL[x.dtype] * _unit_row_cond(jac).clamp(min=100).to(x.dtype) * f(0.0, x).norm(dim=-1)
    assert bool(((batched - loop).norm(dim=-1) <= tol).all())


def _rows(dtype, sines, scales=(3.0, 1e-2)):
    """Two rows per sample of the given norms, at the given angles' sines, and a vector; n = 6."""
    gen = torch.Generator().manual_seed(7)
    a, b = torch.randn(2, len(sines), 6, generator=gen, dtype=torch.float64)
    a = a / a.norm(dim=-1, keepdim=True)
    b = b - (a * b).sum(-1, keepdim=True) * a
    b = b / b.norm(dim=-1, keepdim=True)
    s = torch.tensor(sines, dtype=torch.float64)[:, None]
    jac = torch.stack([scales[0] * a, scales[1] * ((1 - s**2).sqrt() * a + s * b)], -2)
    v = torch.randn(len(sines), 6, generator=gen, dtype=torch.float64)
    return jac.to(dtype), v.to(dtype)


@pytest.mark.parametrize(("sines", "tiers"), [
    ([1.0, 0.5], (0, 0)),  # one pass of normal equations
    ([1.0, 0.05], (1, 0)),  # CholeskyQR2 for the batch
    ([0.5, 1e-6], (1, 1)),  # ... and Gram-Schmidt for the nearly dependent sample
    ([1.0, 0.0], (1, 1)),  # ... or the dependent one
], ids=["one-pass", "cholesky-qr2", "gram-schmidt-sample", "dependent"])
def test_gram_project_tiers_agree_with_gram_schmidt(dtype, sines, tiers, monkeypatch):
    calls = {"qr2": 0, "gs": 0}

    def counted(name, fn):
        def wrapper(*args):
            calls[name] += len(args[0])
            return fn(*args)
        return wrapper

    monkeypatch.setattr(projection_module, "_cholesky_qr2",
                        counted("qr2", projection_module._cholesky_qr2))
    monkeypatch.setattr(projection_module, "_gram_schmidt", counted("gs", _gram_schmidt))
    jac, v = _rows(dtype, sines)
    rel = 64 * torch.finfo(dtype).eps
    out = _gram_project(jac, v, rel)
    assert (calls["qr2"] // 2, calls["gs"]) == tiers  # CholeskyQR2 on the batch, GS per sample
    expected = _remove_components(_gram_schmidt(jac, rel)[0], v)
    gap = (out - expected).norm(dim=-1)
    assert bool((gap <= RTOL[dtype] * _unit_row_cond(jac).to(dtype) * v.norm(dim=-1)).all())
    if sines[1] == 0.0:  # the dependent row is dropped, as Gram-Schmidt drops it
        assert torch.equal(out[1], expected[1])


def test_gram_project_leaves_a_batch_of_dependent_rows_to_gram_schmidt():
    jac, v = _rows(torch.float64, [0.0, 0.0])
    assert _gram_project(jac, v, 1e-14) is None  # the caller then runs Gram-Schmidt
    assert _gram_project(torch.zeros_like(jac), v, 1e-14) is None  # critical point


@pytest.mark.parametrize("sines", [[1.0, 0.5], [0.7, 0.2]], ids=["one-pass", "cholesky-qr2"])
def test_gram_project_gradients(sines):
    jac, v = _rows(torch.float64, sines, scales=(1.0, 0.5))
    jac.requires_grad_(True)
    v.requires_grad_(True)

    def gram(j, w):
        return _gram_project(j, w, 1e-14)

    def schmidt(j, w):
        return _remove_components(_gram_schmidt(j, 1e-14)[0], w)

    assert torch.autograd.gradcheck(gram, (jac, v))
    assert torch.autograd.gradgradcheck(gram, (jac, v))
    # first and second derivatives are those of the Gram-Schmidt path
    weights = torch.randn(jac.shape[0], jac.shape[-1], generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64)
    derivatives = []
    for fn in (gram, schmidt):
        (g,) = torch.autograd.grad(fn(jac, v), jac, weights, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), jac)
        derivatives.append((g, gg))
    for a, b in zip(*derivatives, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * float(b.detach().abs().max()))


def test_gram_project_gradients_with_a_gram_schmidt_sample_are_per_sample():
    jac, v = _rows(torch.float64, [0.7, 1e-6, 0.05])
    jac.requires_grad_(True)

    def project(j, w):  # as ProjectedVectorField does: Gram-Schmidt where it returns None
        out = _gram_project(j, w, 1e-14)
        return _remove_components(_gram_schmidt(j, 1e-14)[0], w) if out is None else out

    (g_all,) = torch.autograd.grad(project(jac, v).pow(2).sum(), jac)
    for i in range(3):
        (g_one,) = torch.autograd.grad(project(jac[i:i + 1], v[i:i + 1]).pow(2).sum(), jac)
        torch.testing.assert_close(g_all[i], g_one[i], rtol=1e-9, atol=1e-9)
    assert bool(torch.isfinite(g_all).all())


@pytest.mark.parametrize("m", [1, 2])
def test_large_states_take_the_gram_path(dtype, m, monkeypatch):
    calls = []

    def spy(*args):
        calls.append(args[0].shape)
        return _gram_project(*args)

    monkeypatch.setattr(projection_module, "_gram_project", spy)
    torch.manual_seed(0)
    n = projection_module._GRAM_MIN_N
    f, H = MLP(n, n, hidden=16).to(dtype), MLP(n, m, hidden=16).to(dtype)
    x = torch.randn(5, n, dtype=dtype)
    out = ProjectedVectorField(f, H)(0.0, x)
    assert calls == [(5, m, n)]
    ProjectedVectorField(MLP(n - 1, n - 1).to(dtype), MLP(n - 1, m).to(dtype))(0.0, x[..., 1:])
    assert calls == [(5, m, n)]  # n - 1: Gram-Schmidt
    _, jac = invariant_jacobian(H, x)
    expected = _remove_components(orthonormal_rows(jac), f(x))
    torch.testing.assert_close(out, expected, rtol=RTOL[dtype], atol=RTOL[dtype])
    with torch.enable_grad():  # trains through the projection, as the Gram-Schmidt path does
        xg = x.clone().requires_grad_(True)
        ProjectedVectorField(f, H)(0.0, xg).pow(2).sum().backward()
    # every parameter but H's output bias (J does not depend on it) gets a gradient
    assert bool(torch.isfinite(xg.grad).all()) and all(
        p.grad is not None for p in [*f.parameters(), *list(H.parameters())[:-1]])
