"""Training loops: invariants (contrastive, then optionally refined against derivatives),
dynamics (derivative matching), autoencoders.

All of them share one loop: Adam (AdamW with ``weight_decay``), a seeded shuffle per epoch, a
tqdm bar showing the loss, and a history of per-epoch mean losses. Model initialisation is
the caller's (seed it with ``torch.manual_seed`` before building the model); the trainers
seed only the data order.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from tqdm.auto import tqdm

from ._checks import positive_int
from ._jacobian import call_field, check_callable, field_arity
from .data import TrajectoryData
from .losses import (
    check_positives,
    contrastive_invariant_loss,
    flow_alignment_loss,
    normal_flow_loss,
    ranking_loss,
    standardize_features,
)
from .projection import _GradientConstrainedField

__all__ = ["cosine_schedule", "fit_autoencoder", "fit_dynamics", "fit_invariants",
           "refine_invariants"]

History = dict[str, list[float]]


def _check_data(data: object, name: str = "data") -> TrajectoryData:
    if not isinstance(data, TrajectoryData):
        msg = f"`{name}` must be a TrajectoryData, got {type(data).__name__}"
        raise TypeError(msg)
    return data


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
         weight_decay: float = 0.0) -> History:
    params = [p for p in params if p.requires_grad]
    if not params:
        msg = "the model has no trainable parameters (all have requires_grad=False)"
        raise ValueError(msg)
    opt = adam(params, lr, weight_decay)
    sched = None if lr_schedule is None else torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule)
    gen = torch.Generator().manual_seed(seed)
    history: History = {"loss": []}
    if val_loss is not None:
        history["val_loss"] = []
    bar = tqdm(range(epochs), desc=desc, disable=not _show_progress(progress), leave=False)
    for _ in bar:
        total, count = 0.0, 0
        for idx in _batches(n_items, batch_size, gen):
            loss = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        history["loss"].append(total / count)
        if sched is not None:
            sched.step()
        postfix = {"loss": f"{history['loss'][-1]:.4g}"}
        if val_loss is not None:
            history["val_loss"].append(val_loss())
            postfix["val"] = f"{history['val_loss'][-1]:.4g}"
        bar.set_postfix(postfix, refresh=False)
    return history


def _invariant_loss(model: nn.Module, normalize: bool, ranking_weight: float,
                    ranking_margin: float, flow_weight: float, positives: str,
                    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss of :func:`fit_invariants` on a batch of trajectories ``(B, T, n)``."""

    def loss(x: torch.Tensor, dxdt: torch.Tensor) -> torch.Tensor:
        feats = model(x)
        if normalize:
            feats = standardize_features(feats)
        total = contrastive_invariant_loss(feats, normalize=False, positives=positives)
        if ranking_weight > 0:
            total = total + ranking_weight * ranking_loss(feats, margin=ranking_margin)
        if flow_weight > 0:
            total = total + flow_weight * flow_alignment_loss(model, x, dxdt)
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
                   positives: str | None = None, weight_decay: float = 0.3) -> History:
    """Train ``model`` to output invariants of the trajectories in ``data`` (eqs. (4), (8)).

    Each step takes ``batch_size`` whole trajectories and minimises
    :func:`~concernet_ode.contrastive_invariant_loss` of ``model(x)`` over them, plus
    ``ranking_weight`` times :func:`~concernet_ode.ranking_loss` for a dissipative system.

    Args:
        model: maps states ``(..., n)`` to features ``(..., m)``, e.g. an ``InvariantNet``.
        data: training trajectories (only ``x`` is used: no labels, no derivatives).
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

    Returns:
        ``{"loss": [...], "val_loss": [...]}``: per-epoch mean losses.

    Raises:
        TypeError: ``data`` or ``val_data`` is not a ``TrajectoryData``; ``lr_schedule`` not
            callable.
        ValueError: bad ``epochs``, ``batch_size``, ``lr``, ``ranking_weight``,
            ``ranking_margin``, ``flow_weight``, ``positives`` or ``weight_decay``.
    """
    data = _check_data(data)
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

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        if len(idx) < 2:  # a last batch of one trajectory has no negatives: skip its loss
            return model(data.x[idx]).sum() * 0.0
        return loss(data.x[idx], None if data.dxdt is None else data.dxdt[idx])

    val_loss = None
    if val_data is not None:
        val_data = _check_data(val_data, "val_data")

        def val_loss() -> float:
            with torch.no_grad():
                return float(loss(val_data.x, val_data.dxdt))

    return _run(model.parameters(), data.n_traj, batch_size, batch_loss, epochs=epochs, lr=lr,
                seed=seed, progress=progress, desc="invariants", val_loss=val_loss,
                lr_schedule=_check_schedule(lr_schedule, epochs), weight_decay=weight_decay)


def _check_point_training(model: object, data: object, epochs: object, lr: object,
                          batch_size: object) -> tuple[TrajectoryData, int, float, int]:
    """The checks shared by the trainers that step over points: ``model`` an ``nn.Module``,
    ``data`` a ``TrajectoryData``, positive ``epochs``, ``lr`` and ``batch_size``."""
    if not isinstance(model, nn.Module):
        msg = f"`model` must be an nn.Module with parameters to train, got {type(model).__name__}"
        raise TypeError(msg)
    data = _check_data(data)
    epochs, lr = positive_int(epochs, "epochs"), _check_lr(lr)
    return data, epochs, lr, positive_int(batch_size, "batch_size")


def refine_invariants(model: nn.Module, data: TrajectoryData, *, epochs: int = 200,
                      batch_size: int = 100, lr: float = 1e-4, seed: int = 0,
                      progress: bool = True, lr_schedule: Schedule = "cosine") -> History:
    """Refine learned invariants so their level sets contain the observed flow.

    The contrastive loss sees states only: it makes ``H`` nearly constant along each training
    trajectory, which fixes its values well but its gradient less well (a ReLU network's
    gradient is piecewise constant and can tilt from region to region while the values stay
    accurate). The projection of eq. (6) uses only that gradient's direction. This stage
    starts from the contrastive ``H`` and minimises :func:`~concernet_ode.normal_flow_loss`
    over the training points, the component of each observed ``dxdt`` normal to the level
    sets: exactly the error a projected model could not fit. Keep the stage short (the
    Table 1 recipe's ``refine_*`` fields say how it runs there); the contrastive solution is
    the starting point and the
    loss alone does not rule out a degenerate ``H``. This uses the derivative data, which
    the paper's contrastive step does not (the dynamics stage uses the same data anyway): an
    extension of its method.

    Args:
        model: the invariants to refine in place, ``(..., n) -> (..., m)``.
        data: trajectories with their observed derivatives.
        epochs: passes over all ``N * T`` points.
        batch_size: points per step.
        lr: Adam learning rate.
        seed: seeds the order of the points.
        progress: show a tqdm bar (only when stderr is a terminal).
        lr_schedule: ``"cosine"`` (default), ``None`` or ``epoch -> factor`` of ``lr``, as in
            :func:`fit_invariants`.

    Returns:
        ``{"loss": [...]}``: per-epoch mean normal flow (squared, units of ``dxdt``).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``data`` not a ``TrajectoryData``,
            ``lr_schedule`` not callable.
        ValueError: bad ``epochs``, ``batch_size`` or ``lr``.
    """
    data, epochs, lr, batch_size = _check_point_training(model, data, epochs, lr, batch_size)
    x, dxdt = data.points()

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return normal_flow_loss(model, x[idx], dxdt[idx])

    return _run(model.parameters(), x.shape[0], batch_size, batch_loss, epochs=epochs, lr=lr,
                seed=seed, progress=progress, desc="refine",
                lr_schedule=_check_schedule(lr_schedule, epochs))


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
                 lr_schedule: Schedule = "cosine") -> History:
    """Fit a vector field to the derivatives in ``data`` by mean squared error over points.

    Args:
        model: ``f(t, x)`` or ``f(x)``, an ``nn.Module`` -- for example an ``MLP`` or a
            ``ProjectedVectorField`` wrapping one.
        data: trajectories with their time derivatives (the targets).
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

    Returns:
        ``{"loss": [...]}``: per-epoch mean squared errors.

    Raises:
        TypeError: ``model`` is not a callable ``nn.Module``, ``data`` not a ``TrajectoryData``,
            ``lr_schedule`` not callable.
        ValueError: bad ``epochs``, ``batch_size`` or ``lr``.
    """
    check_callable(model, "model")
    data, epochs, lr, batch_size = _check_point_training(model, data, epochs, lr, batch_size)
    x, dxdt = data.points()
    arity = field_arity(model)
    t0 = data.t[0]

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        pred = call_field(model, arity, t0, x[idx], "model")
        return (pred - dxdt[idx]).pow(2).mean()

    freeze = isinstance(model, _GradientConstrainedField) and not train_invariants
    with _frozen(model.invariants if freeze else None, freeze):
        return _run(model.parameters(), x.shape[0], batch_size, batch_loss, epochs=epochs,
                    lr=lr, seed=seed, progress=progress, desc="dynamics",
                    lr_schedule=_check_schedule(lr_schedule, epochs))


def fit_autoencoder(autoencoder: nn.Module, data: TrajectoryData | torch.Tensor, *,
                    epochs: int = 1000, batch_size: int = 100, lr: float = 1e-3,
                    seed: int = 0, progress: bool = True,
                    lr_schedule: Schedule = "cosine") -> History:
    """Train an autoencoder on states by mean squared reconstruction error.

    Args:
        autoencoder: an ``Autoencoder`` (anything whose ``forward`` reconstructs its input).
        data: trajectories (their states are used) or a tensor of states ``(..., n)``.
        epochs, batch_size, lr, seed, progress, lr_schedule: as in :func:`fit_dynamics`.

    Returns:
        ``{"loss": [...]}``: per-epoch mean squared reconstruction errors.
    """
    if isinstance(data, TrajectoryData):
        x = data.points()[0]
    elif isinstance(data, torch.Tensor) and data.dim() >= 1:
        x = data.reshape(-1, data.shape[-1])
    else:
        msg = f"`data` must be a TrajectoryData or a tensor of states, got {type(data).__name__}"
        raise TypeError(msg)
    epochs, lr = positive_int(epochs, "epochs"), _check_lr(lr)
    batch_size = positive_int(batch_size, "batch_size")

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return (autoencoder(x[idx]) - x[idx]).pow(2).mean()

    return _run(autoencoder.parameters(), x.shape[0], batch_size, batch_loss, epochs=epochs,
                lr=lr, seed=seed, progress=progress, desc="autoencoder",
                lr_schedule=_check_schedule(lr_schedule, epochs))
