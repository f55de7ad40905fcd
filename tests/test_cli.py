"""The ``concernet-ode reproduce`` command: outputs, recipes, overrides and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from concernet_ode.cli import main
from concernet_ode.reproduce import METHODS, Recipe, get_task, run_seed
from concernet_ode.reproduce import pipeline as pipeline_module


def test_quick_reproduce_writes_schema_labelled_as_smoke(tmp_path, capsys):
    assert main(["reproduce", "--task", "spring", "--seeds", "0", "--out", str(tmp_path),
                 "--quick", "--no-progress"]) == 0
    doc = json.loads((tmp_path / "spring.json").read_text())
    assert {"task", "seeds", "methods", "invariant_r2", "wall_seconds", "versions",
            "recipe", "smoke"} <= set(doc)
    assert doc["task"] == "spring" and doc["seeds"] == [0]
    assert set(doc["methods"]) == set(METHODS)
    for entry in doc["methods"].values():
        assert len(entry["mse"]) == len(entry["violation"]) == 1
        assert len(entry["mse_per_traj"][0]) == 10  # the protocol's evaluation trajectories
        assert all(v >= 0 for v in entry["mse"] + entry["violation"])
    assert len(doc["invariant_r2"]) == 1 and doc["invariant_r2"][0] <= 1
    assert doc["wall_seconds"] > 0 and "torch" in doc["versions"]
    assert doc["smoke"] is True and doc["recipe"]["name"] == "table1"
    assert doc["recipe"]["anneal"] is True and doc["recipe"]["positives"] == "mean"
    assert doc["recipe_text"].startswith("SMOKE RUN")
    assert "refine" in doc["stage_seconds"][0]
    # the oracle projects onto the true invariant: conserved to solver accuracy
    assert doc["methods"]["oracle"]["violation"][0] < 1e-6
    assert (tmp_path / "spring.png").stat().st_size > 0
    table = (tmp_path / "table1.md").read_text()
    assert "**SMOKE RUN**" in table
    assert "| spring | concernet |" in table and "0.076 ± 0.063" in table
    assert "- spring: SMOKE RUN (numbers mean nothing): recipe 'table1'" in table
    assert "spring (SMOKE RUN): wall_seconds" in capsys.readouterr().out


def test_quick_heat_reproduce_runs_the_latent_pipeline(tmp_path):
    assert main(["reproduce", "--task", "heat", "--seeds", "0", "--out", str(tmp_path),
                 "--quick", "--no-progress"]) == 0
    doc = json.loads((tmp_path / "heat.json").read_text())
    assert set(doc["methods"]) == set(METHODS)
    assert set(doc["invariant_r2_per_invariant"]) == {"total heat"}
    assert {"autoencoder", "contrastive", "dynamics", "evaluate"} <= set(doc["stage_seconds"][0])
    # the oracle projects onto the exact (linear) total heat: conserved to round-off
    assert doc["methods"]["oracle"]["violation"][0] < 1e-12
    assert doc["recipe"]["refine_steps"] == 0 and doc["recipe"]["dynamics_epochs"] == 200
    table = (tmp_path / "table1.md").read_text()
    assert "| heat | concernet |" in table and "0.098 ± 0.073" in table
    assert "nodal values" in table


def test_paper_recipe_and_overrides_are_recorded(tmp_path):
    assert main(["reproduce", "--task", "spring", "--seeds", "0", "--out", str(tmp_path),
                 "--quick", "--no-progress", "--recipe", "paper"]) == 0
    doc = json.loads((tmp_path / "spring.json").read_text())
    paper = Recipe.paper()
    assert doc["recipe"]["name"] == "paper" and doc["recipe"]["anneal"] is paper.anneal
    assert doc["recipe"]["positives"] == "sum" and doc["recipe"]["refine_steps"] == 0
    assert "refine" not in doc["stage_seconds"][0]
    table = (tmp_path / "table1.md").read_text()
    assert "a constant step, as in the paper" in table and "eq. (4) as printed" in table
    assert main(["reproduce", "--task", "spring", "--seeds", "0", "--out", str(tmp_path),
                 "--quick", "--no-progress", "--recipe", "paper", "--positives", "mean",
                 "--refine-steps", "100"]) == 0
    doc = json.loads((tmp_path / "spring.json").read_text())
    assert doc["recipe"]["positives"] == "mean" and doc["recipe"]["refine_steps"] == 100


def test_old_flags_make_the_paper_recipe(tmp_path):
    import argparse

    from concernet_ode.cli import _recipe

    args = argparse.Namespace(recipe="table1", no_progress=True, constant_lr=True,
                              positives="sum", invariant_weight_decay=0.0, refine_steps=0,
                              quick=False)
    assert _recipe(args) == Recipe.paper().with_changes({"name": "table1"})


def test_unknown_task_lists_valid_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--task", "nope", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err
    assert all(name in err for name in ("spring", "chemical", "kepler", "heat", "all"))


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "concernet_ode", "reproduce", "--help"],
                         capture_output=True, text=True, timeout=120, check=True)
    for flag in ("--quick", "--seeds", "--recipe", "--constant-lr", "--out"):
        assert flag in out.stdout
    assert "recipe 'paper'" in out.stdout and "recipe 'table1'" in out.stdout


def test_negative_weight_decay_is_refused(tmp_path, capsys):
    assert main(["reproduce", "--task", "spring", "--out", str(tmp_path),
                 "--invariant-weight-decay", "-1"]) == 2
    assert "--invariant-weight-decay must be a finite number >= 0, got -1" in (
        capsys.readouterr().err)


def test_negative_refine_steps_are_refused(tmp_path, capsys):
    assert main(["reproduce", "--task", "spring", "--out", str(tmp_path),
                 "--refine-steps", "-3"]) == 2
    assert "--refine-steps must be an integer >= 0, got -3" in capsys.readouterr().err


class _Stop(Exception):
    pass


def _stage_kwargs(monkeypatch, stage: str, task: str, recipe: Recipe) -> dict:
    """The keyword arguments with which ``task``'s seed 0 first calls ``pipeline.<stage>``
    (the run stops there)."""
    seen = {}

    def spy(model, data, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(pipeline_module, stage, spy)
    with pytest.raises(_Stop):
        run_seed(get_task(task), 0, recipe)
    return seen


@pytest.mark.parametrize(("task", "expected"),
                         [("spring", 0.25), ("chemical", 0.0), ("kepler", 0.0)])
def test_invariant_weight_decay_reaches_the_contrastive_stage(monkeypatch, task, expected):
    # Chemical kinetics trains its invariant on raw features, whose scale decay would shrink;
    # Kepler's one feature followed E less closely with decay (their departures).
    recipe = Recipe.table1().with_changes({"invariant_weight_decay": 0.25}).as_smoke()
    assert _stage_kwargs(monkeypatch, "fit_invariants", task, recipe)["weight_decay"] == expected


@pytest.mark.parametrize(("task", "expected"),
                         [("spring", 0.01), ("chemical", 0.01), ("kepler", 0.001)])
def test_refine_step_reaches_the_refinement_stage(monkeypatch, task, expected):
    # Kepler refines at its own peak step (a departure), whatever the recipe says.
    recipe = Recipe.table1().with_changes({"contrastive_epochs": 50}).as_smoke()
    assert _stage_kwargs(monkeypatch, "refine_invariants", task, recipe)["lr"] == expected
    assert get_task(task).recipe_for(recipe).refine_lr == expected
