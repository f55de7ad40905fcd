"""The paper's two-body (Kepler) problem, conserving energy and angular momentum."""

from __future__ import annotations

import math

import torch

from .base import ConservativeSystem

__all__ = ["Kepler"]


class Kepler(ConservativeSystem):
    """Inverse-square attraction with ``k = m = 1``: ``r'' = -r / |r|^3``.

    Invariants: energy ``E = |v|^2 / 2 - 1 / |r|`` and angular momentum ``L = x vy - y vx``.
    Initial states: radius ``U(0.1, 1)`` at a uniformly random angle, with a counter-clockwise
    tangential velocity of speed ``sqrt(U(1, 1.3) / r)`` (bound orbits of eccentricity up to
    0.3 starting at the pericentre). Training: 100 trajectories on ``[0, 10]`` at 100 points;
    evaluation: 10 on ``[0, 5]`` at 1001 points. Reference solutions are computed with an
    8th-order adaptive method in float64 (all trajectories in one solve).

    Shapes:
        states ``(..., 4)`` ordered ``(x, y, vx, vy)``; invariants ``(..., 2)``.
    """

    name = "kepler"
    state_names = ("x", "y", "vx", "vy")
    invariant_names = ("E", "L")
    train_traj, train_t_end, train_n_times = 100, 10.0, 100
    eval_t_end = 5.0
    radius = (0.1, 1.0)
    speed_factor = (1.0, 1.3)

    def _field(self, x: torch.Tensor) -> torch.Tensor:
        pos, vel = x.split(2, dim=-1)
        r3 = pos.pow(2).sum(-1, keepdim=True).pow(1.5)
        return torch.cat([vel, -pos / r3], dim=-1)

    def _invariants(self, x: torch.Tensor) -> torch.Tensor:
        px, py, vx, vy = x.unbind(-1)
        energy = 0.5 * (vx.pow(2) + vy.pow(2)) - (px.pow(2) + py.pow(2)).rsqrt()
        return torch.stack([energy, px * vy - py * vx], dim=-1)

    def _sample(self, n: int, gen: torch.Generator, evaluation: bool) -> torch.Tensor:
        u = torch.rand(n, 3, generator=gen, dtype=torch.float64)
        (r_lo, r_hi), (s_lo, s_hi) = self.radius, self.speed_factor
        r = r_lo + (r_hi - r_lo) * u[..., 0]
        speed = ((s_lo + (s_hi - s_lo) * u[..., 1]) / r).sqrt()
        angle = 2 * math.pi * u[..., 2]
        c, s = angle.cos(), angle.sin()
        return torch.stack([r * c, r * s, -speed * s, speed * c], dim=-1)

    def solve(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact solution of bound orbits by Lagrange's f and g functions.

        Kepler's equation in eccentric-anomaly differences,
        ``n t = dE - (1 - r0/a) sin dE + (r0.v0 / sqrt(a)) (1 - cos dE)``, is solved by
        Newton's method (its derivative ``r / a`` is positive) to machine precision; then
        ``x = f x0 + g v0``, ``v = f' x0 + g' v0``. Unbound orbits (``E >= 0``) fall back to
        the numerical solver of the base class.

        Shapes:
            x0: ``(N, 4)``; t: ``(T,)``; returns ``(N, T, 4)``.
        """
        x0 = self._check_x0(x0)
        state = x0.double()
        energy = self._invariants(state)[..., 0]
        if not bool((energy < 0).all()):
            return super().solve(x0, t)
        pos, vel = state.unsqueeze(-2).split(2, dim=-1)  # (N, 1, 2)
        r0 = pos.norm(dim=-1, keepdim=True)
        sigma = (pos * vel).sum(-1, keepdim=True)
        a = -0.5 / energy[:, None, None]
        sqrt_a = a.sqrt()
        mean = t.double()[:, None] / (a * sqrt_a)  # n t, (N, T, 1)
        dE = mean.clone()
        for _ in range(50):
            s, c = dE.sin(), dE.cos()
            resid = dE - (1 - r0 / a) * s + sigma / sqrt_a * (1 - c) - mean
            dE = dE - resid / (1 - (1 - r0 / a) * c + sigma / sqrt_a * s)
            if float(resid.abs().max()) < 1e-15 * (1 + float(mean.abs().max())):
                break
        s, c = dE.sin(), dE.cos()
        r = a + (r0 - a) * c + sigma * sqrt_a * s
        f = 1 - a / r0 * (1 - c)
        g = t.double()[:, None] + a * sqrt_a * (s - dE)
        fdot = -sqrt_a * s / (r * r0)
        gdot = 1 - a / r * (1 - c)
        out = torch.cat([f * pos + g * vel, fdot * pos + gdot * vel], dim=-1)
        return out.to(x0.dtype)
