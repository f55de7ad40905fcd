"""Tests of the py-pde systems: the torch fields against py-pde, conservation, data."""

from __future__ import annotations

import math

import pytest
import torch

from concernet_ode.integrations.py_pde import HeatEquation1D, HeatEquation2D, WaveEquation1D

pde = pytest.importorskip("pde")


@pytest.fixture(scope="module")
def heat() -> HeatEquation1D:
    return HeatEquation1D()


@pytest.fixture(scope="module")
def data(heat):
    """A few short noise-free trajectories (the first solve compiles py-pde's stepper)."""
    return heat.trajectories(3, t_end=2.0, n_times=21, seed=0, progress=False)


def _laplacian_matrix(heat: HeatEquation1D) -> torch.Tensor:
    n = heat.state_dim
    lap = torch.diag(torch.full((n,), -2.0, dtype=torch.float64))
    idx = torch.arange(n - 1)
    lap[idx, idx + 1] = lap[idx + 1, idx] = 1.0
    lap[0, 0] = lap[-1, -1] = -1.0  # zero-flux ends: the ghost cell mirrors the boundary cell
    return heat.diffusivity * lap / heat.cell_width**2


@pytest.mark.parametrize("setup", [{}, {"n_nodes": 17, "domain": (0.0, 2.0),
                                        "diffusivity": 0.3}])
def test_vector_field_matches_py_pde_evolution_rate(setup, rng):
    heat = HeatEquation1D(**setup)
    x = torch.rand(5, heat.state_dim, generator=rng, dtype=torch.float64)
    reference = torch.stack([
        torch.from_numpy(heat.equation.evolution_rate(pde.ScalarField(heat.grid, u)).data)
        for u in x.numpy()])
    scale = float(reference.abs().max())
    # different summation order only: a few ulps of the largest term
    torch.testing.assert_close(heat.vector_field(0.0, x), reference, rtol=0,
                               atol=16 * torch.finfo(torch.float64).eps * scale)
    torch.testing.assert_close(heat.evolution_rate(x), reference, rtol=0, atol=0)


def test_vector_field_batched_dtype_and_conservative(dtype, device, heat, rng):
    x = torch.rand(2, 3, 101, generator=rng, dtype=torch.float64).to(dtype=dtype, device=device)
    f = heat.vector_field(0.0, x)
    assert f.shape == x.shape and f.dtype == dtype and f.device == x.device
    torch.testing.assert_close(f[1, 2], heat.vector_field(0.0, x[1, 2]))
    # the semi-discrete scheme conserves total heat: the rates sum to zero
    total = heat.invariants(f).abs().max() / (heat.cell_width * f.abs().sum(-1).max())
    assert float(total) < 1e-6 if dtype == torch.float32 else float(total) < 1e-14


def test_invariants_and_nodal_sum(heat):
    x = torch.ones(4, 2, 101, dtype=torch.float64)
    assert heat.invariants(x).shape == (4, 2, 1)
    torch.testing.assert_close(heat.invariants(x), torch.full((4, 2, 1), 10.0,
                                                              dtype=torch.float64))
    torch.testing.assert_close(heat.nodal_sum(x), torch.full((4, 2, 1), 101.0,
                                                             dtype=torch.float64))
    assert heat.state_dim == 101 and heat.n_invariants == 1
    assert heat.cell_width == pytest.approx(10 / 101)


def test_sample_initial_bumps(heat):
    x0 = heat.sample_initial(500, seed=3)
    assert x0.shape == (500, 101) and x0.dtype == torch.float64
    torch.testing.assert_close(x0, heat.sample_initial(500, seed=3))
    assert not torch.equal(x0, heat.sample_initial(500, seed=4))
    peak = heat.coordinates[x0.argmax(-1)]
    assert float(peak.abs().max()) <= 1.0 + heat.cell_width  # centres in [-1, 1]
    assert float(x0.max(-1).values.min()) > 0.5  # a bump of height ~1 (grid-sampled)
    # widths 0.25 * U(0.5, 2): total heat w * sqrt(2 pi) lies in [0.31, 1.25]
    total = heat.invariants(x0)
    assert 0.30 < float(total.min()) and float(total.max()) < 1.26


def test_trajectories_are_conservative_and_consistent(heat, data):
    assert data.x.shape == data.dxdt.shape == (3, 21, 101)
    torch.testing.assert_close(data.t, torch.linspace(0, 2, 21, dtype=torch.float64))
    torch.testing.assert_close(data.x[:, 0], heat.sample_initial(3, seed=0))
    total = heat.invariants(data.x)
    assert float(((total - total[:, :1]) / total[:, :1]).abs().max()) < 1e-10
    torch.testing.assert_close(data.dxdt, heat.vector_field(0.0, data.x), rtol=0, atol=1e-12)


def test_trajectories_match_exact_solution(heat, data):
    """py-pde's adaptive solve against exp(t L) x0 of the same semi-discrete system."""
    exact = torch.linalg.matrix_exp(_laplacian_matrix(heat) * data.t[:, None, None])
    expected = torch.einsum("tij,nj->nti", exact, data.x[:, 0])
    torch.testing.assert_close(data.x, expected, rtol=0, atol=1e-7)


def test_noise_and_dtype(heat, data):
    noisy = heat.trajectories(3, t_end=2.0, n_times=21, noise=0.01, seed=0, progress=False,
                              dtype=torch.float32)
    assert noisy.x.dtype == torch.float32
    residual = noisy.x.double() - data.x
    assert 0.008 < float(residual.std()) < 0.012
    assert 0.008 < float((noisy.dxdt.double() - data.dxdt).std()) < 0.012


def test_reused_solver_gives_order_independent_trajectories(heat, data):
    """The compiled stepper is reused; each solve must still start afresh."""
    alone = heat.solve(data.x[2:, 0], data.t, progress=False)
    torch.testing.assert_close(alone[0], data.x[2], rtol=0, atol=0)


def test_solve_keeps_dtype(heat):
    x0 = heat.sample_initial(2, seed=1, dtype=torch.float32)
    x = heat.solve(x0, torch.linspace(0, 0.1, 3), progress=False)
    assert x.shape == (2, 3, 101) and x.dtype == torch.float32


@pytest.mark.slow
def test_protocol_training_set_conserves_heat(heat):
    data = heat.trajectories(heat.train_traj, t_end=heat.train_t_end,
                             n_times=heat.train_n_times, seed=0, progress=False)
    total = heat.invariants(data.x)
    assert data.x.shape == (200, 100, 101)
    assert float(((total - total[:, :1]) / total[:, :1]).abs().max()) < 1e-10


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda h: HeatEquation1D(n_nodes=2), ValueError, "`n_nodes` must be an int >= 3"),
    (lambda h: HeatEquation1D(domain=(1.0, -1.0)), ValueError, "`domain` must be a finite"),
    (lambda h: HeatEquation1D(diffusivity=0.0), ValueError, "`diffusivity` must be a finite"),
    (lambda h: HeatEquation1D(tolerance=-1.0), ValueError, "`tolerance` must be a finite"),
    (lambda h: h.vector_field(0.0, torch.zeros(3, 100)), ValueError,
     r"`x` must have shape \(\.\.\., 101\)"),
    (lambda h: h.invariants([0.0]), TypeError, "`x` must be a torch.Tensor"),
    (lambda h: h.evolution_rate(torch.zeros(100)), ValueError,
     r"`x` must be a tensor of shape \(\.\.\., 101\)"),
    (lambda h: h.sample_initial(0, seed=0), ValueError, "`n` must be an int >= 1"),
    (lambda h: h.solve(torch.zeros(101), torch.linspace(0, 1, 3)), ValueError,
     r"`x0` must have shape \(N, 101\)"),
    (lambda h: h.solve(torch.zeros(1, 101), torch.tensor([0.0, 1.0, 0.5])), ValueError,
     "`t` must be 1-D and strictly increasing"),
    (lambda h: h.trajectories(0, t_end=1.0, n_times=3, seed=0), ValueError,
     "`n_traj` must be an int >= 1"),
    (lambda h: h.trajectories(1, t_end=-1.0, n_times=3, seed=0), ValueError,
     "`t_end` must be a finite number > 0"),
    (lambda h: h.trajectories(1, t_end=1.0, n_times=1, seed=0), ValueError,
     "`n_times` must be an int >= 2"),
    (lambda h: h.trajectories(1, t_end=1.0, n_times=3, noise=-0.1, seed=0), ValueError,
     "`noise` must be a finite number >= 0"),
    (lambda h: h.trajectories(1, t_end=1.0, n_times=3, seed="a"), TypeError,
     "`seed` must be an int or a torch.Generator"),
])
def test_errors(call, error, match, heat):
    with pytest.raises(error, match=match):
        call(heat)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_initial_profile_is_named_before_py_pde_runs(heat, bad):
    # py-pde would otherwise step down to "Encountered NaN even though dt < 1e-10".
    x0 = heat.sample_initial(2, seed=0)
    x0[1, 50] = bad
    with pytest.raises(ValueError, match=r"`x0` is not finite \(NaN or inf\) at 1 of 2 "
                                         r"sample\(s\), indices \[1\]"):
        heat.solve(x0, torch.linspace(0, 0.1, 3), progress=False)


def test_a_request_that_cannot_fit_fails_at_once(heat, monkeypatch):
    # Issue 19: trajectories(10**8) ran 127 s and took 21 GB before a MemoryError. The need
    # (states and derivatives, 2 x 10**8 x 100 x 101 float64) is known before any work.
    monkeypatch.setattr("concernet_ode._checks.available_memory", lambda: 16 * 2**30)
    with pytest.raises(MemoryError, match=r"`n_traj` = 100000000 trajectories of `n_times` = "
                                          r"100 states of dimension 101 need about 14\.7 TiB "
                                          r"of memory, but 16\.0 GiB is available"):
        heat.trajectories(10**8, t_end=10.0, n_times=100, seed=0, progress=False)
    monkeypatch.setattr("concernet_ode._checks.available_memory", lambda: 2**20)
    with pytest.raises(MemoryError, match=r"the states of 100 trajectories at 100 times need "
                                          r"about 7\.7 MiB of memory, but 1\.0 MiB is "
                                          r"available: solve fewer"):
        heat.solve(torch.zeros(100, 101), torch.linspace(0, 1, 100), progress=False)


def test_evolution_rate_takes_a_progress_flag(heat, data):
    x = data.x[:1, :3]
    torch.testing.assert_close(heat.evolution_rate(x, progress=True), heat.evolution_rate(x),
                               rtol=0, atol=0)


# --- 2-D heat and the 1-D wave ---------------------------------------------------------

@pytest.fixture(scope="module")
def heat2d() -> HeatEquation2D:
    return HeatEquation2D(shape=(12, 8), domain=(-3.0, 3.0), diffusivity=0.7)


@pytest.fixture(scope="module")
def wave() -> WaveEquation1D:
    return WaveEquation1D(n_cells=24, speed=1.3)


def _py_pde_rates(system, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([system.from_field(system.equation.evolution_rate(system.to_field(u)))
                        for u in x])


@pytest.mark.parametrize("make", [lambda: HeatEquation2D(), lambda: HeatEquation2D(
    shape=(12, 8), domain=(-3.0, 3.0), diffusivity=0.7), lambda: WaveEquation1D(),
    lambda: WaveEquation1D(n_cells=24, domain=(-1.0, 2.0), speed=1.3)])
def test_new_systems_field_matches_py_pde_evolution_rate(make, rng):
    system = make()
    x = torch.rand(3, system.state_dim, generator=rng, dtype=torch.float64)
    reference = _py_pde_rates(system, x)
    scale = float(reference.abs().max())
    torch.testing.assert_close(system.vector_field(0.0, x), reference, rtol=0,
                               atol=16 * torch.finfo(torch.float64).eps * scale)
    torch.testing.assert_close(system.evolution_rate(x), reference, rtol=0, atol=0)


def test_heat2d_defaults_and_layout():
    heat = HeatEquation2D()
    assert heat.state_dim == 4096 and heat.n_invariants == 1 and heat.shape == (64, 64)
    assert heat.cell_widths == pytest.approx((10 / 64, 10 / 64))
    x = torch.arange(4096, dtype=torch.float64)
    field = heat.to_field(x)
    assert field.data.shape == (64, 64) and field.data[1, 0] == 64.0  # C order: x first
    torch.testing.assert_close(heat.from_field(field), x, rtol=0, atol=0)
    torch.testing.assert_close(heat.invariants(torch.ones(2, 4096, dtype=torch.float64)),
                               torch.full((2, 1), 100.0, dtype=torch.float64))


def test_heat2d_field_conserves_total_heat(heat2d, dtype, rng):
    x = torch.rand(4, heat2d.state_dim, generator=rng, dtype=torch.float64).to(dtype)
    f = heat2d.vector_field(0.0, x)
    assert f.dtype == dtype and f.shape == x.shape
    rel = heat2d.invariants(f).abs().max() / (math.prod(heat2d.cell_widths) * f.abs().sum(-1).max())
    assert float(rel) < (1e-6 if dtype == torch.float32 else 1e-14)


def test_heat2d_sample_initial(heat2d):
    x0 = HeatEquation2D().sample_initial(200, seed=0)
    assert x0.shape == (200, 4096)
    assert 0.5 < float(x0.max(-1).values.min()) and float(x0.max()) <= 1.0
    torch.testing.assert_close(x0, HeatEquation2D().sample_initial(200, seed=0))


def test_wave_layout_and_invariants(wave):
    u = torch.sin(wave.coordinates)
    x = torch.cat([u, 0.5 * torch.ones(24, dtype=torch.float64)])
    field = wave.to_field(x)
    assert field.data.shape == (2, 24)
    torch.testing.assert_close(torch.from_numpy(field[0].data.copy()), u)
    torch.testing.assert_close(wave.from_field(field), x, rtol=0, atol=0)
    dx = wave.cell_width
    momentum, energy = wave.invariants(x).unbind(-1)
    # by hand: P = dx sum(v); E = dx/2 sum(v^2) + c^2 dx/2 sum(forward difference^2)
    diff = (torch.roll(u, -1) - u) / dx
    expected = 0.5 * dx * (24 * 0.25 + 1.3**2 * float(diff.pow(2).sum()))
    assert float(momentum) == pytest.approx(24 * 0.5 * dx, rel=1e-14)
    assert float(energy) == pytest.approx(expected, rel=1e-14)


def test_wave_energy_and_momentum_are_invariants_of_the_discrete_field(wave, rng):
    """dH/dt = grad H . f vanishes to rounding at random states, for both quantities."""
    x = torch.randn(16, wave.state_dim, generator=rng, dtype=torch.float64).requires_grad_()
    h = wave.invariants(x)
    f = wave.vector_field(0.0, x).detach()
    for j in range(2):
        (grad,) = torch.autograd.grad(h[..., j].sum(), x, retain_graph=True)
        rate = (grad * f).sum(-1)
        scale = (grad.abs() * f.abs()).sum(-1)
        assert float((rate.abs() / scale).max()) < 1e-13
    # the centred-difference energy is *not* conserved by this scheme
    u, v = x.detach().split(24, -1)
    du, dv = f.split(24, -1)
    centred = (u.roll(-1, -1) - u.roll(1, -1)) / (2 * wave.cell_width)
    dcentred = (du.roll(-1, -1) - du.roll(1, -1)) / (2 * wave.cell_width)
    rate = (v * dv).sum(-1) + wave.speed**2 * (centred * dcentred).sum(-1)
    assert float(rate.abs().max()) > 1e-3


def test_new_systems_data_conserve_their_invariants(heat2d, wave):
    for system, t_end, tol in ((heat2d, 1.0, 1e-10), (wave, 2.0, 1e-6)):
        data = system.trajectories(2, t_end=t_end, n_times=5, seed=0, progress=False)
        assert data.x.shape == (2, 5, system.state_dim)
        h = system.invariants(data.x)
        assert float(((h - h[:, :1]).abs() / h[:, :1].abs().clamp_min(1e-3)).max()) < tol
        torch.testing.assert_close(data.dxdt, system.vector_field(0.0, data.x), rtol=0,
                                   atol=1e-12)
        torch.testing.assert_close(data.x[:, 0], system.sample_initial(2, seed=0))


def test_wave_data_match_the_exact_semi_discrete_solution(wave):
    """py-pde's adaptive solve against exp(t A) x0 of the same linear system."""
    data = wave.trajectories(2, t_end=1.0, n_times=3, seed=1, progress=False)
    eye = torch.eye(wave.state_dim, dtype=torch.float64)
    a = wave.vector_field(0.0, eye).T  # columns: the field of each unit vector
    exact = torch.linalg.matrix_exp(a * data.t[:, None, None])
    expected = torch.einsum("tij,nj->nti", exact, data.x[:, 0])
    torch.testing.assert_close(data.x, expected, rtol=0, atol=1e-6)


def test_wave_sample_has_varied_momentum_and_energy(wave):
    h = WaveEquation1D().invariants(WaveEquation1D().sample_initial(500, seed=0))
    assert float(h[:, 0].min()) < -0.1 and float(h[:, 0].max()) > 0.1
    assert float(h[:, 1].min()) > 0.1 and float(h[:, 1].std()) > 0.1


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: HeatEquation2D(shape=(64,)), ValueError, r"`shape` must be two cell counts"),
    (lambda: HeatEquation2D(shape=(2, 64)), ValueError, r"`shape\[0\]` must be an int >= 3"),
    (lambda: HeatEquation2D(domain=(1.0, 1.0)), ValueError, "`domain` must be a finite"),
    (lambda: HeatEquation2D(diffusivity=-1.0), ValueError, "`diffusivity` must be a finite"),
    (lambda: WaveEquation1D(n_cells=2), ValueError, "`n_cells` must be an int >= 3"),
    (lambda: WaveEquation1D(speed=0.0), ValueError, "`speed` must be a finite number > 0"),
    (lambda: WaveEquation1D(tolerance=0.0), ValueError, "`tolerance` must be a finite"),
    (lambda: WaveEquation1D(n_cells=8).vector_field(0.0, torch.zeros(8)), ValueError,
     r"`x` must have shape \(\.\.\., 16\)"),
    (lambda: WaveEquation1D(n_cells=8).to_field(torch.zeros(2, 16)), ValueError,
     r"`x` must be a tensor of shape \(16,\), got \(2, 16\)"),
    (lambda: WaveEquation1D(n_cells=8).from_field(pde.ScalarField(
        pde.UnitGrid([8]))), ValueError, "`field` must be a py-pde field with 16 values"),
    (lambda: HeatEquation2D(shape=(4, 4)).solve(torch.zeros(16), torch.linspace(0, 1, 3)),
     ValueError, r"`x0` must have shape \(N, 16\)"),
])
def test_new_system_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_new_systems_refuse_requests_that_cannot_fit(monkeypatch):
    monkeypatch.setattr("concernet_ode._checks.available_memory", lambda: 2**30)
    with pytest.raises(MemoryError, match=r"`n_traj` = 10000 trajectories of `n_times` = 21 "
                                          r"states of dimension 4096 need about"):
        HeatEquation2D().trajectories(10_000, t_end=1.0, n_times=21, seed=0, progress=False)
    with pytest.raises(MemoryError, match=r"of dimension 128 need about"):
        WaveEquation1D().trajectories(10**6, t_end=1.0, n_times=33, seed=0, progress=False)


@pytest.mark.slow
def test_protocol_training_sets_of_the_new_systems_within_a_minute():
    import time

    for system in (HeatEquation2D(), WaveEquation1D()):
        system.trajectories(1, t_end=0.1, n_times=2, seed=0, progress=False)  # compile
        start = time.perf_counter()
        data = system.trajectories(system.train_traj, t_end=system.train_t_end,
                                   n_times=system.train_n_times, noise=system.noise, seed=0,
                                   progress=False)
        assert time.perf_counter() - start < 60
        assert data.x.shape == (system.train_traj, system.train_n_times, system.state_dim)
