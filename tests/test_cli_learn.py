"""``concernet-ode learn`` and ``simulate``: from a data file to a saved model and back."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from concernet_ode import TrajectoryData
from concernet_ode import _learn_cli as learn_cli
from concernet_ode.cli import main
from concernet_ode.workflow import LearnSettings, learn

FAST = LearnSettings(hidden=16, invariant_steps=60, refine_steps=20, dynamics_steps=60,
                     projected_steps=20, count_steps=10)


@pytest.fixture
def fast_learn(monkeypatch):
    monkeypatch.setattr(learn_cli, "learn", functools.partial(learn, settings=FAST))


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    out = tmp_path_factory.mktemp("learned")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(learn_cli, "learn", functools.partial(learn, settings=FAST))
        assert main(["learn", "--example", "spring", "--n-traj", "12", "--out", str(out),
                     "--n-invariants", "1", "--no-progress"]) == 0
    return out


def test_learn_example_writes_model_report_figures_and_data(learned):
    for name in ("model/model.safetensors", "model/model.json", "report.md",
                 "invariants.png", "drift.png", "data.npz"):
        assert (learned / name).stat().st_size > 0, name
    report = (learned / "report.md").read_text()
    assert "| projected |" in report and "![drift](drift.png)" in report
    assert TrajectoryData.load(learned / "data.npz").dxdt is None  # states only


def test_learn_from_a_file(learned, tmp_path, fast_learn, capsys):
    assert main(["learn", str(learned / "data.npz"), "--out", str(tmp_path / "m"),
                 "--names", "q,p", "--n-invariants", "1", "--no-progress"]) == 0
    assert "Learned conservation laws" in capsys.readouterr().out
    assert (tmp_path / "m" / "model" / "model.json").exists()


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_simulate_a_saved_model(learned, tmp_path, suffix, capsys):
    out = tmp_path / f"sim{suffix}"
    assert main(["simulate", str(learned / "model"), "--x0", "0.5,0.1", "--x0", "0,-0.8",
                 "--t-end", "2", "--n-times", "21", "--out", str(out)]) == 0
    sim = TrajectoryData.load(out)
    assert sim.x.shape == (2, 21, 2)
    assert torch.allclose(sim.x[:, 0], torch.tensor([[0.5, 0.1], [0.0, -0.8]],
                                                     dtype=sim.x.dtype))
    assert "wrote" in capsys.readouterr().out


def test_learn_errors(tmp_path, capsys):
    assert main(["learn", str(tmp_path / "none.npz"), "--out", str(tmp_path / "o")]) == 2
    assert "no trajectory file" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, t=np.arange(3.0))
    assert main(["learn", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "lacks the array(s) ['x']" in capsys.readouterr().err
    assert main(["learn", "--example", "spring", "--n-traj", "3", "--out", str(tmp_path)]) == 2
    assert "--n-traj must be >= 8, got 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["learn", "--example", "nope", "--out", str(tmp_path)])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_simulate_errors(learned, tmp_path, capsys):
    model = str(learned / "model")
    assert main(["simulate", str(tmp_path), "--x0", "1,2", "--t-end", "1",
                 "--out", str(tmp_path / "a.npz")]) == 2
    assert "holds no saved model" in capsys.readouterr().err
    assert main(["simulate", model, "--x0", "1,2,3", "--t-end", "1",
                 "--out", str(tmp_path / "a.npz")]) == 2
    assert "--x0 must have 2 numbers (q, p), got 3" in capsys.readouterr().err
    assert main(["simulate", model, "--x0", "1,x", "--t-end", "1",
                 "--out", str(tmp_path / "a.npz")]) == 2
    assert "comma-separated numbers" in capsys.readouterr().err
    assert main(["simulate", model, "--x0", "1,2", "--t-end", "1",
                 "--out", str(tmp_path / "a.txt")]) == 2
    assert "must end in .npz or .csv" in capsys.readouterr().err
