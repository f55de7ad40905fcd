"""Cost of ProjectedVectorField.forward relative to its floor, measured side by side.

The floor is what any implementation must do: evaluate ``f`` and the Jacobian of ``H`` the
cheapest way torch offers -- the faster of an autograd loop over the ``m`` invariants and
``torch.func.vmap(jacrev(H))``. The ratio says what the projection itself (and its checks)
adds on top. All are timed in evaluation mode (``torch.no_grad()``, as inside ``odeint``), in
ABBA blocks against the loop (loop, set-up, set-up, loop; ``_timing.time_paired``); a row's
ratio is the median over blocks of ``forward / loop`` divided by that of the floor.

Rows with ``n >= _GRAM_MIN_N`` (256) project through the Gram matrix ``J J^T`` (one pass of
normal equations, or CholeskyQR2 where the rows are nearly dependent), the others by
Gram-Schmidt.

Run:  python benchmarks/projection_overhead.py [--repeats 15] [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
import torchdiffeq
from _timing import machine_line, time_paired

from concernet_ode import MLP, ProjectedVectorField
from concernet_ode.projection import _GRAM_MIN_N


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


def measure(batch: int, n: int, m: int, repeats: int, dtype: torch.dtype) -> dict[str, float]:
    """Median times (s) of forward, loop and vmap, and forward's ratio to the floor."""
    torch.manual_seed(0)
    f, H = MLP(n, n).to(dtype), MLP(n, m).to(dtype)
    field = ProjectedVectorField(f, H)
    x = torch.randn(batch, n, dtype=dtype)
    setups = {
        "loop": lambda: floor_loop(f, H, x),
        "vmap": lambda: floor_vmap(f, H, x),
        "ours": lambda: field(0.0, x),
    }
    with torch.no_grad():
        res, _ = time_paired(setups, "loop", repeats)
    floor_ratio = min(1.0, res["vmap"][1])  # the floor, relative to the loop
    return {"ours": res["ours"][0], "loop": res["loop"][0], "vmap": res["vmap"][0],
            "floor": min(res["loop"][0], res["vmap"][0]), "ratio": res["ours"][1] / floor_ratio}


def row(batch: int, n: int, m: int, repeats: int, dtype: torch.dtype) -> str:
    path = "Gram matrix" if n >= _GRAM_MIN_N else "Gram-Schmidt"
    if m >= n:  # the projection needs m < n
        return f"| {batch} | {n} | {m} | – | – | – | (m >= n) |"
    r = measure(batch, n, m, repeats, dtype)
    return (f"| {batch} | {n} | {m} | {path} | {r['ours'] * 1e3:.3f} | {r['floor'] * 1e3:.3f} | "
            f"{r['ratio']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="headline point only, 5 repeats")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (default 1: on a shared machine more threads "
                             "time the scheduler, not the code)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 5 if args.quick else args.repeats
    dtype = torch.float32
    print(machine_line(f"torchdiffeq {torchdiffeq.__version__}") + f"; dtype {dtype}")
    print("f and H: MLPs with two hidden layers of 100 (tanh); evaluation mode (no_grad); "
          "ratio = median over ABBA blocks\n")

    r = measure(4096, 4, 2, repeats, dtype)
    print(f"headline B=4096 n=4 m=2: forward {r['ours'] * 1e3:.3f} ms, floor "
          f"{r['floor'] * 1e3:.3f} ms (loop {r['loop'] * 1e3:.3f}, vmap(jacrev) "
          f"{r['vmap'] * 1e3:.3f}) -> ratio {r['ratio']:.2f} (target <= 1.3)\n")
    if args.quick:
        return
    print("| B | n | m | path | forward (ms) | floor (ms) | ratio |")
    print("|---|---|---|---|---|---|---|")
    small = max(3, repeats // 3)
    for n in (4, 64, 1024):
        for m in (1, 2, 4):
            print(row(4096, n, m, small, dtype), flush=True)
    # Large states (PDE surrogates): target <= 1.3 at n = 4096
    for n in (1024, 4096):
        for m in (1, 2):
            print(row(256, n, m, repeats, dtype), flush=True)


if __name__ == "__main__":
    main()
