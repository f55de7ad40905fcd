"""Tests of the py-pde heat system: the torch field against py-pde, conservation, data."""

from __future__ import annotations

import pytest
import torch

from concernet_ode.integrations.py_pde import HeatEquation1D

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
