"""Common interface of the benchmark systems: dynamics, true invariants, protocol, data."""

from __future__ import annotations

import math
import sys
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torchdiffeq import odeint
from tqdm.auto import tqdm

from .._checks import (
    check_memory,
    check_state_size,
    count,
    finite_number,
    finite_states,
    seed_generator,
)
from ..data import TrajectoryData

__all__ = ["ConservativeSystem"]

# Requests of more trajectories than this are solved in chunks of this many, with a progress
# bar: the solver's temporaries then scale with one chunk, not with the request. Smaller
# requests are solved in one call, as they always were (an adaptive solve of a batch steps
# all of its trajectories together, so chunking changes the last digits).
CHUNK = 4096


class ConservativeSystem(ABC):
    """A benchmark system with known conserved quantities and the paper's protocol.

    Subclasses set the class constants and implement :meth:`_field`, :meth:`_invariants` and
    :meth:`_sample`; they may override :meth:`solve` with an exact solution.

    Protocol constants (the paper's Table 1 setup, see ``design.md``):
        ``train_traj`` trajectories (half held out) on ``[0, train_t_end]`` at
        ``train_n_times`` points, with Gaussian noise ``noise`` on states and derivatives;
        ``eval_traj`` trajectories on ``[0, eval_t_end]`` at ``eval_n_times`` points.
    """

    name: ClassVar[str]
    state_names: ClassVar[tuple[str, ...]]
    invariant_names: ClassVar[tuple[str, ...]]
    train_traj: ClassVar[int]
    train_t_end: ClassVar[float]
    train_n_times: ClassVar[int]
    eval_traj: ClassVar[int] = 10
    eval_t_end: ClassVar[float]
    eval_n_times: ClassVar[int] = 1001
    noise: ClassVar[float] = 0.01
    test_fraction: ClassVar[float] = 0.5
    # Accuracy of the reference solutions (the authors used rtol 1e-10 with atol 1e-6).
    rtol: ClassVar[float] = 1e-11
    atol: ClassVar[float] = 1e-12

    @property
    def state_dim(self) -> int:
        """Dimension ``n`` of the state."""
        return len(self.state_names)

    @property
    def n_invariants(self) -> int:
        """Number ``m`` of true conserved quantities."""
        return len(self.invariant_names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @abstractmethod
    def _field(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _invariants(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _sample(self, n: int, gen: torch.Generator, evaluation: bool) -> torch.Tensor: ...

    def vector_field(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        """The true right-hand side ``dx/dt = f(x)`` (autonomous; ``t`` is ignored).

        Shapes:
            x: ``(..., n)``; returns ``(..., n)`` in ``x``'s dtype and device.
        """
        return self._field(check_state_size(x, self.state_dim))

    def invariants(self, x: torch.Tensor) -> torch.Tensor:
        """The true conserved quantities, in the order of ``invariant_names``.

        Shapes:
            x: ``(..., n)``; returns ``(..., m)``.
        """
        return self._invariants(check_state_size(x, self.state_dim))

    def sample_initial(self, n: int, *, seed: int | torch.Generator,
                       evaluation: bool = False, dtype: torch.dtype = torch.float64,
                       ) -> torch.Tensor:
        """Draw ``n`` initial states from the protocol's distribution.

        Args:
            n: number of states.
            seed: an int or a ``torch.Generator`` (advanced in place).
            evaluation: draw from the evaluation distribution (differs from the training one
                only where the protocol says so, e.g. chemical kinetics).
            dtype: floating dtype of the result.

        Returns:
            Initial states on the CPU.

        Raises:
            ValueError: ``n`` is not a positive int.
            TypeError: ``seed`` is neither an int nor a Generator.

        Shapes:
            returns ``(n, state_dim)``.
        """
        n = count(n, "n")
        return self._sample(n, seed_generator(seed), bool(evaluation)).to(dtype)

    def _check_x0(self, x0: object) -> torch.Tensor:
        x0 = check_state_size(x0, self.state_dim, "x0")
        if x0.dim() != 2:
            msg = f"`x0` must have shape (N, {self.state_dim}), got {tuple(x0.shape)}"
            raise ValueError(msg)
        return finite_states(x0, "x0")

    def _require_memory(self, n_traj: int, n_times: int, noise: float,
                        dtype: torch.dtype) -> None:
        """Raise a ``MemoryError`` before any work if a data request cannot fit in memory.

        The estimate of the peak, in units of one float64 array of all states: the states
        and their derivatives (2), plus the larger of the noise drawn for both (2, with
        ``noise > 0``) and their copies cast to ``dtype`` (2 itemsize / 8, unless float64),
        plus the solver's temporaries on one chunk of at most :data:`CHUNK` trajectories (2).
        """
        per_traj = n_times * self.state_dim * 8
        cast = 0.0 if dtype == torch.float64 else torch.empty((), dtype=dtype).element_size() / 4
        copies = 2 + max(2.0 if noise > 0 else 0.0, cast)
        needed = per_traj * (copies * n_traj + 2 * min(n_traj, CHUNK))
        check_memory(int(needed),
                     f"`n_traj` = {n_traj} trajectories of `n_times` = {n_times} states of "
                     f"dimension {self.state_dim}",
                     "ask for fewer trajectories or times, or generate the data in parts "
                     "(one seed each) and save each part")

    def _solve_with_rates(self, x0: torch.Tensor, t: torch.Tensor,
                          progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``solve(x0, t)`` and the field there, in chunks of :data:`CHUNK` trajectories."""
        n = x0.shape[0]
        if n <= CHUNK:
            x = self.solve(x0, t)
            return x, self.vector_field(t, x)
        x = x0.new_empty((n, t.numel(), self.state_dim))
        dxdt = torch.empty_like(x)
        show = bool(progress) and sys.stderr.isatty()
        with tqdm(total=n, desc=f"{self.name} trajectories", unit="traj", disable=not show,
                  leave=False) as bar:
            for part in torch.arange(n).split(CHUNK):
                sl = slice(int(part[0]), int(part[-1]) + 1)
                x[sl] = self.solve(x0[sl], t)
                dxdt[sl] = self.vector_field(t, x[sl])
                bar.update(len(part))
        return x, dxdt

    def solve(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Accurate solutions from ``x0`` at times ``t``, all trajectories in one solve.

        The default integrates in float64 with an 8th-order Dormand-Prince method at
        ``rtol``/``atol`` and casts back to ``x0``'s dtype.

        Shapes:
            x0: ``(N, n)``; t: ``(T,)``; returns ``(N, T, n)``.
        """
        x0 = self._check_x0(x0)
        sol = odeint(self.vector_field, x0.double(), t.double(), method="dopri8",
                     rtol=self.rtol, atol=self.atol)
        return sol.movedim(0, -2).to(x0.dtype)

    def trajectories(self, n_traj: int, *, t_end: float, n_times: int, noise: float = 0.0,
                     seed: int | torch.Generator, evaluation: bool = False,
                     dtype: torch.dtype = torch.float64, progress: bool = True,
                     ) -> TrajectoryData:
        """Generate trajectories with exact derivatives, then optionally add noise.

        Initial states come from :meth:`sample_initial`; ``dxdt`` is the true vector field at
        the clean states; with ``noise > 0``, i.i.d. Gaussian noise of that standard
        deviation is added to both ``x`` and ``dxdt`` (:meth:`TrajectoryData.with_noise`),
        drawn from the same generator after the initial states.

        The memory the request needs is estimated before anything is allocated; a request
        that cannot fit fails at once. More than :data:`CHUNK` trajectories are solved in
        chunks of that many, with a progress bar.

        Args:
            n_traj: number of trajectories ``N``.
            t_end: final time; the grid is ``linspace(0, t_end, n_times)``.
            n_times: number of sample times ``T`` (at least 2).
            noise: standard deviation of the noise.
            seed: an int or a ``torch.Generator``.
            evaluation: draw initial states from the evaluation distribution.
            dtype: dtype of the returned tensors (generation is always in float64).
            progress: show a progress bar for large requests (only when stderr is a
                terminal).

        Raises:
            ValueError: ``n_traj``, ``t_end``, ``n_times`` or ``noise`` out of range.
            TypeError: ``seed`` is neither an int nor a Generator.
            MemoryError: the request needs more memory than is available (checked first).

        Shapes:
            returns ``t: (T,)``, ``x, dxdt: (N, T, n)``.
        """
        n_traj = count(n_traj, "n_traj")
        n_times = count(n_times, "n_times", 2)
        if not (isinstance(t_end, (int, float)) and 0 < t_end < math.inf):
            msg = f"`t_end` must be a positive finite number, got {t_end!r}"
            raise ValueError(msg)
        noise = finite_number(noise, "noise", 0.0)
        self._require_memory(n_traj, n_times, noise, dtype)
        gen = seed_generator(seed)
        x0 = self.sample_initial(n_traj, seed=gen, evaluation=evaluation)
        t = torch.linspace(0.0, float(t_end), n_times, dtype=torch.float64)
        data = TrajectoryData(t, *self._solve_with_rates(x0, t, progress))
        data = data.with_noise(noise, seed=gen)  # frees the clean arrays before the cast
        return data.to(dtype)

    def train_data(self, seed: int | torch.Generator, *, dtype: torch.dtype = torch.float64,
                   noise: bool = True) -> tuple[TrajectoryData, TrajectoryData]:
        """The protocol's noisy training set, split by trajectory into ``(train, test)``.

        ``noise=False`` returns the same trajectories and the same split without the noise
        (it is still drawn, so that the split that follows it is the same): what the noise
        costs a model, measured on otherwise identical data.
        """
        gen = seed_generator(seed)
        clean = self.trajectories(self.train_traj, t_end=self.train_t_end,
                                  n_times=self.train_n_times, seed=gen)
        noisy = clean.with_noise(self.noise, seed=gen)
        return (noisy if noise else clean).to(dtype).split(self.test_fraction, seed=gen)

    def eval_grid(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The evaluation time grid, ``(eval_n_times,)``."""
        return torch.linspace(0.0, float(self.eval_t_end), self.eval_n_times, dtype=dtype)
