"""Argument checks shared across the package: counts and seeds."""

from __future__ import annotations

import torch

__all__ = ["positive_int", "seed_generator"]


def positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is an int >= 1 (not a bool), else raise a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"`{name}` must be a positive int, got {value!r}"
        raise ValueError(msg)
    return value


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
