"""Throughput of data-parallel training on K processes, as a ratio to one process.

    python benchmarks/distributed_scaling.py [--trainer dynamics|invariants] [--ranks 1,2]
        [--epochs 2] [--batch-size 200] [--repeats 2] [--device cpu|cuda] [--float32]

Each configuration spawns K ranks (gloo on CPU, one thread each; NCCL on ``--device cuda``,
one GPU per rank, K up to all GPUs), trains one warm-up epoch, then times ``--epochs``
epochs of the trainer on rank 0 between two barriers (start-up and the warm-up excluded).
Throughput is items (points for ``dynamics``, trajectories for ``invariants``) per second of
the whole world; the global batch is the same for every K (strong scaling: K ranks split it),
so the result is what ``torchrun --nproc-per-node K`` buys on the same training. The
configurations run in ABBA order (1, K, K, 1, ...) and the ratio is the median over blocks.

Workloads: ``dynamics`` is :func:`~concernet_ode.fit_dynamics` of a
``ProjectedVectorField`` (MLP 4-100-100-4, invariants 4-100-100-2, invariants trained too)
on 100 Kepler orbits of 100 points; ``invariants`` is :func:`~concernet_ode.fit_invariants`
(InvariantNet 4-100-100-2) on 200 orbits of 100 points, batches of ``--batch-size``
trajectories.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _timing import machine_line

from concernet_ode import MLP, InvariantNet, ProjectedVectorField, fit_dynamics, fit_invariants
from concernet_ode.systems import Kepler


def _workload(args: argparse.Namespace, device: torch.device, dtype: torch.dtype):
    torch.manual_seed(0)
    if args.trainer == "dynamics":
        data = Kepler().trajectories(100, t_end=10.0, n_times=100, noise=0.01, seed=0,
                                      progress=False)
        data = data.to(dtype).to(device)
        field = ProjectedVectorField(MLP(4, 4).to(device, dtype),
                                     InvariantNet(4, 2).to(device, dtype))

        def train(epochs: int) -> None:
            fit_dynamics(field, data, epochs=epochs, batch_size=args.batch_size,
                         progress=False, train_invariants=True, lr_schedule=None)

        return train, data.n_traj * data.n_times
    data = Kepler().trajectories(200, t_end=10.0, n_times=100, noise=0.01, seed=0,
                                      progress=False)
    data = data.to(dtype).to(device)
    net = InvariantNet(4, 2).to(device, dtype)

    def train(epochs: int) -> None:
        fit_invariants(net, data, epochs=epochs, batch_size=args.batch_size, progress=False,
                       lr_schedule=None)

    return train, data.n_traj


def _worker(rank: int, world: int, args: argparse.Namespace, rendezvous: str,
            out: str) -> None:
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(1)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{rendezvous}",
                            rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    try:
        device = torch.device("cuda", rank) if cuda else torch.device("cpu")
        dtype = torch.float32 if args.float32 else torch.float64
        train, items = _workload(args, device, dtype)
        train(1)  # warm-up: allocations, kernels, the first collectives
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        train(args.epochs)
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        elapsed = time.perf_counter() - start
        if rank == 0:
            Path(out).write_text(json.dumps({"items_per_s": items * args.epochs / elapsed}))
    finally:
        dist.destroy_process_group()


def _throughput(world: int, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/result.json"
        mp.spawn(_worker, args=(world, args, f"{tmp}/rendezvous", out), nprocs=world)
        return json.loads(Path(out).read_text())["items_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer", choices=("dynamics", "invariants"), default="dynamics")
    parser.add_argument("--ranks", default=None,
                        help="comma-separated world sizes (default: 1,2 on CPU; 1 and all "
                             "GPUs on cuda)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="global batch (default: 200 points, or 20 trajectories)")
    parser.add_argument("--repeats", type=int, default=2, help="ABBA blocks per K")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--float32", action="store_true", help="float32 (default float64)")
    args = parser.parse_args()
    if args.batch_size is None:
        args.batch_size = 200 if args.trainer == "dynamics" else 20
    if args.ranks is None:
        most = torch.cuda.device_count() if args.device == "cuda" else 2
        args.ranks = f"1,{most}"
    worlds = sorted({int(k) for k in args.ranks.split(",")})
    base, others = worlds[0], worlds[1:]
    times: dict[int, list[float]] = {k: [] for k in worlds}
    ratios: dict[int, list[float]] = {k: [] for k in others}
    for _ in range(args.repeats):
        for k in others:  # ABBA: base, k, k, base
            a1, b1, b2, a2 = (_throughput(w, args) for w in (base, k, k, base))
            times[base] += [a1, a2]
            times[k] += [b1, b2]
            ratios[k].append((b1 + b2) / (a1 + a2))
    dtype = "float32" if args.float32 else "float64"
    print(machine_line())
    print(f"trainer {args.trainer}, {dtype}, {args.device} "
          f"({'nccl' if args.device == 'cuda' else 'gloo, 1 thread per rank'}), "
          f"global batch {args.batch_size}, {args.epochs} timed epochs, "
          f"{args.repeats} ABBA blocks")
    print(f"{'K':>3} {'items/s (median)':>18} {'ratio to K=' + str(base):>14}")
    print(f"{base:>3} {statistics.median(times[base]):>18.1f} {1.0:>14.2f}")
    for k in others:
        print(f"{k:>3} {statistics.median(times[k]):>18.1f} "
              f"{statistics.median(ratios[k]):>14.2f}")


if __name__ == "__main__":
    main()
