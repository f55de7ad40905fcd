"""Cost of ProjectedVectorField.forward relative to its floor, measured side by side.

The floor is what any implementation must do: evaluate ``f`` and the Jacobian of ``H`` the
cheapest way torch offers -- the faster of an autograd loop over the ``m`` invariants and
``torch.func.vmap(jacrev(H))``. The ratio says what the projection itself (and its checks)
adds on top. Both are timed in evaluation mode (``torch.no_grad()``, as inside ``odeint``) and
interleaved, so that machine noise hits both alike; medians of the repeats are reported.

Run:  python benchmarks/projection_overhead.py [--repeats 15] [--quick]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torchdiffeq

import concernet_ode
from concernet_ode import MLP, ProjectedVectorField


def floor_loop(f, H, x):
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        h = H(xg)
        rows = [torch.autograd.grad(h[..., i].sum(), xg, retain_graph=i < h.shape[-1] - 1)[0]
                for i in range(h.shape[-1])]
    return f(x), torch.stack(rows, -2)


def floor_vmap(f, H, x):
    jac = torch.func.vmap(torch.func.jacrev(H))(x)
    return f(x), jac


def median_time(fn, repeats, inner):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def measure(batch, n, m, repeats, dtype):
    torch.manual_seed(0)
    f, H = MLP(n, n).to(dtype), MLP(n, m).to(dtype)
    field = ProjectedVectorField(f, H)
    x = torch.randn(batch, n, dtype=dtype)
    candidates = {
        "ours": lambda: field(0.0, x),
        "loop": lambda: floor_loop(f, H, x),
        "vmap": lambda: floor_vmap(f, H, x),
    }
    with torch.no_grad():
        for fn in candidates.values():  # warm-up
            fn()
        inner = max(1, int(0.05 / max(median_time(candidates["ours"], 3, 1), 1e-6)))
        samples = {k: [] for k in candidates}
        for _ in range(repeats):  # interleave the three so noise hits all of them alike
            for k, fn in candidates.items():
                samples[k].append(median_time(fn, 1, inner))
    med = {k: statistics.median(v) for k, v in samples.items()}
    floor = min(med["loop"], med["vmap"])
    return med, floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="headline point only, 5 repeats")
    args = parser.parse_args()
    repeats = 5 if args.quick else args.repeats
    dtype = torch.float32
    print(f"machine: {platform.machine()} {platform.processor() or ''}, "
          f"{torch.get_num_threads()} torch threads; dtype {dtype}; torch {torch.__version__}, "
          f"torchdiffeq {torchdiffeq.__version__}, concernet_ode {concernet_ode.__version__}")
    print("f and H: MLPs with two hidden layers of 100 (tanh); evaluation mode (no_grad)\n")

    med, floor = measure(4096, 4, 2, repeats, dtype)
    print(f"headline B=4096 n=4 m=2: forward {med['ours'] * 1e3:.3f} ms, floor "
          f"{floor * 1e3:.3f} ms (loop {med['loop'] * 1e3:.3f}, vmap(jacrev) "
          f"{med['vmap'] * 1e3:.3f}) -> ratio {med['ours'] / floor:.2f} (target <= 1.3)\n")
    if args.quick:
        return
    print("| n | m | forward (ms) | floor (ms) | ratio |")
    print("|---|---|---|---|---|")
    for n in (4, 64, 1024):
        for m in (1, 2, 4):
            if m >= n:  # the projection needs m < n
                print(f"| {n} | {m} | – | – | (m >= n) |")
                continue
            med, floor = measure(4096, n, m, max(3, repeats // 3), dtype)
            print(f"| {n} | {m} | {med['ours'] * 1e3:.3f} | {floor * 1e3:.3f} | "
                  f"{med['ours'] / floor:.2f} |")


if __name__ == "__main__":
    main()
