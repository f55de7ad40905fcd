"""nRMSE and cRMSE (PDEBench's definitions) against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from concernet_ode.metrics_pde import crmse, nrmse


def test_nrmse_by_hand():
    # one sample, two times, one channel of two points
    true = torch.tensor([[[3.0, 4.0]], [[1.0, 1.0]]])  # (T=2, B=1, n=2)
    pred = torch.tensor([[[3.0, 5.0]], [[2.0, 0.0]]])
    # t0: sqrt((0 + 1) / 2) / sqrt((9 + 16) / 2) = 1/5; t1: sqrt((1 + 1)/2) / 1 = 1
    torch.testing.assert_close(nrmse(pred, true, curve=True), torch.tensor([0.2, 1.0]))
    torch.testing.assert_close(nrmse(pred, true), torch.tensor(0.6))
    # the same in TrajectoryData's layout (B, T, n)
    torch.testing.assert_close(nrmse(pred.transpose(0, 1), true.transpose(0, 1), time_dim=1),
                               torch.tensor(0.6))


def test_nrmse_averages_ratios_per_channel_and_sample():
    true = torch.tensor([[[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]]])  # (T=1, B=2, 2 ch)
    pred = true + torch.tensor([[[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]])
    # sample 0: channel ratios 1 and 0; sample 1: 0.5 and 0.5; mean 0.5
    assert float(nrmse(pred, true, channels=2)) == pytest.approx(0.5)
    # one channel: sample 0 sqrt(2/4)/sqrt(10/4) = 1/sqrt(5); sample 1: 0.5
    assert float(nrmse(pred, true)) == pytest.approx((1 / math.sqrt(5) + 0.5) / 2)


def test_crmse_by_hand():
    true = torch.zeros(2, 3, 4)  # (T, B, n)
    pred = torch.zeros(2, 3, 4)
    pred[0, :, 0] = torch.tensor([1.0, 2.0, 3.0])  # sums off by 1, 2, 3 at t0
    pred[1, 0, 1] = 6.0  # off by 6 in one sample at t1

    def total(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.sum(-1), 2 * x.sum(-1)], -1)

    t0 = math.sqrt((1 + 4 + 9) / 3)
    t1 = math.sqrt(36 / 3)
    expected = torch.tensor([[t0, 2 * t0], [t1, 2 * t1]])
    torch.testing.assert_close(crmse(pred, true, total, curve=True), expected)
    torch.testing.assert_close(crmse(pred, true, total), expected.mean(0))
    # PDEBench's default quantity: the spatial mean (sum / 4) of each channel
    torch.testing.assert_close(crmse(pred, true), torch.tensor([(t0 + t1) / 8]))
    two = crmse(pred, true, channels=2)  # channel 0 holds points 0 and 1: mean = sum / 2
    torch.testing.assert_close(two, torch.tensor([(t0 + t1) / 4, 0.0]))


def test_crmse_one_value_invariant_is_m_equals_one():
    x = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    assert crmse(x, x + 1, lambda s: s.sum(-1)).shape == (1,)
    torch.testing.assert_close(crmse(x, x + 1, lambda s: s.sum(-1)), torch.tensor([3.0]))


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: nrmse([1.0], torch.ones(2, 2)), TypeError, "`pred` must be a floating-point"),
    (lambda: nrmse(torch.ones(2, 2), torch.ones(2, 3)), ValueError, "the same shape"),
    (lambda: nrmse(torch.ones(3), torch.ones(3)), ValueError, "with a time dimension"),
    (lambda: nrmse(torch.ones(2, 3), torch.ones(2, 3), time_dim=1), ValueError,
     "`time_dim` must be an int naming a dimension"),
    (lambda: crmse(torch.ones(2, 3), torch.ones(2, 3), channels=2), ValueError,
     "`channels` must be a positive int dividing the state size 3"),
    (lambda: nrmse(torch.ones(2, 4), torch.zeros(2, 4)), ValueError,
     r"`true` has 2 field\(s\) that are zero everywhere"),
])
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
