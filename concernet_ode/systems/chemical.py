"""The paper's chemical kinetics: a reversible reaction ``A <-> C`` conserving total mass."""

from __future__ import annotations

import math

import torch

from .base import ConservativeSystem

__all__ = ["ChemicalKinetics"]

_GAS_CONSTANT = 8.31
_TEMPERATURE = 250.0


class ChemicalKinetics(ConservativeSystem):
    """``A' = -k1 A + k2 C``, ``C' = k1 A - k2 C``; the invariant is ``A + C``.

    The rates follow Arrhenius' law at 250 K: ``k1 = 10 exp(-5.74e3 / (8.31 * 250))``,
    ``k2 = 10 exp(-7.47e3 / (8.31 * 250))``.

    Initial states for training: a uniformly random direction in the positive quadrant at
    radius ``U(0.1, 100.1)``, so the total mass ``A + C`` reaches about 141. For evaluation
    the authors' setup starts at total masses up to 200 (an extrapolation test); we read this
    as ``A`` and ``C`` independently ``U(0.1, 100.1)`` (total mass in (0.2, 200.2)), the
    reading that matches the stated range. Training: 100 trajectories on ``[0, 3]`` at 30
    points; evaluation: 10 on ``[0, 10]`` at 1001 points. Trajectories are exact (the system
    is linear: ``A + C`` is constant and ``A`` relaxes to ``k2 (A + C) / (k1 + k2)`` at rate
    ``k1 + k2``).

    Shapes:
        states ``(..., 2)`` ordered ``(A, C)``; invariants ``(..., 1)``.
    """

    name = "chemical"
    state_names = ("A", "C")
    invariant_names = ("A + C",)
    train_traj, train_t_end, train_n_times = 100, 3.0, 30
    eval_t_end = 10.0
    radius = (0.1, 100.1)
    k1 = 10 * math.exp(-5.74e3 / (_GAS_CONSTANT * _TEMPERATURE))
    k2 = 10 * math.exp(-7.47e3 / (_GAS_CONSTANT * _TEMPERATURE))

    def _field(self, x: torch.Tensor) -> torch.Tensor:
        a, c = x.unbind(-1)
        rate = self.k1 * a - self.k2 * c
        return torch.stack([-rate, rate], dim=-1)

    def _invariants(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(-1, keepdim=True)

    def _sample(self, n: int, gen: torch.Generator, evaluation: bool) -> torch.Tensor:
        lo, hi = self.radius
        u = torch.rand(n, 2, generator=gen, dtype=torch.float64)
        if evaluation:
            return lo + (hi - lo) * u
        r = lo + (hi - lo) * u[..., 0]
        angle = 0.5 * math.pi * u[..., 1]
        return torch.stack([r * angle.cos(), r * angle.sin()], dim=-1)

    def solve(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact solution of the linear kinetics.

        Shapes:
            x0: ``(N, 2)``; t: ``(T,)``; returns ``(N, T, 2)``.
        """
        x0 = self._check_x0(x0)
        x0d = x0.double().unsqueeze(-2)
        total = x0d.sum(-1, keepdim=True)
        k = self.k1 + self.k2
        eq = torch.cat([self.k2 * total, self.k1 * total], dim=-1) / k
        decay = torch.exp(-k * t.double()).unsqueeze(-1)
        return (eq + (x0d - eq) * decay).to(x0.dtype)
