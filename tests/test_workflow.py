"""learn(): trajectories in, a conserving model out; saved and loaded without pickle."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import torch

from concernet_ode import TrajectoryData
from concernet_ode.systems import SpringMass
from concernet_ode.workflow import (
    ConservationModel,
    LearnSettings,
    _derivative_window,
    learn,
    load,
)

# A few hundred steps: enough to exercise every stage, far from the defaults' quality.
FAST = LearnSettings(hidden=16, invariant_steps=60, refine_steps=20, dynamics_steps=60,
                     projected_steps=20,
                     count_steps=10)


@pytest.fixture(scope="module")
def spring_data():
    return SpringMass().trajectories(12, t_end=3.0, n_times=20, noise=0.01, seed=0)


@pytest.fixture(scope="module")
def model(spring_data):
    data = TrajectoryData(spring_data.t, spring_data.x)  # no derivatives: estimated
    return learn(data, n_invariants=1, names=("q", "p"), seed=0, settings=FAST,
                 progress=False)


def test_learn_returns_a_conserving_model(model):
    assert isinstance(model, ConservationModel)
    assert model.n_invariants == 1 and model.names == ("q", "p")
    x = torch.randn(5, 2, dtype=torch.float64)
    assert model.invariants(x).shape == (5, 1)
    assert model.field(0.0, x).shape == (5, 2)
    report = model.report
    assert report["data"]["derivatives"].startswith("estimated")
    assert {"prepare", "invariants", "refine", "dynamics", "score"} <= set(report["seconds"])
    held = report["held_out"]
    # The projected model keeps its own invariant to the solver's accuracy; the baseline not.
    assert held["projected"]["invariant_drift"] < 1e-6 < held["baseline"]["invariant_drift"]
    assert "| projected |" in model.report_markdown()
    # trained in float32 (the default), returned in the data's dtype
    assert all(p.dtype == torch.float64 for p in model.invariants.parameters())
    assert model.invariants.shift.dtype == torch.float64


def test_derivative_window_follows_the_time_scale():
    # Leave-one-out cross-validation of the smoothed states: a slow signal, where every
    # window is unbiased, takes a wide window (less noise); a fast one a narrow window.
    t = torch.linspace(0, 5, 50, dtype=torch.float64)
    noise = 0.01 * torch.randn(20, 50, 1, generator=torch.Generator().manual_seed(0),
                               dtype=torch.float64)
    slow = TrajectoryData(t, (0.3 * t).sin().expand(20, 50).unsqueeze(-1) + noise)
    fast = TrajectoryData(t, (4.0 * t).sin().expand(20, 50).unsqueeze(-1) + noise)
    assert _derivative_window(slow) >= 25
    assert _derivative_window(fast) <= 9
    assert _derivative_window(fast) % 2 == 1


def test_settings_errors():
    with pytest.raises(ValueError, match="`train_dtype` must be 'float32' or 'float64'"):
        LearnSettings(train_dtype="half")


def test_simulate_follows_the_input_dtype_and_conserves(model):
    x0 = torch.tensor([[0.5, 0.2]], dtype=torch.float32)
    t = torch.linspace(0, 2, 11)
    out = model.simulate(x0, t)
    assert out.shape == (11, 1, 2) and out.dtype == torch.float32
    exact = model.simulate(x0.double(), t.double(), exact=True)
    h = model.invariants(exact)
    assert float((h - h[0]).abs().max()) < 1e-9
    with pytest.raises(ValueError, match=r"`x0` must be a tensor of shape \(\.\.\., 2\)"):
        model.simulate(torch.zeros(3), t)


_ROUND_TRIP = """
import sys, torch
from concernet_ode.workflow import load
m = load(sys.argv[1])
x = torch.load(sys.argv[2], weights_only=True)
torch.save({"h": m.invariants(x), "f": m.field(0.0, x).detach(),
            "b": m.baseline(x).detach()}, sys.argv[3])
"""


def test_saved_model_loads_bit_identical_in_a_fresh_process(model, tmp_path):
    model.save(tmp_path / "m")
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", _ROUND_TRIP, str(tmp_path / "m"),
                    str(tmp_path / "x.pt"), str(tmp_path / "out.pt")], check=True, timeout=120)
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.equal(out["h"], model.invariants(x))
    assert torch.equal(out["f"], model.field(0.0, x).detach())
    assert torch.equal(out["b"], model.baseline(x).detach())
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["laws"] == model.laws and "torch" in meta["versions"]


def test_loading_never_unpickles(model, tmp_path, monkeypatch):
    model.save(tmp_path / "m")

    def refuse(*args, **kwargs):
        raise AssertionError("load() must not unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    back = load(tmp_path / "m")
    x = torch.randn(3, 2, dtype=torch.float64)
    assert torch.equal(back.invariants(x), model.invariants(x))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds no saved model: model\.json is missing"):
        load(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "other"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="has format 'other'"):
        load(tmp_path)


def test_learn_errors(spring_data):
    with pytest.raises(TypeError, match="`data` must be a TrajectoryData, got Tensor"):
        learn(spring_data.x)
    with pytest.raises(ValueError, match="at least 8 trajectories of at least 5 samples"):
        learn(spring_data[:5], settings=FAST)
    with pytest.raises(ValueError, match="less than the state dimension 2"):
        learn(spring_data, n_invariants=2, settings=FAST)
    with pytest.raises(ValueError, match=r"`names` must be 2 non-empty strings"):
        learn(spring_data, names=("q",), settings=FAST)


def test_several_invariants_keep_the_best_of_several_starts():
    from concernet_ode.systems import RigidBody

    data = RigidBody().trajectories(12, t_end=3.0, n_times=20, noise=0.01, seed=0)
    model = learn(data, n_invariants=2, seed=0, settings=FAST, progress=False)
    starts = model.report["refinement"]["starts"]
    assert len(starts) == FAST.invariant_starts == 2
    assert model.report["refinement"]["validation_normal_flow_after"] == min(starts)
    assert model.invariants(data.x[0]).shape == (20, 2)


def test_the_count_note_says_what_a_count_can_mean():
    from concernet_ode.workflow import _count_note

    assert "2 such local invariants" in _count_note(1, 3)
    assert "most any flow has along short pieces" in _count_note(2, 3)
    assert "most any flow" not in _count_note(1, 2)  # in 2-d one is also the only answer
