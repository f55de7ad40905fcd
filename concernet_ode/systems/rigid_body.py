"""A free rigid body (Euler's equations): two conserved quantities in three dimensions."""

from __future__ import annotations

import torch
from torchdiffeq import odeint

from .._checks import positive_number
from .base import ConservativeSystem

__all__ = ["RigidBody"]


class RigidBody(ConservativeSystem):
    """``mdot = m x (m / I)``: the body-frame angular momentum ``m`` of a torque-free body.

    Two independent invariants: the squared length ``|m|^2`` (a Casimir) and the kinetic
    energy ``sum m_i^2 / (2 I_i)``. Each orbit is a curve where a sphere meets an ellipsoid;
    rotations about the middle axis are unstable, so orbits near its separatrix are slow
    near the saddle and fast elsewhere. With ``m = 2 = n - 1`` invariants, the count is that
    of any 3-d flow along short pieces; the test is whether both are learned.

    Initial states: a uniformly random direction at radius ``U(0.5, 1.5)``. Training: 60
    trajectories on ``[0, 5]`` at 50 points with noise 0.01; evaluation: 10 on ``[0, 20]`` at
    1001 points.

    Args:
        inertia: the three principal moments of inertia (default ``(1, 2, 3)``).

    Raises:
        ValueError: a moment is not a positive finite number, or not three of them.

    Shapes:
        states ``(..., 3)``; invariants ``(..., 2)`` ordered ``(|m|^2, energy)``.
    """

    name = "rigid_body"
    state_names = ("m1", "m2", "m3")
    invariant_names = ("|m|^2", "energy")
    train_traj, train_t_end, train_n_times = 60, 5.0, 50
    eval_t_end = 20.0
    radius = (0.5, 1.5)

    def __init__(self, inertia: tuple[float, float, float] = (1.0, 2.0, 3.0)) -> None:
        if not isinstance(inertia, (tuple, list)) or len(inertia) != 3:
            msg = f"`inertia` must be three positive numbers, got {inertia!r}"
            raise ValueError(msg)
        self.inertia = tuple(positive_number(v, "inertia") for v in inertia)

    def __repr__(self) -> str:
        return f"RigidBody(inertia={self.inertia})"

    def _field(self, x: torch.Tensor) -> torch.Tensor:
        omega = x / x.new_tensor(self.inertia)
        return torch.linalg.cross(x, omega, dim=-1)

    def _invariants(self, x: torch.Tensor) -> torch.Tensor:
        sq = x.square()
        return torch.stack([sq.sum(-1), (sq / sq.new_tensor(self.inertia)).sum(-1) / 2], dim=-1)

    def _sample(self, n: int, gen: torch.Generator, evaluation: bool) -> torch.Tensor:
        direction = torch.randn(n, 3, generator=gen, dtype=torch.float64)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        lo, hi = self.radius
        r = lo + (hi - lo) * torch.rand(n, 1, generator=gen, dtype=torch.float64)
        return direction * r

    def solve(self, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Accurate solutions from ``x0`` at times ``t``, all trajectories in one solve.

        Dormand-Prince 5(4) in float64 at ``rtol``/``atol``, as for the pendulum: torchdiffeq's
        8th-order method, the systems' default, loses the invariants to 1e-7 between its
        steps (its dense output is of lower order); this one keeps them to 1e-10.

        Shapes:
            x0: ``(N, 3)``; t: ``(T,)``; returns ``(N, T, 3)``.
        """
        x0 = self._check_x0(x0)
        sol = odeint(self.vector_field, x0.double(), t.double(), method="dopri5",
                     rtol=self.rtol, atol=self.atol)
        return sol.movedim(0, -2).to(x0.dtype)
