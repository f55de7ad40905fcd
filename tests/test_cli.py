"""The ``concernet-ode reproduce`` command: outputs, recipes, overrides and errors."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import concernet_ode
from concernet_ode import cli
from concernet_ode.cli import main
from concernet_ode.metrics import Evaluation
from concernet_ode.reproduce import METHODS, Recipe, SeedResult, get_task, report, run_seed
from concernet_ode.reproduce import pipeline as pipeline_module


def test_quick_reproduce_writes_schema_labelled_as_smoke(tmp_path, capsys, monkeypatch):
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
    # which run the table comes from
    assert f"- spring: `spring.json` of {doc['finished']}, this run; seeds 0; recipe " \
        "'table1'; SMOKE RUN" in table
    # the seed was kept; read back, it gives the same document and the same figure
    kept, _ = report.load_seed(tmp_path / "seeds" / "spring-seed0.json", get_task("spring"),
                               0, Recipe.table1().as_smoke())
    again = report.task_summary(get_task("spring"), [kept], 1.0, Recipe.table1().as_smoke())
    assert again["methods"] == doc["methods"]
    assert again["invariant_r2_per_invariant"] == doc["invariant_r2_per_invariant"]
    _assert_resume_gives_the_same_outputs(monkeypatch, tmp_path, "spring")


def _assert_resume_gives_the_same_outputs(monkeypatch, out: Path, task: str) -> None:
    """A rerun of seed 0 with --resume trains nothing and writes the same rows and figure."""
    def rows(text: str) -> list[str]:  # the method rows and the R^2 row (not the timing)
        return [line for line in text.splitlines() if line.startswith(f"| {task} |")][:5]

    table, png = (out / "table1.md").read_text(), (out / f"{task}.png").read_bytes()
    monkeypatch.setattr(cli, "run_seed", _must_not_train)
    assert main(["reproduce", "--task", task, "--seeds", "0", "--out", str(out), "--quick",
                 "--no-progress", "--resume"]) == 0
    again = (out / "table1.md").read_text()
    assert rows(again) == rows(table)
    assert "seeds 0 (kept from an earlier run: 0)" in again
    assert (out / f"{task}.png").read_bytes() == png


def test_quick_heat_reproduce_runs_the_latent_pipeline(tmp_path, monkeypatch):
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
    _assert_resume_gives_the_same_outputs(monkeypatch, tmp_path, "heat")  # a profile figure


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
    for flag in ("--quick", "--seeds", "--recipe", "--constant-lr", "--out", "--resume",
                 "--table-from-existing"):
        assert flag in out.stdout
    text = " ".join(out.stdout.split())
    assert "task seeds, distinct (default 0 1 2)" in text
    assert "seeds/<task>-seed<k>.json (default results; created if missing" in text
    assert "computed with the same recipe by the same package version" in text
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


# --- outputs kept, checked and never mixed silently (fast: a fake run_seed) ------------------


def _fake_result(seed: int) -> SeedResult:
    """A small seed result, different per seed."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, 6, dtype=torch.float64)
    true = torch.randn(6, 3, 2, generator=g, dtype=torch.float64)

    def energy(x):
        return x.pow(2).sum(-1, keepdim=True)

    evaluations = {
        m: Evaluation.from_trajectories(
            t, true + 0.1 * (i + 1) * torch.randn(6, 3, 2, generator=g, dtype=torch.float64),
            true, energy)
        for i, m in enumerate(METHODS)}
    return SeedResult(seed, evaluations, {"E": 0.9 + 0.01 * seed}, {"data": 0.5})


def _fake_run_seed(task, seed, recipe=None):
    return _fake_result(seed)


def _must_not_train(task, seed, recipe=None):
    raise AssertionError(f"trained {task.name} seed {seed}")


def _run(out: Path, *extra: str, task: str = "spring", seeds: tuple = ("0",)) -> int:
    return main(["reproduce", "--task", task, "--seeds", *seeds, "--out", str(out), "--quick",
                 "--no-progress", *extra])


@pytest.fixture
def fake(monkeypatch):
    """run_seed replaced by :func:`_fake_run_seed`; the seeds it computed, in order."""
    calls = []

    def run(task, seed, recipe=None):
        calls.append(seed)
        return _fake_run_seed(task, seed, recipe)

    monkeypatch.setattr(cli, "run_seed", run)
    return calls


def test_other_tasks_json_is_tabled_only_when_asked(tmp_path, fake, capsys):
    assert _run(tmp_path, task="chemical") == 0
    assert _run(tmp_path) == 0
    table = (tmp_path / "table1.md").read_text()
    assert "| spring | concernet |" in table and "| chemical |" not in table
    assert (f"not tabled: chemical.json in {tmp_path}, from earlier runs "
            "(--table-from-existing adds them)") in capsys.readouterr().err
    assert _run(tmp_path, "--table-from-existing") == 0
    table = (tmp_path / "table1.md").read_text()
    chemical = json.loads((tmp_path / "chemical.json").read_text())
    assert "| chemical | concernet |" in table and "| spring | concernet |" in table
    assert (f"- chemical: `chemical.json` of {chemical['finished']}, an earlier run "
            "(`--table-from-existing`); seeds 0; recipe 'table1'; SMOKE RUN") in table
    assert "- spring: `spring.json` of " in table and ", this run; seeds 0;" in table


def test_corrupt_json_of_another_task_is_reported_and_skipped(tmp_path, fake, capsys):
    (tmp_path / "chemical.json").write_text('{"task": "chemical", "seeds": [0')  # truncated
    assert _run(tmp_path, "--table-from-existing") == 0
    err = capsys.readouterr().err
    assert f"warning: skipping {tmp_path / 'chemical.json'} is not a readable JSON document " \
        "of task 'chemical' (JSONDecodeError(" in err
    table = (tmp_path / "table1.md").read_text()
    assert "| spring | concernet |" in table and "| chemical |" not in table


def test_hand_written_table_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "run_seed", _must_not_train)
    (tmp_path / "table1.md").write_text("# my own notes\n")
    assert _run(tmp_path) == 2
    assert (tmp_path / "table1.md").read_text() == "# my own notes\n"
    assert (f"error: --out {str(tmp_path)!r} holds a table1.md this run may not replace: "
            f"{tmp_path / 'table1.md'} was not generated by concernet-ode reproduce (no line "
            "starts with 'Generated by `concernet-ode reproduce`') and would be overwritten; "
            "move it away or write elsewhere") in capsys.readouterr().err


def test_a_generated_table_is_replaced(tmp_path, fake):
    # the marker line of the tables written before it was a marker (results/table1.md)
    (tmp_path / "table1.md").write_text("# Table 1, reproduced\n\nGenerated by "
                                        "`concernet-ode reproduce`; do not edit by hand.\n")
    assert _run(tmp_path) == 0
    assert "| spring | concernet |" in (tmp_path / "table1.md").read_text()


def _unwritable(out: Path, monkeypatch) -> Path:
    def refuse(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(report, "write_atomic", refuse)  # running as root ignores chmod
    return out


@pytest.mark.parametrize(("case", "expected"), [
    ("file", "--out must be a directory, got {out!r}, which is a file"),
    ("under_file", "--out must be a directory this process can write, got {out!r} (Not a "
                   "directory: {out}); choose another --out"),
    ("unwritable", "--out must be a directory this process can write, got {out!r} "
                   "(Permission denied: {out}/.concernet-ode-write-test); choose another --out"),
])
def test_out_is_checked_before_training(tmp_path, monkeypatch, capsys, case, expected):
    monkeypatch.setattr(cli, "run_seed", _must_not_train)
    (tmp_path / "file").write_text("")
    out = {"file": tmp_path / "file", "under_file": tmp_path / "file" / "sub",
           "unwritable": tmp_path / "out"}[case]
    if case == "unwritable":
        _unwritable(out, monkeypatch)
    assert _run(out) == 2
    assert expected.format(out=str(out)) in capsys.readouterr().err


def test_empty_out_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(cli, "run_seed", _must_not_train)
    with pytest.raises(SystemExit) as exit_info:
        _run(Path(), "--out", "")  # the last --out wins
    assert exit_info.value.code == 2
    assert ("argument --out: expected a directory, got ''; pass --out . for the current "
            "directory") in capsys.readouterr().err


def test_repeated_seeds_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "run_seed", _must_not_train)
    assert _run(tmp_path, seeds=("0", "1", "0")) == 2
    assert ("error: --seeds must be distinct, got 0 1 0 (0 repeated: a repeated seed reruns "
            "the same numbers and shrinks the ± over seeds)") in capsys.readouterr().err


def test_reproduce_refuses_repeated_seeds(tmp_path):
    with pytest.raises(ValueError, match=r"`seeds` must be one or more distinct seeds, got "
                                         r"\[2, 2\]"):
        cli.reproduce(get_task("spring"), [2, 2], tmp_path, Recipe.table1())


def test_interrupt_keeps_finished_seeds_and_resume_reuses_them(tmp_path, monkeypatch, capsys):
    def interrupted_at_seed_1(task, seed, recipe=None):
        if seed == 1:
            raise KeyboardInterrupt
        return _fake_result(seed)

    monkeypatch.setattr(cli, "run_seed", interrupted_at_seed_1)
    assert _run(tmp_path, seeds=("0", "1")) == 130
    err = capsys.readouterr().err
    assert (f"spring: interrupted; seeds finished by this run kept in {tmp_path / 'seeds'}: 0 "
            "(rerun with --resume to reuse them)") in err
    assert "table1.md not written" in err and not (tmp_path / "table1.md").exists()
    assert (tmp_path / "seeds" / "spring-seed0.json").exists()
    assert not list(tmp_path.glob("**/*.tmp"))

    calls = []
    monkeypatch.setattr(cli, "run_seed", lambda task, seed, recipe=None: (
        calls.append(seed), _fake_result(seed))[1])
    assert _run(tmp_path, "--resume", seeds=("0", "1")) == 0
    assert calls == [1]
    assert f"spring seed 0: reusing {tmp_path / 'seeds' / 'spring-seed0.json'} (finished " in (
        capsys.readouterr().err)
    doc = json.loads((tmp_path / "spring.json").read_text())
    assert doc["seeds"] == [0, 1] and doc["reused_seeds"] == [0]
    fresh = report.task_summary(get_task("spring"), [_fake_result(0), _fake_result(1)], 1.0,
                                Recipe.table1().as_smoke())
    assert doc["methods"] == fresh["methods"]


def _stale_version(path: Path) -> None:
    record = json.loads(path.read_text())
    record["concernet_ode"] = "0.0.1"
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(("change", "extra", "expected"), [
    (None, ("--constant-lr",), "is stale: its recipe differs from this run's in anneal (kept "
                               "True, now False)"),
    (_stale_version, (), "is stale: it was computed by concernet_ode '0.0.1', this is "
                         f"{concernet_ode.__version__!r}"),
    (lambda p: p.write_text(p.read_text()[:100]), (), "is not readable JSON (Unterminated"),
])
def test_resume_recomputes_a_stale_or_corrupt_seed_saying_why(tmp_path, fake, capsys, change,
                                                             extra, expected):
    assert _run(tmp_path) == 0
    path = tmp_path / "seeds" / "spring-seed0.json"
    if change is not None:
        change(path)
    capsys.readouterr()
    assert _run(tmp_path, "--resume", *extra) == 0
    assert fake == [0, 0]
    assert f"spring seed 0: recomputing: {path} {expected}" in capsys.readouterr().err


def test_without_resume_kept_seeds_are_recomputed_saying_so(tmp_path, fake, capsys):
    assert _run(tmp_path) == 0
    assert _run(tmp_path) == 0
    assert fake == [0, 0]
    assert (f"spring seed 0: recomputing; {tmp_path / 'seeds' / 'spring-seed0.json'} from an "
            "earlier run will be replaced (--resume reuses it)") in capsys.readouterr().err


def _slow_seed_1(name, seed, recipe):
    """A worker: seed 0 at once; seed 1 interrupts the parent once seed 0 is kept, then
    would run for a minute."""
    if seed == 1:
        kept = Path(os.environ["CONCERNET_TEST_OUT"]) / "seeds" / "spring-seed0.json"
        while not kept.exists():
            time.sleep(0.05)
        os.kill(os.getppid(), signal.SIGINT)
        time.sleep(60)
    return _fake_result(seed)


def test_interrupt_with_jobs_stops_workers_at_once_and_keeps_finished(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.setenv("CONCERNET_TEST_OUT", str(tmp_path))
    monkeypatch.setattr(cli, "_run_seed", _slow_seed_1)  # pickled by name into the workers
    start = time.perf_counter()
    assert _run(tmp_path, "--jobs", "2", seeds=("0", "1")) == 130
    assert time.perf_counter() - start < 40  # seed 1 would take 60 s more
    assert (f"seeds finished by this run kept in {tmp_path / 'seeds'}: 0 (rerun with "
            "--resume") in capsys.readouterr().err
    assert report.load_seed(tmp_path / "seeds" / "spring-seed0.json", get_task("spring"), 0,
                            get_task("spring").recipe_for(Recipe.table1().as_smoke()))
    assert not multiprocessing.active_children()  # the workers are gone
