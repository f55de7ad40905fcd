"""Trajectory data: a validated container shared by every system, trainer and metric."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import seed_generator

__all__ = ["TrajectoryData"]


@dataclass(frozen=True)
class TrajectoryData:
    """Trajectories sampled on one time grid shared by all of them.

    Args:
        t: sample times, strictly increasing.
        x: states.
        dxdt: time derivatives of the states (the training targets of a vector field).

    Shapes:
        t: ``(T,)``; x: ``(N, T, n)``; dxdt: ``(N, T, n)``.

    Raises:
        TypeError: a field is not a tensor.
        ValueError: shapes disagree, ``t`` is not increasing, or a value is not finite.
    """

    t: torch.Tensor
    x: torch.Tensor
    dxdt: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("t", "x", "dxdt"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                msg = f"`{name}` must be a torch.Tensor, got {type(value).__name__}"
                raise TypeError(msg)
            if not bool(torch.isfinite(value).all()):
                msg = f"`{name}` contains NaN or infinite values"
                raise ValueError(msg)
        if self.x.dim() != 3:
            msg = f"`x` must have shape (N, T, n), got {tuple(self.x.shape)}"
            raise ValueError(msg)
        if self.dxdt.shape != self.x.shape:
            msg = (f"`dxdt` must have the shape of `x`, {tuple(self.x.shape)}; "
                   f"got {tuple(self.dxdt.shape)}")
            raise ValueError(msg)
        if self.t.shape != (self.x.shape[1],):
            msg = (f"`t` must have shape (T,) = ({self.x.shape[1]},) to match `x`; "
                   f"got {tuple(self.t.shape)}")
            raise ValueError(msg)
        if self.t.numel() > 1 and not bool((self.t.diff() > 0).all()):
            msg = "`t` must be strictly increasing"
            raise ValueError(msg)

    @property
    def n_traj(self) -> int:
        """Number of trajectories ``N``."""
        return self.x.shape[0]

    @property
    def n_times(self) -> int:
        """Number of sample times ``T``."""
        return self.x.shape[1]

    @property
    def state_dim(self) -> int:
        """State dimension ``n``."""
        return self.x.shape[2]

    def __len__(self) -> int:
        return self.n_traj

    def __getitem__(self, index: int | slice | torch.Tensor) -> TrajectoryData:
        """Select trajectories (never times): ``data[:10]``, ``data[idx]``."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return TrajectoryData(self.t, self.x[index], self.dxdt[index])

    def points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples as a flat set of points, ``(N * T, n)`` states and derivatives."""
        n = self.state_dim
        return self.x.reshape(-1, n), self.dxdt.reshape(-1, n)

    def to(self, *args, **kwargs) -> TrajectoryData:
        """Move or cast all tensors, as :meth:`torch.Tensor.to`."""
        return TrajectoryData(self.t.to(*args, **kwargs), self.x.to(*args, **kwargs),
                              self.dxdt.to(*args, **kwargs))

    def split(self, test_fraction: float = 0.5, *, seed: int | torch.Generator = 0,
              ) -> tuple[TrajectoryData, TrajectoryData]:
        """Split by trajectory into ``(train, test)`` with a seeded random permutation.

        Raises:
            ValueError: ``test_fraction`` leaves either part empty.
        """
        n_test = round(self.n_traj * test_fraction)
        if not 0 < n_test < self.n_traj:
            msg = (f"`test_fraction` = {test_fraction} leaves an empty part for "
                   f"{self.n_traj} trajectories; expected a value giving 1..N-1 test ones")
            raise ValueError(msg)
        gen = seed_generator(seed)
        perm = torch.randperm(self.n_traj, generator=gen).to(self.x.device)
        return self[perm[n_test:]], self[perm[:n_test]]

    def with_noise(self, std: float, *, seed: int | torch.Generator = 0) -> TrajectoryData:
        """A copy with i.i.d. Gaussian noise of standard deviation ``std`` on ``x`` and ``dxdt``.

        Raises:
            ValueError: ``std`` is negative or not finite.
        """
        if not (isinstance(std, (int, float)) and 0 <= std < float("inf")):
            msg = f"`std` must be a finite number >= 0, got {std!r}"
            raise ValueError(msg)
        if std == 0:
            return self
        gen = seed_generator(seed)
        noise = torch.randn((2, *self.x.shape), generator=gen, dtype=self.x.dtype)
        noise = noise.to(self.x.device)
        return TrajectoryData(self.t, self.x + std * noise[0], self.dxdt + std * noise[1])
