"""Shared fixtures: a seeded generator, dtypes, devices and the per-dtype tolerances."""

from __future__ import annotations

import pytest
import torch

# The tests use small tensors, for which intra-op threads cost more in synchronisation than
# they save, and far more on a loaded machine; one thread keeps the suite fast everywhere.
torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Tolerances for identities that hold exactly in exact arithmetic (orthogonality of the
# projection, idempotence): a few hundred ulps of the values involved.
RTOL = {
    torch.float64: 1e-12,  # the target for <P f, grad H_i> in float64
    torch.float32: 1e-5,  # the target in float32 (eps = 1.2e-7, ~100 ulps)
}


@pytest.fixture
def rng() -> torch.Generator:
    """A generator seeded the same way in every test."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)
