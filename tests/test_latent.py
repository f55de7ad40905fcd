"""Tests of the latent adapter: the JVP rate against finite differences, shapes, integration."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchdiffeq import odeint

from concernet_ode import (
    Autoencoder,
    LatentAdapter,
    ProjectedVectorField,
    TrajectoryData,
    odeint_projected,
)


def _adapter(dtype=torch.float64, device="cpu", n=101, k=9) -> LatentAdapter:
    torch.manual_seed(0)
    return LatentAdapter(Autoencoder(n, k)).to(dtype=dtype, device=device)


def test_rate_matches_central_difference(rng):
    adapter = _adapter()
    x = torch.randn(3, 4, 101, generator=rng, dtype=torch.float64)
    xdot = torch.randn(3, 4, 101, generator=rng, dtype=torch.float64)
    h = 1e-5  # central difference error ~ h^2 * |E'''| ~ 1e-10, round-off ~ eps / h ~ 1e-11
    with torch.no_grad():
        z, zdot = adapter.encode_with_rate(x, xdot)
        fd = (adapter.encode(x + h * xdot) - adapter.encode(x - h * xdot)) / (2 * h)
    torch.testing.assert_close(z, adapter.encode(x), rtol=0, atol=0)
    rel = (zdot - fd).norm(dim=-1) / zdot.norm(dim=-1)
    assert float(rel.max()) < 1e-6


def test_rate_is_linear_in_xdot(rng):
    adapter = _adapter()
    x = torch.randn(5, 101, generator=rng, dtype=torch.float64)
    v, w = torch.randn(2, 5, 101, generator=rng, dtype=torch.float64)
    _, zv = adapter.encode_with_rate(x, v)
    _, zw = adapter.encode_with_rate(x, w)
    _, zsum = adapter.encode_with_rate(x, 2 * v - 3 * w)
    torch.testing.assert_close(zsum, 2 * zv - 3 * zw, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch", [(), (7,), (2, 3), (2, 1, 4)])
def test_batch_shapes_equal_per_sample(batch, rng):
    adapter = _adapter()
    x = torch.randn(*batch, 101, generator=rng, dtype=torch.float64)
    xdot = torch.randn(*batch, 101, generator=rng, dtype=torch.float64)
    z, zdot = adapter.encode_with_rate(x, xdot)
    assert z.shape == zdot.shape == (*batch, 9)
    flat_x, flat_v = x.reshape(-1, 101), xdot.reshape(-1, 101)
    for i in range(flat_x.shape[0]):
        zi, zdi = adapter.encode_with_rate(flat_x[i], flat_v[i])
        torch.testing.assert_close(zdot.reshape(-1, 9)[i], zdi, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(z.reshape(-1, 9)[i], zi, rtol=1e-12, atol=1e-12)


def test_dtype_and_device_follow_input(dtype, device):
    adapter = _adapter(dtype, device)
    x = torch.randn(4, 101, dtype=dtype, device=device)
    z, zdot = adapter.encode_with_rate(x, torch.randn_like(x))
    assert z.dtype == zdot.dtype == dtype and z.device == zdot.device == x.device
    assert adapter.decode(z).dtype == dtype


def test_rate_trains_the_encoder():
    adapter = _adapter()
    x = torch.randn(6, 101, dtype=torch.float64)
    _, zdot = adapter.encode_with_rate(x, torch.randn_like(x))
    zdot.pow(2).sum().backward()
    grad = adapter.autoencoder.encoder[0].weight.grad
    assert grad is not None and float(grad.abs().max()) > 0


def test_to_latent_encodes_states_and_rates(rng):
    adapter = _adapter()
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    x = torch.randn(3, 5, 101, generator=rng, dtype=torch.float64)
    data = TrajectoryData(t, x, torch.randn(3, 5, 101, generator=rng, dtype=torch.float64))
    latent = adapter.to_latent(data)
    z, zdot = adapter.encode_with_rate(data.x, data.dxdt)
    assert latent.x.shape == (3, 5, 9) and latent.t is data.t
    assert not latent.x.requires_grad and not latent.dxdt.requires_grad
    torch.testing.assert_close(latent.x, z)
    torch.testing.assert_close(latent.dxdt, zdot)


def test_integrate_decodes_the_latent_solution(rng):
    adapter = _adapter(n=6, k=3)
    x0 = torch.randn(4, 6, generator=rng, dtype=torch.float64)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    field = nn.Linear(3, 3).double()
    out = adapter.integrate(field, x0, t, method="rk4", options={"step_size": 0.05})
    expected = adapter.decode(odeint(lambda _t, z: field(z), adapter.encode(x0), t,
                                     method="rk4", options={"step_size": 0.05}))
    assert out.shape == (11, 4, 6)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_integrate_with_projection_keeps_latent_invariant(rng):
    adapter = _adapter(n=6, k=3)
    x0 = torch.randn(4, 6, generator=rng, dtype=torch.float64)
    t = torch.linspace(0, 1, 6, dtype=torch.float64)
    field = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).double()

    def H(z):
        return z.pow(2).sum(-1, keepdim=True)

    projected = ProjectedVectorField(field, H)
    with torch.no_grad():
        out = adapter.integrate(projected, x0, t, odeint_fn=odeint_projected, H=H,
                                rtol=1e-8, atol=1e-10)
        z = odeint_projected(projected, adapter.encode(x0), t, H, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(out, adapter.decode(z))
    drift = (H(z) - H(z[0])).abs().max()
    assert float(drift) < 1e-10


def test_integrate_forwards_keyword_arguments():
    adapter = _adapter(n=4, k=2)
    seen = {}

    def spy(func, z0, t, **kwargs):
        seen.update(kwargs)
        return odeint(func, z0, t, **kwargs)

    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    adapter.integrate(lambda t, z: -z, torch.ones(4, dtype=torch.float64), t,
                      odeint_fn=spy, method="euler", options={"step_size": 0.1})
    assert seen == {"method": "euler", "options": {"step_size": 0.1}}


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda a: LatentAdapter(nn.Linear(3, 3)), TypeError, "`autoencoder` must be an nn.Module"),
    (lambda a: a.encode([1.0]), TypeError, "`x` must be a torch.Tensor"),
    (lambda a: a.encode(torch.tensor(1.0)), ValueError, "`x` must have at least one"),
    (lambda a: a.encode(torch.zeros(2, 5)), ValueError, r"`x` must have shape \(\.\.\., 4\)"),
    (lambda a: a.decode(torch.zeros(2, 3)), ValueError, r"`z` must have shape \(\.\.\., 2\)"),
    (lambda a: a.encode_with_rate(torch.zeros(2, 4), torch.zeros(3, 4)), ValueError,
     "`xdot` must have the shape of `x`"),
    (lambda a: a.encode_with_rate(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.float64)),
     TypeError, "`xdot` must have the dtype and device of `x`"),
    (lambda a: a.to_latent(torch.zeros(2, 3, 4)), TypeError, "`data` must be a TrajectoryData"),
    (lambda a: a.integrate(3, torch.zeros(4), torch.zeros(2)), TypeError,
     "`field` must be callable"),
    (lambda a: a.integrate(lambda t, z: z, torch.zeros(4), torch.zeros(2), odeint_fn=None),
     TypeError, "`odeint_fn` must be callable"),
])
def test_errors(call, error, match):
    adapter = LatentAdapter(Autoencoder(4, 2))
    with pytest.raises(error, match=match):
        call(adapter)
