"""The benchmark systems: shapes, protocol, conservation, derivatives and reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from concernet_ode import TrajectoryData
from concernet_ode.systems import (
    ChemicalKinetics,
    ConservativeSystem,
    Kepler,
    LotkaVolterra,
    Pendulum,
    RigidBody,
    SpringMass,
)

SYSTEMS = [SpringMass(), ChemicalKinetics(), Kepler()]
IDS = [s.name for s in SYSTEMS]


@pytest.fixture(params=SYSTEMS, ids=IDS)
def system(request) -> ConservativeSystem:
    return request.param


def test_protocol_constants():
    spring, chem, kep = SYSTEMS
    assert (spring.train_traj, spring.train_t_end, spring.train_n_times) == (50, 3.0, 30)
    assert (chem.train_traj, chem.train_t_end, chem.train_n_times) == (100, 3.0, 30)
    assert (kep.train_traj, kep.train_t_end, kep.train_n_times) == (100, 10.0, 100)
    assert [s.eval_t_end for s in SYSTEMS] == [50.0, 10.0, 5.0]
    assert all(s.eval_traj == 10 and s.eval_n_times == 1001 for s in SYSTEMS)
    assert all(s.noise == 0.01 for s in SYSTEMS)
    assert not any(hasattr(s, "activation") or hasattr(s, "latent_dim") for s in SYSTEMS)
    assert chem.k1 == pytest.approx(10 * math.exp(-5.74e3 / (8.31 * 250)))
    assert chem.k2 == pytest.approx(10 * math.exp(-7.47e3 / (8.31 * 250)))


def test_shapes_and_dtype(system, dtype):
    n, m = system.state_dim, system.n_invariants
    assert n == len(system.state_names) and m == len(system.invariant_names)
    x = system.sample_initial(6, seed=0).to(dtype).reshape(2, 3, n)
    assert system.vector_field(0.0, x).shape == (2, 3, n)
    assert system.vector_field(0.0, x).dtype == dtype
    assert system.invariants(x).shape == (2, 3, m)
    data = system.trajectories(4, t_end=1.0, n_times=7, seed=0, dtype=dtype)
    assert isinstance(data, TrajectoryData)
    assert data.x.shape == (4, 7, n) and data.t.shape == (7,) and data.x.dtype == dtype


def test_invariants_conserved_and_field_tangent(system):
    data = system.trajectories(8, t_end=system.eval_t_end, n_times=201, seed=3, evaluation=True)
    h = system.invariants(data.x)
    scale = h.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    assert float(((h - h[:, :1]) / scale).abs().max()) < 1e-9
    # dH/dt = grad H . f = 0 pointwise, checked by autograd on the true invariants.
    x = data.x.reshape(-1, system.state_dim).requires_grad_(True)
    for i in range(system.n_invariants):
        (g,) = torch.autograd.grad(system.invariants(x)[..., i].sum(), x)
        rate = (g * system.vector_field(0.0, x)).sum(-1).detach()
        assert float(rate.abs().max()) < 1e-9 * float(g.abs().max() * data.dxdt.abs().max())


def test_derivatives_match_finite_differences(system):
    data = system.trajectories(5, t_end=1.0, n_times=2001, seed=1)
    dt = float(data.t[1] - data.t[0])
    central = (data.x[:, 2:] - data.x[:, :-2]) / (2 * dt)
    err = (central - data.dxdt[:, 1:-1]).abs().max() / data.dxdt.abs().max()
    assert float(err) < 1e-4  # central differences are O(dt^2) = O(2.5e-7) times f'''


def test_numerical_solver_agrees_with_exact_solution(system):
    x0 = system.sample_initial(6, seed=2, evaluation=True)
    t = torch.linspace(0, system.eval_t_end / 5, 50, dtype=torch.float64)
    exact = system.solve(x0, t)
    numeric = ConservativeSystem.solve(system, x0, t)
    assert exact.shape == (6, 50, system.state_dim)
    scale = float(exact.abs().max())
    assert float((exact - numeric).abs().max()) < 1e-6 * scale


def test_seeds_reproducible(system):
    a = system.trajectories(3, t_end=1.0, n_times=5, noise=0.01, seed=7)
    b = system.trajectories(3, t_end=1.0, n_times=5, noise=0.01, seed=7)
    c = system.trajectories(3, t_end=1.0, n_times=5, noise=0.01, seed=8)
    assert torch.equal(a.x, b.x) and torch.equal(a.dxdt, b.dxdt)
    assert not torch.equal(a.x, c.x)
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(system.sample_initial(3, seed=gen), system.sample_initial(3, seed=7))


def test_noise_added_to_states_and_derivatives(system):
    clean = system.trajectories(50, t_end=1.0, n_times=20, seed=4)
    noisy = system.trajectories(50, t_end=1.0, n_times=20, noise=0.01, seed=4)
    for a, b in ((clean.x, noisy.x), (clean.dxdt, noisy.dxdt)):
        assert float((a - b).std()) == pytest.approx(0.01, rel=0.05)


def test_train_data_split_in_half(system):
    train, test = system.train_data(0)
    assert train.n_traj == test.n_traj == system.train_traj // 2
    assert train.n_times == system.train_n_times
    assert float(train.t[-1]) == pytest.approx(system.train_t_end)


def test_train_data_without_noise_is_the_same_split_of_clean_trajectories(system):
    (noisy, noisy_test), (clean, clean_test) = (system.train_data(3, noise=flag)
                                                for flag in (True, False))
    for a, b in ((noisy, clean), (noisy_test, clean_test)):
        assert float((a.x - b.x).std()) == pytest.approx(system.noise, rel=0.1)
        assert float((a.x - b.x).abs().max()) < 6 * system.noise  # same trajectories
    # noise-free: the derivatives are the field's at the states
    torch.testing.assert_close(clean.dxdt, system.vector_field(clean.t, clean.x))


def test_initial_distributions():
    spring, chem, kep = SYSTEMS
    r = spring.sample_initial(2000, seed=0).norm(dim=-1)
    assert 0.3 <= float(r.min()) and float(r.max()) <= 1.2
    x = chem.sample_initial(2000, seed=0)
    assert bool((x > 0).all()) and float(x.norm(dim=-1).max()) <= 100.1
    assert float(x.sum(-1).max()) < 100.1 * math.sqrt(2)
    mass = chem.sample_initial(2000, seed=0, evaluation=True).sum(-1)
    assert 150 < float(mass.max()) <= 200.2  # evaluation extrapolates past training masses
    s = kep.sample_initial(2000, seed=0)
    pos, vel = s[..., :2], s[..., 2:]
    r = pos.norm(dim=-1)
    assert 0.1 <= float(r.min()) and float(r.max()) <= 1.0
    assert float((pos * vel).sum(-1).abs().max()) < 1e-12  # tangential
    ratio = vel.pow(2).sum(-1) * r
    assert 1.0 <= float(ratio.min()) and float(ratio.max()) <= 1.3


def test_kepler_closed_orbit_returns():
    kep = Kepler()
    x0 = kep.sample_initial(4, seed=5)
    energy = kep.invariants(x0)[..., 0]
    period = 2 * math.pi * (-0.5 / energy).pow(1.5)
    for i in range(4):
        t = torch.stack([torch.zeros((), dtype=torch.float64), period[i]])
        x = kep.solve(x0[i : i + 1], t)
        assert torch.allclose(x[0, 1], x0[i], atol=1e-9)


def test_errors():
    spring = SpringMass()
    with pytest.raises(ValueError, match=r"`x` must have shape \(\.\.\., 2\)"):
        spring.invariants(torch.zeros(3, 4))
    with pytest.raises(TypeError, match=r"`x` must be a torch\.Tensor"):
        spring.vector_field(0.0, [1.0, 2.0])
    with pytest.raises(ValueError, match="`n` must be an int >= 1"):
        spring.sample_initial(0, seed=0)
    with pytest.raises(TypeError, match=r"`seed` must be an int or a torch\.Generator"):
        spring.sample_initial(3, seed=1.5)
    with pytest.raises(ValueError, match="`n_times` must be an int >= 2"):
        spring.trajectories(3, t_end=1.0, n_times=1, seed=0)
    with pytest.raises(ValueError, match="`t_end` must be a positive finite number"):
        spring.trajectories(3, t_end=-1.0, n_times=5, seed=0)
    with pytest.raises(ValueError, match=r"`x0` must have shape \(N, 2\)"):
        spring.solve(torch.zeros(2), torch.linspace(0, 1, 3))


# ---------------------------------------------------------------- size, memory, bad states


def test_a_request_that_cannot_fit_fails_at_once(monkeypatch):
    # 10**8 trajectories of 30 float64 states (q, p), their derivatives and the noise need
    # 4 * 10**8 * 30 * 2 * 8 bytes = 179 GiB; with 1 GiB free nothing is allocated.
    monkeypatch.setattr("concernet_ode._checks.available_memory", lambda: 2**30)
    with pytest.raises(MemoryError, match=r"`n_traj` = 100000000 trajectories of `n_times` = "
                                          r"30 states of dimension 2 need about 178\.8 GiB of "
                                          r"memory, but 1\.0 GiB is available: ask for fewer"):
        SpringMass().trajectories(10**8, t_end=3.0, n_times=30, noise=0.01, seed=0)
    # where the system does not say how much is free, nothing is refused
    monkeypatch.setattr("concernet_ode._checks.available_memory", lambda: None)
    assert SpringMass().trajectories(3, t_end=1.0, n_times=4, seed=0).x.shape == (3, 4, 2)


def test_the_machine_reports_its_available_memory():
    from concernet_ode._checks import available_memory

    free = available_memory()
    if free is None:
        pytest.skip("this system does not report its available memory")
    assert free > 0
    with pytest.raises(MemoryError, match="need about"):  # far past any machine's memory
        Kepler().trajectories(10**12, t_end=1.0, n_times=100, seed=0)


@pytest.mark.parametrize("system", [SpringMass(), Kepler()], ids=["spring", "kepler"])
def test_large_requests_are_solved_in_chunks(monkeypatch, system):
    import concernet_ode.systems.base as base

    whole = system.trajectories(7, t_end=1.0, n_times=5, noise=0.01, seed=3)
    monkeypatch.setattr(base, "CHUNK", 3)
    chunked = system.trajectories(7, t_end=1.0, n_times=5, noise=0.01, seed=3)
    # spring: a closed form, the same to the bit; Kepler: Newton's iterations per chunk
    torch.testing.assert_close(chunked.x, whole.x, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(chunked.dxdt, whole.dxdt, rtol=1e-13, atol=1e-13)


def test_non_finite_initial_states_are_named(system):
    x0 = system.sample_initial(3, seed=0)
    x0[1, 0] = float("nan")
    t = torch.linspace(0, 1, 3, dtype=torch.float64)
    for solve in (system.solve, lambda x, s: ConservativeSystem.solve(system, x, s)):
        with pytest.raises(ValueError, match=r"`x0` is not finite \(NaN or inf\) at 1 of 3 "
                                             r"sample\(s\), indices \[1\]"):
            solve(x0, t)


def test_trajectory_arguments_are_checked_before_any_work():
    spring = SpringMass()
    with pytest.raises(ValueError, match="`n_traj` must be an int >= 1, got 0"):
        spring.trajectories(0, t_end=1.0, n_times=5, seed=0)
    with pytest.raises(ValueError, match=r"`noise` must be a finite number >= 0, got -0\.1"):
        spring.trajectories(3, t_end=1.0, n_times=5, noise=-0.1, seed=0)


# ---------------------------------------------------------------- systems outside the paper

OTHERS = [Pendulum(3.0), LotkaVolterra(), RigidBody()]


@pytest.fixture(params=OTHERS, ids=[s.name for s in OTHERS])
def other(request) -> ConservativeSystem:
    return request.param


def test_other_systems_conserve_their_invariants(other):
    data = other.trajectories(6, t_end=other.eval_t_end, n_times=101, seed=3)
    assert data.x.shape == (6, 101, other.state_dim)
    h = other.invariants(data.x)
    assert h.shape == (6, 101, other.n_invariants)
    scale = h.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    assert float(((h - h[:, :1]) / scale).abs().max()) < 1e-9
    x = data.x.reshape(-1, other.state_dim).requires_grad_(True)
    for i in range(other.n_invariants):
        (g,) = torch.autograd.grad(other.invariants(x)[..., i].sum(), x)
        rate = (g * other.vector_field(0.0, x)).sum(-1).detach()
        assert float(rate.abs().max()) < 1e-12 * float(g.abs().max() * data.dxdt.abs().max())


def test_other_systems_invariants_vary_across_trajectories(other):
    # Each invariant must spread over the initial states, or no data could identify it.
    h = other.invariants(other.sample_initial(200, seed=0))
    spread = h.std(0) / h.abs().mean(0)
    assert bool((spread > 0.05).all())


def test_lotka_volterra_stays_positive_and_circles_its_equilibrium():
    lv = LotkaVolterra()
    assert lv.equilibrium == (2.0, 2.0)
    data = lv.trajectories(10, t_end=lv.eval_t_end, n_times=201, seed=0)
    assert bool((data.x > 0).all())
    rest = torch.tensor([[2.0, 2.0]], dtype=torch.float64)
    assert float(lv.vector_field(0.0, rest).abs().max()) == 0.0
    with pytest.raises(ValueError, match="`b` must be a finite number > 0, got -1"):
        LotkaVolterra(b=-1)


def test_rigid_body_invariants_and_errors():
    body = RigidBody()
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    # rotation about a principal axis is steady; |m|^2 and energy m_i^2 / (2 I_i)
    assert float(body.vector_field(0.0, x).abs().max()) == 0.0
    assert body.invariants(x).tolist() == [[1.0, 0.5], [4.0, 1.0]]
    with pytest.raises(ValueError, match="`inertia` must be three positive numbers"):
        RigidBody((1.0, 2.0))
    with pytest.raises(ValueError, match="`inertia` must be a finite number > 0, got 0"):
        RigidBody((1.0, 0, 3.0))
