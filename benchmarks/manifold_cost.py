"""Cost and conservation of continuous vs discrete projection on Kepler.

Six set-ups integrate the same 64 Kepler orbits (the true field, float64, under
``torch.no_grad()`` as in evaluation) with dopri5 at the same rtol/atol to 1001 output times:
plain ``odeint``, continuous projection (``ProjectedVectorField`` with the true E and L),
discrete projection (``odeint_projected``, whose Newton iteration takes ``dH/dx`` of these
closed-form invariants by forward differences), the same with the Jacobian by autograd, the
same with ``interpolate=True`` (which differs only where the output grid is finer than the
solver's steps, e.g. ``--t-end 1``), and both kinds of projection. Each set-up is timed
against plain ``odeint`` in ABBA blocks (plain, set-up, set-up, plain;
``_timing.time_paired``); the table shows the max invariant drift, the evaluations of the
field, the median wall time and the median over blocks of the time ratio to plain
``odeint``.

    python benchmarks/manifold_cost.py [--t-end 10] [--repeats 3] [--rtol 1e-7 --atol 1e-9]
"""

import argparse

import torch
import torchdiffeq
from _timing import machine_line, time_paired
from torchdiffeq import odeint

from concernet_ode import ProjectedVectorField, odeint_projected
from concernet_ode.systems import Kepler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t-end", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rtol", type=float, default=1e-7)
    parser.add_argument("--atol", type=float, default=1e-9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    system = Kepler()
    H, f = system.invariants, system.vector_field
    x0 = system.sample_initial(args.batch, seed=0)
    t = torch.linspace(0, args.t_end, 1001, dtype=torch.float64)
    solver = {"method": "dopri5", "rtol": args.rtol, "atol": args.atol}

    def build(field):
        continuous = ProjectedVectorField(field, H)
        return {
            "plain odeint": lambda: odeint(field, x0, t, **solver),
            "continuous (ProjectedVectorField)": lambda: odeint(continuous, x0, t, **solver),
            "discrete (odeint_projected)": lambda: odeint_projected(field, x0, t, H, **solver),
            "discrete, jacobian='autograd'": lambda: odeint_projected(
                field, x0, t, H, jacobian="autograd", **solver),
            "discrete, interpolate=True": lambda: odeint_projected(field, x0, t, H,
                                                                   interpolate=True, **solver),
            "both": lambda: odeint_projected(continuous, x0, t, H, **solver),
        }

    setups = build(f)
    with torch.no_grad():
        timed, last = time_paired(setups, "plain odeint", args.repeats)
        drift = {name: float((H(xs) - H(x0)).abs().max()) for name, xs in last.items()}

    calls = {}
    with torch.no_grad():
        for name in setups:
            counter = [0]

            def counted(t, x, counter=counter):
                counter[0] += 1
                return f(t, x)

            build(counted)[name]()
            calls[name] = counter[0]
    print(f"Kepler, batch {args.batch}, t in [0, {args.t_end:g}], 1001 outputs, dopri5 "
          f"rtol={args.rtol:g} atol={args.atol:g}, float64, true field, no_grad, "
          f"median of {args.repeats} ABBA blocks")
    print(machine_line(f"torchdiffeq {torchdiffeq.__version__}"))
    print()
    print("| set-up | max drift in (E, L) | evaluations of f | wall time | ratio to plain |")
    print("|---|---|---|---|---|")
    for name, (med, ratio) in timed.items():
        print(f"| {name} | {drift[name]:.2e} | {calls[name]} | {med:.2f} s | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
