"""How to take ``dH/dx`` of an invariant set: autograd row by row, stacked, or differences?

Two questions, timed side by side in evaluation mode for Kepler's closed-form E and L and for
MLP invariants of the sizes this project uses:

1. Row by row (one forward pass, ``m`` backward passes) or stacked copies (``H`` on ``m``
   copies of the states, one backward pass; ``invariant_jacobian(..., m=m)``)? The library
   stacks for closed-form invariants and goes row by row for networks
   (:func:`concernet_ode._jacobian.stacked_rows`).
2. Autograd or differences? A simplified Newton iteration converges with any Jacobian close
   to the true one. Forward differences (``difference_jacobian``, which the projection uses
   for closed-form invariants on small batches when no graph is needed; the rows here are
   the evidence for that rule) evaluate ``H`` once on ``n + 1``
   stacked copies of the states, central differences once on ``2n``: one forward pass, no
   backward pass. Printed with their relative error.

    python benchmarks/jacobian_cost.py [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
from _timing import machine_line, median_ratios, time_interleaved

from concernet_ode import MLP
from concernet_ode._jacobian import difference_jacobian, evaluate_invariants, invariant_jacobian
from concernet_ode.systems import ChemicalKinetics, Kepler, SpringMass


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
    cases = []
    for system, label in ((SpringMass(), "spring q^2 + p^2 (analytic)"),
                          (ChemicalKinetics(), "chemical A + C (analytic)"),
                          (Kepler(), "Kepler E, L (analytic)")):
        for batch in (64, 4096):
            cases.append((label, system.invariants, system.sample_initial(batch, seed=0)))
    for n, m, batch in ((4, 2, 16), (4, 2, 64), (4, 2, 1024), (64, 4, 256), (9, 1, 10),
                        (9, 1, 1000), (101, 1, 10)):
        cases.append((f"MLP {n} -> 100 -> 100 -> {m}", MLP(n, m).double(),
                      torch.randn(batch, n, dtype=torch.float64)))
    print(f"float64, torch.no_grad(), median of {args.repeats} runs of {args.calls} Jacobians")
    print(machine_line())
    print()
    print("| H | n | m | batch | stacked / row by row | forward differences / row by row | "
          "central differences / row by row | relative error, forward / central |")
    print("|---|---|---|---|---|---|---|---|")
    with torch.no_grad():
        for name, H, x in cases:
            m = evaluate_invariants(H, x).shape[-1]
            exact = invariant_jacobian(H, x, create_graph=False)[1]
            scale = exact.abs().max()
            forward = float((difference_jacobian(H, x)[1] - exact).abs().max() / scale)
            central = float((central_differences(H, x) - exact).abs().max() / scale)

            def repeat(fn, H=H, x=x):
                return lambda: [fn(H, x) for _ in range(args.calls)]

            times, _ = time_interleaved(
                {"rows": repeat(lambda H, x: invariant_jacobian(H, x, create_graph=False)),
                 "stacked": repeat(lambda H, x, m=m: invariant_jacobian(
                     H, x, create_graph=False, m=m)),
                 "forward": repeat(lambda H, x: difference_jacobian(H, x)[1]),
                 "central": repeat(central_differences)}, args.repeats, warmup=True)
            ratios = median_ratios(times, "rows")
            stacked = f"{ratios['stacked'][1]:.2f}x" if m > 1 else "– (one row)"
            print(f"| {name} | {x.shape[-1]} | {m} | {x.shape[0]} | {stacked} "
                  f"| {ratios['forward'][1]:.2f}x | {ratios['central'][1]:.2f}x "
                  f"| {forward:.1e} / {central:.1e} |", flush=True)


if __name__ == "__main__":
    main()
