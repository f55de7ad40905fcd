"""Small networks used throughout: an MLP, an invariant network and two autoencoders."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._checks import positive_int

__all__ = ["MLP", "Autoencoder", "ConvAutoencoder", "InvariantNet"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


def _activation(activation: str | Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    if isinstance(activation, str):
        if activation not in _ACTIVATIONS:
            msg = (f"`activation` must be one of {sorted(_ACTIVATIONS)} or an nn.Module class, "
                   f"got {activation!r}")
            raise ValueError(msg)
        return _ACTIVATIONS[activation]
    if isinstance(activation, type) and issubclass(activation, nn.Module):
        return activation
    msg = f"`activation` must be a name or an nn.Module class, got {activation!r}"
    raise TypeError(msg)


def _stack(sizes: Sequence[int], act: Callable[[], nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class MLP(nn.Module):
    """Fully connected network, usable directly as a torchdiffeq right-hand side.

    Called as ``mlp(x)`` or ``mlp(t, x)`` (``t`` is ignored: the field is autonomous).

    Args:
        in_dim: input size.
        out_dim: output size.
        hidden: width of each hidden layer.
        depth: number of hidden layers (the paper uses 2 of 100).
        activation: ``"tanh"`` (default), ``"relu"``, ... or an ``nn.Module`` class.

    Shapes:
        x: ``(..., in_dim)``; output: ``(..., out_dim)``.
    """

    def __init__(self, in_dim: int, out_dim: int, *, hidden: int = 100, depth: int = 2,
                 activation: str | Callable[[], nn.Module] = "tanh") -> None:
        super().__init__()
        sizes = [positive_int(in_dim, "in_dim"), *[positive_int(hidden, "hidden")]
                 * positive_int(depth, "depth"), positive_int(out_dim, "out_dim")]
        self.net = _stack(sizes, _activation(activation))
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, t_or_x: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        x = t_or_x if x is None else x
        if x.shape[-1] != self.in_dim:
            msg = f"`x` must have last dimension {self.in_dim}, got shape {tuple(x.shape)}"
            raise ValueError(msg)
        return self.net(x)


class InvariantNet(MLP):
    """A learned invariant set ``H_theta: R^n -> R^m`` (an MLP with ``m`` outputs).

    Shapes:
        x: ``(..., state_dim)``; output: ``(..., n_invariants)``.
    """

    def __init__(self, state_dim: int, n_invariants: int = 1, *, hidden: int = 100,
                 depth: int = 2, activation: str | Callable[[], nn.Module] = "tanh") -> None:
        super().__init__(state_dim, n_invariants, hidden=hidden, depth=depth,
                         activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x)


class Autoencoder(nn.Module):
    """Encoder ``input_dim -> hidden... -> latent_dim`` and its mirror image as decoder.

    The paper's heat model is ``Autoencoder(101, 9)`` (101 -> 32 -> 16 -> 9, tanh).

    Shapes:
        encode: ``(..., input_dim) -> (..., latent_dim)``; decode: the reverse.
    """

    def __init__(self, input_dim: int, latent_dim: int = 9, *,
                 hidden: Sequence[int] = (32, 16),
                 activation: str | Callable[[], nn.Module] = "tanh") -> None:
        super().__init__()
        sizes = [positive_int(input_dim, "input_dim"),
                 *(positive_int(h, "hidden") for h in hidden),
                 positive_int(latent_dim, "latent_dim")]
        act = _activation(activation)
        self.encoder = _stack(sizes, act)
        self.decoder = _stack(sizes[::-1], act)
        self.input_dim, self.latent_dim = input_dim, latent_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``decode(encode(x))``."""
        return self.decoder(self.encoder(x))


class ConvAutoencoder(nn.Module):
    """Convolutional autoencoder for fields on a 1-D or 2-D grid, with flat states.

    States are flat, as everywhere in the library: ``(..., n)`` with ``n = in_channels *
    prod(grid_shape)``, the fields one after the other, each in C order (the layout of
    py-pde's field data, see ``concernet_ode.integrations.py_pde``). The encoder reshapes
    them to ``(batch, in_channels, *grid_shape)``, applies ``len(channels)`` stride-2
    convolutions (kernel 4, padding 1: each halves the grid) with the activation between,
    flattens and maps linearly to ``latent_dim``; the decoder mirrors it with transposed
    convolutions. Every layer supports forward-mode AD, so :class:`~concernet_ode.LatentAdapter`
    computes ``zdot = J_E(x) xdot`` by the same JVP as for the dense :class:`Autoencoder`.

    Args:
        grid_shape: cells along each axis (1 or 2 axes); each must be divisible by
            ``2 ** len(channels)``.
        latent_dim: size ``k`` of the latent state.
        in_channels: fields in the state (2 for a wave's ``(u, v)``).
        channels: feature maps after each stride-2 convolution.
        activation: ``"silu"`` (default; smooth, so the latent dynamics are too), ``"tanh"``,
            ... or an ``nn.Module`` class.
        padding_mode: ``"zeros"`` (default) or ``"circular"`` for periodic grids (the
            encoder's convolutions; the transposed ones pad with zeros, as torch allows).

    Raises:
        ValueError: a grid of other than 1 or 2 axes, or not divisible by
            ``2 ** len(channels)``; a non-positive size; an unknown activation.

    Shapes:
        encode: ``(..., n) -> (..., latent_dim)``; decode: the reverse.

    Example:
        >>> ae = ConvAutoencoder((64, 64), 16)
        >>> ae.encode(torch.randn(5, 7, 4096)).shape
        torch.Size([5, 7, 16])
    """

    def __init__(self, grid_shape: Sequence[int], latent_dim: int = 16, *,
                 in_channels: int = 1, channels: Sequence[int] = (8, 16, 32),
                 activation: str | Callable[[], nn.Module] = "silu",
                 padding_mode: str = "zeros") -> None:
        super().__init__()
        grid_shape = tuple(positive_int(g, "grid_shape") for g in grid_shape)
        channels = [positive_int(c, "channels") for c in channels]
        factor = 2 ** len(channels)
        if len(grid_shape) not in (1, 2) or any(g % factor for g in grid_shape):
            msg = (f"`grid_shape` must have 1 or 2 axes, each divisible by 2 ** len(channels) "
                   f"= {factor}, got {grid_shape}")
            raise ValueError(msg)
        if padding_mode not in ("zeros", "circular"):
            msg = f"`padding_mode` must be 'zeros' or 'circular', got {padding_mode!r}"
            raise ValueError(msg)
        act = _activation(activation)
        conv, convt = ((nn.Conv1d, nn.ConvTranspose1d) if len(grid_shape) == 1
                       else (nn.Conv2d, nn.ConvTranspose2d))
        self.grid_shape, self.in_channels = grid_shape, positive_int(in_channels, "in_channels")
        self.latent_dim = positive_int(latent_dim, "latent_dim")
        self.input_dim = self.in_channels * math.prod(grid_shape)
        self._coarse = (channels[-1], *(g // factor for g in grid_shape))
        sizes = [self.in_channels, *channels]
        enc: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            enc += [conv(a, b, 4, stride=2, padding=1, padding_mode=padding_mode), act()]
        self.encoder = nn.Sequential(*enc, nn.Flatten(),
                                     nn.Linear(math.prod(self._coarse), self.latent_dim))
        dec: list[nn.Module] = [nn.Linear(self.latent_dim, math.prod(self._coarse))]
        for i, (a, b) in enumerate(itertools.pairwise(sizes[::-1])):
            dec += [act(), convt(a, b, 4, stride=2, padding=1)] if i else [
                convt(a, b, 4, stride=2, padding=1)]
        self.decoder_linear, self.decoder_conv = dec[0], nn.Sequential(act(), *dec[1:])

    def _check(self, x: torch.Tensor, size: int, name: str) -> None:
        if x.dim() == 0 or x.shape[-1] != size:
            msg = f"`{name}` must have shape (..., {size}), got {tuple(x.shape)}"
            raise ValueError(msg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, self.input_dim, "x")
        batch = x.shape[:-1]
        z = self.encoder(x.reshape(-1, self.in_channels, *self.grid_shape))
        return z.reshape(*batch, self.latent_dim)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._check(z, self.latent_dim, "z")
        batch = z.shape[:-1]
        h = self.decoder_linear(z.reshape(-1, self.latent_dim)).reshape(-1, *self._coarse)
        return self.decoder_conv(h).reshape(*batch, self.input_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``decode(encode(x))``."""
        return self.decode(self.encode(x))
