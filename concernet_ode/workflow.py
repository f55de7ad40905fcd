"""The practitioner's one call: trajectories in, a saved conserving model out.

:func:`learn` runs the whole method on a :class:`~concernet_ode.TrajectoryData` (with or
without derivatives): it counts the conserved quantities, learns them contrastively, refines
their level sets against the flow (keeping the state that is best on validation
trajectories), reads them out as formulas, fits an unconstrained baseline and a projected
vector field on the same data, and scores both on held-out trajectories. The result, a
:class:`ConservationModel`, simulates, reports, and saves to a directory that
:func:`load` reads back without unpickling anything.

Everything is learned in standardised coordinates (each state coordinate shifted and scaled
to zero mean and unit variance over the training states), so that the defaults do not
depend on the units of the data; the scaling is part of the model, and
:attr:`ConservationModel.invariants` and :attr:`ConservationModel.field` act on the user's
own coordinates.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchdiffeq import odeint

from ._checks import count
from .data import TrajectoryData, estimate_derivatives
from .losses import normal_flow_loss
from .manifold import odeint_projected
from .models import MLP, InvariantNet
from .projection import ProjectedVectorField
from .training import fit_dynamics, fit_invariants, refine_invariants

__all__ = ["ConservationModel", "LearnSettings", "learn", "load"]

_FORMAT = "concernet_ode.ConservationModel/1"


@dataclass(frozen=True)
class LearnSettings:
    """The choices :func:`learn` makes, recorded with the model.

    Budgets are optimiser steps, not epochs, so that the run time does not grow with the
    number of trajectories.

    Attributes:
        hidden, depth, activation: the MLPs of the invariants and of the vector fields.
        invariant_steps: steps of the contrastive stage (batches of 10 trajectories).
        invariant_flow_weight: weight of the flow-alignment term in that stage
            (``fit_invariants(flow_weight=...)``; 0: the paper's loss alone).
        invariant_weight_decay: that stage's decoupled weight decay
            (``fit_invariants(weight_decay=...)``).
        refine_steps: steps refining the level sets against the flow (0: none).
        refine_lr: peak step of the refinement.
        dynamics_steps: steps of the unconstrained baseline (batches of 100 points).
        projected_steps, projected_lr: steps and peak step fine-tuning the projected model,
            which starts from the trained baseline (0: the projected baseline as it is).
        count_steps: steps of the network that counts the invariants (batches of 10
            trajectories).
        invariant_starts: for ``m > 1`` invariants, the contrastive and refinement stages
            run from this many initial weights and the one with the lowest validation
            normal flow is kept (one start for ``m = 1``).
        test_fraction: share of the trajectories held out for the report.
        train_dtype: the dtype the networks train in (``"float32"`` or ``"float64"``); the
            returned model is in the data's dtype either way.
        rtol, atol: the solver tolerances of the held-out rollouts.
    """

    hidden: int = 100
    depth: int = 2
    activation: str = "tanh"
    invariant_steps: int = 3000
    invariant_flow_weight: float = 10.0
    invariant_weight_decay: float = 1.0
    refine_steps: int = 4000
    refine_lr: float = 2e-3
    dynamics_steps: int = 4000
    projected_steps: int = 1000
    projected_lr: float = 3e-4
    count_steps: int = 3000
    invariant_starts: int = 2
    test_fraction: float = 0.25
    train_dtype: str = "float32"
    rtol: float = 1e-6
    atol: float = 1e-8

    def __post_init__(self) -> None:
        if self.train_dtype not in ("float32", "float64"):
            msg = f"`train_dtype` must be 'float32' or 'float64', got {self.train_dtype!r}"
            raise ValueError(msg)


class _Standardized(nn.Module):
    """``out_scale * net((x - shift) / scale)``: a network on standardised coordinates,
    called in the user's."""

    def __init__(self, net: nn.Module, shift: torch.Tensor, scale: torch.Tensor,
                 scale_output: bool) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("shift", shift.clone())
        self.register_buffer("scale", scale.clone())
        self.scale_output = scale_output

    def forward(self, t_or_x: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        x = t_or_x if x is None else x
        out = self.net((x - self.shift) / self.scale)
        return out * self.scale if self.scale_output else out


class _InScaledUnits(nn.Module):
    """A field of the user's coordinates seen in standardised ones, so that the dynamics loss
    weighs every coordinate alike."""

    def __init__(self, field: nn.Module, shift: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.field, self.shift, self.scale = field, shift, scale

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.field(t, z * self.scale + self.shift) / self.scale


@dataclass
class ConservationModel:
    """Learned conservation laws and the conserving vector field built on them.

    Attributes:
        invariants: the learned invariants ``(..., n) -> (..., m)``, scaling included.
        field: the :class:`~concernet_ode.ProjectedVectorField` of the learned dynamics onto
            the invariants' level sets; a torchdiffeq right-hand side.
        baseline: the same network trained without projection, for comparison.
        laws: per invariant, the sparse symbolic readout (a sympy expression string, up to
            scale and offset) or ``None`` where no sparse polynomial fits.
        report: what was learned and how well (:meth:`report_markdown` renders it).
        names: the state coordinates' names.
        settings: the :class:`LearnSettings` it was learned with.
    """

    invariants: nn.Module
    field: ProjectedVectorField
    baseline: nn.Module
    laws: list[str | None]
    report: dict
    names: tuple[str, ...]
    settings: LearnSettings = field(default_factory=LearnSettings)

    @property
    def state_dim(self) -> int:
        return len(self.names)

    @property
    def n_invariants(self) -> int:
        return len(self.laws)

    def simulate(self, x0: torch.Tensor, t: torch.Tensor, *, exact: bool = False,
                 baseline: bool = False, **odeint_kwargs: object) -> torch.Tensor:
        """Integrate the learned dynamics from ``x0``.

        Args:
            x0: initial states.
            t: output times.
            exact: keep the invariants to a tolerance in discrete time too
                (:func:`~concernet_ode.odeint_projected`), not only up to the solver's error.
            baseline: integrate the unconstrained baseline instead (``exact`` ignored).
            **odeint_kwargs: solver options (``rtol``, ``atol``, ``method``, ...).

        Returns:
            States in ``x0``'s dtype (the model is cast to it).

        Shapes:
            x0: ``(..., n)``; t: ``(T,)``; returns ``(T, ..., n)``.
        """
        if not isinstance(x0, torch.Tensor) or x0.dim() == 0 or x0.shape[-1] != self.state_dim:
            got = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
            msg = f"`x0` must be a tensor of shape (..., {self.state_dim}), got {got}"
            raise ValueError(msg)
        opts = {"rtol": self.settings.rtol, "atol": self.settings.atol, **odeint_kwargs}
        t = t.to(x0)
        with torch.no_grad():
            if baseline:
                return odeint(_cast(self.baseline, x0), x0, t, **opts)
            fld = _cast(self.field, x0)
            if exact:
                return odeint_projected(fld, x0, t, fld.invariants, **opts)
            return odeint(fld, x0, t, **opts)

    def report_markdown(self) -> str:
        """The report as a short markdown document."""
        return _render_report(self)

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` (weights and scaling) and ``model.json`` (architecture,
        settings, laws, report, versions) into ``directory``; :func:`load` reads them back."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"{part}.{k}": v.detach().contiguous().cpu()
                   for part, module in (("invariants", self.invariants),
                                        ("field", self.field.field),
                                        ("baseline", self.baseline))
                   for k, v in module.state_dict().items()}
        save_file(tensors, str(directory / "model.safetensors"))
        meta = {"format": _FORMAT, "names": list(self.names), "laws": self.laws,
                "n_invariants": self.n_invariants, "settings": asdict(self.settings),
                "dtype": str(_dtype(self.invariants)).removeprefix("torch."),
                "report": self.report, "versions": _versions()}
        (directory / "model.json").write_text(json.dumps(meta, indent=1))
        return directory


def load(directory: str | Path) -> ConservationModel:
    """Read a model written by :meth:`ConservationModel.save`; nothing is unpickled.

    Raises:
        FileNotFoundError: the directory lacks ``model.json`` or ``model.safetensors``.
        ValueError: the files are not a saved :class:`ConservationModel`.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    for name in ("model.json", "model.safetensors"):
        if not (directory / name).is_file():
            msg = f"{str(directory)!r} holds no saved model: {name} is missing"
            raise FileNotFoundError(msg)
    meta = json.loads((directory / "model.json").read_text())
    if meta.get("format") != _FORMAT:
        msg = f"{str(directory)!r}: model.json has format {meta.get('format')!r}, not {_FORMAT!r}"
        raise ValueError(msg)
    settings = LearnSettings(**meta["settings"])
    names, m = tuple(meta["names"]), int(meta["n_invariants"])
    dtype = getattr(torch, meta["dtype"])
    n = len(names)
    parts = _build(n, m, settings, torch.zeros(n), torch.ones(n))
    tensors = load_file(str(directory / "model.safetensors"))
    for part, module in zip(("invariants", "field", "baseline"), parts, strict=True):
        state = {k.removeprefix(f"{part}."): v for k, v in tensors.items()
                 if k.startswith(f"{part}.")}
        module.to(dtype).load_state_dict(state, strict=True)
    H, f, baseline = parts
    return ConservationModel(H, ProjectedVectorField(f, H), baseline, meta["laws"],
                             meta["report"], names, settings)


def learn(data: TrajectoryData, *, n_invariants: int | str = "auto",
          names: Sequence[str] | None = None, seed: int = 0,
          settings: LearnSettings | None = None, progress: bool = True) -> ConservationModel:
    """Learn conservation laws and a conserving model from trajectories.

    Stages (each timed in the report): estimate ``dxdt`` where the data have none
    (:func:`~concernet_ode.estimate_derivatives`, its window chosen by leave-one-out
    cross-validation of the smoothed states); split off held-out trajectories; count the
    invariants (:func:`~concernet_ode.discovery.estimate_num_invariants`) unless given;
    learn them contrastively with the flow-alignment term
    (:func:`~concernet_ode.fit_invariants`); refine their level sets against the flow
    (:func:`~concernet_ode.refine_invariants`, keeping the state whose validation normal
    flow is lowest); fit an unconstrained baseline, then the projected field starting from
    it; read each invariant out as a sparse polynomial; roll both models out from the
    held-out initial states and score them. The networks train in float32
    (``settings.train_dtype``) on one torch thread (the networks are too small for more
    to help, and on a busy machine more threads are many times slower); the returned model
    is in the data's dtype.

    What the count means: it is taken along the observed pieces of trajectory, where every
    flow in ``n`` dimensions has ``n - 1`` locally conserved quantities; only where the
    trajectories come back near themselves or each other does it tell invariants defined
    on the whole domain from local ones (a near-integrable Hénon–Heiles system counts 3
    where only the energy is global). The report says so; pass ``n_invariants`` when you
    know the answer.

    Args:
        data: at least 8 trajectories on one time grid; ``dxdt`` optional.
        n_invariants: the number ``m`` of invariants, or ``"auto"`` to count them.
        names: names of the state coordinates (default ``x0``, ``x1``, ...).
        seed: seeds the split, every network's initial weights and every batch order.
        settings: the stages' budgets and architecture (:class:`LearnSettings`).
        progress: progress bars (on a terminal).

    Returns:
        A :class:`ConservationModel` in the data's dtype.

    Raises:
        TypeError: ``data`` is not a ``TrajectoryData``.
        ValueError: too few trajectories or samples, a bad ``n_invariants`` or ``names``, or
            no conserved quantity found (the count is reported).
    """
    settings = LearnSettings() if settings is None else settings
    data, names, m_given = _check_learn(data, n_invariants, names)
    with _one_thread():
        return _learn(data, m_given, names, seed, settings, progress)


def _learn(data: TrajectoryData, m_given: int | None, names: tuple[str, ...], seed: int,
           settings: LearnSettings, progress: bool) -> ConservationModel:
    clock, report = _Clock(), {"data": {"trajectories": data.n_traj, "times": data.n_times,
                                        "state_dim": data.state_dim,
                                        "derivatives": "observed" if data.dxdt is not None
                                        else "estimated (Savitzky-Golay)"}}
    if data.dxdt is None:
        window = _derivative_window(data)
        report["data"]["derivative_window"] = window
        data = estimate_derivatives(data, window=window, polyorder=_POLYORDER)
    train, test = data.split(settings.test_fraction, seed=seed)
    fit, val = train.split(0.2, seed=seed + 1)
    shift, scale = _standardisation(train.x)
    # The networks train in `settings.train_dtype` (the trainers cast the data to it) and
    # are cast to the data's dtype at the end, with the scaling restored exactly.
    work = getattr(torch, settings.train_dtype)
    w_shift, w_scale = shift.to(work), scale.to(work)
    z_train, z_fit, z_val = (_scaled(d, shift, scale).to(work) for d in (train, fit, val))
    clock.lap("prepare")

    m = m_given if m_given is not None else _count(z_fit, seed, settings, progress, report)
    clock.lap("count")
    H_net, report["refinement"] = _invariants(z_fit, z_val, m, seed, settings, progress,
                                              clock)
    H, f, baseline = _build(data.state_dim, m, settings, w_shift, w_scale, H_net=H_net,
                            seed=seed)
    H.requires_grad_(False)
    field_ = ProjectedVectorField(f, H)
    # The projected model starts from the trained baseline: the projection removes the
    # baseline's error normal to the level sets, and fine-tuning through it adjusts the
    # rest, so it does not have to learn the tangential flow again from scratch.
    _fit_field(baseline, z_train, w_shift, w_scale, seed, progress,
               settings.dynamics_steps, 1e-3)
    f.load_state_dict(baseline.state_dict())
    _fit_field(field_, z_train, w_shift, w_scale, seed, progress,
               settings.projected_steps, settings.projected_lr)
    for module in (H, f, baseline):
        module.to(data.x.dtype)
        module.shift.copy_(shift)
        module.scale.copy_(scale)
    clock.lap("dynamics")
    laws = _laws(H, train, names, report)
    clock.lap("laws")
    result = ConservationModel(H, field_, baseline, laws, report, names, settings)
    report["held_out"] = _score(result, test, settings)
    clock.lap("score")
    report["seconds"] = clock.seconds
    return result


# ---------------------------------------------------------------------------- stages


def _check_learn(data: object, n_invariants: object, names: object,
                 ) -> tuple[TrajectoryData, tuple[str, ...], int | None]:
    if not isinstance(data, TrajectoryData):
        msg = f"`data` must be a TrajectoryData, got {type(data).__name__}"
        raise TypeError(msg)
    if data.n_traj < 8 or data.n_times < 5:
        msg = (f"`data` needs at least 8 trajectories of at least 5 samples (held-out, "
               f"validation and training ones), got {data.n_traj} of {data.n_times}")
        raise ValueError(msg)
    m = None
    if n_invariants != "auto":
        m = count(n_invariants, "n_invariants")
        if m >= data.state_dim:
            msg = (f"`n_invariants` must be less than the state dimension {data.state_dim} "
                   f"(or 'auto'), got {m}")
            raise ValueError(msg)
    names = tuple(f"x{i}" for i in range(data.state_dim)) if names is None else tuple(names)
    if len(names) != data.state_dim or not all(isinstance(s, str) and s for s in names):
        msg = f"`names` must be {data.state_dim} non-empty strings, got {names!r}"
        raise ValueError(msg)
    return data, names, m


def _standardisation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    points = x.reshape(-1, x.shape[-1])
    scale = points.std(0).clamp_min(torch.finfo(x.dtype).eps ** 0.5)
    return points.mean(0), scale


def _scaled(data: TrajectoryData, shift: torch.Tensor, scale: torch.Tensor) -> TrajectoryData:
    return TrajectoryData(data.t, (data.x - shift) / scale, data.require_dxdt("learn") / scale)


_POLYORDER = 3  # of the Savitzky-Golay fits that estimate missing derivatives


def _derivative_window(data: TrajectoryData) -> int:
    """The Savitzky-Golay window, chosen by leave-one-out cross-validation of the smoothed
    states.

    A fixed window suits one time scale: 9 samples estimate a fast pendulum's derivatives
    well and leave a slow rigid body's 20 times noisier than 29 samples do. The window that
    best predicts each state from its neighbours (the leave-one-out error of the local
    cubic fits, exact for a linear smoother: the residual over one minus the fit's weight
    on the left-out sample) trades the noise against the curvature as the data demand; on
    the four test systems of ``experiments/learn_systems.py`` it is the window whose
    derivatives are closest to the true ones, or one step from it.

    Shapes:
        data.x: ``(N, T, n)``.
    """
    from scipy.signal import savgol_filter

    x = data.x.detach().cpu().double().numpy()
    n_times = x.shape[1]
    best, best_err = _POLYORDER + 2, math.inf
    for window in range(_POLYORDER + 2, n_times + 1, 2):
        smooth = savgol_filter(x, window, _POLYORDER, axis=1, mode="interp")
        leverage = np.broadcast_to(_leverage(window, n_times), (1, n_times))[..., None]
        err = float(np.mean(((x - smooth) / (1 - leverage)) ** 2))
        if err < best_err:
            best, best_err = window, err
    return best


def _leverage(window: int, n_times: int) -> np.ndarray:
    """The weight of each sample in its own Savitzky-Golay fit (``mode="interp"``): the
    diagonal of the hat matrix of a cubic fitted to ``window`` samples, at the centre for
    the interior and at each position for the first and last ``window // 2`` samples."""
    import numpy as np

    u = np.arange(window) - window // 2
    v = np.vander(u, _POLYORDER + 1)
    hat = np.einsum("ij,jk,ik->i", v, np.linalg.pinv(v.T @ v), v)
    half = window // 2
    out = np.full(n_times, hat[half])
    out[:half], out[n_times - half:] = hat[:half], hat[window - half:]
    return out


def _steps_to_epochs(steps: int, n_items: int, batch: int) -> int:
    return max(1, round(steps / math.ceil(n_items / batch)))


def _count(data: TrajectoryData, seed: int, settings: LearnSettings, progress: bool,
           report: dict) -> int:
    from .discovery import estimate_num_invariants

    epochs = _steps_to_epochs(settings.count_steps, data.n_traj, 10)
    result = estimate_num_invariants(data, epochs=epochs, seed=seed, progress=progress)
    report["count"] = {"estimated": result.count,
                       "singular_ratios": [float(v) for v in result.singular_ratios],
                       "flow_fractions": [float(v) for v in result.flow_fractions],
                       "note": _count_note(result.count, data.state_dim)}
    if result.count == 0:
        msg = ("no conserved quantity was found in the data (flow fractions "
               f"{report['count']['flow_fractions']}); pass `n_invariants` to force one")
        raise ValueError(msg)
    return result.count


def _invariants(fit: TrajectoryData, val: TrajectoryData, m: int, seed: int,
                settings: LearnSettings, progress: bool, clock: _Clock,
                ) -> tuple[InvariantNet, dict]:
    """The contrastive and refinement stages, from ``settings.invariant_starts`` initial
    weights when ``m > 1`` (one start for ``m = 1``); the start whose validation normal flow
    is lowest is kept.

    For one invariant the starts we tried agreed; for several the loss has poor local
    minima. On a rigid body (``experiments/learn_systems.py``, 60 trajectories, a dataset
    seed not reported) one start learned both invariants (held-out cubic R^2 0.996/0.999,
    gradients tilted by 0.03 on average, validation normal flow 2.3e-4) and another
    features that are not functions of them (0.90/0.997, tilt 0.13, 3.9e-4): the
    validation normal flow tells them apart.
    """
    starts = settings.invariant_starts if m > 1 else 1
    best: tuple[float, InvariantNet, dict] | None = None
    scores = []
    for k in range(starts):
        start_seed = seed + 1000 * k
        net = _contrastive(fit, m, start_seed, settings, progress)
        clock.lap("invariants")
        refined = _refine(net, fit, val, start_seed, settings, progress)
        score = refined.get("validation_normal_flow_after")
        if score is None:
            score = float(normal_flow_loss(net, *val.points()).detach())
        scores.append(score)
        if best is None or score < best[0]:
            best = (score, net, refined)
        clock.lap("refine")
    _, net, refined = best
    refined["starts"] = scores
    return net, refined


def _count_note(m: int, n: int) -> str:
    """What the count means, for the report: which invariants it can and cannot tell apart."""
    note = ("counted along the observed trajectory pieces, where any quantity constant along "
            f"each piece counts. Along short pieces every flow in {n} dimensions has {n - 1} "
            "such local invariants; only invariants defined on the whole domain (global ones) "
            "are what the model can use everywhere, and the count tells them from local ones "
            "only where the trajectories are long enough to come back near themselves or each "
            "other (a near-integrable Henon-Heiles system counts 3 where only the energy is "
            "global). A slowly varying quantity can also pass for an invariant")
    if m == n - 1 and n > 2:
        note += (f". The count {m} is the most any flow has along short pieces: check it "
                 "against what you know, and pass `n_invariants` if it is too many")
    return note


def _contrastive(data: TrajectoryData, m: int, seed: int, settings: LearnSettings,
                 progress: bool) -> InvariantNet:
    torch.manual_seed(seed)
    net = InvariantNet(data.state_dim, m, hidden=settings.hidden, depth=settings.depth,
                       activation=settings.activation).to(data.x.dtype)  # the work dtype
    epochs = _steps_to_epochs(settings.invariant_steps, data.n_traj, 10)
    fit_invariants(net, data, epochs=epochs, batch_size=10, seed=seed, progress=progress,
                   flow_weight=settings.invariant_flow_weight,
                   weight_decay=settings.invariant_weight_decay)
    return net


def _refine(net: InvariantNet, fit: TrajectoryData, val: TrajectoryData, seed: int,
            settings: LearnSettings, progress: bool) -> dict:
    """Refine ``net`` in place under :func:`~concernet_ode.refine_invariants`' guard: it
    ends in the state (the starting one included) whose validation normal flow is lowest."""
    if not settings.refine_steps:
        return {"steps": 0}
    epochs = _steps_to_epochs(settings.refine_steps, fit.n_traj * fit.n_times, 500)
    # No early stop: under the cosine schedule the validation score often rises while the
    # step is large and falls only as it anneals; the best state is restored either way.
    history = refine_invariants(net, fit, epochs=epochs, batch_size=500, lr=settings.refine_lr,
                                seed=seed, progress=progress, validation=val, patience=epochs)
    scores = history["val_loss"]
    return {"steps": settings.refine_steps, "epochs": len(history["loss"]),
            "best_epoch": history["best_epoch"],
            "validation_normal_flow_before": scores[0],
            "validation_normal_flow_after": scores[history["best_epoch"]],
            "kept": not history["restored_start"]}


def _build(n: int, m: int, settings: LearnSettings, shift: torch.Tensor,
           scale: torch.Tensor, H_net: InvariantNet | None = None, seed: int = 0,
           ) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The model's three networks in the user's coordinates (``f`` and the baseline from the
    same initial weights)."""
    arch = {"hidden": settings.hidden, "depth": settings.depth,
            "activation": settings.activation}
    if H_net is None:
        H_net = InvariantNet(n, m, **arch)
    dtype = shift.dtype
    nets = []
    for _ in range(2):
        torch.manual_seed(seed)
        nets.append(MLP(n, n, **arch).to(dtype))
    H = _Standardized(H_net.to(dtype), shift, scale, scale_output=False)
    return (H, *(_Standardized(net, shift, scale, scale_output=True) for net in nets))


def _laws(H: nn.Module, train: TrajectoryData, names: tuple[str, ...],
          report: dict) -> list[str | None]:
    from .discovery import symbolic_readout

    x = train.states()
    with torch.no_grad():
        values = H(x)
    laws, fits = [], []
    for i in range(values.shape[-1]):
        try:
            readout = symbolic_readout(values[:, i], x, names=names)
        except ValueError as err:
            laws.append(None)
            fits.append({"law": None, "why": str(err)})
            continue
        laws.append(str(readout.expression))
        fits.append({"law": str(readout.expression), "r2": float(readout.r2)})
    report["laws"] = fits
    return laws


def _fit_field(model: nn.Module, data: TrajectoryData, shift: torch.Tensor,
               scale: torch.Tensor, seed: int, progress: bool, steps: int, lr: float) -> None:
    if not steps:
        return
    epochs = _steps_to_epochs(steps, data.n_traj * data.n_times, 100)
    fit_dynamics(_InScaledUnits(model, shift, scale), data, epochs=epochs, batch_size=100,
                 lr=lr, seed=seed, progress=progress)


def _score(model: ConservationModel, test: TrajectoryData, settings: LearnSettings) -> dict:
    """Roll the projected model and the baseline out from the held-out initial states."""
    x0, t, true = test.x[:, 0], test.t, test.x.movedim(1, 0)  # (T, B, n)
    out = {"trajectories": test.n_traj}
    with torch.no_grad():
        h_obs = model.invariants(test.x)
        out["invariant_spread_observed"] = float(
            (h_obs.std(dim=1) / h_obs.reshape(-1, h_obs.shape[-1]).std(0)).mean())
        h0 = model.invariants(x0)
        for label, kw in (("baseline", {"baseline": True}), ("projected", {})):
            pred = model.simulate(x0, t, **kw)
            finite = bool(torch.isfinite(pred).all())
            mse = float((pred - true).square().mean()) if finite else math.inf
            drift = float((model.invariants(pred) - h0).square().mean()) if finite else math.inf
            out[label] = {"mse": mse, "invariant_drift": drift}
    base, proj = out["baseline"]["invariant_drift"], out["projected"]["invariant_drift"]
    out["drift_ratio"] = proj / base if base > 0 else math.nan
    return out


# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, as it was afterwards.

    The networks are small (a few hundred points of width 100 per step), so an operation is
    microseconds of work and a second thread only adds synchronisation; on a busy machine it
    waits for a core at every operation. Measured on 2 shared cores under load 4: a
    contrastive step took 67 ms on two threads and 8 ms on one, a dynamics step 15-22 ms
    and 0.6-1.6 ms.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, key: str) -> None:
        """Charge the time since the last lap to ``key`` (added to what it had)."""
        now = time.perf_counter()
        self.seconds[key] = round(self.seconds.get(key, 0.0) + now - self._last, 3)
        self._last = now


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _cast(module: nn.Module, like: torch.Tensor) -> nn.Module:
    if _dtype(module) == like.dtype:
        return module
    return copy.deepcopy(module).to(like.dtype)


def _versions() -> dict[str, str]:
    import numpy
    import torchdiffeq

    from . import __version__

    return {"concernet_ode": __version__, "torch": torch.__version__,
            "torchdiffeq": torchdiffeq.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def _render_report(model: ConservationModel) -> str:
    r = model.report
    lines = ["# Learned conservation laws", ""]
    data = r.get("data", {})
    lines.append(f"Data: {data.get('trajectories')} trajectories of {data.get('times')} "
                 f"samples, state dimension {data.get('state_dim')}, derivatives "
                 f"{data.get('derivatives')}"
                 + (f", window {data['derivative_window']} samples chosen by cross-validation"
                    if "derivative_window" in data else "") + ".")
    if "count" in r:
        c = r["count"]
        lines += ["", f"Counted invariants: {c['estimated']} (singular-value ratios "
                      f"{[round(v, 3) for v in c['singular_ratios']]}; {c['note']})."]
    lines += ["", "| invariant | symbolic law (up to scale and offset) | fit R² |", "|---|---|---|"]
    for i, law in enumerate(r.get("laws", [])):
        text = law["law"] or f"none fits ({law.get('why', '')})"
        r2 = f"{law['r2']:.4f}" if law.get("r2") is not None else "–"
        lines.append(f"| H{i} | `{text}` | {r2} |")
    ref = r.get("refinement", {})
    if ref.get("steps"):
        lines += ["", f"Refinement against the flow: validation normal flow "
                      f"{ref['validation_normal_flow_before']:.3g} -> "
                      f"{ref['validation_normal_flow_after']:.3g}, "
                      + (f"best at epoch {ref['best_epoch']} of {ref['epochs']}."
                         if ref["kept"] else "undone (no epoch improved on the start).")]
    held = r.get("held_out")
    if held:
        lines += ["", f"Held-out trajectories ({held['trajectories']}), rolled out from their "
                      "first observed state (the projected model is the baseline projected "
                      "onto the learned level sets and fine-tuned):", "",
                  "| model | MSE vs observed states | drift of the learned invariants |",
                  "|---|---|---|"]
        for label in ("baseline", "projected"):
            lines.append(f"| {label} | {held[label]['mse']:.3g} | "
                         f"{held[label]['invariant_drift']:.3g} |")
        lines += ["", f"Spread of the learned invariants along the observed held-out "
                      f"trajectories, relative to their spread across them: "
                      f"{held['invariant_spread_observed']:.3g} (0 for exact invariants)."]
    if "seconds" in r:
        lines += ["", "Seconds per stage: " + ", ".join(f"{k} {v:.1f}"
                                                       for k, v in r["seconds"].items()) + "."]
    return "\n".join(lines) + "\n"
