"""Every example runs, as a user would run it, in a subprocess with a timeout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("[0-9][0-9]_*.py"))
# Examples that take minutes even with --quick run only with `-m slow`.
SLOW = {"06_sample_efficiency.py"}


@pytest.mark.parametrize(
    "script",
    [pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.name in SLOW else [])
     for p in EXAMPLES],
)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
        # One thread, as in this suite's own process: on a busy machine, oversubscribed
        # intra-op threads make these small workloads several times slower.
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.glob("*.png")), f"{script.name} wrote no figure"


def test_examples_exist() -> None:
    assert EXAMPLES, "no examples found"
