"""Tests for the level-set Newton projection and odeint_projected (concernet_ode.manifold)."""

import itertools
import math

import pytest
import torch
from torchdiffeq import odeint

from concernet_ode import (
    ConvergenceError,
    ProjectedVectorField,
    odeint_projected,
    project_to_level_set,
)
from concernet_ode._torchdiffeq_stepper import RKStepper, make_stepper
from concernet_ode.manifold import ProjectionInfo
from concernet_ode.systems import Kepler, SpringMass

# Per-dtype bound on the invariant drift after projection: the default tolerance is
# eps^(4/5) * max(1, |H|), and H(x) itself is evaluated with a rounding error of a few eps
# times the size of its terms (1/r reaches ~5 on these orbits).
DRIFT_TOL = {torch.float64: 1e-10, torch.float32: 2e-4}
RK4 = {"method": "rk4", "options": {"step_size": 0.1}}  # coarse: plain RK4 drifts visibly


def circle(x):
    return x.pow(2).sum(-1)


def kepler_states(n, dtype=torch.float64):
    return Kepler().sample_initial(n, seed=0).to(dtype)


def max_drift(H, xs, x0):
    return float((H(xs) - H(x0)).detach().abs().max())


@pytest.mark.parametrize(("system", "t_end"), [(Kepler(), 20.0), (SpringMass(), 50.0)])
def test_rk4_drift_is_removed(system, t_end):
    x0 = kepler_states(8) if isinstance(system, Kepler) else system.sample_initial(8, seed=1)
    t = torch.linspace(0, t_end, 41, dtype=torch.float64)
    plain = odeint(system.vector_field, x0, t, **RK4)
    proj = odeint_projected(system.vector_field, x0, t, system.invariants, **RK4)
    assert proj.shape == plain.shape == (41, 8, system.state_dim)
    assert max_drift(system.invariants, plain, x0) > 1e-6
    assert max_drift(system.invariants, proj, x0) <= DRIFT_TOL[torch.float64]


def test_kepler_float32_holds_its_tolerance():
    system = Kepler()
    x0 = kepler_states(8, torch.float32)
    t = torch.linspace(0, 10, 21)
    proj, info = odeint_projected(system.vector_field, x0, t, system.invariants,
                                  return_info=True, **RK4)
    assert proj.dtype == torch.float32
    assert max_drift(system.invariants, proj, x0) <= DRIFT_TOL[torch.float32]
    assert int(info.iterations.max()) >= 1


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_project_batch_shapes_and_dtypes(batch, dtype):
    gen = torch.Generator().manual_seed(0)
    x = 1 + torch.rand(*batch, 3, generator=gen, dtype=dtype)
    y = project_to_level_set(x, circle, 2.0)
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.allclose(circle(y), torch.full(batch, 2.0, dtype=dtype),
                          atol=10 * torch.finfo(dtype).eps ** 0.8)
    for idx in itertools.product(*[range(b) for b in batch]):
        one = project_to_level_set(x[idx], circle, 2.0)
        assert torch.allclose(one, y[idx], atol=10 * torch.finfo(dtype).eps)


def test_project_several_invariants_per_sample_targets():
    x0 = kepler_states(5)
    x = x0 + 1e-3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2),
                                dtype=x0.dtype)
    y = project_to_level_set(x, Kepler().invariants, Kepler().invariants(x0))
    assert (Kepler().invariants(y) - Kepler().invariants(x0)).abs().max() <= 1e-12
    assert (y - x).norm(dim=-1).max() < 1e-2  # a small correction, not a jump elsewhere


def test_project_large_correction_converges():
    x = torch.tensor([[1.1, 0.0], [0.0, 0.3]], dtype=torch.float64)
    y = project_to_level_set(x, circle, 1.0)
    assert torch.allclose(circle(y), torch.ones(2, dtype=torch.float64), atol=1e-12)


def test_project_already_on_level_set_is_identity():
    x = torch.tensor([0.6, 0.8], dtype=torch.float64)
    assert torch.equal(project_to_level_set(x, circle, 1.0), x)


def test_unreachable_target_raises_with_details():
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ConvergenceError, match=r"worst residual .* after 20 iteration.*tolerance"):
        project_to_level_set(x, circle, -1.0)
    assert issubclass(ConvergenceError, RuntimeError)


@pytest.mark.parametrize("jacobian", ["auto", "autograd", "differences"])
def test_singular_jacobian_raises(jacobian):
    x = torch.zeros(2, dtype=torch.float64)  # grad of |x|^2 vanishes at the origin
    with pytest.raises(ConvergenceError, match="did not converge for 1 of 1"):
        project_to_level_set(x, circle, 1.0, max_iter=3, jacobian=jacobian)
    with torch.no_grad(), pytest.raises(ConvergenceError, match="did not converge for 1 of 1"):
        project_to_level_set(x, circle, 1.0, jacobian=jacobian)


def test_on_failure_warn_returns_best_iterate():
    x = torch.tensor([[1.0, 0.0], [0.0, 0.9]], dtype=torch.float64)
    target = torch.tensor([[-1.0], [1.0]], dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="did not converge for 1 of 2"):
        y = project_to_level_set(x, circle, target, on_failure="warn")
    assert torch.isfinite(y).all()
    assert abs(float(circle(y[1])) - 1.0) <= 1e-12


def test_dependent_invariants_use_rank_revealing_fallback():
    def twice(x):
        h = circle(x)
        return torch.stack([h, 2 * h], -1)

    x = torch.tensor([1.2, 0.0, 0.0], dtype=torch.float64)
    y = project_to_level_set(x, twice, torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert abs(float(circle(y)) - 1.0) <= 1e-12


def test_projection_works_under_no_grad_and_keeps_graph_otherwise():
    x = torch.tensor([1.1, 0.2], dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        y = project_to_level_set(x, circle, 1.0)
    assert not y.requires_grad
    y = project_to_level_set(x, circle, 1.0)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def _count_difference_jacobians(monkeypatch):
    import concernet_ode.manifold as manifold

    calls = []
    real = manifold.difference_jacobian

    def spy(H, x, **kwargs):
        calls.append(tuple(x.shape))
        return real(H, x, **kwargs)

    monkeypatch.setattr(manifold, "difference_jacobian", spy)
    return calls


def test_auto_jacobian_takes_differences_only_for_small_closed_form_batches_without_grad(
        monkeypatch):
    calls = _count_difference_jacobians(monkeypatch)
    H = Kepler().invariants
    x = kepler_states(8) * 1.001
    target = H(kepler_states(8))
    with torch.no_grad():
        project_to_level_set(x, H, target)  # 5 * 32 elements: differences
        assert calls and set(calls) == {(8, 4)}
        n_calls = len(calls)
        big = kepler_states(1000) * 1.001  # 5 * 4000 > 4096 elements: autograd
        project_to_level_set(big, H, H(kepler_states(1000)))
        net = torch.nn.Linear(4, 2).double()  # a network: autograd
        project_to_level_set(x, net, net(kepler_states(8)))
    project_to_level_set(x, H, target)  # gradients enabled: autograd
    assert len(calls) == n_calls


@pytest.mark.parametrize("jacobian", ["autograd", "differences"])
def test_forced_jacobian_methods_reach_the_same_level_set(monkeypatch, jacobian):
    calls = _count_difference_jacobians(monkeypatch)
    system = Kepler()
    x0 = kepler_states(6)
    t = torch.linspace(0, 5, 11, dtype=torch.float64)
    with torch.no_grad():
        auto = odeint_projected(system.vector_field, x0, t, system.invariants, **RK4)
        n_auto = len(calls)
        forced = odeint_projected(system.vector_field, x0, t, system.invariants,
                                  jacobian=jacobian, **RK4)
    assert n_auto > 0
    assert (len(calls) > n_auto) == (jacobian == "differences")
    assert max_drift(system.invariants, forced, x0) <= DRIFT_TOL[torch.float64]
    # Newton projections onto the same level set along directions that differ by J's
    # relative error (<= 20 sqrt(eps) = 3e-7), times corrections of coarse RK4 steps (< 0.1)
    assert torch.allclose(forced, auto, rtol=0, atol=3e-8)
    if jacobian == "autograd":
        assert not torch.equal(forced, auto)


def test_difference_jacobian_with_gradients_flows_through_the_values():
    x = torch.tensor([[1.0 + 1e-6, -0.4, 0.5]], dtype=torch.float64, requires_grad=True)
    y_auto = project_to_level_set(x, circle, 1.41)
    y_diff = project_to_level_set(x, circle, 1.41, jacobian="differences")
    (g_auto,) = torch.autograd.grad(y_auto[0, 0], x)
    (g_diff,) = torch.autograd.grad(y_diff[0, 0], x)
    assert torch.allclose(y_diff, y_auto, atol=1e-12)
    # J is a constant of the iteration: the gradient misses only dJ/dx times the correction
    correction = float((y_auto - x).norm())
    assert float((g_diff - g_auto).abs().max()) <= 4 * correction


def test_gradcheck_through_odeint_projected():
    system = SpringMass()
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    x0 = torch.tensor([[0.7, 0.2]], dtype=torch.float64, requires_grad=True)

    def run(x):
        return odeint_projected(system.vector_field, x, t, system.invariants,
                                target=0.5, method="rk4", options={"step_size": 0.1})

    assert torch.autograd.gradcheck(run, (x0,), eps=1e-6, atol=1e-6)


def test_gradient_through_projection_matches_finite_differences():
    x = torch.tensor([[1.3, -0.4, 0.5]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: project_to_level_set(z, circle, 1.0), (x,))


def test_projected_vector_field_with_info_and_substeps():
    system = Kepler()
    x0 = kepler_states(4)
    t = torch.linspace(0, 5, 6, dtype=torch.float64)
    field = ProjectedVectorField(system.vector_field, system.invariants)
    xs, info = odeint_projected(field, x0, t, system.invariants, substeps=3, return_info=True,
                                method="rk4", options={"step_size": 0.1})
    assert xs.shape == (6, 4, 4)
    assert isinstance(info, ProjectionInfo)
    assert info.times.shape == (15,) and info.iterations.shape == info.residuals.shape == (15, 4)
    assert torch.allclose(info.times[2::3], t[1:])
    assert float(info.residuals.max()) <= DRIFT_TOL[torch.float64]
    assert max_drift(system.invariants, xs, x0) <= DRIFT_TOL[torch.float64]


def test_adaptive_solver_and_field_of_x_only():
    x0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    t = torch.linspace(0, 30, 31, dtype=torch.float64)

    def field(x):
        return torch.stack([2 * x[..., 1], -2 * x[..., 0]], -1)

    xs = odeint_projected(field, x0, t, circle, rtol=1e-4, atol=1e-6)
    assert max_drift(circle, xs, x0) <= DRIFT_TOL[torch.float64]


def test_adaptive_stepper_matches_one_odeint_call_per_interval(monkeypatch):
    # The persistent adaptive solver and the public-API fallback (one odeint call per
    # interval) integrate the same projected map; they differ only in step-size history.
    system = Kepler()
    x0 = kepler_states(8)
    t = torch.linspace(0, 2, 41, dtype=torch.float64)
    kwargs = {"rtol": 1e-10, "atol": 1e-12}
    # the default method must take the persistent path, or this test compares a path with itself
    assert isinstance(make_stepper(system.vector_field, x0, t, kwargs), RKStepper)
    fast = odeint_projected(system.vector_field, x0, t, system.invariants, **kwargs)
    monkeypatch.setattr("concernet_ode.manifold.make_stepper", lambda *a: None)
    slow = odeint_projected(system.vector_field, x0, t, system.invariants, **kwargs)
    assert torch.allclose(fast, slow, rtol=0, atol=1e-7)
    assert max_drift(system.invariants, fast, x0) <= DRIFT_TOL[torch.float64]


def test_adaptive_stepper_large_correction_restarts_the_field(monkeypatch):
    # Projecting onto a level other than H(x0) moves the state far at the first output time:
    # the solver must then re-evaluate f there, as the per-interval fallback always does.
    system = SpringMass()
    x0 = torch.tensor([[0.6, -0.3], [0.1, 0.9]], dtype=torch.float64)
    t = torch.linspace(0, 2, 21, dtype=torch.float64)
    kwargs = {"target": 0.5, "rtol": 1e-10, "atol": 1e-12}
    fast = odeint_projected(system.vector_field, x0, t, system.invariants, **kwargs)
    monkeypatch.setattr("concernet_ode.manifold.make_stepper", lambda *a: None)
    slow = odeint_projected(system.vector_field, x0, t, system.invariants, **kwargs)
    assert torch.allclose(fast, slow, rtol=0, atol=1e-8)
    assert float((system.invariants(fast[1:]) - 0.5).abs().max()) <= 1e-12


def _count_calls(field, calls, key):
    def counted(t, x):
        calls[key] = calls.get(key, 0) + 1
        return field(t, x)
    return counted


def test_adaptive_stepper_costs_few_extra_field_evaluations():
    # Steps end on output times (stretched rather than followed by a sliver) and a correction
    # below the solver's tolerance keeps the first-same-as-last stage: the projected run needs
    # hardly more evaluations of f than plain odeint at the same settings. (On output grids
    # finer than the solver's own steps, every interval costs a step: not tested here.)
    system = Kepler()
    x0 = kepler_states(16)
    t = torch.linspace(0, 5, 101, dtype=torch.float64)
    calls = {}
    kwargs = {"rtol": 1e-7, "atol": 1e-9}
    with torch.no_grad():
        odeint(_count_calls(system.vector_field, calls, "plain"), x0, t, **kwargs)
        xs = odeint_projected(_count_calls(system.vector_field, calls, "projected"), x0, t,
                              system.invariants, **kwargs)
    assert max_drift(system.invariants, xs, x0) <= DRIFT_TOL[torch.float64]
    assert calls["projected"] <= 1.1 * calls["plain"], calls


def test_adaptive_stepper_decreasing_times():
    system = SpringMass()
    x0 = torch.tensor([[0.6, -0.3], [0.1, 0.9]], dtype=torch.float64)
    t = torch.linspace(3, 0, 31, dtype=torch.float64)
    xs = odeint_projected(system.vector_field, x0, t, system.invariants, rtol=1e-9, atol=1e-11)
    plain = odeint(system.vector_field, x0, t, rtol=1e-9, atol=1e-11)
    assert torch.allclose(xs, plain, atol=1e-7)
    assert max_drift(system.invariants, xs, x0) <= DRIFT_TOL[torch.float64]


def test_adaptive_stepper_gradients_match_finite_differences():
    system = SpringMass()
    t = torch.linspace(0, 1, 4, dtype=torch.float64)
    x0 = torch.tensor([[0.7, 0.2]], dtype=torch.float64, requires_grad=True)

    def run(x):
        return odeint_projected(system.vector_field, x, t, system.invariants, target=0.5,
                                rtol=1e-10, atol=1e-12)

    assert torch.autograd.gradcheck(run, (x0,), eps=1e-6, atol=1e-5)


def test_adaptive_stepper_step_limit_is_reported():
    system = SpringMass()
    x0 = torch.tensor([0.7, 0.2], dtype=torch.float64)
    t = torch.linspace(0, 5, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"more than 3 solver steps between output times"):
        odeint_projected(system.vector_field, x0, t, system.invariants, rtol=1e-12, atol=1e-14,
                         options={"max_num_steps": 3})


def test_interpolate_on_a_fine_grid_costs_about_what_plain_odeint_does():
    # 201 outputs on [0, 0.5]: far finer than dopri5's own steps at rtol 1e-7. By default each
    # output ends a step; with interpolate=True the solver keeps its own steps, and the
    # outputs inside a step are read off its dense output and projected together.
    system = Kepler()
    x0 = kepler_states(16)
    t = torch.linspace(0, 0.5, 201, dtype=torch.float64)
    kwargs = {"rtol": 1e-7, "atol": 1e-9}
    calls = {}
    with torch.no_grad():
        exact = odeint(system.vector_field, x0, t, method="dopri8", rtol=1e-12, atol=1e-12)
        plain = odeint(_count_calls(system.vector_field, calls, "plain"), x0, t, **kwargs)
        odeint_projected(_count_calls(system.vector_field, calls, "every"), x0, t,
                         system.invariants, **kwargs)
        dense, info = odeint_projected(_count_calls(system.vector_field, calls, "dense"), x0, t,
                                       system.invariants, interpolate=True, return_info=True,
                                       **kwargs)
    assert dense.shape == plain.shape == (201, 16, 4)
    assert torch.equal(dense[0], x0)
    assert max_drift(system.invariants, dense, x0) <= DRIFT_TOL[torch.float64]
    assert max_drift(system.invariants, plain, x0) > 1e-7  # there was drift to remove
    assert calls["dense"] <= 1.1 * calls["plain"] < 0.5 * calls["every"], calls
    # As accurate as plain odeint, up to the solver's step-to-step variation (5.5e-6 against
    # 5.0e-6 here; ending a step on every output gives 1.4e-7, from far smaller steps). A
    # wrong interpolation would be off by the size of a step's change, ~1e-2.
    assert float((dense - exact).abs().max()) <= 2 * float((plain - exact).abs().max())
    assert info.iterations.shape == info.residuals.shape == (200, 16)
    assert torch.equal(info.times, t[1:])
    assert float(info.residuals.max()) <= DRIFT_TOL[torch.float64]


def test_interpolate_changes_nothing_on_a_coarse_grid():
    # No solver step passes two output times: the same steps, bit for bit.
    system = Kepler()
    x0 = kepler_states(8)
    t = torch.linspace(0, 5, 11, dtype=torch.float64)
    a = odeint_projected(system.vector_field, x0, t, system.invariants)
    b = odeint_projected(system.vector_field, x0, t, system.invariants, interpolate=True)
    assert torch.equal(a, b)


def test_interpolate_with_substeps_decreasing_times_and_one_trajectory():
    system = SpringMass()
    x0 = torch.tensor([0.6, -0.3], dtype=torch.float64)
    t = torch.linspace(2, 0, 101, dtype=torch.float64)
    xs, info = odeint_projected(system.vector_field, x0, t, system.invariants, substeps=2,
                                interpolate=True, return_info=True, rtol=1e-9, atol=1e-11)
    plain = odeint(system.vector_field, x0, t, rtol=1e-9, atol=1e-11)
    assert xs.shape == (101, 2)
    assert info.iterations.shape == (200,)
    assert torch.allclose(xs, plain, atol=1e-7)
    assert max_drift(system.invariants, xs, x0) <= DRIFT_TOL[torch.float64]


def test_interpolate_gradients_match_finite_differences(monkeypatch):
    system = SpringMass()
    t = torch.linspace(0, 0.2, 41, dtype=torch.float64)  # several outputs per solver step
    x0 = torch.tensor([[0.7, 0.2]], dtype=torch.float64, requires_grad=True)
    crossings = []
    step_across = RKStepper.step_across

    def counted(self, k):
        crossings.append(k)
        return step_across(self, k)

    monkeypatch.setattr(RKStepper, "step_across", counted)

    def run(x):
        return odeint_projected(system.vector_field, x, t, system.invariants, target=0.5,
                                interpolate=True, rtol=1e-9, atol=1e-11)

    assert torch.autograd.gradcheck(run, (x0,), eps=1e-6, atol=1e-5)
    assert crossings  # the gradients went through interpolated, batch-projected outputs


def test_interpolate_reports_a_failed_batched_projection():
    # r grows by ~10% per solver step; one Newton iteration cannot bring it back to the
    # circle, and the failure inside a step's batch of outputs is reported like any other.
    x0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    t = torch.linspace(0, 1, 201, dtype=torch.float64)
    with pytest.raises(ConvergenceError, match=r"did not converge for \d+ of \d+ sample"):
        odeint_projected(lambda t, x: x, x0, t, circle, interpolate=True, max_iter=1)


def test_interpolate_step_limit_is_reported():
    # A first step far too long for the tolerance is rejected; the limit counts rejections.
    system = Kepler()
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"more than 1 rejected solver steps in a row"):
        odeint_projected(system.vector_field, kepler_states(4), t, system.invariants,
                         interpolate=True, options={"first_step": 0.5, "max_num_steps": 1})


def test_interpolate_needs_an_adaptive_runge_kutta_method():
    x0, t = torch.ones(2), torch.linspace(0, 1, 3)
    with pytest.raises(ValueError, match=r"`interpolate=True` needs one of the adaptive "
                                         r"Runge-Kutta methods.*method='rk4'"):
        odeint_projected(SpringMass().vector_field, x0, t, circle, interpolate=True, **RK4)
    with pytest.raises(TypeError, match="`interpolate` must be True or False, got 1"):
        odeint_projected(SpringMass().vector_field, x0, t, circle, interpolate=1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tol": -1.0}, ValueError, "`tol` must be a positive finite float"),
        ({"max_iter": 0}, ValueError, "`max_iter` must be a positive int"),
        ({"on_failure": "ignore"}, ValueError, r"`on_failure` must be one of \('raise', 'warn'\)"),
        ({"target": torch.ones(3)}, ValueError, "`target` must broadcast"),
        ({"jacobian": "jvp"}, ValueError,
         r"`jacobian` must be one of \('auto', 'autograd', 'differences'\), got 'jvp'"),
    ],
)
def test_project_argument_errors(kwargs, error, match):
    args = {"target": 1.0, **kwargs}
    with pytest.raises(error, match=match):
        project_to_level_set(torch.ones(2, 2), circle, **args)


def test_project_input_errors():
    with pytest.raises(TypeError, match=r"`x` must be a torch\.Tensor"):
        project_to_level_set([1.0, 0.0], circle, 1.0)
    with pytest.raises(ValueError, match="`x` must have at least one dimension"):
        project_to_level_set(torch.tensor(1.0), circle, 1.0)
    with pytest.raises(TypeError, match="`H` must be callable"):
        project_to_level_set(torch.ones(2), 3, 1.0)
    with pytest.raises(ValueError, match="m <= n"):
        project_to_level_set(torch.ones(2), lambda x: x.repeat(2), torch.zeros(4))


def test_odeint_projected_argument_errors():
    x0, t = torch.ones(2), torch.linspace(0, 1, 3)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['event_fn'\]"):
        odeint_projected(SpringMass().vector_field, x0, t, circle, event_fn=None)
    with pytest.raises(ValueError, match="`t` must be a 1-D tensor"):
        odeint_projected(SpringMass().vector_field, x0, t[None], circle)
    with pytest.raises(ValueError, match="`substeps` must be a positive int"):
        odeint_projected(SpringMass().vector_field, x0, t, circle, substeps=0)
    with pytest.raises(TypeError, match="`func` must be callable"):
        odeint_projected(None, x0, t, circle)
    with pytest.raises(TypeError, match=r"`x0` must be a torch\.Tensor"):
        odeint_projected(SpringMass().vector_field, [1.0, 0.0], t, circle)
    with pytest.raises(ValueError, match=r"`x0` must be a torch\.Tensor of shape"):
        odeint_projected(SpringMass().vector_field, torch.tensor(1.0), t, circle)


# ----------------------------------------------------------------------------------------
# Never silently wrong (issue 19): each sample on its own, the cause named, a step budget


@pytest.mark.parametrize(("bad", "cause"), [
    # one NaN sample, or one far away, stopped every other from being projected (float32:
    # the good samples were left at |H - 1| = 0.07 and 0.05; the error counted 3 of 3)
    ([math.nan, 0.0], r"sample\(s\) \[1\]: `x` is not finite \(NaN or inf\)"),
    ([1e9, 0.0], r"sample\(s\) \[1\]: the residual was still falling after 20 iteration\(s\) "
                 r"\(from 1e\+18 .*raise `max_iter`"),
])
def test_one_bad_sample_leaves_the_others_to_converge(bad, cause):
    x = torch.tensor([[1.3, 0.0], bad, [0.0, 0.8]], dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match=r"did not converge for 1 of 3 sample\(s\).*" + cause):
        y = project_to_level_set(x, circle, 1.0, on_failure="warn")
    good = (circle(y.detach()) - 1).abs()[[0, 2]]
    assert float(good.max()) <= 2.9e-6  # the default float32 tolerance, as alone


def test_one_nan_sample_of_several_invariants_leaves_the_others_alone():
    x0 = kepler_states(4)
    x = x0 + 1e-2
    x[2, 0] = math.nan
    with pytest.warns(RuntimeWarning, match=r"1 of 4 sample\(s\).*\[2\]: `x` is not finite"):
        y = project_to_level_set(x, Kepler().invariants, Kepler().invariants(x0),
                                 on_failure="warn")
    err = (Kepler().invariants(y.detach()) - Kepler().invariants(x0)).abs().amax(-1)
    assert float(err[[0, 1, 3]].max()) <= 1e-12


def test_a_jacobian_too_large_to_square_still_projects():
    # |J|^2 = 5e320 overflows float64: no sample moved before
    def H(x):
        return 1e160 * (x[..., 0] + 2 * x[..., 1])

    x = torch.tensor([[1.0, 1.0], [0.5, 0.2]], dtype=torch.float64)
    y = project_to_level_set(x, H, 1e160, jacobian="autograd")
    assert float((H(y) / 1e160 - 1).abs().max()) <= 1e-15


def _stalling_in_float32(x):
    return circle(x.float()).double()


@pytest.mark.parametrize(("x", "H", "target", "cause"), [
    ([[1.3, 0.0], [0.0, 0.8]], circle, [[1.0], [math.nan]],
     r"sample\(s\) \[1\]: `target` is not finite \(NaN or inf\), so there is no level to reach"),
    ([[1.3, 0.0], [math.nan, 0.8]], circle, 1.0,
     r"sample\(s\) \[1\]: `x` is not finite \(NaN or inf\): there is nothing to project"),
    ([[1.3, 0.0], [0.0, 0.8]], _stalling_in_float32, 0.7,  # stalled at 1e-8 > 3e-13
     r"sample\(s\) \[0, 1\]: `H` computes in torch\.float32 for torch\.float64 states .*"
     r"stalls at 1\.2e-08.*pass `tol` >= 5e-07"),
    ([[1.3, 0.0], [0.0, 0.8]], lambda x: circle(x.float()), 0.7,
     r"`H` computes in torch\.float32 for torch\.float64 states"),
    ([[1.3, 0.0], [0.0, 0.8]], lambda x: 1.7 * circle(x.float()).double(), 0.7,
     r"`H` is evaluated less precisely than the states \(e\.g\. in torch\.float32 inside"),
    ([[0.0, 0.0]], circle, 1.0,
     r"sample\(s\) \[0\]: dH/dx is zero or not finite at the state \(a critical point of `H`\)"),
    ([[1.0, 0.0]], circle, -1.0, r"the level set may be unreachable from the state"),
])
def test_convergence_error_names_the_cause(x, H, target, cause):
    x = torch.tensor(x, dtype=torch.float64)
    target = torch.as_tensor(target, dtype=torch.float64)
    with pytest.raises(ConvergenceError, match=r"did not converge .*Cause: .*" + cause):
        project_to_level_set(x, H, target)


def test_an_unstable_fixed_step_is_named_as_the_cause():
    # rk4 at step 10 on a spring of frequency 2: the state grows ~6600x a step
    field = SpringMass().vector_field
    x0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    t = torch.linspace(0, 100, 3, dtype=torch.float64)
    with pytest.raises(ConvergenceError, match=r"after the solver's step from t = 0 to t = 50: .*"
                                               r"Cause: the solver step moved `H` off its level "
                                               r"by up to .*the step is too large for the field"):
        odeint_projected(field, x0, t, circle, method="rk4", options={"step_size": 10.0})


def _near_critical(t, x):
    return torch.stack([2 * x[..., 1] + 0.3, -2 * x[..., 0] + 0.1], -1)


@pytest.mark.parametrize("kwargs", [{}, {"method": "rk4", "options": {"step_size": 1e-4}},
                                    {"interpolate": True}])
def test_step_budget_stops_a_stiff_run_with_a_clear_error(kwargs):
    # |x0| = 1e-4 from the critical point of |x|^2: the projected field turns at ~1e4 rad/s
    # (some 7200 evaluations for t in [0, 1]; from x0 = 0 plain odeint did not finish)
    x0 = torch.tensor([1e-4, 0.0], dtype=torch.float64)
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    field = ProjectedVectorField(_near_critical, circle)
    with torch.no_grad(), pytest.raises(
            RuntimeError, match=r"odeint_projected: more than max_steps = 200 solver steps "
                                r"between t = 0 and t = 0\.5 .*critical point"):
        odeint_projected(field, x0, t, circle, max_steps=200, **kwargs)


def test_step_budget_default_and_none():
    x0 = torch.tensor([0.7, 0.2], dtype=torch.float64)
    t = torch.linspace(0, 2, 3, dtype=torch.float64)
    field = SpringMass().vector_field
    a = odeint_projected(field, x0, t, circle)
    b = odeint_projected(field, x0, t, circle, max_steps=None)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="`max_steps` must be a positive int, got 0"):
        odeint_projected(field, x0, t, circle, max_steps=0)


@pytest.mark.parametrize(("x0", "kwargs", "exc", "match"), [
    # each ended in torchdiffeq's "underflow in dt 0.0", or was accepted silently (rtol=-1)
    (torch.tensor([math.nan, 0.0]), {}, ValueError, r"`x0` is not finite \(NaN or inf\): a "
                                                    r"solver cannot start from such a state"),
    (torch.tensor([[1.0, 0.0], [math.inf, 0.0]]), {}, ValueError,
     r"`x0` is not finite \(NaN or inf\) at 1 of 2 sample\(s\), indices \[1\]"),
    (torch.zeros(0, 2), {}, ValueError, r"`x0` is empty \(shape \(0, 2\)\)"),
    (torch.ones(2, dtype=torch.int64), {}, TypeError,
     r"`x0` must be a floating-point tensor, got dtype torch\.int64"),
    (torch.ones(2), {"rtol": -1}, ValueError, r"`rtol` must be a finite number >= 0 .*got -1"),
    (torch.ones(2), {"atol": math.nan}, ValueError, r"`atol` must be a finite number >= 0"),
    (torch.ones(3, 2), {"target": torch.tensor([[1.0], [math.nan], [1.0]])}, ValueError,
     r"`target` is not finite \(NaN or inf\) at sample\(s\) \[1\]: there is no level to hold"),
])
def test_odeint_projected_checks_its_input_up_front(x0, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        odeint_projected(SpringMass().vector_field, x0, torch.linspace(0, 1, 3), circle,
                         **kwargs)


def test_odeint_projected_rejects_an_h_not_finite_at_x0():
    x0 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`H\(x0\)` is not finite \(NaN or inf\) at "
                                         r"sample\(s\) \[1\]: there is no level to hold"):
        odeint_projected(SpringMass().vector_field, x0, torch.linspace(0, 1, 3), lambda x:
                         circle(x) + torch.log(x[..., 0]))


def test_odeint_projected_names_both_dtypes_of_a_mismatch():
    # float64 data (the systems' default) with a float32 network (MLP's default): torch's
    # "mat1 and mat2 must have the same dtype" before
    from concernet_ode import MLP

    x0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    torch.manual_seed(0)
    with pytest.raises(TypeError, match=r"`H` has torch\.float32 parameters but `x0` is "
                                        r"torch\.float64.*`H\.to\(torch\.float64\)`"):
        odeint_projected(SpringMass().vector_field, x0, t, MLP(2, 1))
    with pytest.raises(TypeError, match=r"`func` has torch\.float32 parameters but `x0` is "
                                        r"torch\.float64"):
        odeint_projected(MLP(2, 2), x0, t, circle)
    with pytest.raises(TypeError, match=r"`H` has torch\.float32 parameters but `x` is "
                                        r"torch\.float64"):
        project_to_level_set(x0, MLP(2, 1), 1.0)
