"""Cost of one training step of the Table 1 dynamics models: fused Adam against plain Adam.

The Table 1 dynamics stage trains three MLPs of 2 x 100 side by side (baseline, ConCerNet,
oracle; ``concernet_ode._stacked``) on batches of 100 points: about 40 small tensor
operations per step, so per-operation overhead dominates. This script times the whole step
(forward, backward, optimiser) with ``torch.optim.Adam`` as torch defaults it on CPU, with
``foreach=True`` and with ``fused=True`` (what ``concernet_ode.training.adam`` picks where
available), interleaved and repeated, and prints the median time per step and the ratios.

    python benchmarks/optimizer_step.py [--repeats 5] [--epochs 20] [--activation relu]
"""

from __future__ import annotations

import argparse
import time

import torch
from _timing import machine_line, median_ratios

from concernet_ode import MLP
from concernet_ode._stacked import StackedMLP


def step_ms(kind: str, epochs: int, activation: str) -> float:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1500, 2, generator=gen)  # the chemical task's 50 x 30 training points
    y = torch.randn(1500, 2, generator=gen)
    proj = torch.eye(2).expand(3, 1500, 2, 2).contiguous()
    torch.manual_seed(0)
    model = StackedMLP([MLP(2, 2, activation=activation) for _ in range(3)])
    options = {"plain": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[kind]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **options)
    steps = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(1500, generator=gen).split(100):
            out = (proj[:, idx] @ model(x[idx].expand(3, -1, -1)).unsqueeze(-1)).squeeze(-1)
            loss = (out - y[idx]).pow(2).mean(dim=(1, 2)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
    return 1e3 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kinds = ("plain", "foreach", "fused")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind in kinds:  # interleaved, so load changes hit all alike
            times[kind].append(step_ms(kind, args.epochs, args.activation))
    print(f"stacked dynamics step (3 MLPs 2 x 100 {args.activation}, batch 100, float32); "
          f"median of {args.repeats}")
    print(machine_line())
    print("| Adam | ms per step | ratio to plain |")
    print("|---|---|---|")
    for kind, (med, ratio) in median_ratios(times, "plain").items():
        print(f"| {kind} | {med:.3f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
