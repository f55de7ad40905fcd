"""Data-parallel training on ``torch.distributed``, and checkpoints that a run resumes from.

Every trainer of :mod:`concernet_ode.training` runs in one process as it always has and, when
``torch.distributed`` is initialised with more than one rank (``torchrun --nproc-per-node K``
does it; see docs/distributed.md), as data-parallel training:

- every rank holds all the data and draws the same seeded permutation, so every global batch
  is the one a single process would take; rank ``r`` of ``K`` computes the loss of the ``r``-th
  of ``K`` contiguous pieces of it (:func:`shard`);
- one all-reduce per step sums the ranks' gradients, each rank's loss weighted by its share of
  the batch, so that every rank takes the step of the whole batch;
- a loss that needs the whole batch (the contrastive loss: the other trajectories are its
  negatives) gathers the features of all ranks with their gradients (:func:`gather_batch`)
  and each rank then computes the loss of the whole batch;
- rank 0 alone draws progress and writes checkpoints (:func:`is_main`).

A :class:`Checkpoint` asks a trainer to save its state every few epochs (parameters,
optimiser, schedule, the generator of the batch order, torch's RNG, the history) into one
safetensors file whose header carries the rest as JSON: no pickle, so a checkpoint can be
loaded from an untrusted place. A run resumed from it ends with the parameters of the run
that was never interrupted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Checkpoint", "gather_batch", "init_from_environment", "is_distributed", "is_main",
           "rank", "shard", "world_size"]

_META_KEY = "concernet_ode"
_FORMAT = 1


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_from_environment(backend: str | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    For an entry point (the CLI calls it first): under ``torchrun`` (``WORLD_SIZE`` > 1 in
    the environment) it initialises ``torch.distributed`` (NCCL when CUDA is available,
    else gloo, unless ``backend`` says) and, on CUDA, selects the GPU ``LOCAL_RANK``; in
    one process, or when already initialised, it does nothing. Returns whether this process
    is part of a group of several.
    """
    if dist.is_available() and not dist.is_initialized() and int(
            os.environ.get("WORLD_SIZE", "1")) > 1:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return is_distributed()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of ranks (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process draws progress and writes files: rank 0, or the only process."""
    return rank() == 0


def shard_sizes(n: int) -> list[int]:
    """How many of ``n`` items of a global batch each rank takes (``tensor_split``'s sizes)."""
    k = world_size()
    return [n // k + (1 if r < n % k else 0) for r in range(k)]


def shard(items: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous piece of a global batch (all of it when not distributed).

    The pieces of ranks ``0 .. K-1``, concatenated, are ``items`` in their order, so gathered
    results line up with what one process computes. A batch smaller than ``K`` leaves some
    ranks an empty piece.
    """
    return items.tensor_split(world_size())[rank()] if is_distributed() else items


def gather_batch(local: torch.Tensor, n_global: int) -> torch.Tensor:
    """The pieces of all ranks concatenated along dim 0, differentiable (identity alone).

    ``local`` is this rank's piece of a global batch of ``n_global`` items (:func:`shard`).
    Each rank's piece receives the sum over ranks of the gradients that reach it (the
    backward of ``torch.distributed.nn.functional.all_gather``, deprecated since torch 2.10,
    done here by one all-reduce); a loss computed alike on every rank from the gathered batch
    thus hands each rank ``K`` times its piece's gradient, which is why a trainer's share of
    such a loss is the loss divided by ``K``. Pieces of unequal size are padded for the
    collective and cut back.

    Shapes:
        local: ``(b_r, ...)``; returns ``(n_global, ...)``.
    """
    if not is_distributed():
        return local
    sizes = shard_sizes(n_global)
    if local.shape[0] != sizes[rank()]:
        msg = (f"rank {rank()} holds {local.shape[0]} items of a batch of {n_global}, expected "
               f"{sizes[rank()]}: pass the piece `shard` gave this rank")
        raise ValueError(msg)
    return _Gather.apply(local, sizes)


class _Gather(torch.autograd.Function):
    """All-gather of unequal pieces forward; all-reduce of the gradient and slice backward."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes = sizes
        widest = max(sizes)
        padded = local.new_zeros((widest, *local.shape[1:]))
        padded[:local.shape[0]] = local
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded)
        return torch.cat([p[:size] for p, size in zip(pieces, sizes, strict=True)])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[:rank()])
        return grad[start:start + ctx.sizes[rank()]], None


def _flat(tensors: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors])


def broadcast_parameters(params: Sequence[torch.Tensor]) -> None:
    """Copy rank 0's values into every rank's ``params`` (as DDP does when it wraps a model),
    so that ranks whose models were seeded differently still train one model."""
    if not is_distributed() or not params:
        return
    dtype = _common_dtype(params)
    flat = _flat(params, dtype)
    dist.broadcast(flat, src=0)
    with torch.no_grad():
        for p, value in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.copy_(value.view_as(p))


def _common_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def agree(values: dict[str, float], device: torch.device | str = "cpu") -> None:
    """Raise on every rank, naming the first value that differs between ranks.

    ``device``: where the collective's tensor lives (a CUDA device under NCCL).
    """
    if not is_distributed():
        return
    own = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    both = torch.cat([own, -own])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    high, low = both.chunk(2)
    for name, hi, lo in zip(values, high.tolist(), (-low).tolist(), strict=True):
        if hi != lo:
            msg = (f"the ranks disagree on {name} (from {lo:g} to {hi:g}): every rank must "
                   "call the trainer with the same data and arguments")
            raise ValueError(msg)


def all_reduce_step(params: Sequence[torch.Tensor], loss_share: torch.Tensor | None,
                    failed: bool) -> tuple[float, list[int]]:
    """Sum gradients and loss shares over ranks, in one collective, and report failures.

    Every rank ends with the summed gradient in ``p.grad`` (``None`` where no rank had one,
    as a parameter no loss reached in one process) and returns the summed loss and the ranks
    whose step raised (their gradients are left out of nothing: the step is not taken).
    """
    k = world_size()
    dtype = _common_dtype(params)
    device = params[0].device
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flags = [float(p.grad is not None) for p in params]
    value = 0.0 if loss_share is None else loss_share.detach().to(dtype).reshape(1)
    extra = torch.zeros(len(params) + 1 + k, dtype=dtype, device=device)
    extra[:len(params)] = torch.tensor(flags, dtype=dtype)
    extra[len(params)] = value if isinstance(value, float) else value[0]
    extra[len(params) + 1 + rank()] = float(failed)
    buffer = torch.cat([_flat(grads, dtype), extra])
    dist.all_reduce(buffer)
    sizes = [p.numel() for p in params]
    summed, extra = buffer.split([sum(sizes), len(extra)])
    for p, g, flag in zip(params, summed.split(sizes), extra[:len(params)].tolist(),
                          strict=True):
        p.grad = g.view_as(p).to(p.dtype).clone() if flag > 0 else None
    failures = [r for r, f in enumerate(extra[len(params) + 1:].tolist()) if f > 0]
    return float(extra[len(params)]), failures


@dataclass(frozen=True)
class Checkpoint:
    """Where and how often a trainer saves its state, and whether it resumes from it.

    Args:
        path: the checkpoint file (``.safetensors``); its folder is created.
        every: save after every ``every`` epochs, and after the last one (or an early stop).
        resume: if ``path`` exists, continue the run it holds (the same trainer, model,
            data and arguments, else a ``ValueError``); if not, start from the beginning.
            ``False`` starts from the beginning and overwrites ``path``.

    Example:
        >>> fit_invariants(net, data, checkpoint=Checkpoint("ckpt/invariants.safetensors"))
    """

    path: str | Path
    every: int = 1
    resume: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.path, (str, Path)):
            msg = f"`path` must be a str or Path, got {type(self.path).__name__}"
            raise TypeError(msg)
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            msg = f"`every` must be a positive int (epochs between saves), got {self.every!r}"
            raise ValueError(msg)


def save_state(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write ``tensors`` and the JSON ``meta`` to one safetensors file, on rank 0 only.

    The file is written beside ``path`` and renamed onto it, so that a run killed while
    saving leaves the previous checkpoint whole.
    """
    if not is_main():
        return
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    save_file(plain, str(tmp), metadata={_META_KEY: json.dumps({"format": _FORMAT, **meta})})
    os.replace(tmp, path)


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and JSON meta of a checkpoint written by :func:`save_state`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if _META_KEY not in header:
        msg = f"{path} is not a concernet_ode checkpoint (no `{_META_KEY}` in its header)"
        raise ValueError(msg)
    return tensors, json.loads(header[_META_KEY])


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """``opt.state_dict()`` as tensors (``optim.<param>.<name>``) and JSON."""
    sd = opt.state_dict()
    tensors, plain = {}, {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                plain[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         meta: dict) -> None:
    """Restore what :func:`optimizer_state` saved."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            pid, name = key[len("optim."):].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta["plain"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The batch-order generator's and torch's global CPU RNG states, as tensors."""
    return {"rng.batches": gen.get_state(), "rng.torch": torch.get_rng_state()}


def load_rng_state(gen: torch.Generator, tensors: dict[str, torch.Tensor]) -> None:
    gen.set_state(tensors["rng.batches"])
    torch.set_rng_state(tensors["rng.torch"])


def parameter_tensors(params: Sequence[nn.Parameter]) -> dict[str, torch.Tensor]:
    return {f"param.{i}": p for i, p in enumerate(params)}


def load_parameters(params: Sequence[nn.Parameter], tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(tensors[f"param.{i}"])


def check_fingerprint(path: str | Path, saved: dict, expected: dict) -> None:
    """Raise if a checkpoint was written by another training than the one resuming it."""
    for key, value in expected.items():
        old = saved.get(key)
        if old != value:
            msg = (f"the checkpoint {path} was written by another training: its {key} is "
                   f"{old!r}, this one's {value!r}. Pass the same trainer, model, data and "
                   "arguments to resume it, or `Checkpoint(..., resume=False)` to start over")
            raise ValueError(msg)
