"""The ``concernet-ode reproduce`` command: a quick smoke run and its errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from concernet_ode import benchmark
from concernet_ode.benchmark import METHODS, get_task, registered_tasks
from concernet_ode.cli import main


def test_quick_reproduce_writes_schema(tmp_path, capsys):
    assert main(["reproduce", "--task", "spring", "--seeds", "0", "--out", str(tmp_path),
                 "--quick", "--no-progress"]) == 0
    doc = json.loads((tmp_path / "spring.json").read_text())
    assert {"task", "seeds", "methods", "invariant_r2", "wall_seconds", "versions"} <= set(doc)
    assert doc["task"] == "spring" and doc["seeds"] == [0]
    assert set(doc["methods"]) == set(METHODS)
    for entry in doc["methods"].values():
        assert len(entry["mse"]) == len(entry["violation"]) == 1
        assert len(entry["mse_per_traj"][0]) == 10  # the protocol's evaluation trajectories
        assert all(v >= 0 for v in entry["mse"] + entry["violation"])
    assert len(doc["invariant_r2"]) == 1 and doc["invariant_r2"][0] <= 1
    assert doc["wall_seconds"] > 0 and "torch" in doc["versions"]
    assert doc["config"]["anneal"] is True  # the default: cosine-annealed Adam steps
    assert doc["config"]["positives"] == "mean"
    assert doc["config"]["invariant_weight_decay"] == 0.3
    assert doc["config"]["refine_steps"] == 4  # --quick's
    assert "refine" in doc["stage_seconds"][0]
    # the oracle projects onto the true invariant: conserved to solver accuracy
    assert doc["methods"]["oracle"]["violation"][0] < 1e-6
    assert (tmp_path / "spring.png").stat().st_size > 0
    table = (tmp_path / "table1.md").read_text()
    assert "| spring | concernet |" in table and "0.076 ± 0.063" in table
    assert "Training: Adam at 1e-3 annealed to 0 along a cosine" in table
    assert "averages the log-similarity over each trajectory's pairs" in table
    assert "decoupled weight decay of 0.3" in table
    assert "about 4 Adam steps on batches of 500 points at a peak step of 0.01" in table
    assert "spring: wall_seconds" in capsys.readouterr().out


def test_unknown_task_lists_valid_ones(tmp_path, capsys):
    assert main(["reproduce", "--task", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'nope'" in err
    assert all(name in err for name in registered_tasks())


def test_get_task_error():
    with pytest.raises(ValueError, match="unknown task 'nope'; registered tasks: spring"):
        get_task("nope")


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "concernet_ode.cli", "reproduce", "--help"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert "--quick" in out.stdout and "--seeds" in out.stdout and "--constant-lr" in out.stdout


def test_paper_recipe_is_recorded(tmp_path):
    assert main(["reproduce", "--task", "spring", "--seeds", "0", "--out", str(tmp_path),
                 "--quick", "--no-progress", "--constant-lr", "--positives", "sum",
                 "--invariant-weight-decay", "0", "--refine-steps", "0"]) == 0
    doc = json.loads((tmp_path / "spring.json").read_text())
    assert doc["config"]["anneal"] is False and doc["config"]["positives"] == "sum"
    assert doc["config"]["invariant_weight_decay"] == 0
    assert doc["config"]["refine_steps"] == 0 and "refine" not in doc["stage_seconds"][0]
    table = (tmp_path / "table1.md").read_text()
    assert "Training: Adam at a constant 1e-3" in table and "eq. (4) as printed" in table
    assert "no weight decay, as in the paper" in table
    assert "the contrastive invariant is used as learned, as in the paper" in table


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


def _stage_kwargs(monkeypatch, stage: str, task: str, config) -> dict:
    """The keyword arguments with which ``task``'s seed 0 first calls ``benchmark.<stage>``
    (the run stops there)."""
    seen = {}

    def spy(model, data, **kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(benchmark, stage, spy)
    with pytest.raises(_Stop):
        get_task(task).run_seed(0, config)
    return seen


@pytest.mark.parametrize(("task", "expected"),
                         [("spring", 0.25), ("chemical", 0.0), ("kepler", 0.0)])
def test_invariant_weight_decay_reaches_the_contrastive_stage(monkeypatch, task, expected):
    # Chemical kinetics trains its invariant on raw features, whose scale decay would shrink;
    # Kepler's one feature followed E less closely with decay (INVARIANT_OPTIONS).
    config = dataclasses.replace(benchmark.RunConfig.quick(), invariant_weight_decay=0.25)
    assert _stage_kwargs(monkeypatch, "fit_invariants", task, config)["weight_decay"] == expected


@pytest.mark.parametrize(("task", "expected"),
                         [("spring", 0.01), ("chemical", 0.01), ("kepler", 0.001)])
def test_refine_step_reaches_the_refinement_stage(monkeypatch, task, expected):
    # Kepler refines at its own peak step (Task.overrides), whatever RunConfig.refine_lr says;
    # the others take the run's.
    config = dataclasses.replace(benchmark.RunConfig.quick(), contrastive_epochs=1)
    assert _stage_kwargs(monkeypatch, "refine_invariants", task, config)["lr"] == expected
    assert get_task(task).config_for(config).refine_lr == expected


def test_training_note_names_each_tasks_refine_step():
    from concernet_ode import _report

    configs = {name: dataclasses.asdict(get_task(name).config_for(benchmark.RunConfig()))
               for name in ("spring", "kepler")}
    note = _report._training_note(configs)
    assert "a peak step of 0.01, annealed" in note and "a peak step of 0.001, annealed" in note
