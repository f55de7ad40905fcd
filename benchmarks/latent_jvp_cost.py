"""Cost of ``LatentAdapter.encode_with_rate`` (z and J_E xdot by one JVP) against ``encode``.

The issue's target: computing the latent rate costs at most 4x encoding alone. For
reference the table also times the explicit alternative, the full encoder Jacobian per
sample (``torch.func.vmap(jacrev)``) contracted with ``xdot``. The paper's heat autoencoder
(101 -> 32 -> 16 -> 9, tanh) on a batch of states, under ``torch.no_grad()``; runs are
interleaved and repeated, medians reported.

    python benchmarks/latent_jvp_cost.py [--batch 20000] [--repeats 7] [--dtype float32]
"""

import argparse

import torch
from _timing import machine_line, median_ratios, time_interleaved
from torch.func import jacrev, vmap

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
    with torch.no_grad():
        times, _ = time_interleaved(setups, args.repeats, warmup=True)

    print(f"Autoencoder({args.n}, {args.latent}), batch {args.batch}, {args.dtype}, no_grad, "
          f"median of {args.repeats}")
    print(machine_line())
    print()
    print("| computation | wall time | ratio to encode |")
    print("|---|---|---|")
    for name, (med, ratio) in median_ratios(times, "encode").items():
        print(f"| {name} | {med * 1e3:.2f} ms | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
