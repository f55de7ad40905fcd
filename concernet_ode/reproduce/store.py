"""Keeping each finished seed of a reproduction, so that an interrupted run can resume.

A kept seed is plain JSON (``seeds/<task>-seed<k>.json``): every number the task's summary
needs, exactly, and what its figure draws; never a pickle. Every file of the reproduction is
written atomically (:func:`write_atomic`): a reader, or a run killed halfway, sees the old
file or the new one, never a part of one.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import uuid
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..metrics import Evaluation
from .pipeline import METHODS, SeedResult
from .recipe import Recipe
from .tasks import Task

__all__ = ["load_seed", "save_seed", "seed_path", "write_atomic"]

# Version of the layout of a kept seed's JSON (``seeds/<task>-seed<k>.json``).
SEED_FORMAT = 1
# A state of more coordinates than this is drawn as a profile (heat's 101 nodes) rather than
# a phase portrait; a kept seed holds only what the figure draws of it.
PROFILE_DIM = 4


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    import numpy
    import torchdiffeq

    from .. import __version__

    return {"concernet_ode": __version__, "torch": torch.__version__,
            "torchdiffeq": torchdiffeq.__version__, "numpy": numpy.__version__,
            "python": sys.version.split()[0], "platform": platform.platform(),
            "cpu_count": str(os.cpu_count()), "torch_threads": str(torch.get_num_threads())}


def _floats(values: torch.Tensor) -> list[float]:
    return [float(v) for v in values]


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it and ``os.replace``.

    The temporary file is created with the process's usual permissions (not ``mkstemp``'s
    0600) and removed if anything fails.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def seed_path(out: Path, task: str, seed: int) -> Path:
    """Where the result of ``task``'s seed ``seed`` is kept: ``out/seeds/<task>-seed<k>.json``."""
    return out / "seeds" / f"{task}-seed{seed}.json"


def _kept_states(states: torch.Tensor) -> torch.Tensor:
    """What the figure draws of ``states``: trajectory 0, and of a state of more than
    :data:`PROFILE_DIM` coordinates only its last time.

    Shapes:
        states: ``(T, B, n)``; returns ``(T, 1, n)``, or ``(1, 1, n)`` for a profile.
    """
    states = states[:, :1]
    return states[-1:] if states.shape[-1] > PROFILE_DIM else states


def _recipe_fields(recipe: Recipe) -> dict:
    """``recipe`` as JSON has it, less ``progress`` (which changes no number)."""
    return json.loads(json.dumps(asdict(replace(recipe, progress=False))))


def save_seed(out: Path, task: Task, result: SeedResult, recipe: Recipe) -> Path:
    """Keep ``result`` in :func:`seed_path` (atomically), with the recipe it ran with.

    Kept: every number of the task's JSON, the metric curves, and of the reference and each
    prediction what :func:`write_figure` draws (:func:`_kept_states`); plain JSON, so that a
    kept file is read back without running code from it.

    Args:
        out: the output directory (``seeds/`` in it must exist).
        task: the task ``result`` is a seed of.
        result: the seed's result; every method scored against the same reference.
        recipe: the recipe the seed ran with, the task's departures applied.
    """
    from .. import __version__

    base = result.evaluations[METHODS[0]]
    true = _kept_states(base.true)
    methods = {}
    for name in METHODS:
        e = result.evaluations[name]
        if not torch.equal(_kept_states(e.true), true):
            msg = (f"`result`: method {name!r} is scored against another reference than "
                   f"{METHODS[0]!r}")
            raise ValueError(msg)
        methods[name] = {
            "mse": e.mse, "violation": e.violation,
            "mse_per_traj": _floats(e.mse_per_traj),
            "violation_per_traj": _floats(e.violation_per_traj),
            "mse_curve": _floats(e.mse_curve), "violation_curve": _floats(e.violation_curve),
            "pred": _kept_states(e.pred).tolist(),
        }
    record = {
        "format": SEED_FORMAT, "task": task.name, "seed": result.seed,
        "concernet_ode": __version__, "recipe": _recipe_fields(recipe), "finished": _now(),
        "versions": _versions(), "invariant_r2": result.invariant_r2,
        "seconds": result.seconds, "t": _floats(base.t), "true": true.tolist(),
        "methods": methods,
    }
    return write_atomic(seed_path(out, task.name, result.seed), json.dumps(record))


def _stale(record: dict, task: Task, seed: int, recipe: Recipe) -> str:
    """Why the kept ``record`` is not the result ``task``'s seed ``seed`` would give now
    ("" if it is)."""
    from .. import __version__

    if record.get("format") != SEED_FORMAT:
        return f"it has format {record.get('format')!r}, this version reads {SEED_FORMAT}"
    if record.get("task") != task.name or record.get("seed") != seed:
        return (f"it holds task {record.get('task')!r} seed {record.get('seed')!r}, "
                f"not {task.name!r} seed {seed}")
    if record.get("concernet_ode") != __version__:
        return (f"it was computed by concernet_ode {record.get('concernet_ode')!r}, "
                f"this is {__version__!r}")
    kept, now = record.get("recipe"), _recipe_fields(recipe)
    if not isinstance(kept, dict):
        return "it records no recipe"

    def show(fields: dict, key: str) -> str:
        return repr(fields[key]) if key in fields else "absent"

    diffs = [f"{k} (kept {show(kept, k)}, now {show(now, k)})"
             for k in sorted(set(kept) | set(now)) if k not in kept or k not in now
             or kept[k] != now[k]]
    return "its recipe differs from this run's in " + ", ".join(diffs) if diffs else ""


def _tensor(values: object, dim: int) -> torch.Tensor:
    x = torch.tensor(values, dtype=torch.float64)
    if x.dim() != dim:
        msg = f"expected a {dim}-D array, got shape {tuple(x.shape)}"
        raise ValueError(msg)
    return x


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"expected a number, got {value!r}"
        raise TypeError(msg)
    return float(value)


def _evaluation(entry: dict, t: torch.Tensor, true: torch.Tensor) -> Evaluation:
    arrays = {"pred": _tensor(entry["pred"], 3)}
    arrays |= {k: _tensor(entry[k], 1) for k in ("mse_curve", "violation_curve",
                                                  "mse_per_traj", "violation_per_traj")}
    if (arrays["pred"].shape != true.shape
            or not arrays["mse_curve"].shape == arrays["violation_curve"].shape == t.shape
            or arrays["mse_per_traj"].shape != arrays["violation_per_traj"].shape):
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in
                           {"t": t, "true": true, **arrays}.items())
        msg = f"inconsistent shapes: {shapes}"
        raise ValueError(msg)
    return Evaluation(t=t, true=true, mse=_number(entry["mse"]),
                      violation=_number(entry["violation"]), **arrays)


def load_seed(path: Path, task: Task, seed: int, recipe: Recipe) -> tuple[SeedResult, str]:
    """The result kept in ``path`` by :func:`save_seed`, if it is the one ``task``'s seed
    ``seed`` would give with ``recipe`` (the departures applied) and this package version.

    Returns:
        The result (its evaluations hold only what :func:`save_seed` keeps of ``pred`` and
        ``true``) and the time it was finished.

    Raises:
        ValueError: ``path`` cannot be read, is damaged, or is stale (another format, task,
            seed, package version or recipe); the message says which and why.
    """
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        msg = f"{path} is not readable JSON ({e})"
        raise ValueError(msg) from e
    if not isinstance(record, dict):
        msg = f"{path} holds a {type(record).__name__}, not a kept seed's JSON object"
        raise ValueError(msg)
    reason = _stale(record, task, seed, recipe)
    if reason:
        msg = f"{path} is stale: {reason}"
        raise ValueError(msg)
    try:
        t, true = _tensor(record["t"], 1), _tensor(record["true"], 3)
        evaluations = {m: _evaluation(record["methods"][m], t, true) for m in METHODS}
        r2 = {str(k): _number(v) for k, v in record["invariant_r2"].items()}
        seconds = {str(k): _number(v) for k, v in record["seconds"].items()}
        finished = str(record["finished"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        msg = f"{path} is damaged ({type(e).__name__}: {e})"
        raise ValueError(msg) from e
    if not r2:
        msg = f"{path} is damaged (no invariant R^2)"
        raise ValueError(msg)
    return SeedResult(seed, evaluations, r2, seconds), finished


# --- Table 1 ------------------------------------------------------------------------------
