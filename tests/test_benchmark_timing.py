"""Tests for the benchmarks' shared timing helper (benchmarks/_timing.py)."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "_timing.py"


@pytest.fixture
def timing():
    spec = importlib.util.spec_from_file_location("_timing", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_paired_runs_abba_blocks_and_reports_block_ratios(timing, monkeypatch):
    now = [0.0]  # a fake perf_counter, advanced by the set-ups themselves
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    calls = []
    # the machine slows down linearly with every run: ABBA blocks cancel that drift
    speed = {"value": 1.0}

    def setup(name, cost):
        def run():
            calls.append(name)
            now[0] += cost * speed["value"]
            speed["value"] += 0.1
            return name
        return run

    setups = {"plain": setup("plain", 1.0), "fast": setup("fast", 0.5),
              "slow": setup("slow", 3.0)}
    out, last = timing.time_paired(setups, "plain", repeats=3)
    # one untimed run each, then per repeat and set-up: base, set-up, set-up, base
    assert calls[:3] == ["plain", "fast", "slow"]
    assert calls[3:11] == ["plain", "fast", "fast", "plain", "plain", "slow", "slow", "plain"]
    assert len(calls) == 3 + 3 * 8
    assert last == {"plain": "plain", "fast": "fast", "slow": "slow"}
    assert out["plain"][1] == 1.0
    assert out["fast"][1] == pytest.approx(0.5)
    assert out["slow"][1] == pytest.approx(3.0)
