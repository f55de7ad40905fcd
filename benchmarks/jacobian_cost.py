"""How to take ``dH/dx`` of an invariant set: autograd row by row, stacked, or differences?

Two questions, timed side by side in evaluation mode for Kepler's closed-form E and L and for
MLP invariants of the sizes this project uses:

1. Row by row (one forward pass, ``m`` backward passes) or stacked copies (``H`` on ``m``
   copies of the states, one backward pass; ``invariant_jacobian(..., m=m)``)? The library
   stacks for closed-form invariants and goes row by row for networks
   (:func:`concernet_ode._jacobian.stacked_rows`).
2. Autograd or central differences? A simplified Newton iteration converges with any Jacobian
   close to the true one, and central differences need only ``H`` on ``2n`` shifted copies:
   one forward pass, no backward pass. Printed with their relative error.

    python benchmarks/jacobian_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
from _timing import machine_line, median_ratios, time_interleaved

from concernet_ode import MLP
from concernet_ode._jacobian import evaluate_invariants, invariant_jacobian
from concernet_ode.systems import Kepler


def central_differences(H, x: torch.Tensor) -> torch.Tensor:
    """``dH/dx`` by central differences, all ``2n`` shifted states in one call of ``H``."""
    n = x.shape[-1]
    h = torch.finfo(x.dtype).eps ** (1 / 3) * x.abs().clamp_min(1.0)
    shift = torch.diag_embed(h).movedim(-2, 0)  # (n, ..., n): row j is h_j e_j
    out = evaluate_invariants(H, torch.cat([x + shift, x - shift]))  # (2n, ..., m)
    spacing = (x + h) - (x - h)  # the step as rounded
    return (out[:n] - out[n:]).movedim(0, -1) / spacing.unsqueeze(-2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200, help="Jacobians per timed run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cases = [("Kepler E, L (analytic)", Kepler().invariants, Kepler().sample_initial(64, seed=0)),
             ("Kepler E, L (analytic)", Kepler().invariants,
              Kepler().sample_initial(4096, seed=0))]
    for n, m, batch in ((4, 2, 16), (4, 2, 64), (4, 2, 1024), (64, 4, 256), (9, 1, 10),
                        (9, 1, 1000), (101, 1, 10)):
        cases.append((f"MLP {n} -> 100 -> 100 -> {m}", MLP(n, m).double(),
                      torch.randn(batch, n, dtype=torch.float64)))
    print(f"float64, torch.no_grad(), median of {args.repeats} runs of {args.calls} Jacobians")
    print(machine_line())
    print()
    print("| H | n | m | batch | stacked / row by row | differences / row by row | "
          "relative error of differences |")
    print("|---|---|---|---|---|---|---|")
    with torch.no_grad():
        for name, H, x in cases:
            m = evaluate_invariants(H, x).shape[-1]
            exact = invariant_jacobian(H, x, create_graph=False)[1]
            error = float((central_differences(H, x) - exact).abs().max() / exact.abs().max())

            def repeat(fn, H=H, x=x):
                return lambda: [fn(H, x) for _ in range(args.calls)]

            times, _ = time_interleaved(
                {"rows": repeat(lambda H, x: invariant_jacobian(H, x, create_graph=False)),
                 "stacked": repeat(lambda H, x, m=m: invariant_jacobian(
                     H, x, create_graph=False, m=m)),
                 "fd": repeat(central_differences)}, args.repeats, warmup=True)
            ratios = median_ratios(times, "rows")
            stacked = f"{ratios['stacked'][1]:.2f}x" if m > 1 else "– (one row)"
            print(f"| {name} | {x.shape[-1]} | {m} | {x.shape[0]} | {stacked} "
                  f"| {ratios['fd'][1]:.2f}x | {error:.1e} |", flush=True)


if __name__ == "__main__":
    main()
