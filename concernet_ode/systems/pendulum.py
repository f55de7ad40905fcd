"""A pendulum with a scalable potential: a nonlinear system outside the paper's four."""

from __future__ import annotations

import math

import torch
from torchdiffeq import odeint

from .._checks import positive_number
from .base import ConservativeSystem

__all__ = ["Pendulum"]


class Pendulum(ConservativeSystem):
    """``qdot = p``, ``pdot = -k sin q``; the energy ``H = p^2 / 2 + k (1 - cos q)`` is conserved.

    Initial states: an angle ``U(-2, 2)`` rad and a momentum ``U(-1, 1) sqrt(k)`` (so that the
    energy range scales with the potential), which keeps most trajectories below the
    separatrix (librations). Training: 60 trajectories on ``[0, 5]`` at 50 points with noise
    0.01; evaluation: 10 on ``[0, 20]`` at 1001 points.

    Args:
        k: the potential's scale ``g / l`` (the frequency of small oscillations squared).

    Raises:
        ValueError: ``k`` is not a positive finite number.

    Shapes:
        states ``(..., 2)`` ordered ``(q, p)``; invariants ``(..., 1)``.
    """

    name = "pendulum"
    state_names = ("q", "p")
    invariant_names = ("energy",)
    train_traj, train_t_end, train_n_times = 60, 5.0, 50
    eval_t_end = 20.0
    angle = 2.0

    def __init__(self, k: float = 1.0) -> None:
        self.k = positive_number(k, "k")

    def __repr__(self) -> str:
        return f"Pendulum(k={self.k:g})"

    def _field(self, x: torch.Tensor) -> torch.Tensor:
        q, p = x.unbind(-1)
        return torch.stack([p, -self.k * q.sin()], dim=-1)

    def _invariants(self, x: torch.Tensor) -> torch.Tensor:
        q, p = x.unbind(-1)
        return (p.square() / 2 + self.k * (1 - q.cos())).unsqueeze(-1)

    def _sample(self, n: int, gen: torch.Generator, evaluation: bool) -> torch.Tensor:
        u = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1
        return torch.stack([self.angle * u[:, 0], math.sqrt(self.k) * u[:, 1]], dim=-1)

    def solve(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Accurate solutions from ``x0`` at times ``t``, all trajectories in one solve.

        Dormand-Prince 5(4) in float64 at ``rtol``/``atol``: here torchdiffeq's 8th-order
        method, the systems' default, lost the energy to 1e-7 at the same tolerances, where
        this one keeps it to 1e-10.

        Shapes:
            x0: ``(N, 2)``; t: ``(T,)``; returns ``(N, T, 2)``.
        """
        x0 = self._check_x0(x0)
        sol = odeint(self.vector_field, x0.double(), t.double(), method="dopri5",
                     rtol=self.rtol, atol=self.atol)
        return sol.movedim(0, -2).to(x0.dtype)
