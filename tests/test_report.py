"""Writing and reading back the reproduction's files: atomic writes, kept seeds, the table."""

from __future__ import annotations

import json

import pytest

from concernet_ode.reproduce import Recipe, get_task, report
from tests.test_cli import _fake_result

SPRING = get_task("spring")
RECIPE = SPRING.recipe_for(Recipe.table1().as_smoke())


def test_write_atomic_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "table1.md"
    path.write_text("old")

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.os, "replace", fail)
    with pytest.raises(OSError, match="No space left on device"):
        report.write_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table1.md"]  # no temporary file left


def test_write_atomic_replaces_and_keeps_usual_permissions(tmp_path):
    path = tmp_path / "a.json"
    report.write_atomic(path, "one")
    report.write_atomic(path, b"two")
    assert path.read_text() == "two" and path.stat().st_mode & 0o044  # readable by others


@pytest.fixture
def kept(tmp_path):
    (tmp_path / "seeds").mkdir()
    return report.save_seed(tmp_path, SPRING, _fake_result(3), RECIPE)


def test_kept_seed_reads_back_exactly(kept):
    result, finished = report.load_seed(kept, SPRING, 3, RECIPE.with_changes({"progress": True}))
    fresh = _fake_result(3)
    assert kept.name == "spring-seed3.json" and finished.endswith("+00:00")
    assert result.invariant_r2 == fresh.invariant_r2 and result.seconds == fresh.seconds
    for name, e in result.evaluations.items():
        f = fresh.evaluations[name]
        assert (e.mse, e.violation) == (f.mse, f.violation)
        assert e.mse_per_traj.tolist() == f.mse_per_traj.tolist()
        assert e.violation_curve.tolist() == f.violation_curve.tolist()
        assert e.pred.tolist() == f.pred[:, :1].tolist()  # trajectory 0: what the figure draws


def _edit(path, **changes):
    record = json.loads(path.read_text())
    record.update(changes)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(("changes", "seed", "expected"), [
    ({"format": 0}, 3, "is stale: it has format 0, this version reads 1"),
    ({}, 4, "is stale: it holds task 'spring' seed 3, not 'spring' seed 4"),
    ({"recipe": None}, 3, "is stale: it records no recipe"),
    ({"methods": {}}, 3, r"is damaged \(KeyError: 'baseline'\)"),
    ({"t": [0.0, 1.0]}, 3, r"is damaged \(ValueError: inconsistent shapes: t \(2,\)"),
    ({"invariant_r2": {"E": "high"}}, 3, r"is damaged \(TypeError: expected a number, got "),
])
def test_stale_or_damaged_kept_seed_is_refused_saying_why(kept, changes, seed, expected):
    _edit(kept, **changes)
    with pytest.raises(ValueError, match=expected):
        report.load_seed(kept, SPRING, seed, RECIPE)


def test_kept_seed_that_is_not_an_object_is_refused(kept):
    kept.write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a list, not a kept seed's JSON object"):
        report.load_seed(kept, SPRING, 3, RECIPE)


def test_unreadable_table_is_not_replaced(tmp_path):
    (tmp_path / "table1.md").mkdir()
    with pytest.raises(FileExistsError, match=r"table1\.md exists but cannot be read"):
        report.check_table_replaceable(tmp_path / "table1.md")


def test_task_json_of_another_task_is_refused(tmp_path):
    path = tmp_path / "chemical.json"
    path.write_text(json.dumps({"task": "spring"}))
    with pytest.raises(ValueError, match=r"chemical\.json is not a readable JSON document of "
                                         r"task 'chemical' \(ValueError\(\"it holds task "
                                         r"'spring', not 'chemical'\"\)\)"):
        report.read_task_json(path, get_task("chemical"))
