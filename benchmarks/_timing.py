"""What the benchmark scripts share: interleaved timing, medians as ratios, the machine line.

Imported by the scripts in this folder (``python benchmarks/<script>.py`` puts the folder on
``sys.path``).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch

import concernet_ode


def time_interleaved(setups: dict[str, Callable[[], object]], repeats: int, *,
                     warmup: bool = False) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Run every set-up once per repeat, in turn, so that load changes hit all alike.

    Returns the wall times of each set-up and the result of its last run.
    """
    if warmup:
        for run in setups.values():
            run()
    times: dict[str, list[float]] = {name: [] for name in setups}
    last: dict[str, object] = {}
    for _ in range(repeats):
        for name, run in setups.items():
            start = time.perf_counter()
            last[name] = run()
            times[name].append(time.perf_counter() - start)
    return times, last


def median_ratios(times: dict[str, list[float]], base: str) -> dict[str, tuple[float, float]]:
    """``{name: (median, median / median of base)}``."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {name: (med, med / medians[base]) for name, med in medians.items()}


def machine_line(*versions: str) -> str:
    """The machine, the thread count and the versions, for the head of a benchmark's output."""
    libs = ", ".join([f"torch {torch.__version__}", *versions,
                      f"concernet_ode {concernet_ode.__version__}"])
    return (f"machine: {platform.machine()} {platform.processor() or ''} "
            f"{torch.get_num_threads()} thread(s); python {platform.python_version()}, {libs}")
