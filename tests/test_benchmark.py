"""The benchmark's stacked trainer and evaluation against the library's own pieces."""

from __future__ import annotations

import copy

import pytest
import torch
from torchdiffeq import odeint

from concernet_ode import MLP, ProjectedVectorField, cosine_schedule, fit_dynamics
from concernet_ode._stacked import StackedField, StackedMLP, fit_stacked_dynamics, projector
from concernet_ode.benchmark import RunConfig, Task, get_task, register_task
from concernet_ode.metrics import Evaluation, evaluate
from concernet_ode.systems import Kepler, SpringMass


def _invariant(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).sum(-1, keepdim=True) + x[..., :1]


@pytest.mark.parametrize("anneal", [False, True])
def test_stacked_training_equals_fit_dynamics(anneal):
    """Stacking members changes nothing: each follows fit_dynamics's updates alone."""
    schedule = cosine_schedule(3) if anneal else None
    spring = SpringMass()
    data = spring.trajectories(6, t_end=1.0, n_times=20, noise=0.01, seed=0,
                               dtype=torch.float32)
    mlps = []
    for _ in range(2):
        torch.manual_seed(0)
        mlps.append(MLP(2, 2))
    stacked = StackedMLP(copy.deepcopy(mlps))
    fit_stacked_dynamics(stacked, [None, _invariant], data, epochs=3, batch_size=16, seed=5,
                         lr_schedule=schedule)
    trained = stacked.write_back()
    fit_dynamics(mlps[0], data, epochs=3, batch_size=16, seed=5, progress=False,
                 lr_schedule=schedule)
    projected = ProjectedVectorField(mlps[1], _invariant)
    fit_dynamics(projected, data, epochs=3, batch_size=16, seed=5, progress=False,
                 lr_schedule=schedule)
    for ours, ref in zip(trained, mlps, strict=True):
        for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
            assert torch.allclose(p, q, rtol=1e-4, atol=1e-5)
        assert not torch.equal(ours.net[0].weight, MLP(2, 2).net[0].weight)


def test_projector_matches_tangent_projection(rng):
    x = torch.randn(7, 4, generator=rng, dtype=torch.float64)
    v = torch.randn(7, 4, generator=rng, dtype=torch.float64)
    kep = Kepler()
    expected = ProjectedVectorField(lambda y: v, kep.invariants).project(x, v)
    assert torch.allclose((projector(kep.invariants, x) @ v.unsqueeze(-1)).squeeze(-1),
                          expected, atol=1e-12)
    assert torch.equal(projector(None, x), torch.eye(4, dtype=x.dtype).expand(7, 4, 4))


def test_stacked_field_integrates_like_each_member():
    torch.manual_seed(1)
    mlps = [MLP(2, 2).double(), MLP(2, 2).double()]
    field = StackedField(StackedMLP(mlps), [None, _invariant])
    x0 = torch.tensor([[0.5, 0.1], [-0.3, 0.7]], dtype=torch.float64)
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    opts = {"rtol": 1e-10, "atol": 1e-12}
    with torch.no_grad():
        both = odeint(field, x0.expand(2, -1, -1), t, **opts)
        alone = odeint(ProjectedVectorField(mlps[1], _invariant), x0, t, **opts)
    assert torch.allclose(both[:, 1], alone, atol=1e-8)


def test_evaluate_exact_model_scores_zero():
    spring = SpringMass()
    x0 = spring.sample_initial(4, seed=0)
    t = torch.linspace(0, 5, 51, dtype=torch.float64)
    ev = evaluate(spring.vector_field, x0, t, spring.invariants,
                  true=spring.solve(x0, t).movedim(-2, 0))
    assert isinstance(ev, Evaluation)
    assert ev.mse < 1e-12 and ev.violation < 1e-14
    assert ev.mse_curve.shape == (51,) and ev.violation_per_traj.shape == (4,)
    slow = evaluate(lambda t, x: 0.9 * spring.vector_field(t, x), x0, t, spring.invariants,
                    true_field=spring.vector_field)
    assert slow.mse > 1e-3 and slow.violation < 1e-12  # a slower rotation keeps the radius
    assert float(slow.mse_curve[-1]) > float(slow.mse_curve[1])


def test_evaluate_errors():
    spring = SpringMass()
    x0 = spring.sample_initial(2, seed=0)
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="pass exactly one of `true`"):
        evaluate(spring.vector_field, x0, t, spring.invariants)
    with pytest.raises(ValueError, match=r"`x0` must be a tensor of shape \(B, n\)"):
        evaluate(spring.vector_field, x0[0], t, spring.invariants,
                 true_field=spring.vector_field)
    with pytest.raises(ValueError, match=r"`pred` must have shape \(T, B, n\)"):
        Evaluation.from_trajectories(t[:2], torch.zeros(3, 2, 2), torch.zeros(3, 2, 2),
                                     spring.invariants)


def test_registry_errors():
    with pytest.raises(TypeError, match="`task` must be a Task, got str"):
        register_task("spring")
    assert Task.__dataclass_fields__.keys() >= {"name", "run_seed", "paper", "authors"}


def test_stacked_mlp_rejects_mixed_shapes():
    with pytest.raises(ValueError, match="`mlps` must be a non-empty sequence of MLPs"):
        StackedMLP([MLP(2, 2), MLP(2, 2, hidden=5)])


def test_plugin_task_not_registered(monkeypatch):
    from concernet_ode import benchmark

    monkeypatch.setitem(benchmark._PLUGINS, "fake", "no_such_module_for_concernet")
    with pytest.raises(ValueError, match="task 'fake' is not available yet: it is registered "
                                         "by no_such_module_for_concernet"):
        get_task("fake")
    assert "fake" not in benchmark.available_tasks()


class _StopAfterInvariant(Exception):
    pass


@pytest.mark.parametrize(("task", "annealed"), [("chemical", False), ("spring", True)])
def test_contrastive_stage_schedule_per_task(monkeypatch, task, annealed):
    # Chemical kinetics keeps its invariant at a constant step (its Task.notes say why); the
    # other tasks anneal it with the rest. Stop the run at the contrastive stage.
    seen = {}

    def fake_fit_invariants(*args, **kwargs):
        seen.update(kwargs)
        raise _StopAfterInvariant

    monkeypatch.setattr("concernet_ode.benchmark.fit_invariants", fake_fit_invariants)
    with pytest.raises(_StopAfterInvariant):
        get_task(task).run_seed(0, RunConfig.quick())
    assert (seen["lr_schedule"] is not None) is annealed
    assert ("constant step" in get_task(task).notes) is not annealed


@pytest.mark.parametrize(("n_points", "epochs"), [(750, 500), (1500, 333), (5000, 100),
                                                  (100_000, 5), (10, 1000)])
def test_refinement_budget_is_a_number_of_steps(n_points, epochs):
    # The spring, chemical and Kepler training sets have 750, 1500 and 5000 points.
    assert RunConfig().refine_epochs(n_points) == epochs
    assert RunConfig(refine_steps=0).refine_epochs(n_points) == 0


def test_refinement_runs_at_least_one_epoch():
    assert RunConfig(refine_steps=3).refine_epochs(100_000) == 1
