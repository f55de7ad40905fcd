"""The practitioner's one call: trajectories in, a saved conserving model out.

:func:`learn` runs the whole method on a :class:`~concernet_ode.TrajectoryData` (with or
without derivatives): it counts the conserved quantities, learns them contrastively, refines
their level sets against the flow (keeping the refinement only where it helps on held-out
trajectories), reads them out as formulas, fits a projected vector field and an unconstrained
baseline on the same data, and scores both on held-out trajectories. The result, a
:class:`ConservationModel`, simulates, reports, and saves to a directory that
:func:`load` reads back without unpickling anything.

Everything is learned in standardised coordinates (each state coordinate shifted and scaled
to zero mean and unit variance over the training states), so that the defaults do not
depend on the units of the data; the scaling is part of the model, and
:attr:`ConservationModel.invariants` and :attr:`ConservationModel.field` act on the user's
own coordinates.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
        refine_steps: steps refining the level sets against the flow (0: none).
        refine_lr: peak step of the refinement.
        dynamics_steps: steps of each dynamics model (batches of 100 points).
        count_epochs: epochs of the network that counts the invariants.
        test_fraction: share of the trajectories held out for the report.
        rtol, atol: the solver tolerances of the held-out rollouts.
    """

    hidden: int = 100
    depth: int = 2
    activation: str = "tanh"
    invariant_steps: int = 3000
    refine_steps: int = 500
    refine_lr: float = 1e-3
    dynamics_steps: int = 4000
    count_epochs: int = 150
    test_fraction: float = 0.25
    rtol: float = 1e-6
    atol: float = 1e-8


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

    Stages (each timed in the report): split off held-out trajectories; estimate ``dxdt``
    where the data have none (:func:`~concernet_ode.estimate_derivatives`); count the
    invariants (:func:`~concernet_ode.discovery.estimate_num_invariants`) unless given;
    learn them contrastively (:func:`~concernet_ode.fit_invariants`, the library's default
    recipe); refine their level sets against the flow, keeping the result only if the
    normal flow of the validation trajectories falls; read each out as a sparse polynomial;
    fit the projected field and a baseline from the same initial weights on the same batches;
    roll both out from the held-out initial states and score them.

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
    clock, report = _Clock(), {"data": {"trajectories": data.n_traj, "times": data.n_times,
                                        "state_dim": data.state_dim,
                                        "derivatives": "observed" if data.dxdt is not None
                                        else "estimated (Savitzky-Golay)"}}
    if data.dxdt is None:
        data = estimate_derivatives(data)
    train, test = data.split(settings.test_fraction, seed=seed)
    fit, val = train.split(0.2, seed=seed + 1)
    shift, scale = _standardisation(train.x)
    z_train, z_fit, z_val = (_scaled(d, shift, scale) for d in (train, fit, val))
    clock.lap("prepare")

    m = m_given if m_given is not None else _count(z_fit, seed, settings, progress, report)
    clock.lap("count")
    H_net = _contrastive(z_fit, m, seed, settings, progress)
    clock.lap("invariants")
    report["refinement"] = _refine(H_net, z_fit, z_val, seed, settings, progress)
    clock.lap("refine")
    H, f, baseline = _build(data.state_dim, m, settings, shift, scale, H_net=H_net, seed=seed)
    H.requires_grad_(False)
    laws = _laws(H, train, names, report)
    clock.lap("laws")
    field_ = ProjectedVectorField(f, H)
    for model, label in ((field_, "projected"), (baseline, "baseline")):
        _fit_field(model, z_train, shift, scale, seed, settings, progress, label)
    clock.lap("dynamics")
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


def _steps_to_epochs(steps: int, n_items: int, batch: int) -> int:
    return max(1, round(steps / math.ceil(n_items / batch)))


def _count(data: TrajectoryData, seed: int, settings: LearnSettings, progress: bool,
           report: dict) -> int:
    from .discovery import estimate_num_invariants

    result = estimate_num_invariants(data, epochs=settings.count_epochs, seed=seed,
                                     progress=progress)
    report["count"] = {"estimated": result.count,
                       "singular_ratios": [float(v) for v in result.singular_ratios],
                       "flow_fractions": [float(v) for v in result.flow_fractions],
                       "note": ("counted along the observed trajectory pieces: a quantity "
                                "constant along each piece counts, so a slowly varying or "
                                "only locally defined one can pass for an invariant")}
    if result.count == 0:
        msg = ("no conserved quantity was found in the data (flow fractions "
               f"{report['count']['flow_fractions']}); pass `n_invariants` to force one")
        raise ValueError(msg)
    return result.count


def _contrastive(data: TrajectoryData, m: int, seed: int, settings: LearnSettings,
                 progress: bool) -> InvariantNet:
    torch.manual_seed(seed)
    net = InvariantNet(data.state_dim, m, hidden=settings.hidden, depth=settings.depth,
                       activation=settings.activation).to(data.x.dtype)
    epochs = _steps_to_epochs(settings.invariant_steps, data.n_traj, 10)
    fit_invariants(net, data, epochs=epochs, batch_size=10, seed=seed, progress=progress)
    return net


def _refine(net: InvariantNet, fit: TrajectoryData, val: TrajectoryData, seed: int,
            settings: LearnSettings, progress: bool) -> dict:
    """Refine ``net`` in place; undo it unless the validation normal flow falls."""
    def val_flow() -> float:
        return float(normal_flow_loss(net, *val.points()).detach())

    before = val_flow()
    if not settings.refine_steps:
        return {"steps": 0, "validation_normal_flow": before, "kept": False}
    start = copy.deepcopy(net.state_dict())
    epochs = _steps_to_epochs(settings.refine_steps, fit.n_traj * fit.n_times, 500)
    refine_invariants(net, fit, epochs=epochs, batch_size=500, lr=settings.refine_lr,
                      seed=seed, progress=progress)
    after = val_flow()
    kept = after < before
    if not kept:
        net.load_state_dict(start)
    return {"steps": settings.refine_steps, "validation_normal_flow_before": before,
            "validation_normal_flow_after": after, "kept": kept}


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
               scale: torch.Tensor, seed: int, settings: LearnSettings, progress: bool,
               label: str) -> None:
    epochs = _steps_to_epochs(settings.dynamics_steps, data.n_traj * data.n_times, 100)
    fit_dynamics(_InScaledUnits(model, shift, scale), data, epochs=epochs, batch_size=100,
                 seed=seed, progress=progress)


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


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, key: str) -> None:
        now = time.perf_counter()
        self.seconds[key] = round(now - self._last, 3)
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
                 f"{data.get('derivatives')}.")
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
                      + ("kept." if ref["kept"] else "undone (it did not help).")]
    held = r.get("held_out")
    if held:
        lines += ["", f"Held-out trajectories ({held['trajectories']}), rolled out from their "
                      "first observed state:", "",
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
