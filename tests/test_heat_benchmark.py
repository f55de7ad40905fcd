"""The heat row of Table 1 (integrations.py_pde_benchmark): registration and a smoke run."""

from __future__ import annotations

import json

from concernet_ode.benchmark import METHODS, RunConfig, Task, available_tasks, get_task
from concernet_ode.cli import main
from integrations.py_pde_benchmark import HEAT_TASK, HeatTask, _scaled


def test_heat_task_is_registered_through_the_plugin():
    assert "heat" in available_tasks()
    task = get_task("heat")
    assert task is HEAT_TASK and isinstance(task, HeatTask) and isinstance(task, Task)
    assert len(task.state_names) == 101
    assert task.paper["concernet"]["violation"] == (0.178, 0.045)
    assert task.authors["concernet"] == {"mse": 6.9e-5, "violation": 0.0140}
    assert "nodal values" in task.notes


def test_epochs_scale_with_the_config():
    assert _scaled(200, RunConfig()) == 200
    assert _scaled(200, RunConfig.quick()) == 2
    assert _scaled(10, RunConfig(dynamics_epochs=1)) == 1  # never zero epochs


def test_quick_heat_reproduce_writes_schema(tmp_path, capsys):
    # Issue 6's smoke run, in the default suite: about 22 s on one core.
    assert main(["reproduce", "--task", "heat", "--seeds", "0", "--out", str(tmp_path),
                 "--quick", "--no-progress"]) == 0
    doc = json.loads((tmp_path / "heat.json").read_text())
    assert {"task", "seeds", "methods", "invariant_r2", "wall_seconds", "versions"} <= set(doc)
    assert doc["task"] == "heat" and doc["seeds"] == [0]
    assert set(doc["methods"]) == set(METHODS)
    for entry in doc["methods"].values():
        assert len(entry["mse"]) == len(entry["violation"]) == 1
        assert len(entry["mse_per_traj"][0]) == 10  # the protocol's evaluation trajectories
        assert all(v >= 0 for v in entry["mse"] + entry["violation"])
    assert set(doc["invariant_r2_per_invariant"]) == {"total heat"}
    assert doc["invariant_r2"][0] <= 1
    stages = set(doc["stage_seconds"][0])
    assert {"autoencoder", "contrastive", "dynamics", "oracle", "evaluate"} <= stages
    # the oracle projects onto the exact (linear) total heat: conserved to round-off
    assert doc["methods"]["oracle"]["violation"][0] < 1e-12
    table = (tmp_path / "table1.md").read_text()
    assert "| heat | concernet |" in table and "0.098 ± 0.073" in table
    assert "nodal values" in table
    assert "heat: wall_seconds" in capsys.readouterr().out


def test_heat_records_that_its_invariant_is_not_refined():
    assert get_task("heat").config_for(RunConfig()).refine_steps == 0
