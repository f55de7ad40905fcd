"""Latent dynamics through an autoencoder: states by the encoder, rates by its Jacobian.

For a PDE discretised on many nodes the paper learns the dynamics and the invariant in the
latent space of an autoencoder: ``z = E(x)`` (eq. (9)) and ``zdot = J_E(x) xdot`` (eq. (10)).
:class:`LatentAdapter` computes ``zdot`` as one forward-mode Jacobian-vector product, so a
batch costs a small constant times one encoder pass, whatever the latent size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import jvp
from torchdiffeq import odeint

from ._jacobian import check_callable, check_state, field_arity
from .data import TrajectoryData

__all__ = ["LatentAdapter"]


class LatentAdapter(nn.Module):
    """Map states and their time derivatives into an autoencoder's latent space and back.

    Args:
        autoencoder: a module with ``encode(x)`` and ``decode(z)`` (e.g. an ``Autoencoder``);
            its parameters are registered here, so they train through the adapter.

    Raises:
        TypeError: ``autoencoder`` is not an ``nn.Module`` with ``encode`` and ``decode``.

    Shapes:
        x, xdot: ``(..., n)``; z, zdot: ``(..., k)``.

    Example:
        >>> from concernet_ode import Autoencoder, LatentAdapter
        >>> adapter = LatentAdapter(Autoencoder(101, 9))
        >>> x, xdot = torch.randn(4, 7, 101), torch.randn(4, 7, 101)
        >>> z, zdot = adapter.encode_with_rate(x, xdot)
        >>> zdot.shape
        torch.Size([4, 7, 9])
    """

    def __init__(self, autoencoder: nn.Module) -> None:
        super().__init__()
        if not isinstance(autoencoder, nn.Module) or not all(
                callable(getattr(autoencoder, name, None)) for name in ("encode", "decode")):
            msg = ("`autoencoder` must be an nn.Module with `encode` and `decode` methods, "
                   f"got {type(autoencoder).__name__}")
            raise TypeError(msg)
        self.autoencoder = autoencoder

    def _check_input(self, x: object, name: str) -> torch.Tensor:
        x = check_state(x, name)
        expected = getattr(self.autoencoder, "input_dim", None)
        if expected is not None and x.shape[-1] != expected:
            msg = f"`{name}` must have shape (..., {expected}), got {tuple(x.shape)}"
            raise ValueError(msg)
        return x

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent state ``z = E(x)`` (eq. (9)).

        Shapes:
            x: ``(..., n)``; returns ``(..., k)``.
        """
        return self.autoencoder.encode(self._check_input(x, "x"))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstructed state ``D(z)``.

        Shapes:
            z: ``(..., k)``; returns ``(..., n)``.
        """
        z = check_state(z, "z")
        expected = getattr(self.autoencoder, "latent_dim", None)
        if expected is not None and z.shape[-1] != expected:
            msg = f"`z` must have shape (..., {expected}), got {tuple(z.shape)}"
            raise ValueError(msg)
        return self.autoencoder.decode(z)

    def encode_with_rate(self, x: torch.Tensor, xdot: torch.Tensor,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent state and rate, ``z = E(x)`` and ``zdot = J_E(x) xdot`` (eqs. (9)-(10)).

        ``zdot`` is one forward-mode Jacobian-vector product (``torch.func.jvp``) evaluated
        with ``z`` in the same pass: no Jacobian is formed and nothing loops over latent
        dimensions. Both outputs keep the graph to the encoder's parameters when gradients
        are enabled.

        Args:
            x: states.
            xdot: their time derivatives.

        Returns:
            ``(z, zdot)``, dtype and device of ``x``.

        Raises:
            TypeError: ``x`` or ``xdot`` is not a tensor, or their dtypes or devices differ.
            ValueError: ``xdot``'s shape differs from ``x``'s, or the state size is wrong.

        Shapes:
            x, xdot: ``(..., n)``; z, zdot: ``(..., k)``.
        """
        x = self._check_input(x, "x")
        xdot = check_state(xdot, "xdot")
        if xdot.shape != x.shape:
            msg = (f"`xdot` must have the shape of `x`, {tuple(x.shape)}; "
                   f"got {tuple(xdot.shape)}")
            raise ValueError(msg)
        if xdot.dtype != x.dtype or xdot.device != x.device:
            msg = (f"`xdot` must have the dtype and device of `x`, {x.dtype} on {x.device}; "
                   f"got {xdot.dtype} on {xdot.device}")
            raise TypeError(msg)
        return jvp(self.autoencoder.encode, (x,), (xdot,))

    def to_latent(self, data: TrajectoryData) -> TrajectoryData:
        """Encode trajectory data: ``x -> z`` and ``dxdt -> J_E(x) dxdt`` (where present).

        The result is detached (training data for latent invariants and dynamics).

        Raises:
            TypeError: ``data`` is not a ``TrajectoryData``.

        Shapes:
            data.x, data.dxdt: ``(N, T, n)``; returns ``(N, T, k)``.
        """
        if not isinstance(data, TrajectoryData):
            msg = f"`data` must be a TrajectoryData, got {type(data).__name__}"
            raise TypeError(msg)
        with torch.no_grad():
            if data.dxdt is None:  # states only: the latent data have no rates either
                return TrajectoryData(data.t, self.encode(data.x))
            z, zdot = self.encode_with_rate(data.x, data.dxdt)
        return TrajectoryData(data.t, z, zdot)

    def integrate(self, field: Callable, x0: torch.Tensor, t: torch.Tensor, *,
                  odeint_fn: Callable = odeint, **odeint_kwargs: object) -> torch.Tensor:
        """Run a latent vector field from full-space states and decode the trajectory.

        Encodes ``x0``, integrates ``field`` in the latent space with ``odeint_fn`` and
        decodes every output state. ``field`` may be a plain network or a
        :class:`~concernet_ode.ProjectedVectorField` on a latent invariant; to also project
        back onto the latent level set after each step, pass
        ``odeint_fn=odeint_projected`` and its ``H=...`` in ``odeint_kwargs``.

        Args:
            field: latent vector field, ``field(t, z)`` or ``field(z)``.
            x0: full-space initial states.
            t: output times.
            odeint_fn: the integrator, called as ``odeint_fn(field, z0, t, **odeint_kwargs)``
                (default ``torchdiffeq.odeint``).
            **odeint_kwargs: passed to ``odeint_fn`` (``method``, ``rtol``, ``H``, ...).

        Returns:
            Decoded states at ``t``.

        Raises:
            TypeError: ``field`` or ``odeint_fn`` is not callable, ``x0`` not a tensor.
            ValueError: ``x0`` has the wrong state size.

        Shapes:
            x0: ``(..., n)``; t: ``(T,)``; returns ``(T, ..., n)`` (torchdiffeq's layout).
        """
        check_callable(field, "field")
        check_callable(odeint_fn, "odeint_fn")
        func = field
        if field_arity(field) == 1:
            def func(_t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
                return field(z)
        z = odeint_fn(func, self.encode(x0), t, **odeint_kwargs)
        return self.decode(z)
