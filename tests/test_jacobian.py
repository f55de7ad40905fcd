"""Tests for the shared Jacobian helper (concernet_ode._jacobian)."""

import pytest
import torch

from concernet_ode._jacobian import difference_jacobian, invariant_jacobian, stacked_rows
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


def test_one_pass_jacobian_of_parameter_free_constant_is_zero():
    x = kepler_states(3)
    h, jac = invariant_jacobian(lambda x: torch.ones(*x.shape[:-1], 2, dtype=x.dtype), x, m=2)
    assert torch.equal(jac, torch.zeros(3, 2, 4, dtype=x.dtype))
    assert torch.equal(h, torch.ones(3, 2, dtype=x.dtype))


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
