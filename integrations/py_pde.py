"""py-pde systems (1-D and 2-D heat, 1-D wave) and trained surrogates run by py-pde.

Each system is a :class:`concernet_ode.systems.ConservativeSystem` like the other benchmark
systems (``vector_field``, ``invariants``, ``sample_initial``, ``solve``, ``trajectories``,
``train_data``, ``eval_grid``, ``state_dim``, ``n_invariants`` and the protocol constants),
but its data come from py-pde: a :class:`pde.CartesianGrid`, a py-pde equation, py-pde's
adaptive Runge-Kutta-Fehlberg solver with a :class:`pde.MemoryStorage` tracker, and ``dxdt``
from py-pde's own ``evolution_rate``. The torch ``vector_field`` is the same semi-discrete
right-hand side (the tests check it against ``evolution_rate``); a state is the grid data of
the py-pde field, flattened in C order (:meth:`to_field`, :meth:`from_field`).

- :class:`HeatEquation1D` -- the paper's fourth system, ``u_t = u_yy`` with insulated ends;
- :class:`HeatEquation2D` -- ``u_t = D (u_xx + u_yy)`` on a 64 x 64 grid with no-flux walls;
- :class:`WaveEquation1D` -- ``u_tt = c^2 u_yy`` on a ring as the first-order system
  ``(u, v)``, conserving total momentum and energy.

The other way round, :class:`SurrogatePDE` wraps a trained torch vector field (full-space, or
latent through a :class:`~concernet_ode.LatentAdapter`) as a py-pde ``PDEBase``, so that
``SurrogatePDE(...).solve(state, t_range, tracker=...)`` runs it with py-pde's solvers,
trackers and plots.

Grid of the 1-D heat: py-pde discretises ``[a, b]`` into ``n_nodes`` *cells* of width
``(b - a) / n_nodes`` (10/101 for the defaults) with values at the cell centres and zero-flux
boundaries by mirrored ghost cells. The ConCerNet authors use 101 *nodes* at spacing 0.1 with
mirrored ghost nodes: the same physics and the same three-point stencil, with a spacing 1%
smaller (cell centres from -4.95 to 4.95 rather than nodes from -5 to 5). The total heat is
the grid integral ``dx * sum(u)`` (:meth:`HeatEquation1D.invariants`); the paper's violation
metric uses the plain nodal sum ``sum(u)`` (:meth:`HeatEquation1D.nodal_sum`), larger by
``1 / dx``.

Only this module imports py-pde; the library core never does (the Table 1 application,
:mod:`concernet_ode.reproduce`, reaches py-pde through this module).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import ClassVar

import numpy as np
import pde
import torch
from pde.solvers import Controller, RungeKuttaSolver
from torch import nn
from torch.func import jvp
from tqdm.auto import tqdm

from concernet_ode._checks import (
    check_memory,
    count,
    finite_number,
    positive_number,
    seed_generator,
)
from concernet_ode._jacobian import check_callable, field_arity
from concernet_ode.data import TrajectoryData
from concernet_ode.systems import ConservativeSystem

__all__ = ["HeatEquation1D", "HeatEquation2D", "SurrogatePDE", "WaveEquation1D"]


class _ReusedStepperSolver(RungeKuttaSolver):
    """py-pde's adaptive Runge-Kutta-Fehlberg solver that compiles its stepper only once.

    py-pde compiles a new numba stepper for every ``solve`` (seconds each), while stepping
    one heat trajectory takes milliseconds. Every trajectory lives on the same grid with the
    same dtype, so the compiled stepper is built on the first call and reused; each later run
    starts again from the initial step ``dt`` so trajectories do not depend on their order.
    """

    name = ""  # registered under its class name only; py-pde's "runge-kutta" stays intact

    def __init__(self, equation: pde.PDEBase, tolerance: float) -> None:
        super().__init__(equation, backend="numba", adaptive=True, tolerance=tolerance)
        self._stepper = None
        self._stats = None

    def make_stepper(self, state, dt=None):
        if self._stepper is None:
            self._stepper = super().make_stepper(state, dt)
            self._stats = self.info["dt_statistics"]
        else:
            # The Controller turns the compiled step statistics into a dict after each run,
            # but the compiled stepper is typed on the original object: put it back.
            self.info.update(dt=float(dt), steps=0, dt_statistics=self._stats)
        return self._stepper


def _check_domain(domain: Sequence[float], dims: int) -> tuple[tuple[float, float], ...]:
    """``dims`` copies of a finite interval ``(a, b)``, ``a < b``, or raise naming it."""
    if len(domain) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                   for v in domain) or domain[0] >= domain[1]:
        msg = f"`domain` must be a finite interval (a, b) with a < b, got {domain!r}"
        raise ValueError(msg)
    return ((float(domain[0]), float(domain[1])),) * dims


@lru_cache(maxsize=8)
def _heat_setup(shape: tuple[int, ...], domain: tuple[tuple[float, float], ...],
                diffusivity: float, tolerance: float,
                ) -> tuple[pde.CartesianGrid, pde.DiffusionPDE, _ReusedStepperSolver]:
    """Grid, equation and solver, shared by equal systems so numba compiles once a process."""
    grid = pde.CartesianGrid(list(domain), list(shape))
    # a parsed boundary object (not the dict) halves the cost of each `evolution_rate` call
    bc = grid.get_boundary_conditions({"derivative": 0})
    equation = pde.DiffusionPDE(diffusivity, bc=bc)
    return grid, equation, _ReusedStepperSolver(equation, tolerance)


class _PyPDESystem(ConservativeSystem):
    """Data through py-pde: ``solve``, ``evolution_rate`` and ``trajectories`` for a system
    whose subclass sets ``grid``, ``equation``, ``_solver`` and :meth:`_empty_field`."""

    _desc: ClassVar[str] = "py-pde"
    grid: pde.CartesianGrid
    equation: pde.PDEBase
    _solver: _ReusedStepperSolver
    tolerance: float

    def _empty_field(self) -> pde.fields.base.FieldBase:
        """A zero py-pde field (or collection) whose ``data`` holds one state."""
        raise NotImplementedError

    def to_field(self, x: torch.Tensor) -> pde.fields.base.FieldBase:
        """One state as a py-pde field (a ``FieldCollection`` for several fields).

        Raises:
            ValueError: ``x`` is not a tensor of shape ``(state_dim,)``.

        Shapes:
            x: ``(n,)``; the field's ``data`` has the grid's shape (and a leading field axis
            for a collection), ``n`` values in C order.
        """
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != (self.state_dim,):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            msg = f"`x` must be a tensor of shape ({self.state_dim},), got {got}"
            raise ValueError(msg)
        field = self._empty_field()
        field.data[...] = x.detach().cpu().double().numpy().reshape(field.data.shape)
        return field

    def from_field(self, field: pde.fields.base.FieldBase) -> torch.Tensor:
        """A py-pde field's data as one float64 state, the inverse of :meth:`to_field`.

        Shapes:
            returns ``(n,)``.
        """
        data = np.asarray(getattr(field, "data", None))
        if data.size != self.state_dim:
            msg = (f"`field` must be a py-pde field with {self.state_dim} values, got "
                   f"{type(field).__name__} with {data.size}")
            raise ValueError(msg)
        return torch.from_numpy(data.reshape(-1).astype(np.float64))

    def solve(self, x0: torch.Tensor, t: torch.Tensor, *, progress: bool = True,
              ) -> torch.Tensor:
        """Solve with py-pde from each initial state and record the states at ``t``.

        Runs py-pde's adaptive Runge-Kutta-Fehlberg solver (numba, compiled once per
        process) in float64 at ``tolerance``; a :class:`pde.MemoryStorage` tracker stores the
        states at exactly the times ``t``, onto which the solver steps.

        Args:
            x0: initial states.
            t: increasing output times; the first is the initial time.
            progress: show a progress bar (only when stderr is a terminal).

        Returns:
            The states, in ``x0``'s dtype and device.

        Raises:
            ValueError: ``x0`` is not ``(N, n)``, holds a NaN or infinite value, or ``t`` is
                not 1-D increasing.
            MemoryError: the states to record need more memory than is available.

        Shapes:
            x0: ``(N, n)``; t: ``(T,)``; returns ``(N, T, n)``.
        """
        x0 = self._check_x0(x0)  # also refuses NaN/inf, which py-pde would step on to dt 0
        if t.dim() != 1 or t.numel() < 2 or not bool((t.diff() > 0).all()):
            msg = f"`t` must be 1-D and strictly increasing with >= 2 times, got {t!r}"
            raise ValueError(msg)
        check_memory(x0.shape[0] * t.numel() * self.state_dim * 8,
                     f"the states of {x0.shape[0]} trajectories at {t.numel()} times",
                     "solve fewer trajectories or times at once")
        times = t.detach().cpu().double().numpy()
        out = np.empty((x0.shape[0], times.size, self.state_dim))
        show = bool(progress) and sys.stderr.isatty()
        for i, u0 in enumerate(tqdm(x0.detach().cpu().double().numpy(), disable=not show,
                                    desc=self._desc)):
            state = self._empty_field()
            state.data[...] = u0.reshape(state.data.shape)
            storage = pde.MemoryStorage()
            controller = Controller(self._solver, t_range=(times[0], times[-1]),
                                    tracker=[storage.tracker(list(times))])
            controller.run(state, dt=min(1e-3, float(np.diff(times).min())))
            out[i] = np.stack([field.data.reshape(-1) for field in storage])
        return torch.from_numpy(out).to(dtype=x0.dtype, device=x0.device)

    def evolution_rate(self, x: torch.Tensor, *, progress: bool = False) -> torch.Tensor:
        """``dx/dt`` from py-pde's own ``evolution_rate``, state by state.

        The reference that :meth:`vector_field` reproduces; slower (a Python loop).

        Args:
            x: states.
            progress: show a progress bar (only when stderr is a terminal).

        Raises:
            ValueError: ``x`` is not a tensor of shape ``(..., n)``.

        Shapes:
            x: ``(..., n)``; returns ``(..., n)`` in ``x``'s dtype and device.
        """
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != self.state_dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            msg = f"`x` must be a tensor of shape (..., {self.state_dim}), got {got}"
            raise ValueError(msg)
        flat = x.detach().reshape(-1, self.state_dim).cpu().double().numpy()
        field = self._empty_field()
        rates = np.empty_like(flat)
        show = bool(progress) and sys.stderr.isatty()
        for i, u in enumerate(tqdm(flat, disable=not show, desc="py-pde rates", leave=False)):
            field.data[...] = u.reshape(field.data.shape)
            rates[i] = self.equation.evolution_rate(field).data.reshape(-1)
        return torch.from_numpy(rates).to(x).reshape(x.shape)

    def trajectories(self, n_traj: int, *, t_end: float, n_times: int, noise: float = 0.0,
                     seed: int | torch.Generator, evaluation: bool = False,
                     dtype: torch.dtype = torch.float64, progress: bool = True,
                     ) -> TrajectoryData:
        """Solve random initial states with py-pde; ``dxdt`` from py-pde's ``evolution_rate``.

        As :meth:`ConservativeSystem.trajectories`: initial states from
        :meth:`sample_initial`, then noise of standard deviation ``noise`` on ``x`` and
        ``dxdt`` drawn from the same generator. The memory the request needs is estimated
        before anything is allocated, and a request that cannot fit fails at once; the
        solve, one py-pde run per trajectory, shows a progress bar.

        Args:
            n_traj: number of trajectories ``N``.
            t_end: final time; the grid is ``linspace(0, t_end, n_times)``.
            n_times: number of sample times ``T`` (at least 2).
            noise: standard deviation of the noise.
            seed: an int or a ``torch.Generator``.
            evaluation: unused (one distribution); kept for the common interface.
            dtype: dtype of the returned tensors (generation is always in float64).
            progress: show progress bars (only when stderr is a terminal).

        Raises:
            ValueError: ``n_traj``, ``t_end``, ``n_times`` or ``noise`` out of range.
            TypeError: ``seed`` is neither an int nor a Generator.
            MemoryError: the request needs more memory than is available (checked first).

        Shapes:
            returns ``t: (T,)``, ``x, dxdt: (N, T, n)``.
        """
        n_traj = count(n_traj, "n_traj")
        n_times = count(n_times, "n_times", minimum=2)
        t_end = positive_number(t_end, "t_end")
        noise = finite_number(noise, "noise", 0.0)
        self._require_memory(n_traj, n_times, noise, dtype)
        gen = seed_generator(seed)
        x0 = self.sample_initial(n_traj, seed=gen, evaluation=evaluation)
        t = torch.linspace(0.0, t_end, n_times, dtype=torch.float64)
        x = self.solve(x0, t, progress=progress)
        data = TrajectoryData(t, x, self.evolution_rate(x, progress=progress))
        del x
        data = data.with_noise(noise, seed=gen)  # frees the clean arrays before the cast
        return data.to(dtype)


class HeatEquation1D(_PyPDESystem):
    """``u_t = D u_yy`` on an interval with insulated ends; total heat is conserved.

    Initial states are Gaussian bumps ``u0(y) = exp(-(y - c)^2 / (2 w^2))`` with centre
    ``c ~ U(-1, 1)`` and width ``w = 0.25 * U(0.5, 2)`` (the paper's protocol; ``w`` is taken
    as the standard deviation of the bump and its peak is 1). Training: 200 trajectories on
    ``[0, 10]`` at 100 points; evaluation: 10 on ``[0, 1]`` at 1001 points.

    Args:
        n_nodes: number of grid cells (the state dimension).
        domain: the interval ``(a, b)``.
        diffusivity: the diffusion constant ``D``.
        tolerance: py-pde's adaptive step tolerance (maximum local error per step).

    Raises:
        ValueError: a non-positive size, diffusivity or tolerance, or ``a >= b``.

    Shapes:
        states ``(..., n_nodes)`` (temperatures at the cell centres); invariants ``(..., 1)``.

    Example:
        >>> heat = HeatEquation1D()
        >>> data = heat.trajectories(4, t_end=1.0, n_times=11, seed=0, progress=False)
        >>> data.x.shape
        torch.Size([4, 11, 101])
    """

    name = "heat"
    _desc = "py-pde heat"
    invariant_names = ("total heat",)
    train_traj, train_t_end, train_n_times = 200, 10.0, 100
    eval_t_end = 1.0
    centre_range = (-1.0, 1.0)
    width_scale = 0.25
    width_range = (0.5, 2.0)

    def __init__(self, n_nodes: int = 101, domain: Sequence[float] = (-5.0, 5.0),
                 diffusivity: float = 1.0, *, tolerance: float = 1e-9) -> None:
        n_nodes = count(n_nodes, "n_nodes", minimum=3)
        (self.domain,) = _check_domain(domain, 1)
        self.state_names = tuple(f"u{i}" for i in range(n_nodes))
        self.diffusivity = positive_number(diffusivity, "diffusivity")
        self.tolerance = positive_number(tolerance, "tolerance")
        self.grid, self.equation, self._solver = _heat_setup(
            (n_nodes,), (self.domain,), self.diffusivity, self.tolerance)
        self.cell_width = (self.domain[1] - self.domain[0]) / n_nodes

    def __repr__(self) -> str:
        return (f"HeatEquation1D(n_nodes={self.state_dim}, domain={self.domain}, "
                f"diffusivity={self.diffusivity})")

    def _empty_field(self) -> pde.ScalarField:
        return pde.ScalarField(self.grid)

    @property
    def coordinates(self) -> torch.Tensor:
        """Cell centres ``y`` of the grid, float64, shape ``(n_nodes,)``."""
        return torch.from_numpy(self.grid.axes_coords[0].copy())

    def _field(self, x: torch.Tensor) -> torch.Tensor:
        # py-pde's zero-flux condition sets each ghost cell to its boundary neighbour; with
        # the same three-point stencil this equals `evolution_rate` to round-off.
        padded = torch.cat([x[..., :1], x, x[..., -1:]], dim=-1)
        laplace = (padded[..., :-2] - 2 * x + padded[..., 2:]) / self.cell_width**2
        return self.diffusivity * laplace

    def _invariants(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=-1, keepdim=True) * self.cell_width

    def nodal_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Plain sum of the nodal values: the invariant of the paper's violation metric.

        It equals :meth:`invariants` (the grid integral) divided by the cell width.

        Shapes:
            x: ``(..., n_nodes)``; returns ``(..., 1)``.
        """
        return self.invariants(x) / self.cell_width

    def _sample(self, n: int, gen: torch.Generator, evaluation: bool) -> torch.Tensor:
        u = torch.rand((2, n, 1), generator=gen, dtype=torch.float64)
        lo, hi = self.centre_range
        centre = lo + (hi - lo) * u[0]
        lo, hi = self.width_range
        width = self.width_scale * (lo + (hi - lo) * u[1])
        return torch.exp(-((self.coordinates - centre) ** 2) / (2 * width**2))


class HeatEquation2D(_PyPDESystem):
    """``u_t = D (u_xx + u_yy)`` on a square grid with no-flux walls; total heat is conserved.

    py-pde's :class:`pde.DiffusionPDE` on a :class:`pde.CartesianGrid` of ``shape`` cells
    (64 x 64 by default) over ``domain`` squared, with zero-flux (Neumann) walls: the
    five-point Laplacian with each ghost cell equal to its wall neighbour, whose rates sum to
    zero, so the total heat ``dx dy sum(u)`` is conserved by the semi-discrete system exactly.

    Initial states are Gaussian bumps of peak 1, ``exp(-|y - c|^2 / (2 w^2))``, centre
    ``c ~ U(-2, 2)^2`` and width ``w = 0.5 * U(0.75, 2)`` (resolved by at least 2.4 cells).
    Protocol: 64 training trajectories on ``[0, 1]`` at 21 points (noise 0.01); evaluation
    10 trajectories on ``[0, 2]`` (twice the training window) at 41 points.

    Args:
        shape: grid cells along ``(x, y)``; the state has ``shape[0] * shape[1]`` values.
        domain: the interval ``(a, b)`` of both axes.
        diffusivity: the diffusion constant ``D``.
        tolerance: py-pde's adaptive step tolerance (maximum local error per step).

    Raises:
        ValueError: a grid under 3 x 3 cells, a non-positive diffusivity or tolerance, or
            ``a >= b``.

    Shapes:
        states ``(..., nx * ny)`` (the field ``(nx, ny)`` in C order); invariants ``(..., 1)``.

    Example:
        >>> heat = HeatEquation2D(shape=(16, 16))
        >>> heat.trajectories(2, t_end=0.5, n_times=3, seed=0, progress=False).x.shape
        torch.Size([2, 3, 256])
    """

    name = "heat2d"
    _desc = "py-pde heat 2-D"
    invariant_names = ("total heat",)
    train_traj, train_t_end, train_n_times = 64, 1.0, 21
    eval_t_end, eval_n_times = 2.0, 41
    centre_range = (-2.0, 2.0)
    width_scale = 0.5
    width_range = (0.75, 2.0)

    def __init__(self, shape: Sequence[int] = (64, 64), domain: Sequence[float] = (-5.0, 5.0),
                 diffusivity: float = 1.0, *, tolerance: float = 1e-9) -> None:
        if len(shape) != 2:
            msg = f"`shape` must be two cell counts (nx, ny), got {shape!r}"
            raise ValueError(msg)
        self.shape = (count(shape[0], "shape[0]", minimum=3),
                      count(shape[1], "shape[1]", minimum=3))
        self.domain = _check_domain(domain, 1)[0]
        self.diffusivity = positive_number(diffusivity, "diffusivity")
        self.tolerance = positive_number(tolerance, "tolerance")
        self.grid, self.equation, self._solver = _heat_setup(
            self.shape, (self.domain,) * 2, self.diffusivity, self.tolerance)
        self.cell_widths = tuple(float(w) for w in self.grid.discretization)

    @property
    def state_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(f"u{i}_{j}" for i in range(self.shape[0]) for j in range(self.shape[1]))

    @property
    def state_dim(self) -> int:
        return self.shape[0] * self.shape[1]

    def __repr__(self) -> str:
        return (f"HeatEquation2D(shape={self.shape}, domain={self.domain}, "
                f"diffusivity={self.diffusivity})")

    def _empty_field(self) -> pde.ScalarField:
        return pde.ScalarField(self.grid)

    @property
    def coordinates(self) -> torch.Tensor:
        """Cell centres, float64, shape ``(nx, ny, 2)``."""
        return torch.from_numpy(self.grid.cell_coords.copy())

    def _field(self, x: torch.Tensor) -> torch.Tensor:
        u = x.reshape(*x.shape[:-1], *self.shape)
        # zero flux: each ghost cell equals its wall neighbour, as in py-pde
        px = torch.cat([u[..., :1, :], u, u[..., -1:, :]], dim=-2)
        py = torch.cat([u[..., :1], u, u[..., -1:]], dim=-1)
        dx, dy = self.cell_widths
        laplace = ((px[..., :-2, :] - 2 * u + px[..., 2:, :]) / dx**2
                   + (py[..., :-2] - 2 * u + py[..., 2:]) / dy**2)
        return (self.diffusivity * laplace).reshape(x.shape)

    def _invariants(self, x: torch.Tensor) -> torch.Tensor:
        dx, dy = self.cell_widths
        return x.sum(dim=-1, keepdim=True) * (dx * dy)

    def _sample(self, n: int, gen: torch.Generator, evaluation: bool) -> torch.Tensor:
        u = torch.rand((3, n, 1, 1), generator=gen, dtype=torch.float64)
        lo, hi = self.centre_range
        cx, cy = lo + (hi - lo) * u[0], lo + (hi - lo) * u[1]
        lo, hi = self.width_range
        width = self.width_scale * (lo + (hi - lo) * u[2])
        y = self.coordinates
        r2 = (y[..., 0] - cx) ** 2 + (y[..., 1] - cy) ** 2
        return torch.exp(-r2 / (2 * width**2)).reshape(n, -1)


class WaveEquation1D(_PyPDESystem):
    """``u_tt = c^2 u_yy`` on a ring, as py-pde's first-order ``u_t = v``, ``v_t = c^2 u_yy``.

    py-pde's :class:`pde.WavePDE` on a periodic :class:`pde.CartesianGrid` of ``n_cells``
    cells; the state is ``(u, v)`` (the ``FieldCollection``'s data, ``u`` first), so
    ``state_dim = 2 * n_cells``. With the three-point Laplacian ``L`` (symmetric, negative
    semi-definite, rows summing to zero) the semi-discrete system conserves exactly

    - the total momentum ``P = dx sum(v)`` (``dP/dt = c^2 dx 1^T L u = 0``), and
    - the energy ``E = dx/2 sum(v^2) + c^2 dx/2 sum(((u[i+1] - u[i]) / dx)^2)``, the discrete
      ``1/2 int(v^2 + c^2 u_y^2)`` with forward differences: ``E = dx/2 (v^T v - c^2 u^T L u)``
      and ``dE/dt = dx (v^T c^2 L u - c^2 u^T L v) = 0`` because ``L`` is symmetric.

    (A centred-difference gradient would give a different quadratic form, not conserved by
    this scheme.) The system is linear, so it has more invariants (each Fourier mode's
    energy, the wave momentum ``-dx sum(v D0 u)``); ``invariants`` returns ``(P, E)``. The
    mean of ``u`` is not conserved: it moves at ``P / (b - a)``.

    Initial states: ``u0`` a Gaussian bump of peak 1 at ``c0 ~ U(a, b)`` (periodic distance)
    of width ``w = 0.3 * U(1, 2)``; ``v0 = alpha u0 - s c u0'`` with ``alpha ~ U(-0.25, 0.25)``
    (momentum) and ``s ~ U(-1, 1)`` (the right-moving share minus the left-moving share).
    Protocol: 100 training trajectories on ``[0, pi]`` at 33 points (noise 0.01); evaluation
    10 trajectories on ``[0, 2 pi]`` (twice the training window; one transit of the ring for
    the defaults) at 65 points.

    Args:
        n_cells: grid cells of the ring; the state has ``2 * n_cells`` values.
        domain: the periodic interval ``(a, b)``.
        speed: the wave speed ``c``.
        tolerance: py-pde's adaptive step tolerance (maximum local error per step).

    Raises:
        ValueError: ``n_cells < 3``, a non-positive speed or tolerance, or ``a >= b``.

    Shapes:
        states ``(..., 2 * n_cells)`` (``u`` then ``v``); invariants ``(..., 2)``.

    Example:
        >>> wave = WaveEquation1D(n_cells=32)
        >>> wave.invariants(wave.sample_initial(3, seed=0)).shape
        torch.Size([3, 2])
    """

    name = "wave"
    _desc = "py-pde wave"
    invariant_names = ("momentum", "energy")
    train_traj, train_t_end, train_n_times = 100, math.pi, 33
    eval_t_end, eval_n_times = 2 * math.pi, 65
    width_scale = 0.3
    width_range = (1.0, 2.0)
    momentum_range = (-0.25, 0.25)

    def __init__(self, n_cells: int = 64, domain: Sequence[float] = (0.0, 2 * math.pi),
                 speed: float = 1.0, *, tolerance: float = 1e-9) -> None:
        self.n_cells = count(n_cells, "n_cells", minimum=3)
        self.domain = _check_domain(domain, 1)[0]
        self.speed = positive_number(speed, "speed")
        self.tolerance = positive_number(tolerance, "tolerance")
        self.grid, self.equation, self._solver = _wave_setup(
            self.n_cells, self.domain, self.speed, self.tolerance)
        self.cell_width = (self.domain[1] - self.domain[0]) / self.n_cells

    @property
    def state_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return (*(f"u{i}" for i in range(self.n_cells)), *(f"v{i}" for i in range(self.n_cells)))

    def __repr__(self) -> str:
        return (f"WaveEquation1D(n_cells={self.n_cells}, domain={self.domain}, "
                f"speed={self.speed})")

    def _empty_field(self) -> pde.FieldCollection:
        zero = pde.ScalarField(self.grid)
        return self.equation.get_initial_condition(zero, zero.copy())

    @property
    def coordinates(self) -> torch.Tensor:
        """Cell centres ``y`` of the ring, float64, shape ``(n_cells,)``."""
        return torch.from_numpy(self.grid.axes_coords[0].copy())

    def _laplace(self, u: torch.Tensor) -> torch.Tensor:
        return (u.roll(1, -1) - 2 * u + u.roll(-1, -1)) / self.cell_width**2

    def _field(self, x: torch.Tensor) -> torch.Tensor:
        u, v = x.split(self.n_cells, dim=-1)
        return torch.cat([v, self.speed**2 * self._laplace(u)], dim=-1)

    def _invariants(self, x: torch.Tensor) -> torch.Tensor:
        u, v = x.split(self.n_cells, dim=-1)
        dx = self.cell_width
        grad = (u.roll(-1, -1) - u) / dx  # forward differences: the conserved form (above)
        energy = 0.5 * dx * (v.pow(2).sum(-1) + self.speed**2 * grad.pow(2).sum(-1))
        return torch.stack([dx * v.sum(-1), energy], dim=-1)

    def _sample(self, n: int, gen: torch.Generator, evaluation: bool) -> torch.Tensor:
        r = torch.rand((4, n, 1), generator=gen, dtype=torch.float64)
        a, b = self.domain
        centre = a + (b - a) * r[0]
        lo, hi = self.width_range
        width = self.width_scale * (lo + (hi - lo) * r[1])
        lo, hi = self.momentum_range
        alpha = lo + (hi - lo) * r[2]
        share = 2 * r[3] - 1
        d = torch.remainder(self.coordinates - centre + (b - a) / 2, b - a) - (b - a) / 2
        u0 = torch.exp(-d**2 / (2 * width**2))
        du0 = -d / width**2 * u0
        return torch.cat([u0, alpha * u0 - share * self.speed * du0], dim=-1)


@lru_cache(maxsize=8)
def _wave_setup(n_cells: int, domain: tuple[float, float], speed: float, tolerance: float,
                ) -> tuple[pde.CartesianGrid, pde.WavePDE, _ReusedStepperSolver]:
    """Grid, equation and solver, shared by equal systems so numba compiles once a process."""
    grid = pde.CartesianGrid([domain], [n_cells], periodic=True)
    equation = pde.WavePDE(speed, bc=grid.get_boundary_conditions("periodic"))
    return grid, equation, _ReusedStepperSolver(equation, tolerance)


class _DecodedField(nn.Module):
    """A latent field seen in the full space: ``xdot = J_D(z) f(z)`` at ``z = E(x)``."""

    def __init__(self, field: Callable, adapter: nn.Module) -> None:
        super().__init__()
        self.field, self.adapter = field, adapter
        self._arity = field_arity(field)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z = self.adapter.encode(x)
        zdot = self.field(z) if self._arity == 1 else self.field(t, z)
        return jvp(self.adapter.decode, (z,), (zdot,))[1]


class SurrogatePDE(pde.PDEBase):
    """A trained torch vector field as a py-pde PDE: py-pde's solvers, trackers and plots run it.

    ``evolution_rate(state, t)`` flattens the field's data (C order, the layout of the
    systems in this module), evaluates the torch field there in the dtype and device of its
    parameters, and returns the rates as a field of ``state``'s kind. With ``adapter`` (a
    :class:`~concernet_ode.LatentAdapter`) ``field`` is a latent field and the full-space
    rate is its push-forward by the decoder, ``xdot = J_D(z) f(z)`` at ``z = E(x)`` (one
    forward-mode JVP): from a decoded state ``x0 = D(z0)`` this follows ``D(z(t))`` as far as
    ``E(D(z)) = z`` holds, which is what an autoencoder trained on the data approximates.
    :attr:`torch_field` is that same full-space field for ``torchdiffeq.odeint``; the two
    agree to the solvers' tolerances (the tests check it).

    ``field`` may be a :class:`~concernet_ode.ProjectedVectorField`: its learned (or known)
    invariants are then conserved by the continuous flow that py-pde integrates.

    py-pde picks its ``numpy`` backend for this PDE (there is no compiled right-hand side):
    ``solve(state, t_range, dt, solver="runge-kutta", adaptive=True, tolerance=...,
    tracker=[...])`` as for any py-pde equation.

    Args:
        field: the torch vector field, ``f(t, x)`` or ``f(x)``.
        adapter: a ``LatentAdapter`` (anything with ``encode`` and ``decode``) when ``field``
            acts in its latent space; ``None`` for a full-space field.

    Raises:
        TypeError: ``field`` is not callable, or ``adapter`` lacks ``encode``/``decode``.

    Shapes:
        the field's data holds ``n`` values; ``field`` maps ``(..., n)`` (or ``(..., k)``
        with an adapter) to the same shape.

    Example:
        >>> heat = HeatEquation1D(n_nodes=17)
        >>> eq = SurrogatePDE(heat.vector_field)
        >>> storage = pde.MemoryStorage()
        >>> final = eq.solve(heat.to_field(heat.sample_initial(1, seed=0)[0]), t_range=0.1,
        ...                  solver="runge-kutta", adaptive=True, tracker=storage.tracker(0.05))
    """

    explicit_time_dependence = False
    check_implementation = False

    def __init__(self, field: Callable, *, adapter: nn.Module | None = None) -> None:
        super().__init__()
        check_callable(field, "field")
        if adapter is not None and not all(callable(getattr(adapter, name, None))
                                           for name in ("encode", "decode")):
            msg = ("`adapter` must have `encode` and `decode` methods (a LatentAdapter), got "
                   f"{type(adapter).__name__}")
            raise TypeError(msg)
        self.field, self.adapter = field, adapter
        if adapter is not None:
            self.torch_field: Callable = _DecodedField(field, adapter)
        elif field_arity(field) == 1:
            self.torch_field = lambda t, x: field(x)
        else:
            self.torch_field = field
        params = [p for m in (field, adapter) if isinstance(m, nn.Module)
                  for p in m.parameters()]
        self.dtype = params[0].dtype if params else torch.float64
        self.device = params[0].device if params else torch.device("cpu")

    @property
    def expressions(self) -> dict[str, str]:
        """py-pde's description of the right-hand side (shown by ``print(eq)``)."""
        return {"x": "surrogate(x)" if self.adapter is None else "J_D f(E(x))"}

    def evolution_rate(self, state, t: float = 0):
        """``dx/dt`` of the surrogate at ``state``, as a field of ``state``'s kind."""
        data = np.asarray(state.data)
        x = torch.from_numpy(data.reshape(-1).copy()).to(dtype=self.dtype, device=self.device)
        with torch.no_grad():
            rate = self.torch_field(x.new_tensor(float(t)), x)
        out = state.copy()
        out.data[...] = rate.detach().cpu().double().numpy().reshape(data.shape)
        return out
