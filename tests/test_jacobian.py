"""Tests for the shared Jacobian helper (concernet_ode._jacobian)."""

import numpy as np
import pytest
import torch

from concernet_ode._jacobian import (
    check_state,
    difference_jacobian,
    format_indices,
    invariant_jacobian,
    stacked_rows,
)
from concernet_ode.models import MLP
from concernet_ode.systems import Kepler


def kepler_states(n):
    return Kepler().sample_initial(n, seed=1)


@pytest.mark.parametrize("shape", [(7,), (3, 5)])
def test_one_pass_jacobian_equals_one_pass_per_invariant(shape):
    H = Kepler().invariants
    x = kepler_states(15)[: shape[0] * (shape[1] if len(shape) > 1 else 1)].reshape(*shape, 4)
    with torch.no_grad():
        h_rows, j_rows = invariant_jacobian(H, x)
        h_one, j_one = invariant_jacobian(H, x, m=2)
    assert j_one.shape == (*shape, 2, 4)
    assert torch.equal(h_one, h_rows)
    assert torch.allclose(j_one, j_rows, rtol=1e-14, atol=1e-14)
    assert not j_one.requires_grad


def test_one_pass_jacobian_keeps_the_graph_for_second_derivatives():
    H = Kepler().invariants
    x = kepler_states(4).requires_grad_(True)

    def jac_sum(x, m):
        return invariant_jacobian(H, x, create_graph=True, m=m)[1].pow(2).sum()

    (g_rows,) = torch.autograd.grad(jac_sum(x, None), x)
    (g_one,) = torch.autograd.grad(jac_sum(x, 2), x)
    assert torch.allclose(g_one, g_rows, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: invariant_jacobian(H, x, m=2)[1], (x,))


# ----------------------------------------------------------------------------------------
# An H that autograd cannot see through is an error, never a zero Jacobian (issue 19, group 1)

DISCONNECTED = r"`H\(x\)` is not connected to `x` by autograd .*\.detach\(\)"


@pytest.mark.parametrize("m", [None, 2])
@pytest.mark.parametrize(("H", "why"), [
    (lambda x: torch.ones(*x.shape[:-1], 2, dtype=x.dtype), "does not require grad"),
    (lambda x: torch.stack([x.detach().sum(-1), x.detach().prod(-1)], -1),
     "does not require grad"),
    (lambda x: torch.from_numpy(np.stack([x.detach().numpy().sum(-1)] * 2, -1)),
     "does not require grad"),
])
def test_jacobian_of_an_h_not_connected_to_x_is_an_error(H, why, m):
    with pytest.raises(ValueError, match=DISCONNECTED) as info:
        invariant_jacobian(H, kepler_states(3), m=m)
    assert why in str(info.value)


@pytest.mark.parametrize("m", [None, 2])
def test_jacobian_of_an_h_depending_on_parameters_only_is_an_error(m):
    net = MLP(4, 2, hidden=8).double()
    with pytest.raises(ValueError, match=r"depends on parameters, not on `x`"):
        invariant_jacobian(lambda x: net(x.detach()), kepler_states(3), m=m)


def test_integer_invariants_are_a_type_error():
    with pytest.raises(TypeError, match=r"`H` must return floating-point values, got a tensor "
                                        r"of dtype torch\.int64.*without rounding or casting"):
        invariant_jacobian(lambda x: (x.pow(2).sum(-1) * 1e6).long(), kepler_states(3))


def test_integer_states_are_a_type_error():
    with pytest.raises(TypeError, match=r"`x` must be a floating-point tensor, got dtype "
                                        r"torch\.int64; convert it"):
        check_state(torch.ones(2, 3, dtype=torch.int64))


@pytest.mark.parametrize(("H", "op"), [
    (lambda x: torch.round(x.pow(2).sum(-1), decimals=6), "torch.round"),
    (lambda x: torch.floor(x[..., 0]) + torch.sign(x[..., 1]), "torch.floor, torch.sign"),
    (lambda x: torch.stack([x.pow(2).sum(-1), x.detach().sum(-1)], -1),
     "part of it is detached"),
])
def test_audit_finds_a_zero_jacobian_that_is_no_critical_point(H, op):
    x = kepler_states(5)
    invariant_jacobian(H, x)  # without the audit: zeros (the per-call path stays cheap)
    match = (r"dH/dx is zero at 5 of 5 state\(s\) \(indices \[0, 1, 2, 3, 4\]\) without a "
             r"critical point of `H`")
    with pytest.raises(ValueError, match=match) as info:
        invariant_jacobian(H, x, audit=True)
    assert op in str(info.value)


@pytest.mark.parametrize("m", [None, 2])
def test_audit_allows_true_critical_points(m):
    def H(x):
        return torch.stack([x.pow(2).sum(-1), (x - 1).pow(2).sum(-1)], -1)

    x = torch.zeros(3, 4, dtype=torch.float64)
    x[1] = 1.0  # a critical point of the second invariant
    _, jac = invariant_jacobian(H, x, m=m, audit=True)
    assert torch.equal(jac[0, 0], torch.zeros(4, dtype=torch.float64))
    assert torch.equal(jac[1, 1], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(jac, invariant_jacobian(H, x, m=m)[1], rtol=0, atol=0)


def test_format_indices():
    assert format_indices(torch.tensor([False, True, False, True])) == "[1, 3]"
    assert format_indices(torch.tensor([[False, True], [True, True]])) == "[(0, 1), (1, 0), (1, 1)]"
    assert format_indices(torch.ones(8, dtype=torch.bool), limit=2) == "[0, 1] + 6 more"
    assert format_indices(torch.tensor(True)) == "()"


def test_one_pass_jacobian_rejects_a_wrong_invariant_count():
    with pytest.raises(ValueError, match=r"`H` returned 2 invariants where 3 were expected"):
        invariant_jacobian(Kepler().invariants, kepler_states(3), m=3)


def test_stacked_rows_only_for_closed_form_invariants_of_several_values():
    def closed_form(x):
        return x.pow(2)

    assert stacked_rows(closed_form, 2) == 2
    assert stacked_rows(closed_form, 1) is None
    assert stacked_rows(closed_form, None) is None
    assert stacked_rows(MLP(3, 2), 2) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_difference_jacobian_approximates_autograd_to_sqrt_eps(dtype):
    H = Kepler().invariants
    x = kepler_states(6).reshape(2, 3, 4).to(dtype)
    h, jac = difference_jacobian(H, x)
    exact = invariant_jacobian(H, x, create_graph=False)[1]
    assert h.shape == (2, 3, 2) and jac.shape == (2, 3, 2, 4) and jac.dtype == dtype
    assert torch.equal(h, H(x))
    rel = float((jac - exact).abs().max() / exact.abs().max())
    # first-order differences: error ~ sqrt(eps) times curvature over gradient (1/r <= 10)
    assert rel <= 20 * torch.finfo(dtype).eps ** 0.5
    assert rel > 0  # it is a difference, not autograd in disguise


def test_difference_jacobian_builds_no_graph():
    x = kepler_states(3).requires_grad_(True)
    h, jac = difference_jacobian(Kepler().invariants, x)
    assert not h.requires_grad and not jac.requires_grad
