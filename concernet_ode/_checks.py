"""Argument checks shared across the package: counts, numbers, states and seeds.

Each raises a ``TypeError`` or ``ValueError`` that names the argument, what was given and what
was expected.
"""

from __future__ import annotations

import math

import torch

__all__ = ["check_state_size", "count", "finite_number", "finite_states", "matching_dtype",
           "positive_int", "positive_number", "seed_generator", "solver_tolerance"]


def positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is an int >= 1 (not a bool), else raise a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"`{name}` must be a positive int, got {value!r}"
        raise ValueError(msg)
    return value


def count(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum`` (not a bool), else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        msg = f"`{name}` must be an int >= {minimum}, got {value!r}"
        raise ValueError(msg)
    return value


def positive_number(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite number > 0 (not a bool), else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 < value < math.inf):
        msg = f"`{name}` must be a finite number > 0, got {value!r}"
        raise ValueError(msg)
    return float(value)


def finite_number(value: object, name: str, minimum: float = -math.inf) -> float:
    """Return ``value`` as a float if it is a finite number >= ``minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            minimum <= value < math.inf):
        msg = f"`{name}` must be a finite number >= {minimum:g}, got {value!r}"
        raise ValueError(msg)
    return float(value)


def check_state_size(x: object, state_dim: int, name: str = "x") -> torch.Tensor:
    """Return ``x`` if it is a tensor of shape ``(..., state_dim)``, else raise."""
    if not isinstance(x, torch.Tensor):
        msg = f"`{name}` must be a torch.Tensor, got {type(x).__name__}"
        raise TypeError(msg)
    if x.dim() == 0 or x.shape[-1] != state_dim:
        msg = f"`{name}` must have shape (..., {state_dim}), got {tuple(x.shape)}"
        raise ValueError(msg)
    return x


def seed_generator(seed: int | torch.Generator,
                   device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with ``seed``, or ``seed`` itself if it is one.

    Raises:
        TypeError: ``seed`` is neither an int nor a Generator.
    """
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        msg = f"`seed` must be an int or a torch.Generator, got {type(seed).__name__}"
        raise TypeError(msg)
    return torch.Generator(device=device).manual_seed(seed)


def finite_states(x: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``x`` if it holds at least one state and every entry is finite, else raise.

    Shapes:
        x: ``(..., n)``; the samples named in the message index its batch dimensions.
    """
    if x.numel() == 0:
        msg = (f"`{name}` is empty (shape {tuple(x.shape)}): pass at least one state, of "
               "shape (..., n) with n >= 1")
        raise ValueError(msg)
    bad = ~torch.isfinite(x).all(-1)
    if bool(bad.any()):
        idx = torch.nonzero(bad.cpu()).tolist()
        shown = [i[0] if len(i) == 1 else tuple(i) for i in idx[:5]]
        where = (f" at {len(idx)} of {bad.numel()} sample(s), indices {shown}"
                 f"{' + more' if len(idx) > 5 else ''}" if bad.dim() else "")
        msg = (f"`{name}` is not finite (NaN or inf){where}: a solver cannot start from such a "
               f"state; remove or replace it")
        raise ValueError(msg)
    return x


def solver_tolerance(value: object, name: str) -> None:
    """Raise a ``ValueError`` unless ``value`` is a finite number >= 0 or a tensor of them."""
    if isinstance(value, torch.Tensor):
        ok = value.is_floating_point() and bool(((value >= 0) & torch.isfinite(value)).all())
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
            0 <= value < math.inf)
    if not ok:
        msg = (f"`{name}` must be a finite number >= 0 (or a floating-point tensor of them), "
               f"got {value!r}")
        raise ValueError(msg)


def matching_dtype(obj: object, name: str, dtype: torch.dtype, against: str) -> None:
    """Raise a ``TypeError`` if ``obj`` is an ``nn.Module`` with parameters of another dtype.

    Catches, before any work, what torch reports from deep inside a matrix product as
    "mat1 and mat2 must have the same dtype" (float64 data, a float32 network).
    """
    if not isinstance(obj, torch.nn.Module):
        return
    other = sorted({str(p.dtype) for p in obj.parameters()
                    if p.is_floating_point() and p.dtype != dtype})
    if other:
        msg = (f"`{name}` has {', '.join(other)} parameters but `{against}` is {dtype}: torch "
               f"cannot mix them. Convert one to the other: `{name}.to({dtype})`, or "
               f"`{against}.to({other[0]})`")
        raise TypeError(msg)


def training_data(x: object, name: str) -> torch.Tensor:
    """Return ``x`` if it is a non-empty floating-point tensor of finite values, else raise.

    The check a trainer runs once before its first epoch: a NaN in the data otherwise trains
    with a NaN loss for every epoch, and an integer tensor fails deep inside torch.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: ``x`` is empty or holds NaN or infinite values.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        msg = (f"`{name}` must be a floating-point tensor, got {got}: convert it first, e.g. "
               f"with `.double()`")
        raise TypeError(msg)
    if x.numel() == 0:
        msg = f"`{name}` is empty (shape {tuple(x.shape)}): there is nothing to train on"
        raise ValueError(msg)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        first = tuple(torch.nonzero(~finite)[0].tolist())
        msg = (f"`{name}` holds {bad} NaN or infinite value(s) of {x.numel()}, the first at "
               f"index {first}: training on them gives a NaN loss; remove or replace them")
        raise ValueError(msg)
    return x


def _meminfo_available() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (Linux), or ``None``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """What a cgroup v2 memory limit leaves (``memory.max - memory.current``), or ``None``."""
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            used = int(f.read().strip())
        return None if limit == "max" else max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes of memory a new allocation can use now, or ``None`` where the system won't say.

    Linux's ``MemAvailable`` (free memory plus the page cache it can reclaim), else the free
    pages from ``os.sysconf``; the smaller of that and what a cgroup v2 memory limit leaves.
    """
    import os  # only here: the rest of this module needs no operating-system calls

    found = _meminfo_available()
    if found is None:
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            found = None
    limit = _cgroup_available()
    if found is None or limit is None:
        return found if limit is None else limit
    return min(found, limit)


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units: ``"1.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # unreachable; keeps type checkers content


def check_memory(needed: int, what: str, fix: str) -> None:
    """Raise a ``MemoryError`` at once if ``needed`` bytes exceed the available memory.

    Nothing happens where the available memory cannot be read (:func:`available_memory`).

    Args:
        needed: the bytes a request will allocate (an estimate of its peak).
        what: the request, for the message, e.g. "`n_traj` = 10 trajectories of ...".
        fix: what to do instead.
    """
    available = available_memory()
    if available is not None and needed > available:
        msg = (f"{what} need about {format_bytes(needed)} of memory, but "
               f"{format_bytes(available)} is available: {fix}")
        raise MemoryError(msg)
