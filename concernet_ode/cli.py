"""The ``concernet-ode`` command: ``concernet-ode reproduce --task spring --seeds 0 1 2``.

``reproduce`` reruns the paper's Table 1 for one task or all registered ones and writes, in
``--out``: ``<task>.json`` (per-seed metrics, per-trajectory values, invariant R^2, wall
time, versions), ``table1.md`` (ours beside the paper's and the authors' code's numbers) and
``<task>.png`` (the paper's Fig. 3 for the first seed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import _report
from .benchmark import RunConfig, SeedResult, Task, available_tasks, get_task

__all__ = ["main", "reproduce"]


def _run_seed(name: str, seed: int, config: RunConfig) -> SeedResult:
    torch.set_num_threads(1)  # one core per worker process: seeds run side by side
    return get_task(name).run_seed(seed, config)


def reproduce(task: Task, seeds: Sequence[int], out: Path, config: RunConfig,
              jobs: int = 1) -> dict:
    """Run every seed of ``task``, write its JSON and figure, and return the JSON document.

    With ``jobs > 1`` the seeds run in that many worker processes; every seed is seeded on
    its own, so the numbers do not depend on ``jobs``.
    """
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    show = config.progress and sys.stderr.isatty()
    if jobs > 1 and len(seeds) > 1:
        quiet = replace(config, progress=False)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(seeds)), mp_context=ctx) as pool:
            futures = [pool.submit(_run_seed, task.name, s, quiet) for s in seeds]
            results = [f.result() for f in tqdm(futures, desc=task.name, disable=not show)]
    else:
        results = [task.run_seed(s, config) for s in tqdm(seeds, desc=task.name,
                                                            disable=not show)]
    wall = time.perf_counter() - start
    doc = _report.task_summary(task, results, wall,
                               {**asdict(task.config_for(config)), "jobs": jobs})
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
    rep.add_argument("--jobs", type=int, default=1,
                     help="run the seeds of a task in this many processes (default 1)")
    rep.add_argument("--quick", action="store_true",
                     help="a smoke run with a few epochs (the numbers mean nothing)")
    rep.add_argument("--constant-lr", action="store_true",
                     help="train at a constant Adam step, exactly the paper's protocol "
                          "(default: the step anneals to 0 along a cosine)")
    rep.add_argument("--positives", choices=("mean", "sum"), default="mean",
                     help="contrastive loss: 'sum' is eq. (4) as printed; 'mean' (default) "
                          "averages the log-similarity over a trajectory's pairs")
    rep.add_argument("--invariant-weight-decay", type=float, default=0.3, metavar="W",
                     help="decoupled weight decay of the contrastive stage on standardised "
                          "features (default 0.3; 0 is the paper's)")
    rep.add_argument("--refine-steps", type=int, default=None, metavar="N",
                     help="optimiser steps of refining the learned invariant's level sets "
                          "against the observed derivatives after the contrastive stage "
                          "(default 1000, 4 with --quick; 0 is the paper's: no refinement)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``concernet-ode`` (and ``python -m concernet_ode.cli``)."""
    args = _parser().parse_args(argv)
    if args.jobs < 1:
        print(f"concernet-ode reproduce: error: --jobs must be >= 1, got {args.jobs}",
              file=sys.stderr)
        return 2
    if not 0 <= args.invariant_weight_decay < float("inf"):
        print("concernet-ode reproduce: error: --invariant-weight-decay must be a finite "
              f"number >= 0, got {args.invariant_weight_decay}", file=sys.stderr)
        return 2
    if args.refine_steps is not None and args.refine_steps < 0:
        print("concernet-ode reproduce: error: --refine-steps must be an integer >= 0, got "
              f"{args.refine_steps}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    # The models are small: one thread per process is fastest on a shared machine and makes
    # the numbers independent of --jobs (same summation order in every process).
    torch.set_num_threads(1)
    config = RunConfig.quick(progress) if args.quick else RunConfig(progress=progress)
    config = replace(config, anneal=not args.constant_lr, positives=args.positives,
                     invariant_weight_decay=args.invariant_weight_decay)
    if args.refine_steps is not None:
        config = replace(config, refine_steps=args.refine_steps)
    try:
        names = available_tasks() if args.task == "all" else [get_task(args.task).name]
    except ValueError as err:
        print(f"concernet-ode reproduce: error: {err}", file=sys.stderr)
        return 2
    tasks = [get_task(name) for name in names]
    for task in tasks:
        doc = reproduce(task, args.seeds, args.out, config, jobs=args.jobs)
        means = {m: (sum(v["mse"]) / len(v["mse"]), sum(v["violation"]) / len(v["violation"]))
                 for m, v in doc["methods"].items()}
        summary = "; ".join(f"{m} mse {a:.3g} viol {b:.3g}" for m, (a, b) in means.items())
        print(f"{task.name}: wall_seconds {doc['wall_seconds']:.1f}; {summary}", flush=True)
    table = _report.write_table(args.out, [get_task(n) for n in available_tasks()])
    print(f"wrote {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
