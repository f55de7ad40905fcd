"""Training loops: invariants (contrastive, then optionally refined against derivatives),
dynamics (derivative matching), autoencoders.

All of them share one loop: Adam (AdamW with ``weight_decay``), a seeded shuffle per epoch, a
tqdm bar showing the loss, and a history of per-epoch mean losses. Model initialisation is
the caller's (seed it with ``torch.manual_seed`` before building the model); the trainers
seed only the data order.

Every trainer checks its data once before the first epoch (non-empty, finite) and casts it
to the dtype of the model's trainable parameters, so the float64 data of
:mod:`concernet_ode.systems` train the float32 networks of :mod:`concernet_ode.models` as they
are; a loss that turns NaN or infinite stops the training with an error naming the epoch.

When ``torch.distributed`` is initialised (``torchrun``), every trainer trains data-parallel
on all ranks: the same global batches as one process, each rank taking a piece of each, the
gradients summed by one all-reduce per step (:mod:`concernet_ode.distributed`). Every trainer
takes a ``checkpoint=`` to save its state every few epochs and resume from it.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from ._checks import positive_int, training_data
from ._jacobian import call_field, check_callable, field_arity, invariant_jacobian
from .data import TrajectoryData
from .distributed import Checkpoint
from .losses import (
    check_positives,
    contrastive_invariant_loss,
    flow_alignment_loss,
    normal_flow_loss,
    ranking_loss,
    standardize_features,
)
from .projection import _GradientConstrainedField, orthonormal_rows

__all__ = ["NonFiniteLossError", "RefineHistory", "cosine_schedule", "fit_autoencoder",
           "fit_dynamics", "fit_invariants", "refine_invariants"]

History = dict[str, list[float]]


class RefineHistory(TypedDict):
    """What :func:`refine_invariants` did.

    Attributes:
        loss: per-epoch mean training loss (epochs run, fewer after an early stop).
        val_loss: the guard's held-out score (the normal flow, a lost invariant counted as
            all of the flow) of the starting state, then after each epoch (one more entry
            than ``loss``); empty with ``validation=None``.
        best_epoch: the epoch whose state the model holds at the end; 0 is the starting
            state (with ``validation=None``, the last epoch).
        stopped_early: no improvement on the held-out data for ``patience`` epochs.
        restored_start: no epoch improved on the start, so the model is as it was given.
    """

    loss: list[float]
    val_loss: list[float]
    best_epoch: int
    stopped_early: bool
    restored_start: bool


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch."""


def _check_data(data: object, name: str = "data") -> TrajectoryData:
    if not isinstance(data, TrajectoryData):
        msg = f"`{name}` must be a TrajectoryData, got {type(data).__name__}"
        raise TypeError(msg)
    return data


def _check_model(model: object, name: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        msg = (f"`{name}` must be an nn.Module with parameters to train (e.g. an MLP or an "
               f"InvariantNet), got {type(model).__name__}; wrap a plain function in an "
               f"nn.Module that holds its parameters")
        raise TypeError(msg)
    return model


def _model_dtype(model: nn.Module, name: str) -> torch.dtype | None:
    """The dtype of ``model``'s trainable floating parameters (``None`` if it has none)."""
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad and p.is_floating_point()}
    if len(dtypes) > 1:
        msg = (f"`{name}` has trainable parameters of several dtypes "
               f"({', '.join(sorted(map(str, dtypes)))}): convert it to one, e.g. "
               f"`{name}.float()` or `{name}.double()`")
        raise TypeError(msg)
    return next(iter(dtypes), None)


def _prepare(data: TrajectoryData, model: nn.Module, model_name: str = "model",
             name: str = "data") -> TrajectoryData:
    """``data`` checked (non-empty, finite) and cast to ``model``'s dtype."""
    if data.n_traj == 0 or data.n_times == 0:
        msg = (f"`{name}` holds no samples (x of shape {tuple(data.x.shape)}): pass at least "
               "one trajectory with at least one time")
        raise ValueError(msg)
    training_data(data.x, f"{name}.x")
    if data.dxdt is not None:
        training_data(data.dxdt, f"{name}.dxdt")
    dtype = _model_dtype(model, model_name)
    return data if dtype is None or dtype == data.x.dtype else data.to(dtype)


def _check_lr(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf"):
        msg = f"`lr` must be a positive finite number, got {lr!r}"
        raise ValueError(msg)
    return float(lr)


def _show_progress(progress: bool) -> bool:
    return bool(progress) and sys.stderr.isatty()


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    yield from perm.split(batch_size)


def adam(params: Iterable[nn.Parameter], lr: float,
         weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam, or AdamW for ``weight_decay > 0``, with torch's fused kernel where available.

    The models here are small, so a step's cost is mostly per-tensor overhead; the fused
    update does it in one kernel per parameter group. Same algorithm and defaults. The weight
    decay is decoupled (AdamW: each step shrinks a parameter by ``lr * weight_decay`` times
    itself), not an L2 term in the loss, which Adam's scaling would undo, and applies to
    weight matrices only: biases (one-dimensional parameters) set where each unit's
    nonlinearity sits, not how curved the function is, and are left alone as usual.
    """
    params = list(params)
    if weight_decay > 0:
        cls = torch.optim.AdamW
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    else:
        cls, groups = torch.optim.Adam, params
    try:
        return cls(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch, or an unsupported device
        return cls(groups, lr=lr)


def _run(params: Iterable[nn.Parameter], n_items: int, batch_size: int,
         batch_loss: Callable[[torch.Tensor], torch.Tensor], *, epochs: int, lr: float,
         seed: int, progress: bool, desc: str,
         val_loss: Callable[[], float] | None = None,
         lr_schedule: Callable[[int], float] | None = None,
         weight_decay: float = 0.0,
         on_epoch: Callable[[int], bool] | None = None,
         reduction: str = "mean", checkpoint: Checkpoint | None = None,
         extra_state: _Resumable | None = None) -> History:
    """The loop shared by the trainers; ``on_epoch(epoch)`` (from 1) returns True to stop.

    ``reduction="mean"``: ``batch_loss(idx)`` is the mean loss over the items ``idx``; when
    distributed, it is called on this rank's piece of each global batch and weighted by the
    piece's share of the batch. ``reduction="share"``: ``batch_loss(idx)`` takes the whole
    global batch and returns this rank's share of its loss (the whole loss in one process;
    see :func:`~concernet_ode.distributed.gather_batch`). Either way one all-reduce per step
    sums gradients and loss over ranks. ``extra_state`` is saved in and restored from the
    ``checkpoint`` with the loop's own state.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        msg = "the model has no trainable parameters (all have requires_grad=False)"
        raise ValueError(msg)
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        msg = f"`checkpoint` must be a Checkpoint or None, got {type(checkpoint).__name__}"
        raise TypeError(msg)
    fingerprint = {"trainer": desc, "items": n_items, "batch_size": batch_size,
                   "epochs": epochs, "seed": seed, "lr": lr,
                   "shapes": [list(p.shape) for p in params]}
    distributed.agree({"the number of items": n_items, "batch_size": batch_size,
                       "epochs": epochs, "seed": seed, "lr": lr,
                       "the number of parameters": sum(p.numel() for p in params)},
                      params[0].device)
    distributed.broadcast_parameters(params)
    opt = adam(params, lr, weight_decay)
    sched = None if lr_schedule is None else torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule)
    gen = torch.Generator().manual_seed(seed)
    history: History = {"loss": []}
    if val_loss is not None:
        history["val_loss"] = []
    loop = _Loop(params, opt, sched, gen, history, fingerprint, extra_state)
    first = loop.resume(checkpoint) if checkpoint is not None and checkpoint.resume else 1
    bar = tqdm(range(first, epochs + 1), desc=desc, leave=False,
               disable=not (_show_progress(progress) and distributed.is_main()))
    for epoch in bar:
        total = 0.0
        for idx in _batches(n_items, batch_size, gen):
            value = _step(params, opt, idx, batch_loss, reduction)
            if not math.isfinite(value):  # checked before the step, which would spread it
                raise NonFiniteLossError(_non_finite_message(desc, value, epoch, epochs, lr,
                                                         params))
            opt.step()
            total += value * len(idx)
        history["loss"].append(total / n_items)
        if sched is not None:
            sched.step()
        postfix = {"loss": f"{history['loss'][-1]:.4g}"}
        if val_loss is not None:
            history["val_loss"].append(val_loss())
            postfix["val"] = f"{history['val_loss'][-1]:.4g}"
        bar.set_postfix(postfix, refresh=False)
        stop = on_epoch is not None and on_epoch(epoch)
        if checkpoint is not None and (stop or epoch == epochs or epoch % checkpoint.every == 0):
            loop.save(checkpoint, epoch, stop)
        if stop:
            break
    return history


def _step(params: list[nn.Parameter], opt: torch.optim.Optimizer, idx: torch.Tensor,
          batch_loss: Callable[[torch.Tensor], torch.Tensor], reduction: str) -> float:
    """Gradients of one global batch in ``p.grad``; returns its loss (all ranks agree)."""
    opt.zero_grad(set_to_none=True)
    if not distributed.is_distributed():
        loss = batch_loss(idx)
        value = float(loss.detach())
        if math.isfinite(value):
            loss.backward()
        return value
    share, error = None, None
    try:
        if reduction == "share":
            share = batch_loss(idx)
        else:
            local = distributed.shard(idx)
            if len(local):  # a batch smaller than the world leaves some ranks none
                share = batch_loss(local) * (len(local) / len(idx))
        if share is not None:
            share.backward()
    except Exception as err:  # re-raised below, once the other ranks know
        error = err
    value, failed = distributed.all_reduce_step(params, share, error is not None)
    if error is not None:
        raise error
    if failed:
        msg = (f"rank {failed[0]} failed in a training step (its own message is in its "
               "output); every rank stops")
        raise RuntimeError(msg)
    return value


class _Resumable:
    """What a trainer keeps beside the loop's state in a checkpoint (the refine guard)."""

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        raise NotImplementedError

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        raise NotImplementedError


class _Loop:
    """The state of :func:`_run` that a checkpoint saves and a resumed run restores."""

    def __init__(self, params: list[nn.Parameter], opt: torch.optim.Optimizer,
                 sched: torch.optim.lr_scheduler.LRScheduler | None, gen: torch.Generator,
                 history: History, fingerprint: dict, extra: _Resumable | None) -> None:
        self.params, self.opt, self.sched, self.gen = params, opt, sched, gen
        self.history, self.fingerprint, self.extra = history, fingerprint, extra

    def save(self, checkpoint: Checkpoint, epoch: int, stopped: bool) -> None:
        tensors, optim = distributed.optimizer_state(self.opt)
        tensors.update(distributed.parameter_tensors(self.params))
        tensors.update(distributed.rng_state(self.gen))
        meta = {"fingerprint": self.fingerprint, "epoch": epoch, "stopped": stopped,
                "history": self.history, "optimizer": optim,
                "scheduler": None if self.sched is None else _scheduler_state(self.sched)}
        if self.extra is not None:
            extra_tensors, meta["extra"] = self.extra.checkpoint_state()
            tensors.update({f"extra.{k}": v for k, v in extra_tensors.items()})
        distributed.save_state(checkpoint.path, tensors, meta)

    def resume(self, checkpoint: Checkpoint) -> int:
        """Load ``checkpoint`` if it exists; the first epoch still to run."""
        if not Path(checkpoint.path).exists():
            return 1
        tensors, meta = distributed.load_state(checkpoint.path)
        distributed.check_fingerprint(checkpoint.path, meta["fingerprint"],
                                      json.loads(json.dumps(self.fingerprint)))
        distributed.load_parameters(self.params, tensors)
        distributed.load_optimizer_state(self.opt, tensors, meta["optimizer"])
        if self.sched is not None:
            self.sched.load_state_dict(meta["scheduler"])
        distributed.load_rng_state(self.gen, tensors)
        for key, values in meta["history"].items():
            self.history.setdefault(key, [])[:] = values
        if self.extra is not None:
            prefix = "extra."
            self.extra.load_checkpoint_state(
                {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                meta["extra"])
        return self.fingerprint["epochs"] + 1 if meta["stopped"] else meta["epoch"] + 1


def _scheduler_state(sched: torch.optim.lr_scheduler.LRScheduler) -> dict:
    """The scheduler's counters; its ``lr_lambda`` is the trainer's, rebuilt on resume."""
    state = sched.state_dict()
    if "lr_lambdas" in state:
        state["lr_lambdas"] = [None] * len(state["lr_lambdas"])
    return state


def _non_finite_message(desc: str, value: float, epoch: int, epochs: int, lr: float,
                        params: list[nn.Parameter]) -> str:
    finite = all(bool(torch.isfinite(p).all()) for p in params)
    state = ("the parameters are left as they were before that step" if finite else
             "the step before had already made some parameters NaN or infinite")
    return (f"the {desc} training loss became {value} at epoch {epoch} of {epochs}; {state}. "
            f"A smaller `lr` (now {lr:g}) usually cures it; else check the data's scale")


def _invariant_loss(model: nn.Module, normalize: bool, ranking_weight: float,
                    ranking_margin: float, flow_weight: float, positives: str,
                    ) -> Callable[..., torch.Tensor]:
    """The loss of :func:`fit_invariants` on a batch of trajectories ``(B, T, n)``.

    Called as ``loss(x, dxdt)`` on a whole batch, or, in a distributed step, as
    ``loss(x, dxdt, n_global)`` on this rank's piece of a batch of ``n_global``
    trajectories: the features of all pieces are gathered with their gradients, so that
    the standardisation, the negatives of the contrastive loss and the ranking loss are those
    of the whole batch, and it returns this rank's share (see ``_run``'s ``reduction``).
    """

    def loss(x: torch.Tensor, dxdt: torch.Tensor | None,
             n_global: int | None = None) -> torch.Tensor:
        feats = model(x)
        if n_global is not None:
            feats = distributed.gather_batch(feats, n_global)
        if normalize:
            feats = standardize_features(feats)
        total = contrastive_invariant_loss(feats, normalize=False, positives=positives)
        if ranking_weight > 0:
            total = total + ranking_weight * ranking_loss(feats, margin=ranking_margin)
        if n_global is not None:  # every rank computed the whole batch's loss: 1/K each
            total = total / distributed.world_size()
        if flow_weight > 0 and len(x):  # a mean over points: weighted by this piece's share
            share = 1.0 if n_global is None else len(x) / n_global
            total = total + flow_weight * share * flow_alignment_loss(model, x, dxdt)
        return total

    return loss


Schedule = Callable[[int], float] | str | None


def _check_schedule(lr_schedule: object, epochs: int) -> Callable[[int], float] | None:
    """The ``LambdaLR`` factor of a trainer's ``lr_schedule`` argument over ``epochs``."""
    if lr_schedule == "cosine":
        return cosine_schedule(epochs)
    if lr_schedule is not None and (isinstance(lr_schedule, str) or not callable(lr_schedule)):
        msg = ("`lr_schedule` must be \"cosine\", None (a constant step) or a callable epoch "
               "-> factor of `lr` (as for torch.optim.lr_scheduler.LambdaLR), got "
               f"{lr_schedule!r} of type {type(lr_schedule).__name__}")
        raise TypeError(msg)
    return lr_schedule


def cosine_schedule(epochs: int) -> Callable[[int], float]:
    """``epoch -> factor`` falling from 1 to 0 along half a cosine over ``epochs`` epochs.

    For the ``lr_schedule`` argument of the trainers: Adam at a constant step keeps jittering
    around the minimum of a noisy loss; annealing the step removes most of that jitter.
    """
    epochs = positive_int(epochs, "epochs")
    return lambda epoch: 0.5 * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs))


def _check_weight(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 <= value < float("inf")):
        msg = f"`{name}` must be a finite number >= 0, got {value!r}"
        raise ValueError(msg)
    return float(value)


def _default_positives(positives: str | None, ranking_weight: object) -> str | object:
    """``fit_invariants``'s form of the positive term when ``positives`` is ``None``."""
    if positives is not None:
        return positives
    return "sum" if isinstance(ranking_weight, (int, float)) and ranking_weight > 0 else "mean"


def fit_invariants(model: nn.Module, data: TrajectoryData, *, epochs: int = 1000,
                   batch_size: int = 10, lr: float = 1e-3, normalize: bool = True,
                   seed: int = 0, progress: bool = True,
                   val_data: TrajectoryData | None = None, ranking_weight: float = 0.0,
                   ranking_margin: float = 0.0, flow_weight: float = 0.0,
                   lr_schedule: Schedule = "cosine",
                   positives: str | None = None, weight_decay: float = 0.3,
                   checkpoint: Checkpoint | None = None) -> History:
    """Train ``model`` to output invariants of the trajectories in ``data`` (eqs. (4), (8)).

    Each step takes ``batch_size`` whole trajectories and minimises
    :func:`~concernet_ode.contrastive_invariant_loss` of ``model(x)`` over them, plus
    ``ranking_weight`` times :func:`~concernet_ode.ranking_loss` for a dissipative system.

    Args:
        model: maps states ``(..., n)`` to features ``(..., m)``, e.g. an ``InvariantNet``.
        data: training trajectories (only ``x`` is used: no labels, no derivatives), cast
            to the dtype of ``model``'s parameters (as ``val_data``).
        epochs: passes over the trajectories.
        batch_size: trajectories per step (at least 2; the paper uses 10).
        lr: Adam learning rate.
        normalize: standardise the features over each batch (eq. (8)); the ranking loss then
            sees the standardised features too.
        seed: seeds the order of the trajectories.
        progress: show a tqdm bar (only when stderr is a terminal).
        val_data: if given, the loss on these trajectories (all in one batch) is recorded
            after every epoch as ``history["val_loss"]``.
        ranking_weight: weight of the ranking loss; 0 (the default) leaves it out. With a
            positive weight the learned quantity decreases along the trajectories of ``data``
            (which must be in time order), fixing its sign.
        ranking_margin: ``margin`` of the ranking loss.
        flow_weight: weight of :func:`~concernet_ode.flow_alignment_loss`, which also asks
            ``grad H`` to be orthogonal to the observed ``dxdt`` (an extension of the paper's
            method that uses the derivative data; 0, the default, leaves it out).
        lr_schedule: ``"cosine"`` (the default: the step falls from ``lr`` to 0 along
            :func:`cosine_schedule` over ``epochs``), ``None`` (a constant step, the paper's)
            or a callable ``epoch -> factor`` of ``lr`` (``torch.optim.lr_scheduler.LambdaLR``).
            At a constant step Adam keeps jittering around the minimum of a noisy loss.
        positives: ``"mean"`` (the log-similarity averaged over a trajectory's pairs, so that
            every trajectory collapses; needed for ``m >= 2``) or ``"sum"`` (eq. (4) as
            printed); see :func:`~concernet_ode.contrastive_invariant_loss`. ``None`` (the
            default) takes ``"mean"``, or ``"sum"`` with a ranking loss: a trajectory that
            must decrease needs the room along it that ``"sum"`` leaves, and under
            ``"mean"`` the ranking term can fail to fix the sign.
        weight_decay: decoupled weight decay (AdamW) of the weight matrices (not the
            biases); 0 is the paper's. The loss fixes the learned invariant only up to an
            invertible map; decay favours the map a small-weight network draws most easily,
            the least curved function of the state, and so an invariant near the
            lowest-degree conserved polynomial where there is one (the spring's
            ``q^2 + p^2``). On raw (``normalize=False``) features decay also shrinks their
            scale, which sets the similarity kernel's width: pass 0 there.
        checkpoint: save the training state there every ``checkpoint.every`` epochs, and
            resume from it (:class:`~concernet_ode.distributed.Checkpoint`); ``None`` (the
            default) saves nothing.

    Returns:
        ``{"loss": [...], "val_loss": [...]}``: per-epoch mean losses.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``; ``data`` or ``val_data`` is not a
            ``TrajectoryData``; ``lr_schedule`` not callable.
        ValueError: bad ``epochs``, ``batch_size``, ``lr``, ``ranking_weight``,
            ``ranking_margin``, ``flow_weight``, ``positives`` or ``weight_decay``; empty or
            non-finite data.
        RuntimeError: the loss became NaN or infinite (the message names the epoch).
    """
    model = _check_model(model)
    data = _prepare(_check_data(data), model)
    epochs, lr = positive_int(epochs, "epochs"), _check_lr(lr)
    batch_size = positive_int(batch_size, "batch_size")
    if batch_size < 2 or data.n_traj < 2:
        msg = (f"`batch_size` and the number of trajectories must be at least 2 for a "
               f"contrastive loss, got batch_size = {batch_size}, {data.n_traj} trajectories")
        raise ValueError(msg)
    loss = _invariant_loss(model, normalize, _check_weight(ranking_weight, "ranking_weight"),
                           _check_weight(ranking_margin, "ranking_margin"),
                           _check_weight(flow_weight, "flow_weight"),
                           check_positives(_default_positives(positives, ranking_weight)))
    weight_decay = _check_weight(weight_decay, "weight_decay")
    if flow_weight > 0:
        data.require_dxdt("`flow_weight` > 0 (the flow-alignment term)")

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:  # the global batch: see `_run`
        local = distributed.shard(idx)
        if len(idx) < 2:  # a last batch of one trajectory has no negatives: skip its loss
            return model(data.x[local]).sum() * 0.0
        return loss(data.x[local], None if data.dxdt is None else data.dxdt[local], len(idx))

    val_loss = None
    if val_data is not None:
        val_data = _prepare(_check_data(val_data, "val_data"), model, name="val_data")

        def val_loss() -> float:
            with torch.no_grad():
                return float(loss(val_data.x, val_data.dxdt))

    return _run(model.parameters(), data.n_traj, batch_size, batch_loss, epochs=epochs, lr=lr,
                seed=seed, progress=progress, desc="invariants", val_loss=val_loss,
                lr_schedule=_check_schedule(lr_schedule, epochs), weight_decay=weight_decay,
                reduction="share", checkpoint=checkpoint)


def _check_point_training(model: object, data: object, epochs: object, lr: object,
                          batch_size: object) -> tuple[TrajectoryData, int, float, int]:
    """The checks shared by the trainers that step over points: ``model`` an ``nn.Module``,
    ``data`` a ``TrajectoryData``, positive ``epochs``, ``lr`` and ``batch_size``."""
    _check_model(model)
    data = _check_data(data)
    epochs, lr = positive_int(epochs, "epochs"), _check_lr(lr)
    return data, epochs, lr, positive_int(batch_size, "batch_size")


def _guard_score(H: nn.Module, x: torch.Tensor, dxdt: torch.Tensor) -> float:
    """The held-out score of :func:`refine_invariants`: the normal flow, a lost row counted
    as all of the flow.

    :func:`~concernet_ode.normal_flow_loss` is lowest for a constant ``H`` (no gradient, no
    normal direction), which is how a refinement at too large a step can end (saturated
    units). Here a state where a row of ``dH/dx`` vanishes or depends on the others (a lost
    invariant) counts ``|dxdt|^2`` for that row, the most a row can count: a collapsed ``H``
    scores worst, not best. Elsewhere the two agree. A ``dH/dx`` that overflows to NaN or
    infinity anywhere (a diverged network) scores ``inf``.

    Shapes:
        x, dxdt: ``(P, n)``.
    """
    with torch.no_grad():
        jac = invariant_jacobian(H, x)[1]
        if not bool(torch.isfinite(jac).all()):
            return math.inf
        q = orthonormal_rows(jac)  # (P, m, n), zero rows where an invariant is lost
        normal = (q * dxdt.unsqueeze(-2)).sum(-1).pow(2).sum(-1)
        lost = (q.pow(2).sum(-1) == 0).sum(-1)
        return float((normal + lost * dxdt.pow(2).sum(-1)).mean())


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _BestState(_Resumable):
    """The validation guard of :func:`refine_invariants`: held-out losses, the best state
    so far (the starting one included) and when to stop."""

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        return ({f"best.{k}": v for k, v in self.best_state.items()},
                {"losses": self.losses, "best_epoch": self.best_epoch,
                 "stopped_early": self.stopped_early})

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        self.best_state = {k: tensors[f"best.{k}"].to(old) for k, old in self.best_state.items()}
        self.losses[:] = meta["losses"]
        self.best_epoch, self.stopped_early = meta["best_epoch"], meta["stopped_early"]

    def __init__(self, model: nn.Module, val_loss: Callable[[], float], patience: int,
                 epochs: int) -> None:
        self.model, self.val_loss, self.patience, self.epochs = model, val_loss, patience, epochs
        self.losses = [val_loss()]
        self.best_epoch, self.best_state = 0, _snapshot(model)
        self.stopped_early = False

    def _key(self, epoch: int) -> float:  # a NaN or infinite loss is never the best
        value = self.losses[epoch]
        return value if math.isfinite(value) else math.inf

    def after_epoch(self, epoch: int) -> bool:
        self.losses.append(self.val_loss())
        if self._key(epoch) < self._key(self.best_epoch):
            self.best_epoch, self.best_state = epoch, _snapshot(self.model)
        self.stopped_early = epoch < self.epochs and epoch - self.best_epoch >= self.patience
        return self.stopped_early

    def restore(self, *, interrupted: bool = False) -> None:
        """Load the best state, unless the model holds it (the last epoch scored, run to
        its end)."""
        if interrupted or self.best_epoch != len(self.losses) - 1:
            self.model.load_state_dict(self.best_state)


def _check_validation(validation: object, data: TrajectoryData, model: nn.Module,
                      seed: int) -> tuple[TrajectoryData, TrajectoryData | None]:
    """``(train, held_out)`` as ``refine_invariants``'s ``validation`` asks."""
    if validation is None:
        return data, None
    if isinstance(validation, TrajectoryData):
        if validation.state_dim != data.state_dim:
            msg = (f"`validation` has states of dimension {validation.state_dim}, `data` of "
                   f"{data.state_dim}: pass held-out trajectories of the same system")
            raise ValueError(msg)
        validation.require_dxdt("`validation` (the held-out normal flow)")
        return data, _prepare(validation, model, name="validation")
    if isinstance(validation, bool) or not isinstance(validation, (int, float)) or not (
            0 < validation < 1):
        msg = ("`validation` must be a fraction in (0, 1) of the trajectories of `data` to "
               "hold out, a TrajectoryData of held-out trajectories, or None to refine "
               f"without the guard; got {validation!r}")
        raise ValueError(msg)
    n = data.n_traj
    if n < 2:
        msg = (f"`validation` = {validation} holds out part of the trajectories of `data`, "
               f"but it has {n}: pass `validation=` a TrajectoryData of held-out "
               "trajectories, or `validation=None` to refine without the guard")
        raise ValueError(msg)
    n_val = min(max(1, round(validation * n)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    keep = perm[n_val:].sort().values.to(data.x.device)
    return data[keep], data[perm[:n_val].sort().values.to(data.x.device)]


def refine_invariants(model: nn.Module, data: TrajectoryData, *, epochs: int = 200,
                      batch_size: int = 100, lr: float = 1e-4, seed: int = 0,
                      progress: bool = True, lr_schedule: Schedule = "cosine",
                      validation: float | TrajectoryData | None = 0.2,
                      patience: int | None = None,
                      checkpoint: Checkpoint | None = None) -> RefineHistory:
    """Refine learned invariants so their level sets contain the observed flow.

    The contrastive loss sees states only: it makes ``H`` nearly constant along each training
    trajectory, which fixes its values well but its gradient less well (a ReLU network's
    gradient is piecewise constant and can tilt from region to region while the values stay
    accurate). The projection of eq. (6) uses only that gradient's direction. This stage
    starts from the contrastive ``H`` and minimises :func:`~concernet_ode.normal_flow_loss`
    over the training points, the component of each observed ``dxdt`` normal to the level
    sets: exactly the error a projected model could not fit. This uses the derivative data,
    which the paper's contrastive step does not (the dynamics stage uses the same data
    anyway): an extension of its method. Keep the stage short (the Table 1 recipe's
    ``refine_*`` fields say how it runs there): the contrastive solution is the starting
    point, and the loss alone does not rule out a degenerate ``H``.

    At too large a step the stage can destroy the invariant it refines, so by default it
    guards itself. It holds out a fraction ``validation`` of the trajectories of ``data``
    (chosen with ``seed``) and scores the model on them before the first epoch and after
    each one; it keeps the best state (the starting one included), stops after ``patience``
    epochs without improvement, and ends in that best state: never worse on the held-out
    trajectories than it started. The score is the held-out normal flow with a state where
    a row of ``dH/dx`` vanishes (or depends on the others) counted as if all of the flow
    were normal to that row, so that a collapsed, constant ``H``, which the training loss
    alone would favour, scores worst. Pass your own held-out trajectories as ``validation``
    to train on all of ``data``, or ``validation=None`` for the unguarded stage (every
    epoch on all of ``data``, the last state kept, as before the guard existed).

    Args:
        model: the invariants to refine in place, ``(..., n) -> (..., m)``.
        data: trajectories with their observed derivatives, cast to the dtype of
            ``model``'s parameters.
        epochs: the most passes over the training points.
        batch_size: points per step.
        lr: Adam learning rate.
        seed: seeds the order of the points and the held-out split.
        progress: show a tqdm bar (only when stderr is a terminal).
        lr_schedule: ``"cosine"`` (default), ``None`` or ``epoch -> factor`` of ``lr``, as in
            :func:`fit_invariants`, over ``epochs``.
        validation: the fraction of the trajectories of ``data`` to hold out (at least one
            is held out and one kept), a ``TrajectoryData`` of held-out trajectories with
            derivatives, or ``None`` for no guard.
        patience: epochs without a lower held-out score before stopping; ``None`` (the
            default) is a quarter of ``epochs``, at least 1; ``patience=epochs`` never stops
            early (the best state is still restored). Unused with ``validation=None``. Under
            the default cosine schedule the held-out score often rises while the step is
            large and falls as it anneals: a short patience then stops before the gain.
        checkpoint: save the training state there every ``checkpoint.every`` epochs, with the
            guard's state, and
            resume from it (:class:`~concernet_ode.distributed.Checkpoint`); ``None`` (the
            default) saves nothing.

    Returns:
        A :class:`RefineHistory`: ``loss`` (per-epoch mean normal flow, squared, units of
        ``dxdt``), ``val_loss`` (the held-out score, from the start), ``best_epoch``,
        ``stopped_early`` and ``restored_start``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``data`` not a ``TrajectoryData``,
            ``lr_schedule`` not callable.
        ValueError: bad ``epochs``, ``batch_size``, ``lr``, ``validation`` or ``patience``;
            data without derivatives, empty or not finite.
        RuntimeError: the training loss became NaN or infinite (the message names the
            epoch). With the guard, the model is restored to its best state before this or
            any other error (or a ``KeyboardInterrupt``) propagates.
    """
    data, epochs, lr, batch_size = _check_point_training(model, data, epochs, lr, batch_size)
    patience = max(1, epochs // 4) if patience is None else positive_int(patience, "patience")
    data = _prepare(data, model)
    data, held_out = _check_validation(validation, data, model, seed)
    x, dxdt = data.points()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return normal_flow_loss(model, x[idx], dxdt[idx])

    def run(on_epoch: Callable[[int], bool] | None = None) -> History:
        return _run(model.parameters(), x.shape[0], batch_size, batch_loss, epochs=epochs,
                    lr=lr, seed=seed, progress=progress, desc="refine",
                    lr_schedule=_check_schedule(lr_schedule, epochs), on_epoch=on_epoch,
                    checkpoint=checkpoint, extra_state=guard)

    guard = None
    if held_out is None:
        loss = run()["loss"]
        return RefineHistory(loss=loss, val_loss=[], best_epoch=len(loss),
                             stopped_early=False, restored_start=False)
    xv, dxdtv = held_out.points()
    guard = _BestState(model, lambda: _guard_score(model, xv, dxdtv), patience, epochs)
    try:
        loss = run(guard.after_epoch)["loss"]
    except NonFiniteLossError as err:
        guard.restore(interrupted=True)
        msg = (f"{err}. `model` was restored to its state of epoch {guard.best_epoch}, the "
               "best on the held-out trajectories (0: as it was given)")
        raise NonFiniteLossError(msg) from err
    except BaseException:  # any other error, or Ctrl-C: still leave the best state
        guard.restore(interrupted=True)
        raise
    guard.restore()
    return RefineHistory(loss=loss, val_loss=guard.losses, best_epoch=guard.best_epoch,
                         stopped_early=guard.stopped_early,
                         restored_start=guard.best_epoch == 0)


@contextmanager
def _frozen(module: object, freeze: bool) -> Iterator[None]:
    """Temporarily set ``requires_grad=False`` on an nn.Module's parameters."""
    if not freeze or not isinstance(module, nn.Module):
        yield
        return
    saved = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def fit_dynamics(model: Callable, data: TrajectoryData, *, epochs: int = 1000,
                 batch_size: int = 100, lr: float = 1e-3, seed: int = 0,
                 progress: bool = True, train_invariants: bool = False,
                 lr_schedule: Schedule = "cosine",
                 checkpoint: Checkpoint | None = None) -> History:
    """Fit a vector field to the derivatives in ``data`` by mean squared error over points.

    Args:
        model: ``f(t, x)`` or ``f(x)``, an ``nn.Module`` -- for example an ``MLP`` or a
            ``ProjectedVectorField`` wrapping one.
        data: trajectories with their time derivatives (the targets), cast to the dtype of
            the parameters that train.
        epochs: passes over all ``N * T`` points.
        batch_size: points per step (the paper uses 100).
        lr: Adam learning rate.
        seed: seeds the order of the points.
        progress: show a tqdm bar (only when stderr is a terminal).
        train_invariants: for a ``ProjectedVectorField`` (or ``DissipativeVectorField``), also
            train its invariant (or ``V``) network;
            by default it stays frozen (the ConCerNet recipe: learn ``H`` first, then ``f``).
        lr_schedule: ``"cosine"`` (default), ``None`` or ``epoch -> factor`` of ``lr``, as in
            :func:`fit_invariants`.
        checkpoint: save the training state there every ``checkpoint.every`` epochs, and
            resume from it (:class:`~concernet_ode.distributed.Checkpoint`); ``None`` (the
            default) saves nothing.

    Returns:
        ``{"loss": [...]}``: per-epoch mean squared errors.

    Raises:
        TypeError: ``model`` is not a callable ``nn.Module``, ``data`` not a ``TrajectoryData``,
            ``lr_schedule`` not callable.
        ValueError: bad ``epochs``, ``batch_size`` or ``lr``; data without derivatives,
            empty or not finite.
        RuntimeError: the loss became NaN or infinite (the message names the epoch).
    """
    check_callable(model, "model")
    data, epochs, lr, batch_size = _check_point_training(model, data, epochs, lr, batch_size)
    arity = field_arity(model)
    freeze = isinstance(model, _GradientConstrainedField) and not train_invariants
    with _frozen(model.invariants if freeze else None, freeze):
        data = _prepare(data, model)
        x, dxdt = data.points()
        t0 = data.t[0]

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            pred = call_field(model, arity, t0, x[idx], "model")
            return (pred - dxdt[idx]).pow(2).mean()

        return _run(model.parameters(), x.shape[0], batch_size, batch_loss, epochs=epochs,
                    lr=lr, seed=seed, progress=progress, desc="dynamics",
                    lr_schedule=_check_schedule(lr_schedule, epochs), checkpoint=checkpoint)


def fit_autoencoder(autoencoder: nn.Module, data: TrajectoryData | torch.Tensor, *,
                    epochs: int = 1000, batch_size: int = 100, lr: float = 1e-3,
                    seed: int = 0, progress: bool = True,
                    lr_schedule: Schedule = "cosine",
                    checkpoint: Checkpoint | None = None) -> History:
    """Train an autoencoder on states by mean squared reconstruction error.

    Args:
        autoencoder: an ``Autoencoder`` (anything whose ``forward`` reconstructs its input).
        data: trajectories (their states are used; derivatives are not needed) or a tensor
            of states ``(..., n)``, cast to the dtype of the autoencoder's parameters.
        epochs, batch_size, lr, seed, progress, lr_schedule, checkpoint: as in
            :func:`fit_dynamics`.

    Returns:
        ``{"loss": [...]}``: per-epoch mean squared reconstruction errors.

    Raises:
        TypeError: ``autoencoder`` is not an ``nn.Module``; ``data`` is neither a
            ``TrajectoryData`` nor a floating-point tensor; ``lr_schedule`` not callable.
        ValueError: bad ``epochs``, ``batch_size`` or ``lr``; empty or non-finite data.
        RuntimeError: the loss became NaN or infinite (the message names the epoch).
    """
    _check_model(autoencoder, "autoencoder")
    if isinstance(data, TrajectoryData):
        x = _prepare(data, autoencoder, "autoencoder").states()
    elif isinstance(data, torch.Tensor) and data.dim() >= 1:
        x = training_data(data, "data").reshape(-1, data.shape[-1])
        dtype = _model_dtype(autoencoder, "autoencoder")
        x = x if dtype is None else x.to(dtype)
    else:
        msg = f"`data` must be a TrajectoryData or a tensor of states, got {type(data).__name__}"
        raise TypeError(msg)
    epochs, lr = positive_int(epochs, "epochs"), _check_lr(lr)
    batch_size = positive_int(batch_size, "batch_size")

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return (autoencoder(x[idx]) - x[idx]).pow(2).mean()

    return _run(autoencoder.parameters(), x.shape[0], batch_size, batch_loss, epochs=epochs,
                lr=lr, seed=seed, progress=progress, desc="autoencoder",
                lr_schedule=_check_schedule(lr_schedule, epochs), checkpoint=checkpoint)
