"""The paper's spring-mass system: a harmonic oscillator with energy ``q^2 + p^2``."""

from __future__ import annotations

import math

import torch

from .base import ConservativeSystem

__all__ = ["SpringMass"]


class SpringMass(ConservativeSystem):
    """``qdot = 2 p``, ``pdot = -2 q``; the invariant is ``H = q^2 + p^2``.

    Initial states: a uniformly random direction at radius ``U(0.3, 1.2)``. Training: 50
    trajectories on ``[0, 3]`` at 30 points; evaluation: 10 on ``[0, 50]`` at 1001 points.
    Trajectories are computed exactly (a rotation at angular speed 2).

    Shapes:
        states ``(..., 2)`` ordered ``(q, p)``; invariants ``(..., 1)``.
    """

    name = "spring"
    state_names = ("q", "p")
    invariant_names = ("q^2 + p^2",)
    train_traj, train_t_end, train_n_times = 50, 3.0, 30
    eval_t_end = 50.0
    radius = (0.3, 1.2)

    def _field(self, x: torch.Tensor) -> torch.Tensor:
        q, p = x.unbind(-1)
        return torch.stack([2 * p, -2 * q], dim=-1)

    def _invariants(self, x: torch.Tensor) -> torch.Tensor:
        return x.pow(2).sum(-1, keepdim=True)

    def _sample(self, n: int, gen: torch.Generator, evaluation: bool) -> torch.Tensor:
        lo, hi = self.radius
        u = torch.rand(n, 2, generator=gen, dtype=torch.float64)
        r = lo + (hi - lo) * u[..., 0]
        angle = 2 * math.pi * u[..., 1]
        return torch.stack([r * angle.cos(), r * angle.sin()], dim=-1)

    def solve(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact solution: ``q = q0 cos 2t + p0 sin 2t``, ``p = p0 cos 2t - q0 sin 2t``.

        Shapes:
            x0: ``(N, 2)``; t: ``(T,)``; returns ``(N, T, 2)``.
        """
        x0 = self._check_x0(x0)
        c, s = (2 * t.double()).cos(), (2 * t.double()).sin()
        q0, p0 = x0.double().unsqueeze(-2).unbind(-1)
        out = torch.stack([q0 * c + p0 * s, p0 * c - q0 * s], dim=-1)
        return out.to(x0.dtype)
