"""Small networks used throughout: an MLP, an invariant network and an autoencoder."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ._checks import positive_int

__all__ = ["MLP", "Autoencoder", "InvariantNet"]

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
