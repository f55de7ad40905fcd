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


def time_paired(setups: dict[str, Callable[[], object]], base: str, repeats: int,
                ) -> tuple[dict[str, tuple[float, float]], dict[str, object]]:
    """Time each set-up against ``base`` in ABBA blocks: base, set-up, set-up, base.

    The speed of these shared machines drifts within seconds, so a ratio of medians taken
    over runs seconds apart carries that drift. A block's ratio, the set-up's two times over
    the base's two, cancels any drift that is linear over the block; the median over
    ``repeats`` blocks discards the blocks a load spike hit. One untimed run of each set-up
    comes first.

    Returns ``{name: (median time, median ratio to base)}`` (the base's ratio is 1) and the
    result of each set-up's last run.
    """
    last = {name: run() for name, run in setups.items()}
    times: dict[str, list[float]] = {name: [] for name in setups}
    ratios: dict[str, list[float]] = {name: [] for name in setups if name != base}

    def timed(name: str) -> float:
        start = time.perf_counter()
        last[name] = setups[name]()
        elapsed = time.perf_counter() - start
        times[name].append(elapsed)
        return elapsed

    for _ in range(repeats):
        for name in ratios:
            b1, x1, x2, b2 = timed(base), timed(name), timed(name), timed(base)
            ratios[name].append((x1 + x2) / (b1 + b2))
    out = {base: (statistics.median(times[base]), 1.0)}
    out.update({name: (statistics.median(times[name]), statistics.median(r))
                for name, r in ratios.items()})
    return out, last


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
