"""Training a vector field on observed trajectories, through ``odeint``: no derivatives.

:func:`fit_trajectories` is multiple shooting: every trajectory is cut into overlapping
windows of ``window`` samples; a batch of windows is integrated in one batched ``odeint``
call from each window's first state over the window's times, and the loss is the mean
squared distance of the rollout to the observed states. This is how torchdiffeq's users train
a neural ODE, and it is the standard answer to errors in the variables: least squares on
``(x, dxdt)`` pairs, with noise on ``x``, prefers a smoothed field to the true one wherever
the field varies fast, while a rollout is compared with the states themselves.

The noisy first state of a window starts every rollout off the true trajectory, and where
the flow stretches nearby states apart (a fast Kepler orbit) that alone biases the fit.
``starts="estimated"`` (the default) makes every window's start a free parameter,
initialised at the observation and trained with the field: the rollout is compared with the
observed window including its first sample, so each start is pulled towards its
observation and towards the start whose rollout best fits the window's later samples. That
is orthogonal-distance (errors-in-variables) regression for the flow map, and it costs one
state per window. ``starts="smoothed"`` takes the observed states smoothed along each
trajectory by a Savitzky-Golay filter instead (free, but wrong where a trajectory turns
within a window: it fails on orbits sampled a few times a period), ``"observed"`` the noisy
observations themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torchdiffeq import odeint, odeint_adjoint

from ._checks import count, positive_int
from ._jacobian import check_callable, field_arity
from .data import TrajectoryData, uniform_step
from .latent import LatentAdapter
from .projection import _GradientConstrainedField
from .training import History, Schedule, _check_schedule, _frozen, _prepare, _run

__all__ = ["fit_trajectories"]

_STARTS = ("estimated", "smoothed", "observed")
# torchdiffeq's fixed-grid methods: the ones whose grid `substeps` sets.
FIXED_GRID_SOLVERS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams",
                      "implicit_adams", "fixed_adams")


class _Autonomous(nn.Module):
    """``f(t, x)`` for a field written as ``f(x)`` (torchdiffeq's convention)."""

    def __init__(self, f: Callable) -> None:
        super().__init__()
        self.f = f

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.f(x)


def _smoothed(x: torch.Tensor, window: int) -> torch.Tensor:
    """States smoothed along each trajectory (Savitzky-Golay, cubic, ``window`` samples)."""
    from scipy.signal import savgol_filter

    n_times = x.shape[1]
    width = min(window, n_times) - (1 - min(window, n_times) % 2)
    if width <= 3:
        return x
    out = savgol_filter(x.detach().cpu().double().numpy(), width, 3, axis=1, mode="interp")
    return torch.from_numpy(out).to(x)


def _check_args(model: object, data: object, window: object, starts: object,
                adapter: object) -> tuple[TrajectoryData, int]:
    check_callable(model, "model")
    if not isinstance(model, nn.Module):
        msg = f"`model` must be an nn.Module with parameters to train, got {type(model).__name__}"
        raise TypeError(msg)
    if not isinstance(data, TrajectoryData):
        msg = f"`data` must be a TrajectoryData, got {type(data).__name__}"
        raise TypeError(msg)
    window = count(window, "window", 2)
    if window > data.n_times:
        msg = (f"`window` = {window} is longer than the trajectories ({data.n_times} "
               "samples); pass at most that")
        raise ValueError(msg)
    if starts not in _STARTS:
        msg = f"`starts` must be one of {_STARTS}, got {starts!r}"
        raise ValueError(msg)
    if adapter is not None and not isinstance(adapter, LatentAdapter):
        msg = f"`adapter` must be a LatentAdapter or None, got {type(adapter).__name__}"
        raise TypeError(msg)
    if uniform_step(data.t) is None:
        msg = ("`data.t` must be uniformly spaced, so that every window shares one time grid "
               "and a batch of windows is one odeint call")
        raise ValueError(msg)
    return data, window


def _solver_options(method: str, options: dict | None, substeps: object) -> dict:
    """``options`` with a grid of ``substeps`` steps per sample interval (fixed-grid methods)."""
    options = dict(options or {})
    substeps = count(substeps, "substeps")
    if substeps == 1:
        return options
    if method not in FIXED_GRID_SOLVERS:
        msg = (f"`substeps` = {substeps} needs a fixed-grid `method` "
               f"({', '.join(FIXED_GRID_SOLVERS)}); got {method!r}, which chooses its own steps")
        raise ValueError(msg)
    if {"step_size", "grid_constructor"} & set(options):
        msg = ("`substeps` and `options['step_size']` or `options['grid_constructor']` both "
               "set the grid; pass one of them")
        raise ValueError(msg)

    def grid(func: object, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        frac = torch.arange(substeps, dtype=t.dtype, device=t.device) / substeps
        inner = t[:-1, None] + t.diff()[:, None] * frac  # every sample time is a grid point
        return torch.cat([inner.reshape(-1), t[-1:]])

    options["grid_constructor"] = grid
    return options


def fit_trajectories(model: nn.Module, data: TrajectoryData, *, window: int = 10,
                     epochs: int = 200, batch_size: int = 64, lr: float = 1e-3,
                     seed: int = 0, progress: bool = True, lr_schedule: Schedule = "cosine",
                     starts: str = "estimated", method: str = "rk4", substeps: int = 1,
                     options: dict | None = None, rtol: float = 1e-6, atol: float = 1e-8,
                     adjoint: bool = False, adapter: LatentAdapter | None = None,
                     train_invariants: bool = False) -> History:
    """Fit a vector field to observed trajectories by rolling it out over windows of them.

    Every trajectory of ``T`` samples gives ``T - window + 1`` overlapping windows; an epoch
    visits all windows of all trajectories once, in a seeded random order, ``batch_size``
    windows per step, each batch integrated by one ``odeint`` (or ``odeint_adjoint``) call.

    Args:
        model: the vector field, ``f(t, x)`` or ``f(x)``: an ``MLP``, a
            ``ProjectedVectorField`` or ``DissipativeVectorField`` (their invariant stays
            frozen unless ``train_invariants``), or a latent field with ``adapter``.
        data: trajectories on a uniform time grid; ``dxdt`` is not used. They are cast to
            the model's dtype (float64 system data train a float32 MLP as it is).
        window: samples per window, at least 2 (one step of the data).
        epochs, batch_size, lr, seed, progress, lr_schedule: as in
            :func:`~concernet_ode.fit_dynamics` (``batch_size`` counts windows).
        starts: ``"estimated"`` (each window starts from a free state, initialised at its
            first observation and trained with the field: see the module docstring),
            ``"smoothed"`` (from its first state smoothed along the trajectory) or
            ``"observed"`` (from the noisy observation itself).
        method, options, rtol, atol: the solver (torchdiffeq's names and options).
        substeps: for a fixed-grid ``method`` (``rk4``, ``euler``, ...), the steps per
            sample interval, on a grid through every sample time; a field that turns fast
            between samples needs several (a Kepler orbit sampled five times a period: 8).
        adjoint: integrate with ``torchdiffeq.odeint_adjoint`` (memory independent of the
            window's length; the same gradients within the solver's tolerance).
        adapter: for a field of a latent space: windows start from ``adapter.encode`` of
            the start state and the rollout is decoded before it is compared.
        train_invariants: also train the invariant (``H`` or ``V``) of a projected field.

    Returns:
        ``{"loss": [...]}``: per-epoch mean squared error of the rollouts.

    Raises:
        TypeError: ``model`` is not a callable ``nn.Module``, ``data`` not a
            ``TrajectoryData``, ``adapter`` not a ``LatentAdapter``.
        ValueError: ``window`` < 2 or longer than the trajectories, a non-uniform time
            grid, an unknown ``starts``, bad ``epochs``, ``batch_size``, ``lr`` or
            ``substeps``, or ``substeps`` > 1 with an adaptive ``method`` or with a grid
            already given in ``options``.

    Shapes:
        data.x: ``(N, T, n)``.
    """
    data, window = _check_args(model, data, window, starts, adapter)
    epochs, batch_size = positive_int(epochs, "epochs"), positive_int(batch_size, "batch_size")
    if not (isinstance(lr, (int, float)) and 0 < lr < math.inf):
        msg = f"`lr` must be a positive finite number, got {lr!r}"
        raise ValueError(msg)
    data = _prepare(data, model)  # checked and cast to the model's dtype
    x = data.x
    dtype = x.dtype
    per_traj = data.n_times - window + 1
    begin = _smoothed(x, window) if starts == "smoothed" else x
    params = list(model.parameters())
    if starts == "estimated":  # one free start per window, trained with the field
        begin = nn.Parameter(x[:, :per_traj].clone())
        params.append(begin)
    t = (data.t[:window] - data.t[0]).to(dtype)
    # every window as (trajectory, first sample): gathered per batch, never looped over
    offsets = torch.arange(window, device=x.device)
    func = model if field_arity(model) == 2 else _Autonomous(model)
    integrate = odeint_adjoint if adjoint else odeint
    kwargs = {"method": method, "rtol": rtol, "atol": atol,
              "options": _solver_options(method, options, substeps)}

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        traj, first = idx // per_traj, idx % per_traj
        target = x[traj.unsqueeze(-1), first.unsqueeze(-1) + offsets]  # (B, window, n)
        start = begin[traj, first]
        if adapter is not None:
            pred = adapter.decode(integrate(func, adapter.encode(start), t, **kwargs))
        else:
            pred = integrate(func, start, t, **kwargs)  # (window, B, n)
        return (pred.movedim(0, 1) - target).pow(2).mean()

    freeze = isinstance(model, _GradientConstrainedField) and not train_invariants
    with _frozen(model.invariants if freeze else None, freeze):
        if adjoint:  # the parameters the adjoint pass differentiates: the trainable ones
            kwargs["adjoint_params"] = tuple(p for p in model.parameters() if p.requires_grad)
        return _run(params, data.n_traj * per_traj, batch_size, batch_loss,
                    epochs=epochs, lr=lr, seed=seed, progress=progress, desc="trajectories",
                    lr_schedule=_check_schedule(lr_schedule, epochs))
