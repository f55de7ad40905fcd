"""Tests of normal_flow_loss and refine_invariants."""

from __future__ import annotations

import copy

import pytest
import torch
from torchdiffeq import odeint

from concernet_ode import (
    InvariantNet,
    TrajectoryData,
    fit_invariants,
    invariant_fidelity,
    normal_flow_loss,
    refine_invariants,
)
from concernet_ode import training as training_module
from concernet_ode._jacobian import invariant_jacobian
from concernet_ode.systems import ChemicalKinetics, Kepler, SpringMass


def _energy(x):
    return x.pow(2).sum(-1)


def test_zero_for_true_invariants_and_the_radial_flow_otherwise(rng):
    x = torch.randn(50, 2, generator=rng, dtype=torch.float64)
    rotation = torch.stack([2 * x[..., 1], -2 * x[..., 0]], -1)
    with torch.no_grad():
        assert float(normal_flow_loss(_energy, x, rotation)) < 1e-28
        # The flow 3 x is all normal to the circles: the loss is the mean of |3 x|^2.
        loss = normal_flow_loss(_energy, x, 3 * x)
    torch.testing.assert_close(loss, (9 * x.pow(2).sum(-1)).mean())
    # Two invariants (Kepler's E and L) along the true flow: nothing is normal to both.
    kepler = Kepler()
    y = kepler.sample_initial(20, seed=0).double()
    with torch.no_grad():
        assert float(normal_flow_loss(kepler.invariants, y, kepler.vector_field(0.0, y))) < 1e-24


def test_one_invariant_agrees_with_the_general_path(rng):
    x = torch.randn(40, 3, generator=rng, dtype=torch.float64)
    v = torch.randn(40, 3, generator=rng, dtype=torch.float64)

    def H(x):
        return torch.sin(x[..., 0]) * x[..., 1] + x[..., 2].pow(3)

    def twice(x):  # the same invariant twice: its second row is dependent and dropped
        return torch.stack([H(x), 2 * H(x)], -1)

    torch.testing.assert_close(normal_flow_loss(H, x, v), normal_flow_loss(twice, x, v),
                               rtol=1e-12, atol=0)
    # A critical point (zero gradient) counts as no normal flow, on either path.
    zero = torch.zeros(3, 3, dtype=torch.float64)
    with torch.no_grad():
        assert float(normal_flow_loss(_energy, zero, torch.ones_like(zero))) == 0.0
        assert float(normal_flow_loss(lambda x: torch.stack([_energy(x)] * 2, -1), zero,
                                      torch.ones_like(zero))) == 0.0


def test_depends_on_the_level_sets_only(rng):
    x = torch.randn(30, 3, generator=rng, dtype=torch.float64)
    v = torch.randn(30, 3, generator=rng, dtype=torch.float64)

    def H(x):
        return torch.stack([x.pow(3).sum(-1), torch.sin(x[..., 0]) * x[..., 2]], -1)

    def relabelled(x):  # an invertible map of the two invariants: same level sets
        h = H(x)
        return torch.stack([5 * h[..., 0] - 2 * h[..., 1], torch.exp(h[..., 1])], -1)

    torch.testing.assert_close(normal_flow_loss(relabelled, x, v), normal_flow_loss(H, x, v),
                               rtol=1e-10, atol=0)
    # And it is the squared length of v's projection onto the row space of dH/dx.
    _, jac = invariant_jacobian(H, x)
    coef = torch.linalg.lstsq(jac.mT, v.unsqueeze(-1)).solution
    normal = (jac.mT @ coef).squeeze(-1)
    torch.testing.assert_close(normal_flow_loss(H, x, v), normal.pow(2).sum(-1).mean())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"`dxdt` must be a tensor of the shape of `x`, \(4, 2\)"):
        normal_flow_loss(_energy, torch.zeros(4, 2), torch.zeros(4, 3))
    data = ChemicalKinetics().trajectories(4, t_end=1.0, n_times=5, seed=0)
    with pytest.raises(TypeError, match=r"`model` must be an nn\.Module"):
        refine_invariants(_energy, data, epochs=1, progress=False)
    with pytest.raises(TypeError, match="`data` must be a TrajectoryData"):
        refine_invariants(InvariantNet(2, 1), data.x, epochs=1, progress=False)
    with pytest.raises(ValueError, match="`lr` must be a positive finite number, got 0"):
        refine_invariants(InvariantNet(2, 1), data, epochs=1, lr=0, progress=False)


def _tilt(H, x):
    """Mean 1 - |cos| between grad H and the chemical system's true gradient (1, 1)."""
    with torch.no_grad():
        g = invariant_jacobian(H, x)[1][..., 0, :]
    return float((1 - g.sum(-1).abs() / (g.norm(dim=-1) * 2 ** 0.5)).mean())


def _contrastive_chemical():
    system = ChemicalKinetics()
    data = system.trajectories(20, t_end=3.0, n_times=10, noise=0.01, seed=0,
                               dtype=torch.float32)
    torch.manual_seed(0)
    H = InvariantNet(2, 1, hidden=32, activation="relu")
    fit_invariants(H, data, epochs=100, batch_size=10, normalize=False, seed=0, progress=False)
    return system, data, H


def test_refinement_straightens_the_level_sets_and_is_deterministic():
    system, data, H = _contrastive_chemical()
    fresh = system.sample_initial(500, seed=1, evaluation=True).float()
    before = _tilt(H, fresh)
    state = {k: v.clone() for k, v in H.state_dict().items()}
    history = refine_invariants(H, data, epochs=40, batch_size=50, lr=1e-3, seed=0,
                                progress=False)
    after = _tilt(H, fresh)
    assert len(history["loss"]) == 40
    assert history["loss"][-1] < 0.5 * history["loss"][0], history["loss"][::10]
    assert after < 0.5 * before, (before, after)
    again = InvariantNet(2, 1, hidden=32, activation="relu")
    again.load_state_dict(state)
    refine_invariants(again, data, epochs=40, batch_size=50, lr=1e-3, seed=0, progress=False)
    for a, b in zip(H.parameters(), again.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- the validation guard
#
# Issue 19's case: on a pendulum with a differently scaled potential, refinement at a large
# step turned a good contrastive invariant into a useless one. The pendulum is written out
# here, H = p^2 / 2 + k (1 - cos q) with k = 10, small enough for a test.

K = 10.0


def _pendulum_field(t, x):
    q, p = x.unbind(-1)
    return torch.stack([p, -K * torch.sin(q)], -1)


def _pendulum_energy(x):
    q, p = x.unbind(-1)
    return (p.square() / 2 + K * (1 - torch.cos(q))).unsqueeze(-1)


def _pendulum(n_traj: int, seed: int) -> TrajectoryData:
    """Noisy float64 trajectories: angles U(-2, 2), momenta U(-1, 1) sqrt(k), t in [0, 3]."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n_traj, 2, generator=gen, dtype=torch.float64) * 2 - 1
    x0 = torch.stack([2.0 * u[:, 0], K**0.5 * u[:, 1]], -1)
    t = torch.linspace(0.0, 3.0, 20, dtype=torch.float64)
    x = odeint(_pendulum_field, x0, t, rtol=1e-9, atol=1e-9).movedim(0, 1)
    return TrajectoryData(t, x, _pendulum_field(t, x)).with_noise(0.01, seed=gen)


@pytest.fixture(scope="module")
def pendulum():
    """Training and held-out trajectories, and a contrastive invariant (float32) of the
    training ones: the float64 data train the float32 network as they are."""
    train, held_out = _pendulum(40, seed=0), _pendulum(40, seed=1)
    torch.manual_seed(0)
    H = InvariantNet(2, 1, hidden=32)
    fit_invariants(H, train, epochs=150, lr=3e-3, seed=0, progress=False)
    return train, held_out, H


def _held_out(H, data: TrajectoryData) -> tuple[float, float]:
    """R^2 against the energy, and the normal flow, on held-out trajectories."""
    x, dxdt = (v.float() for v in data.points())
    with torch.no_grad():
        r2 = float(invariant_fidelity(H(x), _pendulum_energy(x)).squeeze())
        return r2, float(normal_flow_loss(H, x, dxdt))


def test_refinement_at_a_ruinous_step_ends_no_worse_than_it_started(pendulum):
    train, held_out, H = pendulum
    r2_start, flow_start = _held_out(H, held_out)
    assert r2_start > 0.95  # a good invariant to start from
    ruined = copy.deepcopy(H)  # what the unguarded stage does to it
    refine_invariants(ruined, train, epochs=30, batch_size=50, lr=0.1, progress=False,
                      validation=None)
    r2_ruined, flow_ruined = _held_out(ruined, held_out)
    assert r2_ruined < 0.5 and flow_ruined > 10 * flow_start, (r2_ruined, flow_ruined)
    guarded = copy.deepcopy(H)  # the defaults: no extra argument
    history = refine_invariants(guarded, train, epochs=30, batch_size=50, lr=0.1,
                                progress=False)
    r2_end, flow_end = _held_out(guarded, held_out)
    assert flow_end <= flow_start and r2_end >= r2_start - 1e-6, (r2_end, flow_end)
    val = history["val_loss"]
    assert len(val) == len(history["loss"]) + 1
    assert val[history["best_epoch"]] == min(val) <= val[0]
    assert history["restored_start"] == (history["best_epoch"] == 0)


def test_the_guard_keeps_what_a_good_step_gains(pendulum):
    train, held_out, H = pendulum
    r2_start, flow_start = _held_out(H, held_out)
    refined = copy.deepcopy(H)
    history = refine_invariants(refined, train, epochs=30, batch_size=50, lr=1e-2,
                                progress=False)
    r2_end, flow_end = _held_out(refined, held_out)
    assert flow_end < 0.2 * flow_start and r2_end > r2_start, (flow_start, flow_end)
    assert history["best_epoch"] > 0 and not history["restored_start"]


def test_the_guard_restores_the_start_exactly_when_nothing_improves(pendulum):
    train, _, H = pendulum
    refined = copy.deepcopy(H)
    history = refine_invariants(refined, train, epochs=12, batch_size=50, lr=1.0,
                                patience=4, progress=False)
    assert history["restored_start"] and history["best_epoch"] == 0
    assert history["stopped_early"] and len(history["loss"]) == 4
    for a, b in zip(H.parameters(), refined.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_collapsed_invariant_scores_worst_not_best():
    # At an absurd step the tanh units saturate: dH/dx = 0 everywhere, a training loss of 0
    # (no gradient, no normal flow), and a useless H. The guard's score counts the lost
    # gradient as all of the flow being normal to it, and keeps the start.
    data = SpringMass().trajectories(8, t_end=3.0, n_times=10, noise=0.01, seed=0)
    torch.manual_seed(0)
    H = InvariantNet(2, 1, hidden=8)
    start = [p.detach().clone() for p in H.parameters()]
    history = refine_invariants(H, data, epochs=5, batch_size=4, lr=1e36, patience=5,
                                progress=False)
    assert history["loss"][-1] == 0.0
    assert min(history["val_loss"][1:]) > history["val_loss"][0]
    assert history["restored_start"]
    assert all(torch.equal(a, b) for a, b in zip(start, H.parameters(), strict=True))


def test_the_guard_only_watches(pendulum):
    # With held-out trajectories of its own and no early stop, the guarded stage takes the
    # unguarded stage's steps (the same losses); it only chooses which state to keep.
    train, held_out, H = pendulum
    plain, watched = copy.deepcopy(H), copy.deepcopy(H)
    unguarded = refine_invariants(plain, train, epochs=6, batch_size=50, lr=1e-3,
                                  progress=False, validation=None)
    guarded = refine_invariants(watched, train, epochs=6, batch_size=50, lr=1e-3,
                                progress=False, validation=held_out, patience=6)
    assert guarded["loss"] == unguarded["loss"]
    assert unguarded["val_loss"] == [] and unguarded["best_epoch"] == 6
    assert not unguarded["stopped_early"] and not unguarded["restored_start"]
    x, dxdt = (v.float() for v in held_out.points())
    with torch.no_grad():
        assert guarded["val_loss"][0] == pytest.approx(float(normal_flow_loss(H, x, dxdt)))
    if guarded["best_epoch"] == 6:
        for a, b in zip(plain.parameters(), watched.parameters(), strict=True):
            assert torch.equal(a, b)


def test_the_guard_restores_the_best_state_before_an_error_propagates(pendulum, monkeypatch):
    train, _, H = pendulum
    calls = {"n": 0}

    def fails_later(model, x, dxdt):  # the training loss turns NaN in the third epoch
        calls["n"] += 1
        loss = normal_flow_loss(model, x, dxdt)
        return loss * float("nan") if calls["n"] > 2 * 13 else loss

    monkeypatch.setattr(training_module, "normal_flow_loss", fails_later)
    refined = copy.deepcopy(H)
    with pytest.raises(RuntimeError, match=r"the refine training loss became nan at epoch 3 of "
                                           r"10.*`model` was restored to its state of epoch "
                                           r"\d, the best on the held-out trajectories"):
        refine_invariants(refined, train, epochs=10, batch_size=50, lr=1e-3, progress=False)
    monkeypatch.undo()
    # the state kept is one the guard scored, never the one the error interrupted
    _, held = training_module._check_validation(0.2, train.to(torch.float32), refined, 0)
    x, dxdt = held.points()
    score = training_module._guard_score(refined, x, dxdt)
    start = training_module._guard_score(H, x, dxdt)
    assert score <= start


def test_guard_arguments_are_checked(pendulum):
    train, _, H = pendulum
    H = copy.deepcopy(H)
    match = (r"`validation` must be a fraction in \(0, 1\) of the trajectories of `data` to "
             r"hold out, a TrajectoryData of held-out trajectories, or None to refine without "
             r"the guard; got")
    for bad in (0.0, 1.0, True, "half"):
        with pytest.raises(ValueError, match=match):
            refine_invariants(H, train, epochs=1, validation=bad, progress=False)
    with pytest.raises(ValueError, match=r"`validation` = 0\.2 holds out part of the "
                                         r"trajectories of `data`, but it has 1: pass "
                                         r"`validation=` a TrajectoryData"):
        refine_invariants(H, train[:1], epochs=1, progress=False)
    other = Kepler().trajectories(2, t_end=1.0, n_times=5, seed=0)
    with pytest.raises(ValueError, match="`validation` has states of dimension 4, `data` of 2"):
        refine_invariants(H, train, epochs=1, validation=other, progress=False)
    with pytest.raises(ValueError, match=r"`validation` \(the held-out normal flow\) needs the "
                                         r"time derivatives"):
        refine_invariants(H, train, epochs=1, validation=TrajectoryData(train.t, train.x),
                          progress=False)
    with pytest.raises(ValueError, match="`patience` must be a positive int, got 0"):
        refine_invariants(H, train, epochs=1, patience=0, progress=False)
    with pytest.raises(ValueError, match=r"`data` holds no samples \(x of shape \(0, 20, 2\)"):
        refine_invariants(H, train[torch.arange(0)], epochs=1, progress=False)


def test_the_guard_score_counts_a_lost_invariant_as_all_of_the_flow():
    kepler = Kepler()
    x = kepler.sample_initial(30, seed=0)
    v = kepler.vector_field(0.0, x)
    flow = float(v.pow(2).sum(-1).mean())
    score = training_module._guard_score
    assert score(kepler.invariants, x, v) < 1e-24 * flow  # E and L: nothing is normal

    def energy_twice(y):  # the second row depends on the first: one invariant is lost
        e = kepler.invariants(y)[..., :1]
        return torch.cat([e, 3 * e], -1)

    assert score(energy_twice, x, v) == pytest.approx(flow, rel=1e-12)
    # normal_flow_loss, which refinement minimises, calls both of these perfect
    with torch.no_grad():
        assert float(normal_flow_loss(energy_twice, x, v)) < 1e-24 * flow
    assert score(lambda y: 0.0 * y.sum(-1), x, v) == pytest.approx(flow, rel=1e-12)


def test_normal_flow_of_a_nan_gradient_is_nan_not_zero():
    """A network whose gradient overflowed must not train silently at loss 0."""
    from concernet_ode import flow_alignment_loss, normal_flow_loss

    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    v = torch.ones_like(x)

    def H(y):  # NaN gradient at the second state only
        return torch.where(y[..., :1] > 0.7, y.pow(2).sum(-1, keepdim=True),
                           torch.sqrt(-y[..., :1].abs()))

    assert torch.isnan(normal_flow_loss(H, x, v))
    assert torch.isnan(flow_alignment_loss(H, x, v))
    # a genuinely vanishing gradient (a critical point) still counts as no normal flow
    origin = torch.zeros(1, 2, dtype=torch.float64)
    assert float(normal_flow_loss(lambda y: y.pow(2).sum(-1), origin, v[:1])) == 0.0
