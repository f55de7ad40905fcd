"""The ``concernet-ode`` command: ``concernet-ode reproduce --task spring --seeds 0 1 2``.

``reproduce`` reruns the paper's Table 1 for one task or all registered ones and writes, in
``--out``: ``<task>.json`` (per-seed metrics, per-trajectory values, invariant R^2, wall
time, versions), ``table1.md`` (ours beside the paper's and the authors' code's numbers) and
``<task>.png`` (the paper's Fig. 3 for the first seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from . import _report
from .benchmark import RunConfig, Task, available_tasks, get_task

__all__ = ["main", "reproduce"]


def reproduce(task: Task, seeds: Sequence[int], out: Path, config: RunConfig) -> dict:
    """Run every seed of ``task``, write its JSON and figure, and return the JSON document."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = []
    bar = tqdm(seeds, desc=task.name, disable=not (config.progress and sys.stderr.isatty()))
    for seed in bar:
        results.append(task.run_seed(seed, config))
    wall = time.perf_counter() - start
    doc = _report.task_summary(task, results, wall, asdict(config))
    (out / f"{task.name}.json").write_text(json.dumps(doc, indent=1))
    _report.write_figure(out, task, results[0])
    return doc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="concernet-ode", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("reproduce", help="rerun Table 1 of the ConCerNet paper")
    rep.add_argument("--task", required=True,
                     help="spring, chemical, kepler, heat (once registered) or all "
                          "(every registered task)")
    rep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    rep.add_argument("--out", type=Path, default=Path("results"))
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep.add_argument("--quick", action="store_true",
                     help="a smoke run with a few epochs (the numbers mean nothing)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``concernet-ode`` (and ``python -m concernet_ode.cli``)."""
    args = _parser().parse_args(argv)
    progress = not args.no_progress
    config = RunConfig.quick(progress) if args.quick else RunConfig(progress=progress)
    try:
        names = available_tasks() if args.task == "all" else [get_task(args.task).name]
    except ValueError as err:
        print(f"concernet-ode reproduce: error: {err}", file=sys.stderr)
        return 2
    tasks = [get_task(name) for name in names]
    for task in tasks:
        doc = reproduce(task, args.seeds, args.out, config)
        means = {m: (sum(v["mse"]) / len(v["mse"]), sum(v["violation"]) / len(v["violation"]))
                 for m, v in doc["methods"].items()}
        summary = "; ".join(f"{m} mse {a:.3g} viol {b:.3g}" for m, (a, b) in means.items())
        print(f"{task.name}: wall_seconds {doc['wall_seconds']:.1f}; {summary}", flush=True)
    table = _report.write_table(args.out, [get_task(n) for n in available_tasks()])
    print(f"wrote {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
