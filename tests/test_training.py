"""Tests of the three training loops: quick runs on tiny data, determinism, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from concernet_ode import (
    MLP,
    Autoencoder,
    InvariantNet,
    ProjectedVectorField,
    TrajectoryData,
    cosine_schedule,
    fit_autoencoder,
    fit_dynamics,
    fit_invariants,
)
from concernet_ode.systems import SpringMass


@pytest.fixture(scope="module")
def spring_data() -> TrajectoryData:
    return SpringMass().trajectories(8, t_end=3.0, n_times=10, noise=0.01, seed=0,
                                     dtype=torch.float32)


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


# ---------------------------------------------------------------- fit_invariants


def test_fit_invariants_decreases_loss(spring_data):
    torch.manual_seed(0)
    net = InvariantNet(2, 1, hidden=16)
    hist = fit_invariants(net, spring_data, epochs=20, batch_size=4, lr=1e-2, progress=False)
    assert len(hist["loss"]) == 20
    assert sum(hist["loss"][-5:]) < sum(hist["loss"][:5])


def test_fit_invariants_is_deterministic_given_seed(spring_data):
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        net = InvariantNet(2, 1, hidden=8)
        hist = fit_invariants(net, spring_data, epochs=3, batch_size=3, seed=7, progress=False)
        runs.append((hist["loss"], _params(net)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


def test_fit_invariants_seed_changes_batch_order(spring_data):
    losses = []
    for seed in (0, 1):
        torch.manual_seed(3)
        net = InvariantNet(2, 1, hidden=8)
        losses.append(fit_invariants(net, spring_data, epochs=2, batch_size=3, seed=seed,
                                     progress=False)["loss"])
    assert losses[0] != losses[1]


def test_fit_invariants_records_val_loss_and_handles_a_last_single_trajectory(spring_data):
    torch.manual_seed(0)
    net = InvariantNet(2, 2, hidden=8)
    train, val = spring_data[:5], spring_data[5:]  # batches of 2: the last holds one trajectory
    hist = fit_invariants(net, train, epochs=2, batch_size=2, val_data=val, progress=False)
    assert len(hist["val_loss"]) == 2
    assert all(torch.isfinite(torch.tensor(hist["loss"] + hist["val_loss"])))


def test_fit_invariants_weight_decay_is_decoupled_and_spares_biases(spring_data):
    # One step over one batch: the same Adam update from the same gradient, plus (AdamW) a
    # shrink of every weight matrix by lr * weight_decay; biases get the plain update. An L2
    # term in the loss would instead pass through Adam's scaling and give another difference.
    lr, decay, after = 1e-2, 0.5, []
    for wd in (0.0, decay):
        torch.manual_seed(0)
        net = InvariantNet(2, 1, hidden=8)
        start = _params(net)
        fit_invariants(net, spring_data, epochs=1, batch_size=8, lr=lr, weight_decay=wd,
                       progress=False)
        after.append(_params(net))
    kinds = set()
    for p0, plain, decayed in zip(start, *after, strict=True):
        shrink = -lr * decay * p0 if p0.dim() >= 2 else torch.zeros_like(p0)
        torch.testing.assert_close(decayed - plain, shrink, rtol=1e-4, atol=1e-7)
        kinds.add(p0.dim() >= 2 and bool((p0 != 0).any()))
    assert kinds == {True, False}  # both nonzero weights and biases were checked


def test_fit_invariants_errors(spring_data):
    net = InvariantNet(2, 1, hidden=4)
    with pytest.raises(TypeError, match="`data` must be a TrajectoryData, got Tensor"):
        fit_invariants(net, spring_data.x, epochs=1)
    with pytest.raises(TypeError, match="`val_data` must be a TrajectoryData, got str"):
        fit_invariants(net, spring_data, epochs=1, val_data="x")
    with pytest.raises(ValueError, match="`epochs` must be a positive int, got 0"):
        fit_invariants(net, spring_data, epochs=0)
    with pytest.raises(ValueError, match="`lr` must be a positive finite number, got -1"):
        fit_invariants(net, spring_data, epochs=1, lr=-1)
    with pytest.raises(ValueError, match=r"at least 2 for a contrastive loss.*batch_size = 1"):
        fit_invariants(net, spring_data, epochs=1, batch_size=1)
    with pytest.raises(ValueError, match=r"at least 2.*1 trajectories"):
        fit_invariants(net, spring_data[:1], epochs=1)
    with pytest.raises(ValueError, match=r"`weight_decay` must be a finite number >= 0, got -0\.1"):
        fit_invariants(net, spring_data, epochs=1, weight_decay=-0.1)
    net.requires_grad_(False)
    with pytest.raises(ValueError, match=r"`positives` must be one of \('sum', 'mean'\)"):
        fit_invariants(InvariantNet(2, 1), spring_data, epochs=1, positives="all",
                       progress=False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        fit_invariants(net, spring_data, epochs=1)


# ---------------------------------------------------------------- fit_dynamics


def test_fit_dynamics_decreases_loss(spring_data):
    torch.manual_seed(0)
    f = MLP(2, 2, hidden=16)
    hist = fit_dynamics(f, spring_data, epochs=15, batch_size=10, lr=1e-2, progress=False)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]


def test_fit_dynamics_freezes_projected_invariants_by_default(spring_data):
    torch.manual_seed(0)
    field = ProjectedVectorField(MLP(2, 2, hidden=8), InvariantNet(2, 1, hidden=8))
    h_before, f_before = _params(field.invariants), _params(field.field)
    hist = fit_dynamics(field, spring_data, epochs=3, batch_size=20, progress=False)
    assert hist["loss"][-1] < hist["loss"][0]
    assert all(torch.equal(a, b) for a, b in zip(h_before, _params(field.invariants),
                                                 strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(f_before, _params(field.field),
                                                     strict=True))
    # The freeze is temporary: the invariant network trains again afterwards.
    assert all(p.requires_grad for p in field.invariants.parameters())


def test_fit_dynamics_trains_projected_invariants_on_request(spring_data):
    torch.manual_seed(0)
    field = ProjectedVectorField(MLP(2, 2, hidden=8), InvariantNet(2, 1, hidden=8))
    h_before = _params(field.invariants)
    fit_dynamics(field, spring_data, epochs=1, batch_size=20, train_invariants=True,
                 progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(h_before, _params(field.invariants),
                                                     strict=True))


def test_fit_dynamics_is_deterministic_given_seed(spring_data):
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        f = MLP(2, 2, hidden=8)
        runs.append(fit_dynamics(f, spring_data, epochs=2, seed=5, progress=False)["loss"])
    assert runs[0] == runs[1]


def test_fit_dynamics_errors(spring_data):
    with pytest.raises(TypeError, match="`model` must be callable"):
        fit_dynamics(3, spring_data)
    with pytest.raises(TypeError, match=r"`model` must be an nn.Module.*got function"):
        fit_dynamics(lambda x: x, spring_data)
    with pytest.raises(TypeError, match="`data` must be a TrajectoryData, got tuple"):
        fit_dynamics(MLP(2, 2), (spring_data.x, spring_data.dxdt))
    with pytest.raises(ValueError, match="`batch_size` must be a positive int, got 0"):
        fit_dynamics(MLP(2, 2), spring_data, batch_size=0)
    with pytest.raises(ValueError, match=r"`model\(x\)` must have the same shape as `x`"):
        fit_dynamics(MLP(2, 3), spring_data, epochs=1)


# ---------------------------------------------------------------- fit_autoencoder


@pytest.mark.parametrize("as_tensor", [False, True])
def test_fit_autoencoder_decreases_loss(spring_data, as_tensor):
    torch.manual_seed(0)
    ae = Autoencoder(2, 2, hidden=(16,))
    data = spring_data.x if as_tensor else spring_data
    hist = fit_autoencoder(ae, data, epochs=20, batch_size=10, lr=1e-2, progress=False)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]


def test_fit_autoencoder_errors():
    ae = Autoencoder(2, 1, hidden=(4,))
    with pytest.raises(TypeError, match="TrajectoryData or a tensor of states, got list"):
        fit_autoencoder(ae, [[0.0, 1.0]])
    with pytest.raises(ValueError, match=r"`epochs` must be a positive int, got 1\.5"):
        fit_autoencoder(ae, torch.zeros(4, 2), epochs=1.5)


# ---------------------------------------------------------------- the paper's protocol


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 4's target is not met at seed 0 (R^2 0.967 "
                   "measured): the batch-normalised loss prefers a non-affine function of H")
def test_spring_protocol_reaches_the_fidelity_target():
    """Issue 4's acceptance on the spring: 1000 epochs, batches of 10, R^2 >= 0.996, with
    the paper's recipe exactly (no weight decay)."""
    from concernet_ode import invariant_fidelity

    system = SpringMass()
    train, _ = system.train_data(0, dtype=torch.float32)
    torch.manual_seed(0)
    net = InvariantNet(2, 1)
    fit_invariants(net, train, epochs=1000, batch_size=10, lr=1e-3, seed=0, progress=False,
                   positives="sum", weight_decay=0.0, lr_schedule=None)
    fresh = system.trajectories(1000, t_end=3.0, n_times=30, seed=10_000, dtype=torch.float32)
    x = fresh.x.reshape(-1, 2)
    with torch.no_grad():
        r2 = invariant_fidelity(net(x), system.invariants(x))
    assert float(r2) >= 0.996


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["paper", "table1"])
def test_spring_protocol_with_weight_decay_reaches_the_fidelity_target(recipe):
    """The same with the contrastive stage's weight decay (0.3 on the weight matrices), under
    the paper's recipe (measured R^2 0.9981 at seed 0) and Table 1's (0.9989): decay picks the least
    curved of the equivalent invariants, here q^2 + p^2 itself."""
    from concernet_ode import cosine_schedule, invariant_fidelity

    system = SpringMass()
    train, _ = system.train_data(0, dtype=torch.float32)
    torch.manual_seed(0)
    net = InvariantNet(2, 1)
    options = ({"positives": "sum", "lr_schedule": None} if recipe == "paper"
               else {"positives": "mean", "lr_schedule": cosine_schedule(1000)})
    fit_invariants(net, train, epochs=1000, batch_size=10, lr=1e-3, seed=0, progress=False,
                   weight_decay=0.3, **options)
    fresh = system.trajectories(1000, t_end=3.0, n_times=30, seed=10_000, dtype=torch.float32)
    x = fresh.x.reshape(-1, 2)
    with torch.no_grad():
        r2 = invariant_fidelity(net(x), system.invariants(x))
    assert float(r2) >= 0.996


# ---------------------------------------------------------------- learning-rate schedules


def test_cosine_schedule_falls_from_one_to_zero():
    from concernet_ode import cosine_schedule

    factor = cosine_schedule(10)
    values = [factor(e) for e in range(12)]
    assert values[0] == 1.0 and abs(values[5] - 0.5) < 1e-12 and values[10] == 0.0
    assert values[11] == 0.0  # stays at 0 past the end
    assert all(a >= b for a, b in itertools.pairwise(values))
    with pytest.raises(ValueError, match="`epochs` must be a positive int, got 0"):
        cosine_schedule(0)


def test_lr_schedule_reaches_the_optimiser(spring_data):
    # A schedule that is 0 from the second epoch on freezes the parameters after one epoch.
    torch.manual_seed(0)
    f = MLP(2, 2, hidden=8)
    fit_dynamics(f, spring_data, epochs=1, batch_size=10, lr=1e-2, progress=False)
    after_one = _params(f)
    torch.manual_seed(0)
    g = MLP(2, 2, hidden=8)
    fit_dynamics(g, spring_data, epochs=4, batch_size=10, lr=1e-2, progress=False,
                 lr_schedule=lambda epoch: 1.0 if epoch == 0 else 0.0)
    assert all(torch.equal(a, b) for a, b in zip(after_one, _params(g), strict=True))


@pytest.mark.parametrize("fit", ["invariants", "dynamics", "autoencoder"])
@pytest.mark.parametrize(("schedule", "got"), [(0.5, "0.5 of type float"),
                                               ("linear", "'linear' of type str")])
def test_lr_schedule_must_be_cosine_none_or_callable(spring_data, fit, schedule, got):
    match = (r'`lr_schedule` must be "cosine", None \(a constant step\) or a callable epoch '
             rf"-> factor.*got {got}")
    with pytest.raises(TypeError, match=match):
        if fit == "invariants":
            fit_invariants(InvariantNet(2, 1), spring_data, epochs=1, lr_schedule=schedule,
                           progress=False)
        elif fit == "dynamics":
            fit_dynamics(MLP(2, 2), spring_data, epochs=1, lr_schedule=schedule,
                         progress=False)
        else:
            fit_autoencoder(Autoencoder(2, 1, hidden=(4,)), spring_data, epochs=1,
                            lr_schedule=schedule, progress=False)


def test_default_schedule_is_the_cosine_over_the_epochs(spring_data):
    """The recommended recipe anneals every stage; the default is that cosine."""
    runs = []
    for schedule in ("cosine", cosine_schedule(4), None):
        torch.manual_seed(0)
        g = MLP(2, 2, hidden=8)
        fit_dynamics(g, spring_data, epochs=4, batch_size=10, lr=1e-2, progress=False,
                     **({} if schedule == "cosine" else {"lr_schedule": schedule}))
        runs.append(_params(g))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


# ---------------------------------------------------------------- data checks and dtype casts


@pytest.fixture(scope="module")
def spring64() -> TrajectoryData:
    """What the systems return by default: float64."""
    return SpringMass().trajectories(8, t_end=3.0, n_times=10, noise=0.01, seed=0)


def _copy(data: TrajectoryData) -> TrajectoryData:
    return TrajectoryData(data.t.clone(), data.x.clone(), data.dxdt.clone())


def test_float64_data_train_the_float32_networks(spring64):
    # The library's own data (float64) and networks (float32): the trainers cast the data,
    # which gives exactly the run on data cast by hand.
    assert spring64.x.dtype == torch.float64
    runs = []
    for data in (spring64, spring64.to(torch.float32)):
        torch.manual_seed(0)
        H, f = InvariantNet(2, 1, hidden=8), MLP(2, 2, hidden=8)
        ae = Autoencoder(2, 1, hidden=(4,))
        losses = [fit_invariants(H, data, epochs=2, batch_size=4, val_data=data[:3],
                                 progress=False)["val_loss"],
                  fit_dynamics(f, data, epochs=2, progress=False)["loss"],
                  fit_dynamics(ProjectedVectorField(MLP(2, 2, hidden=8), H), data, epochs=1,
                               progress=False)["loss"],
                  fit_autoencoder(ae, data, epochs=2, progress=False)["loss"],
                  fit_autoencoder(ae, data.x, epochs=1, progress=False)["loss"]]
        assert all(p.dtype == torch.float32 for m in (H, f, ae) for p in m.parameters())
        runs.append(losses)
    assert runs[0] == runs[1]
    # and the other way round: a float64 network trains on float32 data in float64
    torch.manual_seed(0)
    hist = fit_dynamics(MLP(2, 2, hidden=8).double(), spring64.to(torch.float32), epochs=1,
                        progress=False)
    assert math.isfinite(hist["loss"][0])


def test_a_network_of_two_dtypes_is_named(spring64):
    net = MLP(2, 2, hidden=8)
    net.net[0].double()
    with pytest.raises(TypeError, match=r"`model` has trainable parameters of several dtypes "
                                        r"\(torch\.float32, torch\.float64\)"):
        fit_dynamics(net, spring64, epochs=1, progress=False)


def test_empty_data_is_refused_before_training(spring64):
    empty = spring64[torch.arange(0)]
    match = r"`data` holds no samples \(x of shape \(0, 10, 2\)\): pass at least one"
    with pytest.raises(ValueError, match=match):
        fit_dynamics(MLP(2, 2), empty, progress=False)
    with pytest.raises(ValueError, match=match):
        fit_invariants(InvariantNet(2, 1), empty, progress=False)
    with pytest.raises(ValueError, match=match):
        fit_autoencoder(Autoencoder(2, 1, hidden=(4,)), empty, progress=False)
    with pytest.raises(ValueError, match=r"`data` is empty \(shape \(0, 2\)\)"):
        fit_autoencoder(Autoencoder(2, 1, hidden=(4,)), torch.zeros(0, 2), progress=False)


def test_non_finite_data_is_refused_before_training(spring64):
    states = spring64.x.clone()
    states[2, 3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"`data` holds 1 NaN or infinite value\(s\) of 160, "
                                         r"the first at index \(2, 3, 1\)"):
        fit_autoencoder(Autoencoder(2, 1, hidden=(4,)), states, progress=False)
    bad = _copy(spring64)  # TrajectoryData checks at construction; tensors can change later
    bad.dxdt[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"`data\.dxdt` holds 1 NaN or infinite value"):
        fit_dynamics(MLP(2, 2), bad, progress=False)
    bad = _copy(spring64)
    bad.x[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"`val_data\.x` holds 1 NaN"):
        fit_invariants(InvariantNet(2, 1), spring64, val_data=bad, progress=False)


def test_integer_states_are_refused(spring64):
    with pytest.raises(TypeError, match=r"`data` must be a floating-point tensor, got "
                                        r"torch\.int64: convert it first"):
        fit_autoencoder(Autoencoder(2, 1, hidden=(4,)), torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"`x` must have a floating dtype, got torch\.int64"):
        TrajectoryData(spring64.t, spring64.x.long(), spring64.dxdt)


def test_a_function_is_not_a_model(spring64):
    with pytest.raises(TypeError, match=r"`model` must be an nn\.Module with parameters to "
                                        r"train \(e\.g\. an MLP or an InvariantNet\), got "
                                        r"function"):
        fit_invariants(lambda x: x.sum(-1), spring64, progress=False)
    with pytest.raises(TypeError, match=r"`autoencoder` must be an nn\.Module.*got function"):
        fit_autoencoder(lambda x: x, spring64, progress=False)


@pytest.mark.parametrize("fit", ["invariants", "dynamics", "autoencoder"])
def test_a_loss_that_turns_non_finite_stops_training_and_names_the_epoch(spring64, fit):
    # A step of 1e30 sends the weights past what float32 can hold in a product.
    torch.manual_seed(0)
    model = {"invariants": InvariantNet(2, 1, hidden=8), "dynamics": MLP(2, 2, hidden=8),
             "autoencoder": Autoencoder(2, 1, hidden=(4,))}[fit]
    trainer = {"invariants": fit_invariants, "dynamics": fit_dynamics,
               "autoencoder": fit_autoencoder}[fit]
    with pytest.raises(RuntimeError, match=rf"the {fit} training loss became (nan|inf) at "
                                           r"epoch [12] of 5; the (parameters are left as they "
                                           r"were|step before had already made some).*A "
                                           r"smaller `lr` \(now 1e\+30\) usually cures it"):
        trainer(model, spring64, epochs=5, batch_size=4, lr=1e30, progress=False)
