"""The ``concernet-ode`` command: ``learn``, ``simulate`` and ``reproduce``.

``learn DATA --out DIR`` (or ``--example NAME``) and ``simulate DIR`` are described in
:mod:`concernet_ode._learn_cli`.
``reproduce`` reruns the paper's Table 1 for one task or all registered ones and writes, in
``--out``: ``seeds/<task>-seed<k>.json`` (each seed's result, kept as soon as it is finished,
with the recipe it ran with), ``<task>.json`` (per-seed metrics, per-trajectory values,
invariant R^2, wall time, versions), ``table1.md`` (ours beside the paper's and the authors'
code's numbers, for the tasks of this run, naming the run each comes from) and ``<task>.png``
(the paper's Fig. 3 for the first seed). Every file is written atomically.

``--out`` is checked before any training: a directory that cannot be written, or a
``table1.md`` there that this tool did not generate, is an error then, not after the run.
``--resume`` reuses the kept seeds that were computed with the same recipe by the same
package version. Interrupted (Ctrl-C), the run stops at once, keeping the finished seeds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ._learn_cli import add_parsers as add_learn_parsers
from ._learn_cli import run_learn, run_simulate
from .reproduce import Recipe, SeedResult, Task, get_task, run_seed
from .reproduce import report as _report
from .reproduce.tasks import TASKS

__all__ = ["main", "reproduce"]


def _ignore_sigint() -> None:
    # A worker leaves Ctrl-C to the parent, which stops it: no tracebacks from every worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_seed(name: str, seed: int, recipe: Recipe) -> SeedResult:
    torch.set_num_threads(1)  # one core per worker process: seeds run side by side
    return run_seed(get_task(name), seed, recipe)


def _run_pool(task: Task, seeds: Sequence[int], recipe: Recipe, jobs: int,
              keep: Callable[[SeedResult], None], show: bool) -> None:
    """Run ``seeds`` in ``jobs`` processes, passing each result to ``keep`` as it arrives.

    On any exception (KeyboardInterrupt included) the pending seeds are cancelled and the
    running workers terminated, without waiting for them.
    """
    quiet = replace(recipe, progress=False)
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(min(jobs, len(seeds)), mp_context=multiprocessing.get_context(
        "spawn"), initializer=_ignore_sigint)
    workers: set[multiprocessing.process.BaseProcess] = set()
    try:
        futures = [pool.submit(_run_seed, task.name, s, quiet) for s in seeds]
        # ProcessPoolExecutor starts its workers in submit() and offers no public way to stop
        # a running one (before Python 3.14): they are the children that submit() started.
        workers = set(multiprocessing.active_children()) - before
        for future in tqdm(as_completed(futures), total=len(futures), desc=task.name,
                           disable=not show):
            keep(future.result())
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.join(timeout=10)
        raise
    pool.shutdown()


def _kept(out: Path, task: Task, seeds: Sequence[int], recipe: Recipe,
          resume: bool) -> dict[int, SeedResult]:
    """The seeds kept in ``out/seeds`` that ``--resume`` may reuse; says what it does with
    each kept file (reused, or recomputed and why)."""
    kept = {}
    for seed in seeds:
        path = _report.seed_path(out, task.name, seed)
        if not path.exists():
            continue
        if not resume:
            print(f"{task.name} seed {seed}: recomputing; {path} from an earlier run will be "
                  "replaced (--resume reuses it)", file=sys.stderr)
            continue
        try:
            kept[seed], finished = _report.load_seed(path, task, seed, recipe)
        except ValueError as e:
            print(f"{task.name} seed {seed}: recomputing: {e}", file=sys.stderr)
            continue
        print(f"{task.name} seed {seed}: reusing {path} (finished {finished})", file=sys.stderr)
    return kept


def reproduce(task: Task, seeds: Sequence[int], out: Path, recipe: Recipe,
              jobs: int = 1, *, resume: bool = False) -> dict:
    """Run every seed of ``task``, write its JSON and figure, and return the JSON document.

    ``recipe`` is taken before the task's departures. With ``jobs > 1`` the seeds run in
    that many worker processes; every seed is seeded on its own, so the numbers do not
    depend on ``jobs``. Each finished seed is kept at once in ``out/seeds/`` (see
    :func:`~concernet_ode.reproduce.report.save_seed`); with ``resume``, a kept seed computed
    with the same recipe by the same package version is reused rather than recomputed.

    Raises:
        ValueError: ``seeds`` is empty or repeats a seed.
        KeyboardInterrupt: interrupted; the worker processes are stopped, the seeds finished
            until then are kept and named on stderr (as when a seed fails).
    """
    if not seeds or len(set(seeds)) != len(seeds):
        msg = f"`seeds` must be one or more distinct seeds, got {list(seeds)}"
        raise ValueError(msg)
    (out / "seeds").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    show = recipe.progress and sys.stderr.isatty()
    effective = task.recipe_for(recipe)
    results = _kept(out, task, seeds, effective, resume)
    reused = [s for s in seeds if s in results]
    todo = [s for s in seeds if s not in results]

    def keep(result: SeedResult) -> None:
        _report.save_seed(out, task, result, effective)
        results[result.seed] = result

    try:
        if jobs > 1 and len(todo) > 1:
            _run_pool(task, todo, recipe, jobs, keep, show)
        else:
            for seed in tqdm(todo, desc=task.name, disable=not show):
                keep(run_seed(task, seed, recipe))
    except BaseException as e:
        done = [s for s in todo if s in results]
        what = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        print(f"{task.name}: {what}; seeds finished by this run kept in {out / 'seeds'}: "
              f"{', '.join(map(str, done)) or 'none'} (rerun with --resume to reuse them)",
              file=sys.stderr)
        raise
    wall = time.perf_counter() - start
    ordered = [results[s] for s in seeds]
    doc = _report.task_summary(task, ordered, wall, effective, jobs, reused=reused)
    _report.write_atomic(out / f"{task.name}.json", json.dumps(doc, indent=1))
    _report.write_figure(out, task, ordered[0], smoke=effective.smoke)
    return doc


def _out_dir(value: str) -> Path:
    if not value.strip():
        msg = (f"expected a directory, got {value!r}; pass --out . for the current "
               "directory")
        raise argparse.ArgumentTypeError(msg)
    return Path(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="concernet-ode", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_learn_parsers(sub)
    rep = sub.add_parser(
        "reproduce", help="rerun Table 1 of the ConCerNet paper",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="recipes:\n" + "\n".join(f"  {Recipe.named(n).describe()}"
                                         for n in ("table1", "paper")))
    rep.add_argument("--task", required=True, choices=[*TASKS, "all"],
                     help="the Table 1 row to run, or all of them")
    rep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                     help="task seeds, distinct (default 0 1 2); each seeds the data, the "
                          "weights, the batch order and the evaluation states")
    rep.add_argument("--out", type=_out_dir, default=Path("results"),
                     help="directory for <task>.json, <task>.png, table1.md and "
                          "seeds/<task>-seed<k>.json (default results; created if missing, "
                          "checked before any training)")
    rep.add_argument("--resume", action="store_true",
                     help="reuse the seeds kept in OUT/seeds by an earlier run when they "
                          "were computed with the same recipe by the same package version "
                          "(others are recomputed, saying why); without it every seed is "
                          "recomputed")
    rep.add_argument("--table-from-existing", action="store_true",
                     help="also table the <task>.json of other tasks already in OUT, from "
                          "earlier runs (each named in table1.md with its time); without "
                          "it table1.md holds the tasks of this run only")
    rep.add_argument("--recipe", choices=("table1", "paper", "trajectories"), default="table1",
                     help="the training recipe (default table1; paper: the paper's exact "
                          "recipe; trajectories: no derivative labels, dynamics fitted "
                          "through odeint); the flags below override single choices of it")
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


def _check_arguments(args: argparse.Namespace) -> str:
    """What is wrong with the arguments ("" if nothing)."""
    if args.jobs < 1:
        return f"--jobs must be >= 1, got {args.jobs}"
    wd = args.invariant_weight_decay
    if wd is not None and not 0 <= wd < float("inf"):
        return f"--invariant-weight-decay must be a finite number >= 0, got {wd}"
    if args.refine_steps is not None and args.refine_steps < 0:
        return f"--refine-steps must be an integer >= 0, got {args.refine_steps}"
    repeated = sorted({s for s in args.seeds if args.seeds.count(s) > 1})
    if repeated:
        return (f"--seeds must be distinct, got {' '.join(map(str, args.seeds))} "
                f"({', '.join(map(str, repeated))} repeated: a repeated seed reruns the same "
                "numbers and shrinks the ± over seeds)")
    return ""


def _prepare_out(out: Path) -> str:
    """Create ``out`` and ``out/seeds`` and check that they can be written and that
    ``out/table1.md`` may be replaced, before any training; what is wrong ("" if nothing)."""
    if out.exists() and not out.is_dir():
        return f"--out must be a directory, got {str(out)!r}, which is a file"
    try:
        for folder in (out, out / "seeds"):
            folder.mkdir(parents=True, exist_ok=True)
            _report.write_atomic(folder / ".concernet-ode-write-test", "").unlink()
    except OSError as e:
        return (f"--out must be a directory this process can write, got {str(out)!r} "
                f"({e.strerror or e}: {e.filename or out}); choose another --out")
    try:
        _report.check_table_replaceable(out / "table1.md")
    except FileExistsError as e:
        return f"--out {str(out)!r} holds a table1.md this run may not replace: {e}"
    return ""


def _table(out: Path, docs: dict[str, dict], from_existing: bool) -> Path:
    """Write ``table1.md`` from this run's documents and, with ``from_existing``, the other
    tasks' JSON in ``out`` (an unreadable one is reported and skipped)."""
    entries, earlier, untabled = [], [], []
    for name, task in TASKS.items():
        if name in docs:
            entries.append((task, docs[name]))
            continue
        path = out / f"{name}.json"
        if not path.exists():
            continue
        if not from_existing:
            untabled.append(path.name)
            continue
        try:
            entries.append((task, _report.read_task_json(path, task)))
            earlier.append(name)
        except ValueError as e:
            print(f"concernet-ode reproduce: warning: skipping {e}", file=sys.stderr)
    if untabled:
        print(f"not tabled: {', '.join(untabled)} in {out}, from earlier runs "
              "(--table-from-existing adds them)", file=sys.stderr)
    return _report.write_table(out, entries, earlier=earlier)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``concernet-ode`` (and ``python -m concernet_ode``).

    Returns 0 on success, 2 on a wrong argument (nothing run), 130 when interrupted.
    """
    args = _parser().parse_args(argv)
    if args.command == "learn":
        return run_learn(args)
    if args.command == "simulate":
        return run_simulate(args)
    problem = _check_arguments(args) or _prepare_out(args.out)
    if problem:
        return _error(problem)
    # The models are small: one thread per process is fastest on a shared machine and makes
    # the numbers independent of --jobs (same summation order in every process).
    torch.set_num_threads(1)
    recipe = _recipe(args)
    tasks = list(TASKS.values()) if args.task == "all" else [get_task(args.task)]
    docs = {}
    try:
        for task in tasks:
            doc = reproduce(task, args.seeds, args.out, recipe, jobs=args.jobs,
                            resume=args.resume)
            docs[task.name] = doc
            means = {m: (sum(v["mse"]) / len(v["mse"]),
                         sum(v["violation"]) / len(v["violation"]))
                     for m, v in doc["methods"].items()}
            summary = "; ".join(f"{m} mse {a:.3g} viol {b:.3g}" for m, (a, b) in means.items())
            smoke = " (SMOKE RUN)" if recipe.smoke else ""
            reused = doc["reused_seeds"]
            kept = f" ({len(reused)} of {len(args.seeds)} seeds kept)" if reused else ""
            print(f"{task.name}{smoke}: wall_seconds {doc['wall_seconds']:.1f}{kept}; "
                  f"{summary}", flush=True)
    except KeyboardInterrupt:
        done = ", ".join(f"{args.out / name}.json" for name in docs) or "none"
        print(f"concernet-ode reproduce: interrupted; tasks finished: {done}; table1.md "
              "not written", file=sys.stderr)
        return 130
    table = _table(args.out, docs, args.table_from_existing)
    print(f"wrote {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
