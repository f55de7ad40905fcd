"""The Table 1 application: the recipe object, the tasks' departures, one pipeline, layering."""

from __future__ import annotations

import ast
import inspect
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from concernet_ode import (
    TrajectoryData,
    contrastive_invariant_loss,
    estimate_derivatives,
    fit_invariants,
)
from concernet_ode.reproduce import METHODS, TASKS, Recipe, get_task, run_seed
from concernet_ode.reproduce import pipeline as pipeline_module
from concernet_ode.training import _default_positives

_PACKAGE = Path(__file__).resolve().parents[1] / "concernet_ode"


# ---------------------------------------------------------------- recipe


@pytest.mark.parametrize(("n_points", "epochs"), [(750, 500), (1500, 333), (5000, 100),
                                                  (100_000, 5), (10, 1000)])
def test_refinement_budget_is_a_number_of_steps(n_points, epochs):
    # The spring, chemical and Kepler training sets have 750, 1500 and 5000 points.
    assert Recipe.table1().refine_epochs(n_points) == epochs
    assert Recipe.paper().refine_epochs(n_points) == 0


def test_refinement_runs_at_least_one_epoch():
    assert Recipe(refine_steps=3).refine_epochs(100_000) == 1


def test_paper_recipe_is_the_papers_protocol():
    paper = Recipe.paper()
    assert (paper.anneal, paper.positives, paper.invariant_weight_decay,
            paper.refine_steps) == (False, "sum", 0.0, 0)
    assert paper.schedule(10) is None and Recipe.table1().schedule(10)(10) == 0.0
    assert "as in the paper" in paper.describe()
    assert Recipe.named("paper") == paper and Recipe.named("table1") == Recipe()


def test_smoke_recipe_is_labelled_and_short():
    smoke = Recipe.table1().as_smoke()
    assert smoke.epochs("contrastive") == 20 and smoke.epochs("dynamics") == 20
    assert Recipe().epochs("dynamics") == 1000
    assert smoke.eval_fraction < 1 and smoke.eval_options["rtol"] > Recipe().eval_rtol
    assert smoke.describe().startswith("SMOKE RUN")


def test_trajectory_recipe_is_table1_without_derivative_labels():
    traj, table1 = Recipe.named("trajectories"), Recipe.table1()
    assert traj == Recipe.trajectories() and traj.fits_trajectories
    assert not table1.fits_trajectories and not Recipe.paper().fits_trajectories
    changed = {f.name for f in fields(Recipe)
               if getattr(traj, f.name) != getattr(table1, f.name)}
    assert changed == {"name", "dynamics_fit", "warmup_epochs"}
    text = traj.describe()
    assert "no derivative labels" in text and "estimated from the states" in text
    assert "observed derivatives" not in text
    for other in (table1, Recipe.paper()):
        assert other.describe().endswith("dynamics 1000 epochs of 100 points.")
    # Kepler's 50 trajectories of 100 samples give 4900 windows of 3: 20 steps an epoch
    assert traj.trajectory_epochs(4900) == 150 and traj.as_smoke().trajectory_epochs(4900) == 3


def test_recipe_errors():
    with pytest.raises(ValueError, match=r"unknown recipe 'fast'; choose one of \['paper'"):
        Recipe.named("fast")
    with pytest.raises(ValueError, match=r"\['refine_step'\] are not fields of Recipe"):
        Recipe().with_changes({"refine_step": 3})


def test_library_defaults_are_the_recommended_recipe():
    """A user calling fit_invariants(net, data) gets what the reproduction found best."""
    table1 = Recipe.table1()
    fit = inspect.signature(fit_invariants).parameters
    assert fit["positives"].default is None and table1.positives == "mean"
    assert _default_positives(None, 0.0) == "mean" == _default_positives("mean", 1.0)
    assert _default_positives(None, 1.0) == "sum"  # ranking needs room along a trajectory
    assert fit["weight_decay"].default == table1.invariant_weight_decay
    assert fit["normalize"].default is table1.normalize_features is True
    assert fit["lr_schedule"].default == "cosine" and table1.anneal
    loss = inspect.signature(contrastive_invariant_loss).parameters
    assert loss["positives"].default == table1.positives
    assert loss["normalize"].default is fit["normalize"].default


# ---------------------------------------------------------------- tasks


def test_tasks_are_the_four_rows_in_order():
    assert list(TASKS) == ["spring", "chemical", "kepler", "heat"]
    heat = get_task("heat")
    assert heat.latent and len(heat.state_names) == 101
    assert heat.paper["concernet"]["violation"] == (0.178, 0.045)
    assert heat.authors["concernet"] == {"mse": 6.9e-5, "violation": 0.0140}
    assert "nodal values" in heat.notes


def test_departures_win_over_the_recipe():
    assert get_task("heat").recipe_for(Recipe.table1()).refine_steps == 0
    assert get_task("heat").recipe_for(Recipe.table1()).dynamics_epochs == 200
    assert get_task("kepler").recipe_for(Recipe.table1()).refine_lr == 1e-3
    chemical = get_task("chemical").recipe_for(Recipe.paper())
    assert chemical.activation == "relu" and not chemical.normalize_features
    assert get_task("spring").recipe_for(Recipe.paper()) == Recipe.paper()


def test_trajectory_departures_apply_to_the_trajectory_recipe_only():
    kepler, spring = get_task("kepler"), get_task("spring")
    traj = kepler.recipe_for(Recipe.trajectories())
    assert (traj.trajectory_window, traj.trajectory_substeps) == (3, 8)
    assert traj.refine_lr == 1e-3  # the task's other departures still apply
    assert spring.recipe_for(Recipe.trajectories()).trajectory_window == 30
    assert kepler.recipe_for(Recipe.table1()) == Recipe.table1().with_changes(
        kepler.departures)
    for task in TASKS.values():
        assert bool(task.trajectory_departures) == bool(task.trajectory_notes), task.name


def test_every_departure_is_explained_in_the_notes():
    for task in TASKS.values():
        assert bool(task.departures) == bool(task.notes), task.name


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown task 'pendulum'; choose one of spring, "
                                         "chemical, kepler, heat"):
        get_task("pendulum")


# ---------------------------------------------------------------- pipeline


class _StopAfterInvariant(Exception):
    pass


@pytest.mark.parametrize(("task", "annealed"), [("chemical", False), ("spring", True)])
def test_contrastive_stage_schedule_per_task(monkeypatch, task, annealed):
    # Chemical kinetics keeps its invariant at a constant step (its notes say why); the
    # other tasks anneal it with the rest. Stop the run at the contrastive stage.
    seen = {}

    def fake_fit_invariants(*args, **kwargs):
        seen.update(kwargs)
        raise _StopAfterInvariant

    monkeypatch.setattr(pipeline_module, "fit_invariants", fake_fit_invariants)
    with pytest.raises(_StopAfterInvariant):
        run_seed(get_task(task), 0, Recipe.table1().as_smoke())
    assert (seen["lr_schedule"] is not None) is annealed
    assert ("constant step" in get_task(task).notes) is not annealed


def test_smoke_seed_scores_every_method():
    result = run_seed(get_task("spring"), 0, Recipe.table1().as_smoke())
    assert list(result.evaluations) == list(METHODS)
    assert set(result.invariant_r2) == {"q^2 + p^2"}
    # The oracle projects onto the exact invariant: conserved to the solver's accuracy (a
    # smoke run's rtol 1e-4, squared), far better than the barely trained baseline.
    oracle = result.evaluations["oracle"].violation
    assert oracle < 1e-6 and oracle < 1e-2 * result.evaluations["baseline"].violation
    assert {"contrastive", "refine", "dynamics", "evaluate"} <= set(result.seconds)


def test_trajectory_recipe_uses_no_derivative_labels(monkeypatch):
    # Every stage sees the states alone, or derivatives estimated from them; never the
    # observed (noisy) labels of the protocol's data.
    task = get_task("spring")
    train, _ = task.system.train_data(0, dtype=torch.float32)
    estimated = estimate_derivatives(TrajectoryData(train.t, train.x)).dxdt
    seen = []

    def spy(name, fn):
        def wrapped(model, data, *args, **kwargs):
            seen.append((name, data.dxdt))
            return fn(model, data, *args, **kwargs)
        monkeypatch.setattr(pipeline_module, name, wrapped)

    for name in ("fit_invariants", "refine_invariants", "fit_ensemble", "fit_trajectories"):
        spy(name, getattr(pipeline_module, name))
    recipe = Recipe.trajectories().with_changes({"trajectory_steps": 250}).as_smoke()
    result = run_seed(task, 0, recipe)
    assert [name for name, _ in seen] == ["fit_invariants", "refine_invariants",
                                          "fit_ensemble", "fit_trajectories"]
    for name, dxdt in seen:
        if name in ("fit_invariants", "fit_trajectories"):
            assert dxdt is None, name
        else:
            torch.testing.assert_close(dxdt, estimated)
    assert list(result.evaluations) == list(METHODS)
    assert result.evaluations["oracle"].violation < 1e-6


# ---------------------------------------------------------------- layering


def _imports(path: Path) -> set[str]:
    """Modules imported by ``path``, relative ones resolved against the package."""
    module = ".".join(path.relative_to(_PACKAGE.parent).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def test_the_library_imports_no_higher_layer():
    """The core never imports the application (reproduce, cli) nor py-pde."""
    for path in _PACKAGE.rglob("*.py"):
        rel = path.relative_to(_PACKAGE).as_posix()
        if rel.startswith("reproduce/") or rel in ("cli.py", "__main__.py"):
            continue
        imported = _imports(path)
        assert not any(m.startswith(("concernet_ode.reproduce", "concernet_ode.cli", "pde"))
                       for m in imported), rel
        assert "importlib" not in imported, rel


def test_the_integration_imports_no_application():
    path = _PACKAGE.parent / "integrations" / "py_pde.py"
    assert not any(m.startswith(("concernet_ode.reproduce", "concernet_ode.cli"))
                   for m in _imports(path))
