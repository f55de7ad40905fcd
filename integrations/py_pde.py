"""The 1-D heat equation with insulated ends, solved by py-pde (the paper's fourth system).

``HeatEquation1D`` is a :class:`concernet_ode.systems.ConservativeSystem` like the other
benchmark systems (``vector_field``, ``invariants``, ``sample_initial``, ``solve``,
``trajectories``, ``train_data``, ``eval_grid``, ``state_dim``, ``n_invariants`` and the
protocol constants), but its data come from py-pde: a
:class:`pde.CartesianGrid`, a :class:`pde.DiffusionPDE` with zero-flux (Neumann) boundaries,
py-pde's adaptive Runge-Kutta solver with a :class:`pde.MemoryStorage` tracker, and ``dxdt``
from py-pde's own ``evolution_rate``.

Grid: py-pde discretises ``[a, b]`` into ``n_nodes`` *cells* of width ``(b - a) / n_nodes``
(10/101 for the defaults) with values at the cell centres and zero-flux boundaries by mirrored
ghost cells. The ConCerNet authors use 101 *nodes* at spacing 0.1 with mirrored ghost nodes:
the same physics and the same three-point stencil, with a spacing 1% smaller (cell
centres from -4.95 to 4.95 rather than nodes from -5 to 5). The total heat is the
grid integral ``dx * sum(u)`` (:meth:`HeatEquation1D.invariants`); the paper's violation metric
uses the plain nodal sum ``sum(u)`` (:meth:`HeatEquation1D.nodal_sum`), larger by ``1 / dx``.

Only this module imports py-pde; the library core never does (the Table 1 application,
:mod:`concernet_ode.reproduce`, reaches py-pde through this module).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pde
import torch
from pde.solvers import Controller, RungeKuttaSolver
from tqdm.auto import tqdm

from concernet_ode._checks import (
    check_memory,
    count,
    finite_number,
    positive_number,
    seed_generator,
)
from concernet_ode.data import TrajectoryData
from concernet_ode.systems import ConservativeSystem

__all__ = ["HeatEquation1D"]


class _ReusedStepperSolver(RungeKuttaSolver):
    """py-pde's adaptive Runge-Kutta-Fehlberg solver that compiles its stepper only once.

    py-pde compiles a new numba stepper for every ``solve`` (seconds each), while stepping
    one heat trajectory takes milliseconds. Every trajectory lives on the same grid with the
    same dtype, so the compiled stepper is built on the first call and reused; each later run
    starts again from the initial step ``dt`` so trajectories do not depend on their order.
    """

    name = ""  # registered under its class name only; py-pde's "runge-kutta" stays intact

    def __init__(self, equation: pde.DiffusionPDE, tolerance: float) -> None:
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


@lru_cache(maxsize=8)
def _py_pde_setup(n_nodes: int, domain: tuple[float, float], diffusivity: float,
                  tolerance: float) -> tuple[pde.CartesianGrid, pde.DiffusionPDE,
                                             _ReusedStepperSolver]:
    """Grid, equation and solver, shared by equal systems so numba compiles once a process."""
    grid = pde.CartesianGrid([domain], [n_nodes])
    # a parsed boundary object (not the dict) halves the cost of each `evolution_rate` call
    bc = grid.get_boundary_conditions({"derivative": 0})
    equation = pde.DiffusionPDE(diffusivity, bc=bc)
    return grid, equation, _ReusedStepperSolver(equation, tolerance)


class HeatEquation1D(ConservativeSystem):
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
    invariant_names = ("total heat",)
    train_traj, train_t_end, train_n_times = 200, 10.0, 100
    eval_t_end = 1.0
    centre_range = (-1.0, 1.0)
    width_scale = 0.25
    width_range = (0.5, 2.0)

    def __init__(self, n_nodes: int = 101, domain: Sequence[float] = (-5.0, 5.0),
                 diffusivity: float = 1.0, *, tolerance: float = 1e-9) -> None:
        n_nodes = count(n_nodes, "n_nodes", minimum=3)
        if len(domain) != 2 or not all(math.isfinite(v) for v in domain) or (
                domain[0] >= domain[1]):
            msg = f"`domain` must be a finite interval (a, b) with a < b, got {domain!r}"
            raise ValueError(msg)
        self.state_names = tuple(f"u{i}" for i in range(n_nodes))
        self.domain = (float(domain[0]), float(domain[1]))
        self.diffusivity = positive_number(diffusivity, "diffusivity")
        self.tolerance = positive_number(tolerance, "tolerance")
        self.grid, self.equation, self._solver = _py_pde_setup(
            n_nodes, self.domain, self.diffusivity, self.tolerance)
        self.cell_width = (self.domain[1] - self.domain[0]) / n_nodes

    def __repr__(self) -> str:
        return (f"HeatEquation1D(n_nodes={self.state_dim}, domain={self.domain}, "
                f"diffusivity={self.diffusivity})")

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

    def solve(self, x0: torch.Tensor, t: torch.Tensor, *, progress: bool = True,
              ) -> torch.Tensor:
        """Solve with py-pde from each initial state and record the states at ``t``.

        Runs py-pde's adaptive Runge-Kutta-Fehlberg solver (numba, compiled once per
        process) in float64; a :class:`pde.MemoryStorage` tracker stores the states at
        exactly the times ``t``, onto which the solver steps.

        Args:
            x0: initial temperatures.
            t: increasing output times; the first is the initial time.
            progress: show a progress bar (only when stderr is a terminal).

        Returns:
            The states, in ``x0``'s dtype and device.

        Raises:
            ValueError: ``x0`` is not ``(N, n_nodes)``, holds a NaN or infinite temperature,
                or ``t`` is not 1-D increasing.
            MemoryError: the states to record need more memory than is available.

        Shapes:
            x0: ``(N, n_nodes)``; t: ``(T,)``; returns ``(N, T, n_nodes)``.
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
                                    desc="py-pde heat")):
            storage = pde.MemoryStorage()
            controller = Controller(self._solver, t_range=(times[0], times[-1]),
                                    tracker=[storage.tracker(list(times))])
            controller.run(pde.ScalarField(self.grid, u0),
                           dt=min(1e-3, float(np.diff(times).min())))
            out[i] = np.stack([field.data for field in storage])
        return torch.from_numpy(out).to(dtype=x0.dtype, device=x0.device)

    def evolution_rate(self, x: torch.Tensor, *, progress: bool = False) -> torch.Tensor:
        """``du/dt`` from py-pde's own ``DiffusionPDE.evolution_rate``, state by state.

        The reference that :meth:`vector_field` reproduces; slower (a Python loop).

        Args:
            x: temperatures.
            progress: show a progress bar (only when stderr is a terminal).

        Raises:
            ValueError: ``x`` is not a tensor of shape ``(..., n_nodes)``.

        Shapes:
            x: ``(..., n_nodes)``; returns ``(..., n_nodes)`` in ``x``'s dtype and device.
        """
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] != self.state_dim:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            msg = f"`x` must be a tensor of shape (..., {self.state_dim}), got {got}"
            raise ValueError(msg)
        flat = x.detach().reshape(-1, self.state_dim).cpu().double().numpy()
        field = pde.ScalarField(self.grid)
        rates = np.empty_like(flat)
        show = bool(progress) and sys.stderr.isatty()
        for i, u in enumerate(tqdm(flat, disable=not show, desc="py-pde rates", leave=False)):
            field.data[:] = u
            rates[i] = self.equation.evolution_rate(field).data
        return torch.from_numpy(rates).to(x).reshape(x.shape)

    def trajectories(self, n_traj: int, *, t_end: float, n_times: int, noise: float = 0.0,
                     seed: int | torch.Generator, evaluation: bool = False,
                     dtype: torch.dtype = torch.float64, progress: bool = True,
                     ) -> TrajectoryData:
        """Solve random bumps with py-pde; ``dxdt`` from py-pde's ``evolution_rate``.

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
            returns ``t: (T,)``, ``x, dxdt: (N, T, n_nodes)``.
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
