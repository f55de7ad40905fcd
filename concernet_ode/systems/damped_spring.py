"""A damped spring: the paper's oscillator losing energy, for the dissipative tools."""

from __future__ import annotations

import math

import torch

from .spring import SpringMass

__all__ = ["DampedSpring"]


class DampedSpring(SpringMass):
    """``qdot = 2 p - 2 gamma q``, ``pdot = -2 q - 2 gamma p``: the spring with uniform damping.

    The energy ``E = q^2 + p^2`` obeys ``dE/dt = -4 gamma E``, so it decays as
    ``E(t) = E(0) exp(-4 gamma t)``: strictly decreasing at every state but the origin, not
    just on average. (Friction on ``p`` alone, ``pdot = -2 q - 2 gamma p``, gives
    ``dE/dt = -4 gamma p^2``, which vanishes whenever ``p = 0``; the uniform form keeps the
    ranking of points along a trajectory strict everywhere and has the closed-form solution
    ``x(t) = exp(-2 gamma t) R(2 t) x0``, with ``R`` the spring's rotation.)

    :meth:`invariants` returns ``E`` as the "true" quantity although it is **not** conserved:
    it is what :func:`~concernet_ode.fit_invariants` with a ranking loss should recover, and
    the natural ``V`` of a :class:`~concernet_ode.DissipativeVectorField` (with
    ``alpha <= 4 gamma``, the true field already satisfies ``dV/dt <= -alpha V``).

    Initial states and protocol constants are the spring's (50 training trajectories on
    ``[0, 3]`` at 30 points); evaluation runs on ``[0, 10]``, by which time the default
    damping has removed 87% of the energy.

    Args:
        gamma: damping rate, ``> 0``.

    Raises:
        ValueError: ``gamma`` is not a positive finite number.

    Shapes:
        states ``(..., 2)`` ordered ``(q, p)``; invariants ``(..., 1)``.
    """

    name = "damped_spring"
    invariant_names = ("q^2 + p^2 (decaying)",)
    eval_t_end = 10.0

    def __init__(self, gamma: float = 0.05) -> None:
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (
                0 < gamma < math.inf):
            msg = f"`gamma` must be a positive finite number, got {gamma!r}"
            raise ValueError(msg)
        self.gamma = float(gamma)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(gamma={self.gamma})"

    def _field(self, x: torch.Tensor) -> torch.Tensor:
        return super()._field(x) - 2 * self.gamma * x

    def solve(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact solution: the spring's rotation scaled by ``exp(-2 gamma t)``.

        Shapes:
            x0: ``(N, 2)``; t: ``(T,)``; returns ``(N, T, 2)``.
        """
        rotated = super().solve(x0, t)
        decay = torch.exp(-2 * self.gamma * t.double()).unsqueeze(-1)
        return (rotated.double() * decay).to(rotated.dtype)
