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
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .reproduce import Recipe, SeedResult, Task, get_task, run_seed
from .reproduce import report as _report
from .reproduce.tasks import TASKS

__all__ = ["main", "reproduce"]


def _run_seed(name: str, seed: int, recipe: Recipe) -> SeedResult:
    torch.set_num_threads(1)  # one core per worker process: seeds run side by side
    return run_seed(get_task(name), seed, recipe)


def reproduce(task: Task, seeds: Sequence[int], out: Path, recipe: Recipe,
              jobs: int = 1) -> dict:
    """Run every seed of ``task``, write its JSON and figure, and return the JSON document.

    ``recipe`` is taken before the task's departures. With ``jobs > 1`` the seeds run in
    that many worker processes; every seed is seeded on its own, so the numbers do not
    depend on ``jobs``.
    """
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    show = recipe.progress and sys.stderr.isatty()
    if jobs > 1 and len(seeds) > 1:
        quiet = replace(recipe, progress=False)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(seeds)), mp_context=ctx) as pool:
            futures = [pool.submit(_run_seed, task.name, s, quiet) for s in seeds]
            results = [f.result() for f in tqdm(futures, desc=task.name, disable=not show)]
    else:
        results = [run_seed(task, s, recipe) for s in tqdm(seeds, desc=task.name,
                                                           disable=not show)]
    wall = time.perf_counter() - start
    effective = task.recipe_for(recipe)
    doc = _report.task_summary(task, results, wall, effective, jobs)
    (out / f"{task.name}.json").write_text(json.dumps(doc, indent=1))
    _report.write_figure(out, task, results[0], smoke=effective.smoke)
    return doc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="concernet-ode", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser(
        "reproduce", help="rerun Table 1 of the ConCerNet paper",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="recipes:\n" + "\n".join(f"  {Recipe.named(n).describe()}"
                                         for n in ("table1", "paper")))
    rep.add_argument("--task", required=True, choices=[*TASKS, "all"],
                     help="the Table 1 row to run, or all of them")
    rep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                     help="task seeds (default 0 1 2); each seeds the data, the weights, "
                          "the batch order and the evaluation states")
    rep.add_argument("--out", type=Path, default=Path("results"),
                     help="directory for <task>.json, <task>.png and table1.md "
                          "(default results)")
    rep.add_argument("--recipe", choices=("table1", "paper"), default="table1",
                     help="the training recipe (default table1; paper: the paper's exact "
                          "recipe); the flags below override single choices of it")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")
    rep.add_argument("--jobs", type=int, default=1,
                     help="run the seeds of a task in this many processes (default 1)")
    rep.add_argument("--quick", action="store_true",
                     help="a smoke run: epochs divided by 50, a tenth of the evaluation "
                          "horizon (labelled as such in every output; the numbers mean "
                          "nothing)")
    rep.add_argument("--constant-lr", action="store_true",
                     help="train at a constant Adam step (the paper's)")
    rep.add_argument("--positives", choices=("mean", "sum"), default=None,
                     help="form of the contrastive loss: 'sum' is eq. (4) as printed, "
                          "'mean' averages the log-similarity over a trajectory's pairs")
    rep.add_argument("--invariant-weight-decay", type=float, default=None, metavar="W",
                     help="decoupled weight decay of the contrastive stage")
    rep.add_argument("--refine-steps", type=int, default=None, metavar="N",
                     help="steps of refining the learned invariant against the observed "
                          "derivatives (0: none, as in the paper)")
    return parser


def _recipe(args: argparse.Namespace) -> Recipe:
    """The recipe the arguments ask for (before each task's departures)."""
    recipe = replace(Recipe.named(args.recipe), progress=not args.no_progress)
    changes: dict[str, object] = {}
    if args.constant_lr:
        changes["anneal"] = False
    if args.positives is not None:
        changes["positives"] = args.positives
    if args.invariant_weight_decay is not None:
        changes["invariant_weight_decay"] = args.invariant_weight_decay
    if args.refine_steps is not None:
        changes["refine_steps"] = args.refine_steps
    recipe = recipe.with_changes(changes)
    return recipe.as_smoke() if args.quick else recipe


def _error(message: str) -> int:
    print(f"concernet-ode reproduce: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``concernet-ode`` (and ``python -m concernet_ode``)."""
    args = _parser().parse_args(argv)
    if args.jobs < 1:
        return _error(f"--jobs must be >= 1, got {args.jobs}")
    wd = args.invariant_weight_decay
    if wd is not None and not 0 <= wd < float("inf"):
        return _error(f"--invariant-weight-decay must be a finite number >= 0, got {wd}")
    if args.refine_steps is not None and args.refine_steps < 0:
        return _error(f"--refine-steps must be an integer >= 0, got {args.refine_steps}")
    # The models are small: one thread per process is fastest on a shared machine and makes
    # the numbers independent of --jobs (same summation order in every process).
    torch.set_num_threads(1)
    recipe = _recipe(args)
    tasks = list(TASKS.values()) if args.task == "all" else [get_task(args.task)]
    for task in tasks:
        doc = reproduce(task, args.seeds, args.out, recipe, jobs=args.jobs)
        means = {m: (sum(v["mse"]) / len(v["mse"]), sum(v["violation"]) / len(v["violation"]))
                 for m, v in doc["methods"].items()}
        summary = "; ".join(f"{m} mse {a:.3g} viol {b:.3g}" for m, (a, b) in means.items())
        smoke = " (SMOKE RUN)" if recipe.smoke else ""
        print(f"{task.name}{smoke}: wall_seconds {doc['wall_seconds']:.1f}; {summary}",
              flush=True)
    table = _report.write_table(args.out, list(TASKS.values()))
    print(f"wrote {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
