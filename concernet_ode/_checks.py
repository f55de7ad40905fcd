"""Argument checks shared across the package: counts, numbers, states and seeds.

Each raises a ``TypeError`` or ``ValueError`` that names the argument, what was given and what
was expected.
"""

from __future__ import annotations

import math

import torch

__all__ = ["check_state_size", "count", "finite_number", "positive_int", "positive_number",
           "seed_generator"]


def positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is an int >= 1 (not a bool), else raise a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"`{name}` must be a positive int, got {value!r}"
        raise ValueError(msg)
    return value


def count(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum`` (not a bool), else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        msg = f"`{name}` must be an int >= {minimum}, got {value!r}"
        raise ValueError(msg)
    return value


def positive_number(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite number > 0 (not a bool), else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 < value < math.inf):
        msg = f"`{name}` must be a finite number > 0, got {value!r}"
        raise ValueError(msg)
    return float(value)


def finite_number(value: object, name: str, minimum: float = -math.inf) -> float:
    """Return ``value`` as a float if it is a finite number >= ``minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            minimum <= value < math.inf):
        msg = f"`{name}` must be a finite number >= {minimum:g}, got {value!r}"
        raise ValueError(msg)
    return float(value)


def check_state_size(x: object, state_dim: int, name: str = "x") -> torch.Tensor:
    """Return ``x`` if it is a tensor of shape ``(..., state_dim)``, else raise."""
    if not isinstance(x, torch.Tensor):
        msg = f"`{name}` must be a torch.Tensor, got {type(x).__name__}"
        raise TypeError(msg)
    if x.dim() == 0 or x.shape[-1] != state_dim:
        msg = f"`{name}` must have shape (..., {state_dim}), got {tuple(x.shape)}"
        raise ValueError(msg)
    return x


def seed_generator(seed: int | torch.Generator,
                   device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded with ``seed``, or ``seed`` itself if it is one.

    Raises:
        TypeError: ``seed`` is neither an int nor a Generator.
    """
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        msg = f"`seed` must be an int or a torch.Generator, got {type(seed).__name__}"
        raise TypeError(msg)
    return torch.Generator(device=device).manual_seed(seed)


