"""Throughput of contrastive invariant training: steps per second and growth with B * T.

Each step of ``fit_invariants`` evaluates the network on ``B`` trajectories of ``T`` points
and the contrastive loss of eq. (4) on all ``(B T)^2`` pairs, so the loss's cost grows as
``(B T)^2 m`` and the network's as ``B T``. This script measures, in one run:

1. steps per second of ``fit_invariants`` at the paper's settings (batches of 10
   trajectories; spring and chemical T = 30, m = 1; Kepler T = 100, m = 2);
2. the time of one forward + backward pass of the loss for growing ``B * T``, for the
   library's loss (eq. (4), ``positives="sum"``, and ``positives="mean"``) and, side by side,
   a plain-autograd reference that masks the full ``(B T, B T)`` matrix for the positives
   (how the loss was first written), with the ratio. The library computes the batch-wide
   denominator with a hand-written backward pass and the positives blockwise (or, for
   ``"mean"``, from each trajectory's mean);
3. the loss (``positives="mean"``, B * T = 300) on trajectory-like features (each trajectory
   at its own level, times the scale, plus noise 0.05) of growing scale, with the exponent
   floor of the batch-wide denominator (``_EXP_FLOOR``) and with it moved to -1e4, side by
   side: raw features of scale 100 (chemical kinetics, the heat latent) put most exponents
   far below -80;
4. the batch-wide denominator alone (forward + backward) on the symmetric kernel (the usual
   path: no row shift, one skinny matrix product back) and on the row-shifted fallback,
   interleaved, on trajectory-like features (scale 1, standardised); and ``torch.exp``
   against ``torch.exp2`` on a ``(1000, 1000)`` matrix of exponents in ``[-30, 0]``, which is
   why the kernel is taken as ``exp2(-d log2 e)``.

    python benchmarks/contrastive_throughput.py [--threads 1] [--float64] [--repeat 20]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from concernet_ode import (
    InvariantNet,
    TrajectoryData,
    contrastive,
    contrastive_invariant_loss,
    fit_invariants,
)

PAPER = [("spring", 10, 30, 2, 1, "tanh"), ("chemical", 10, 30, 2, 1, "relu"),
         ("kepler", 10, 100, 4, 2, "tanh")]


def masked_loss(features: torch.Tensor) -> torch.Tensor:
    """Reference: eq. (4) with the positives picked from the full matrix by a mask."""
    n_traj, n_times, m = features.shape
    flat = features.reshape(-1, m)
    logits = -(flat.unsqueeze(1) - flat.unsqueeze(0)).pow(2).sum(-1)
    label = torch.arange(n_traj).repeat_interleave(n_times)
    self_mask = torch.eye(n_traj * n_times, dtype=torch.bool)
    same = (label.unsqueeze(0) == label.unsqueeze(1)) & ~self_mask
    low = torch.finfo(logits.dtype).min
    return (torch.logsumexp(logits.masked_fill(self_mask, low), 1)
            - torch.logsumexp(logits.masked_fill(~same, low), 1)).mean()


def seconds(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fit_steps_per_second(n_traj: int, n_times: int, n: int, m: int, activation: str,
                         dtype: torch.dtype, steps: int, positives: str = "sum") -> float:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n_traj, n_times, n, generator=gen, dtype=dtype)
    data = TrajectoryData(torch.arange(n_times, dtype=dtype), x, torch.zeros_like(x))
    torch.manual_seed(0)
    net = InvariantNet(n, m, activation=activation).to(dtype)
    fit_invariants(net, data, epochs=2, batch_size=n_traj, progress=False,
                   positives=positives)  # warm-up
    start = time.perf_counter()
    fit_invariants(net, data, epochs=steps, batch_size=n_traj, progress=False,
                   positives=positives)
    return steps / (time.perf_counter() - start)


def trajectory_features(n_traj: int, n_times: int, m: int, dtype: torch.dtype,
                        scale: float = 1.0) -> torch.Tensor:
    """Features as a trained invariant gives them: each trajectory near its own level
    (``scale`` times a standard normal draw), with noise 0.05 along it."""
    gen = torch.Generator().manual_seed(0)
    level = scale * torch.randn(n_traj, 1, m, generator=gen, dtype=dtype)
    return level + 0.05 * torch.randn(n_traj, n_times, m, generator=gen, dtype=dtype)


def loss_ms(loss, n_traj: int, n_times: int, m: int, dtype: torch.dtype, repeat: int,
            scale: float | None = None) -> float:
    """Forward + backward of ``loss`` on standard normal features, or on trajectory-like
    ones of the given ``scale``."""
    if scale is None:
        gen = torch.Generator().manual_seed(0)
        feats = torch.randn(n_traj, n_times, m, generator=gen, dtype=dtype)
    else:
        feats = trajectory_features(n_traj, n_times, m, dtype, scale)
    feats.requires_grad_(True)

    def step() -> None:
        loss(feats).backward()

    return 1e3 * seconds(step, repeat)


def denominator_ms(n_traj: int, n_times: int, m: int, dtype: torch.dtype, repeat: int, *,
                   rows_shifted: bool) -> float:
    """Forward + backward of the batch-wide log-sum-exp on standardised trajectory-like
    features, forcing a path."""
    feats = contrastive.standardize_features(trajectory_features(n_traj, n_times, m, dtype))
    points = feats.reshape(-1, m).requires_grad_(True)

    def step() -> None:
        contrastive._LogSumExpOthers.apply(points, rows_shifted).sum().backward()

    return 1e3 * seconds(step, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.float64 else torch.float32
    print(f"# {platform.node()}, {platform.machine()}, {platform.python_version()}, torch "
          f"{torch.__version__}, {dtype}, {args.threads} thread(s); medians of "
          f"{args.repeat} runs")

    print("\nfit_invariants at the paper's batch sizes (one batch of 10 trajectories per step)")
    print(f"{'system':>9} {'B':>3} {'T':>4} {'B*T':>5} {'m':>2} {'positives':>9} {'steps/s':>9}"
          f" {'ms/step':>8} {'steps per 1000 epochs':>22} {'est. s':>7}")
    n_train = {"spring": 25, "chemical": 50, "kepler": 50}
    for name, b, t, n, m, act in PAPER:
        for positives in ("sum", "mean"):
            rate = fit_steps_per_second(b, t, n, m, act, dtype, steps=5 * args.repeat,
                                        positives=positives)
            total = 1000 * -(-n_train[name] // b)
            print(f"{name:>9} {b:>3} {t:>4} {b * t:>5} {m:>2} {positives:>9} {rate:>9.1f}"
                  f" {1e3 / rate:>8.2f} {total:>22} {total / rate:>7.0f}")

    print("\ncontrastive loss, forward + backward, B = 10, m = 2: growth with B*T")
    print(f"{'B*T':>5} {'sum ms':>8} {'mean ms':>8} {'masked ms':>10} {'masked/sum':>11}"
          f" {'masked/mean':>12} {'sum ms / (B*T)^2 * 1e6':>23}")

    def mean_loss(feats: torch.Tensor) -> torch.Tensor:
        return contrastive_invariant_loss(feats, normalize=False, positives="mean")

    for t in (10, 30, 100, 200):
        new = loss_ms(contrastive_invariant_loss, 10, t, 2, dtype, args.repeat)
        mean = loss_ms(mean_loss, 10, t, 2, dtype, args.repeat)
        old = loss_ms(masked_loss, 10, t, 2, dtype, args.repeat)
        bt = 10 * t
        print(f"{bt:>5} {new:>8.3f} {mean:>8.3f} {old:>10.3f} {old / new:>11.2f}"
              f" {old / mean:>12.2f} {1e6 * new / bt**2:>23.3f}")

    print("\ncontrastive loss (positives='mean'), forward + backward, B = 10, T = 30, m = 1: "
          "trajectory-like features of scale s, exponent floor at -80 and at -1e4 (interleaved)")
    print(f"{'s':>6} {'floor ms':>9} {'-1e4 ms':>12} {'-1e4 / floor':>17}")
    floor = contrastive._EXP_FLOOR
    for scale in (1.0, 10.0, 100.0):
        on, off = [], []
        for _ in range(3):
            contrastive._EXP_FLOOR = floor
            on.append(loss_ms(mean_loss, 10, 30, 1, dtype, args.repeat, scale))
            contrastive._EXP_FLOOR = -1e4
            off.append(loss_ms(mean_loss, 10, 30, 1, dtype, args.repeat, scale))
        contrastive._EXP_FLOOR = floor
        a, b = statistics.median(on), statistics.median(off)
        print(f"{scale:>6g} {a:>9.3f} {b:>12.3f} {b / a:>17.2f}")

    print("\nbatch-wide denominator alone, forward + backward, B = 10 trajectory-like features "
          "of T points (scale 1, standardised): symmetric kernel and row-shifted fallback "
          "(interleaved)")
    print(f"{'B*T':>5} {'m':>2} {'symmetric ms':>13} {'row-shifted ms':>15} "
          f"{'row-shifted / symmetric':>24}")
    for t, m in ((30, 1), (100, 1), (100, 2)):
        sym, shifted = [], []
        for _ in range(3):
            sym.append(denominator_ms(10, t, m, dtype, args.repeat, rows_shifted=False))
            shifted.append(denominator_ms(10, t, m, dtype, args.repeat, rows_shifted=True))
        a, b = statistics.median(sym), statistics.median(shifted)
        print(f"{10 * t:>5} {m:>2} {a:>13.3f} {b:>15.3f} {b / a:>24.2f}")

    exponents = -30.0 * torch.rand(1000, 1000, generator=torch.Generator().manual_seed(0),
                                   dtype=dtype)
    e, e2 = [], []
    for _ in range(3):
        e.append(1e3 * seconds(lambda: torch.exp(exponents), args.repeat))
        e2.append(1e3 * seconds(lambda: torch.exp2(exponents), args.repeat))
    a, b = statistics.median(e), statistics.median(e2)
    print(f"\n(1000, 1000) exponents in [-30, 0]: torch.exp {a:.3f} ms, torch.exp2 {b:.3f} ms,"
          f" exp / exp2 {a / b:.2f}")


if __name__ == "__main__":
    main()
