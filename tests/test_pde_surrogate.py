"""Surrogates of PDEs: a torch field run by py-pde's solve, and the convolutional autoencoder."""

from __future__ import annotations

import pytest
import torch
from torchdiffeq import odeint

from concernet_ode import MLP, Autoencoder, LatentAdapter, ProjectedVectorField
from concernet_ode.models import ConvAutoencoder

pde = pytest.importorskip("pde")
from concernet_ode.integrations.py_pde import (  # noqa: E402  (needs py-pde)
    HeatEquation1D,
    SurrogatePDE,
    WaveEquation1D,
)


@pytest.fixture(scope="module")
def heat() -> HeatEquation1D:
    return HeatEquation1D(n_nodes=16, domain=(-2.0, 2.0))


def _solve(eq: SurrogatePDE, system, x0: torch.Tensor, t_end: float, tol: float):
    storage = pde.MemoryStorage()
    eq.solve(system.to_field(x0), t_range=t_end, dt=1e-3, solver="runge-kutta",
             adaptive=True, tolerance=tol, tracker=[storage.tracker(t_end / 4)])
    t = torch.tensor(storage.times, dtype=torch.float64)
    return t, torch.stack([system.from_field(field) for field in storage])


def test_projected_surrogate_runs_in_py_pde_as_in_odeint(heat):
    torch.manual_seed(0)
    field = ProjectedVectorField(MLP(16, 16, hidden=32), heat.invariants).double()
    eq = SurrogatePDE(field)
    x0 = heat.sample_initial(1, seed=0)[0]
    t, states = _solve(eq, heat, x0, 1.0, 1e-9)
    assert t.numel() == 5 and eq.diagnostics["solver"]["backend"]["name"] == "numpy"
    reference = odeint(eq.torch_field, x0, t, rtol=1e-11, atol=1e-12)
    # py-pde's local error per step is 1e-9; over ~100 steps the global error stays below
    torch.testing.assert_close(states, reference, rtol=0, atol=1e-7)
    total = heat.invariants(states)  # the projection holds the known total heat
    torch.testing.assert_close(total, total[:1].expand_as(total), rtol=0, atol=1e-7)


def test_latent_surrogate_runs_through_the_decoder(heat):
    torch.manual_seed(1)
    adapter = LatentAdapter(Autoencoder(16, 3, hidden=(8,))).double()
    latent = MLP(3, 3, hidden=8).double()
    eq = SurrogatePDE(latent, adapter=adapter)
    x0 = heat.sample_initial(1, seed=1)[0]
    t, states = _solve(eq, heat, x0, 0.5, 1e-9)
    torch.testing.assert_close(states, odeint(eq.torch_field, x0, t, rtol=1e-11, atol=1e-12),
                               rtol=0, atol=1e-7)
    # the full-space rate is the decoder's push-forward of the latent rate
    x = heat.sample_initial(3, seed=2)
    z = adapter.encode(x)
    eps = 1e-6
    fd = (adapter.decode(z + eps * latent(z)) - adapter.decode(z - eps * latent(z))) / (2 * eps)
    torch.testing.assert_close(eq.torch_field(torch.zeros(()), x), fd, rtol=1e-6, atol=1e-8)


def test_surrogate_of_a_field_collection_and_a_one_argument_field():
    wave = WaveEquation1D(n_cells=8)
    eq = SurrogatePDE(lambda x: wave.vector_field(0.0, x))  # f(x) is accepted too
    x0 = wave.sample_initial(1, seed=0)[0]
    rate = eq.evolution_rate(wave.to_field(x0))
    assert isinstance(rate, pde.FieldCollection)
    torch.testing.assert_close(wave.from_field(rate), wave.evolution_rate(x0), rtol=0,
                               atol=1e-12)


def test_float32_surrogate_takes_float64_fields(heat):
    eq = SurrogatePDE(MLP(16, 16, hidden=8))
    assert eq.dtype == torch.float32
    rate = eq.evolution_rate(heat.to_field(heat.sample_initial(1, seed=0)[0]))
    assert rate.data.dtype.name == "float64" and rate.data.shape == (16,)


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: SurrogatePDE(3), TypeError, "`field` must be callable"),
    (lambda: SurrogatePDE(MLP(2, 2), adapter=torch.nn.Linear(2, 2)), TypeError,
     "`adapter` must have `encode` and `decode` methods"),
])
def test_surrogate_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- ConvAutoencoder ---------------------------------------------------------------------

@pytest.mark.parametrize(("grid", "channels", "kwargs"), [
    ((16, 8), 1, {}), ((16,), 2, {"padding_mode": "circular"})])
def test_conv_autoencoder_shapes_and_jvp(grid, channels, kwargs, rng):
    torch.manual_seed(0)
    ae = ConvAutoencoder(grid, 5, in_channels=channels, channels=(4, 8), **kwargs).double()
    n = channels * grid[0] * (grid[1] if len(grid) == 2 else 1)
    assert ae.input_dim == n and ae.latent_dim == 5
    x = torch.randn(2, 3, n, generator=rng, dtype=torch.float64)
    assert ae.encode(x).shape == (2, 3, 5) and ae(x).shape == x.shape
    torch.testing.assert_close(ae.encode(x)[1, 2], ae.encode(x[1, 2]))
    adapter = LatentAdapter(ae)
    xdot = torch.randn(2, 3, n, generator=rng, dtype=torch.float64)
    _, zdot = adapter.encode_with_rate(x, xdot)
    eps = 1e-6
    fd = (adapter.encode(x + eps * xdot) - adapter.encode(x - eps * xdot)) / (2 * eps)
    torch.testing.assert_close(zdot, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: ConvAutoencoder((64, 64, 64)), r"`grid_shape` must have 1 or 2 axes"),
    (lambda: ConvAutoencoder((20, 20)), r"divisible by 2 \*\* len\(channels\) = 8"),
    (lambda: ConvAutoencoder((16,), padding_mode="reflect"), "`padding_mode` must be"),
    (lambda: ConvAutoencoder((16,), 0), "`latent_dim` must be a positive int"),
    (lambda: ConvAutoencoder((16, 16), channels=(4,)).encode(torch.zeros(3, 255)),
     r"`x` must have shape \(\.\.\., 256\)"),
    (lambda: ConvAutoencoder((16, 16), 4, channels=(4,)).decode(torch.zeros(3)),
     r"`z` must have shape \(\.\.\., 4\)"),
])
def test_conv_autoencoder_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
