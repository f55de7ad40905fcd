"""Trajectories without derivatives, estimated derivatives, and the .npz / .csv formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from concernet_ode import (
    InvariantNet,
    TrajectoryData,
    estimate_derivatives,
    fit_dynamics,
    fit_invariants,
)
from concernet_ode.systems import SpringMass


@pytest.fixture
def spring():
    return SpringMass().trajectories(6, t_end=3.0, n_times=31, seed=0)


def test_dxdt_is_optional_and_kept_optional(spring):
    data = TrajectoryData(spring.t, spring.x)
    assert data.dxdt is None
    assert data[:2].dxdt is None and data.to(torch.float32).dxdt is None
    assert data.with_noise(0.01, seed=0).dxdt is None
    assert data.states().shape == (6 * 31, 2)


def test_a_trainer_that_needs_derivatives_says_how_to_get_them(spring):
    data = TrajectoryData(spring.t, spring.x)
    with pytest.raises(ValueError, match=r"needs the time derivatives `dxdt`.*estimate_der"):
        fit_dynamics(torch.nn.Linear(2, 2).double(), data, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"`flow_weight` > 0 .* needs the time derivatives"):
        fit_invariants(InvariantNet(2, 1).double(), data, epochs=1, flow_weight=1.0,
                       progress=False)


def test_contrastive_stage_runs_on_states_alone(spring):
    torch.manual_seed(0)
    net = InvariantNet(2, 1, hidden=8).double()
    history = fit_invariants(net, TrajectoryData(spring.t, spring.x), epochs=2, batch_size=3,
                             progress=False)
    assert len(history["loss"]) == 2


def test_integer_states_are_refused(spring):
    with pytest.raises(TypeError, match=r"`x` must have a floating dtype, got torch\.int64"):
        TrajectoryData(spring.t, spring.x.round().long())


def test_estimated_derivatives_are_exact_for_a_cubic():
    t = torch.linspace(0, 1, 21, dtype=torch.float64)
    x = torch.stack([t**3 - t, 2 * t**2], -1)[None]  # (1, T, 2)
    est = estimate_derivatives(TrajectoryData(t, x), window=7, polyorder=3)
    exact = torch.stack([3 * t**2 - 1, 4 * t], -1)[None]
    torch.testing.assert_close(est.dxdt, exact, rtol=1e-9, atol=1e-9)


def test_estimated_derivatives_follow_the_spring(spring):
    est = estimate_derivatives(TrajectoryData(spring.t, spring.x))
    # smooth data sampled 10 per unit of time at angular frequency 2: a few percent
    err = (est.dxdt - spring.dxdt).abs().max() / spring.dxdt.abs().max()
    assert float(err) < 0.05


def test_estimate_derivatives_errors(spring):
    data = TrajectoryData(spring.t, spring.x)
    with pytest.raises(ValueError, match="`window` must be odd, at most the 31 samples"):
        estimate_derivatives(data, window=8)
    with pytest.raises(ValueError, match="larger than `polyorder` = 3; got 3"):
        estimate_derivatives(data, window=3)
    uneven = TrajectoryData(spring.t**2, spring.x)
    with pytest.raises(ValueError, match=r"`data\.t` must be uniformly spaced"):
        estimate_derivatives(uneven)
    with pytest.raises(TypeError, match="`data` must be a TrajectoryData, got Tensor"):
        estimate_derivatives(spring.x)


def test_npz_round_trip(spring, tmp_path):
    for data in (spring, TrajectoryData(spring.t, spring.x)):
        path = data.save(tmp_path / "d.npz")
        back = TrajectoryData.load(path)
        assert torch.equal(back.x, data.x) and torch.equal(back.t, data.t)
        assert (back.dxdt is None) == (data.dxdt is None)


def test_csv_long_format(spring, tmp_path):
    rows = ["trajectory,t,q,p,dq,dp"]
    for i in (1, 0):  # out of order on purpose
        for k in range(spring.n_times):
            q, p = spring.x[i, k].tolist()
            dq, dp = spring.dxdt[i, k].tolist()
            rows.append(f"{i},{float(spring.t[k])!r},{q!r},{p!r},{dq!r},{dp!r}")
    path = tmp_path / "d.csv"
    path.write_text("\n".join(rows) + "\n")
    back = TrajectoryData.load(path)
    assert torch.equal(back.x, spring.x[:2]) and torch.equal(back.dxdt, spring.dxdt[:2])


@pytest.mark.parametrize(("arrays", "match"), [
    ({"x": np.zeros((2, 3, 1))}, r"lacks the array\(s\) \['t'\]"),
    ({"t": np.arange(3.0), "x": np.zeros((3, 1))}, r"`x` must have shape \(N, T, n\)"),
    ({"t": np.array([0.0, 2.0, 1.0]), "x": np.zeros((2, 3, 1))}, "strictly increasing"),
    ({"t": np.arange(3.0), "x": np.full((2, 3, 1), np.nan)}, "NaN or infinite"),
    ({"t": np.arange(3.0), "x": np.zeros((2, 3, 1)), "dxdt": np.zeros((2, 3, 2))},
     "`dxdt` must have the shape of `x`"),
])
def test_malformed_npz_files_name_the_problem(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match):
        TrajectoryData.load(path)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trajectory file"):
        TrajectoryData.load(tmp_path / "none.npz")
    (tmp_path / "d.txt").write_text("1")
    with pytest.raises(ValueError, match=r"expected a \.npz or \.csv file"):
        TrajectoryData.load(tmp_path / "d.txt")
    (tmp_path / "h.csv").write_text("id,time,q\n0,0,1\n")
    with pytest.raises(ValueError, match="header must start with `trajectory,t`"):
        TrajectoryData.load(tmp_path / "h.csv")
    (tmp_path / "r.csv").write_text("trajectory,t,q\n0,0,1\n0,1,2\n1,0,1\n")
    with pytest.raises(ValueError, match="same number of rows"):
        TrajectoryData.load(tmp_path / "r.csv")
