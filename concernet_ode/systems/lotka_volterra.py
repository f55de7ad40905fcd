"""Lotka-Volterra predator and prey: one conserved quantity with logarithms in it."""

from __future__ import annotations

import torch
from torchdiffeq import odeint

from .._checks import positive_number
from .base import ConservativeSystem

__all__ = ["LotkaVolterra"]


class LotkaVolterra(ConservativeSystem):
    """``xdot = a x - b x y``, ``ydot = c x y - d y``; ``V = c x - d ln x + b y - a ln y`` is
    conserved.

    A system outside the paper's four whose invariant is not a polynomial: the orbits are
    closed but lopsided (slow near the axes, fast away from them), and the populations stay
    positive. The equilibrium is ``(d / c, a / b)``; small orbits have period
    ``2 pi / sqrt(a d)``.

    Initial states: each population its equilibrium value times ``exp(U(-0.8, 0.8))``.
    Training: 60 trajectories on ``[0, 5]`` at 50 points (most of a small orbit's period
    ``2 pi`` with the default rates) with noise 0.01; evaluation: 10 on ``[0, 20]`` at 1001
    points.

    Args:
        a, b, c, d: the prey's growth, predation, the predator's growth per prey and its
            death rate (defaults 1, 0.5, 0.5, 1: equilibrium ``(2, 2)``).

    Raises:
        ValueError: a rate is not a positive finite number.

    Shapes:
        states ``(..., 2)`` ordered ``(prey, predator)``; invariants ``(..., 1)``.
    """

    name = "lotka_volterra"
    state_names = ("x", "y")
    invariant_names = ("c x - d ln x + b y - a ln y",)
    train_traj, train_t_end, train_n_times = 60, 5.0, 50
    eval_t_end = 20.0
    spread = 0.8

    def __init__(self, a: float = 1.0, b: float = 0.5, c: float = 0.5, d: float = 1.0) -> None:
        self.a, self.b = positive_number(a, "a"), positive_number(b, "b")
        self.c, self.d = positive_number(c, "c"), positive_number(d, "d")

    def __repr__(self) -> str:
        return f"LotkaVolterra(a={self.a:g}, b={self.b:g}, c={self.c:g}, d={self.d:g})"

    @property
    def equilibrium(self) -> tuple[float, float]:
        """The interior rest point ``(d / c, a / b)``."""
        return self.d / self.c, self.a / self.b

    def _field(self, x: torch.Tensor) -> torch.Tensor:
        prey, pred = x.unbind(-1)
        return torch.stack([prey * (self.a - self.b * pred),
                            pred * (self.c * prey - self.d)], dim=-1)

    def _invariants(self, x: torch.Tensor) -> torch.Tensor:
        prey, pred = x.unbind(-1)
        return (self.c * prey - self.d * prey.log() + self.b * pred
                - self.a * pred.log()).unsqueeze(-1)

    def _sample(self, n: int, gen: torch.Generator, evaluation: bool) -> torch.Tensor:
        u = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 2 - 1
        centre = torch.tensor(self.equilibrium, dtype=torch.float64)
        return centre * (self.spread * u).exp()

    def solve(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Accurate solutions from ``x0`` at times ``t``, all trajectories in one solve.

        Dormand-Prince 5(4) in float64 at ``rtol``/``atol``, as for the pendulum: torchdiffeq's
        8th-order method, the systems' default, loses the invariants to 1e-7 between its
        steps (its dense output is of lower order); this one keeps them to 1e-10.

        Shapes:
            x0: ``(N, 2)``; t: ``(T,)``; returns ``(N, T, 2)``.
        """
        x0 = self._check_x0(x0)
        sol = odeint(self.vector_field, x0.double(), t.double(), method="dopri5",
                     rtol=self.rtol, atol=self.atol)
        return sol.movedim(0, -2).to(x0.dtype)
