"""TrajectoryData: validation, indexing, splitting and noise."""

from __future__ import annotations

import pytest
import torch

from concernet_ode import TrajectoryData


def _data(n_traj: int = 6, n_times: int = 5, n: int = 2, dtype=torch.float64) -> TrajectoryData:
    t = torch.linspace(0, 1, n_times, dtype=dtype)
    x = torch.arange(n_traj * n_times * n, dtype=dtype).reshape(n_traj, n_times, n)
    return TrajectoryData(t, x, -x)


def test_properties_and_points(dtype):
    data = _data(dtype=dtype)
    assert (data.n_traj, data.n_times, data.state_dim, len(data)) == (6, 5, 2, 6)
    x, dxdt = data.points()
    assert x.shape == dxdt.shape == (30, 2) and x.dtype == dtype
    assert torch.equal(x[5], data.x[1, 0])


def test_indexing_selects_trajectories():
    data = _data()
    assert torch.equal(data[2].x, data.x[2:3])
    assert torch.equal(data[-1].x, data.x[-1:])
    assert data[1:4].n_traj == 3
    assert torch.equal(data[torch.tensor([4, 0])].dxdt, data.dxdt[[4, 0]])


def test_split_is_a_seeded_partition():
    data = _data(n_traj=10)
    train, test = data.split(0.5, seed=3)
    assert train.n_traj == test.n_traj == 5
    rows = torch.cat([train.x[:, 0, 0], test.x[:, 0, 0]]).sort().values
    assert torch.equal(rows, data.x[:, 0, 0])  # every trajectory exactly once
    again, _ = data.split(0.5, seed=3)
    assert torch.equal(again.x, train.x)
    other, _ = data.split(0.5, seed=4)
    assert not torch.equal(other.x, train.x)
    small, big = data.split(0.8, seed=0)
    assert (small.n_traj, big.n_traj) == (2, 8)


def test_noise_statistics_and_reproducibility():
    data = _data(n_traj=200, n_times=50)
    noisy = data.with_noise(0.1, seed=1)
    for clean, dirty in ((data.x, noisy.x), (data.dxdt, noisy.dxdt)):
        diff = dirty - clean
        assert float(diff.mean()) == pytest.approx(0.0, abs=0.01)
        assert float(diff.std()) == pytest.approx(0.1, rel=0.03)
    assert not torch.allclose(noisy.x - data.x, noisy.dxdt - data.dxdt)  # independent draws
    assert torch.equal(data.with_noise(0.1, seed=1).x, noisy.x)
    assert data.with_noise(0.0) is data
    assert torch.equal(noisy.t, data.t)


def test_to_casts_every_field():
    data = _data().to(torch.float32)
    assert data.t.dtype == data.x.dtype == data.dxdt.dtype == torch.float32


def test_validation_errors():
    t = torch.linspace(0, 1, 5)
    x = torch.zeros(3, 5, 2)
    with pytest.raises(TypeError, match=r"`x` must be a torch\.Tensor, got list"):
        TrajectoryData(t, [[0.0]], x)
    with pytest.raises(ValueError, match="`dxdt` contains NaN or infinite values"):
        TrajectoryData(t, x, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match=r"`x` must have shape \(N, T, n\), got \(5, 2\)"):
        TrajectoryData(t, x[0], x[0])
    with pytest.raises(ValueError, match=r"`dxdt` must have the shape of `x`"):
        TrajectoryData(t, x, x[:, :, :1])
    with pytest.raises(ValueError, match=r"`t` must have shape \(T,\) = \(5,\)"):
        TrajectoryData(t[:4], x, x)
    with pytest.raises(ValueError, match="`t` must be strictly increasing"):
        TrajectoryData(t.flip(0), x, x)


def test_split_and_noise_errors():
    data = _data(n_traj=3)
    with pytest.raises(ValueError, match=r"`test_fraction` = 0\.01 leaves an empty part"):
        data.split(0.01)
    with pytest.raises(ValueError, match="`test_fraction` = 1 leaves an empty part"):
        data.split(1)
    with pytest.raises(ValueError, match=r"`std` must be a finite number >= 0, got -1\.0"):
        data.with_noise(-1.0)
    with pytest.raises(ValueError, match="`std` must be a finite number >= 0, got inf"):
        data.with_noise(float("inf"))
    with pytest.raises(TypeError, match=r"`seed` must be an int or a torch\.Generator"):
        data.with_noise(0.1, seed=0.5)


def test_noise_is_added_in_place_with_the_values_of_the_plain_sum(dtype):
    # with_noise adds into the buffer of the noise it draws (4 arrays the size of x at the
    # peak, not 7); the values are those of x + std * noise, to the bit.
    data = _data(n_traj=5, n_times=7, n=3, dtype=dtype)
    noise = torch.randn((2, *data.x.shape), generator=torch.Generator().manual_seed(4),
                        dtype=dtype)
    noisy = data.with_noise(0.03, seed=4)
    assert torch.equal(noisy.x, data.x + 0.03 * noise[0])
    assert torch.equal(noisy.dxdt, data.dxdt + 0.03 * noise[1])
    states_only = TrajectoryData(data.t, data.x).with_noise(0.03, seed=4)
    assert torch.equal(states_only.x, noisy.x) and states_only.dxdt is None
