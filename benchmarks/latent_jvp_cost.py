"""Cost of ``LatentAdapter.encode_with_rate`` (z and J_E xdot by one JVP) against ``encode``.

The issue's target: computing the latent rate costs at most 4x encoding alone. For
reference the table also times the explicit alternative, the full encoder Jacobian per
sample (``torch.func.vmap(jacrev)``) contracted with ``xdot``. The paper's heat autoencoder
(101 -> 32 -> 16 -> 9, tanh) on a batch of states, under ``torch.no_grad()``; runs are
interleaved and repeated, medians reported.

    python benchmarks/latent_jvp_cost.py [--batch 20000] [--repeats 7] [--dtype float32]
"""

import argparse
import platform
import statistics
import time

import torch
from torch.func import jacrev, vmap

import concernet_ode
from concernet_ode import Autoencoder, LatentAdapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=20000)
    parser.add_argument("--n", type=int, default=101)
    parser.add_argument("--latent", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    torch.manual_seed(0)
    adapter = LatentAdapter(Autoencoder(args.n, args.latent)).to(dtype)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.n, generator=gen, dtype=dtype)
    xdot = torch.randn(args.batch, args.n, generator=gen, dtype=dtype)
    jacobian = vmap(jacrev(adapter.autoencoder.encode))
    setups = {
        "encode": lambda: adapter.encode(x),
        "encode_with_rate (JVP)": lambda: adapter.encode_with_rate(x, xdot),
        "full Jacobian, then J @ xdot": lambda: (jacobian(x) @ xdot.unsqueeze(-1)),
    }
    times = {name: [] for name in setups}
    with torch.no_grad():
        for run in setups.values():  # warm-up
            run()
        for _ in range(args.repeats):
            for name, run in setups.items():  # interleaved, so load changes hit all alike
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)

    base = statistics.median(times["encode"])
    print(f"Autoencoder({args.n}, {args.latent}), batch {args.batch}, {args.dtype}, no_grad, "
          f"median of {args.repeats}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} "
          f"{torch.get_num_threads()} thread(s); python {platform.python_version()}, "
          f"torch {torch.__version__}, concernet_ode {concernet_ode.__version__}")
    print()
    print("| computation | wall time | ratio to encode |")
    print("|---|---|---|")
    for name in setups:
        med = statistics.median(times[name])
        print(f"| {name} | {med * 1e3:.2f} ms | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
