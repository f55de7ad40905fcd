"""Heat-equation surrogate: learn 1-D heat flow in an autoencoder's latent space, keep total heat.

py-pde solves the heat equation with insulated ends (101 cells on [-5, 5]) from random
Gaussian bumps. An autoencoder compresses the profiles to 9 numbers; ``LatentAdapter`` maps
states and their rates into that latent space (a Jacobian-vector product, eqs. (9)-(10)). A
latent invariant is learned contrastively (no labels), then two latent dynamics models: a
plain MLP (baseline) and the same MLP projected onto the invariant's level sets (ConCerNet).
Both run from a new bump and are decoded; the plot shows the initial and final temperature
profiles and the total heat (sum of the 101 nodal values) over time, as the paper's Fig. 5.
The projection holds the *learned* latent invariant exactly; the decoded total heat drifts
only as far as that invariant (printed R^2) and the decoder are imperfect.

Run:  python examples/04_heat_surrogate.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from concernet_ode import (
    MLP,
    Autoencoder,
    InvariantNet,
    LatentAdapter,
    ProjectedVectorField,
    fit_autoencoder,
    fit_dynamics,
    fit_invariants,
    invariant_fidelity,
)
from concernet_ode.integrations.py_pde import HeatEquation1D


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the plot")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="heat_surrogate_"))
    out.mkdir(parents=True, exist_ok=True)
    epochs = {"ae": 40, "inv": 30, "dyn": 10} if args.quick else {"ae": 300, "inv": 600,
                                                                    "dyn": 100}
    start = time.perf_counter()

    heat = HeatEquation1D()
    data = heat.trajectories(60, t_end=heat.train_t_end, n_times=50, noise=heat.noise,
                             seed=args.seed, dtype=torch.float32)
    train, _ = data.split(0.5, seed=args.seed)
    print(f"py-pde: {data.n_traj} trajectories in {time.perf_counter() - start:.1f} s")

    k = 9  # the paper's autoencoder: 101 -> 32 -> 16 -> 9
    torch.manual_seed(args.seed)
    adapter = LatentAdapter(Autoencoder(heat.state_dim, k, hidden=(32, 16)))
    fit_autoencoder(adapter.autoencoder, train, epochs=epochs["ae"], seed=args.seed)
    latent = adapter.to_latent(train)  # z = E(x), zdot = J_E(x) xdot

    H = InvariantNet(k, 1)
    # Raw latent features, no weight decay, as the Table 1 heat row: closer to the total heat.
    fit_invariants(H, latent, epochs=epochs["inv"], batch_size=10, seed=args.seed,
                   normalize=False, weight_decay=0.0)
    with torch.no_grad():  # how well the latent invariant tracks the true total heat
        r2 = invariant_fidelity(H(latent.x).reshape(-1, 1), heat.nodal_sum(train.x).reshape(-1, 1))
    print(f"learned latent invariant vs total heat: R^2 = {float(r2[0]):.4f}")
    baseline = MLP(k, k)
    concernet = ProjectedVectorField(MLP(k, k), H)
    for model in (baseline, concernet):
        fit_dynamics(model, latent, epochs=epochs["dyn"], batch_size=100, seed=args.seed)

    x0 = heat.sample_initial(1, seed=1000 + args.seed, dtype=torch.float32)
    t = torch.linspace(0.0, heat.eval_t_end, 101)
    true = heat.solve(x0, t, progress=False)[0]  # (T, n)
    with torch.no_grad():
        pred = {name: adapter.integrate(model, x0, t, method="dopri5", rtol=1e-6,
                                        atol=1e-8)[:, 0]
                for name, model in (("baseline", baseline), ("ConCerNet", concernet))}
    heat_true = heat.nodal_sum(true)[:, 0]
    for name, x in pred.items():
        mse = float((x - true).pow(2).mean())
        violation = float((heat.nodal_sum(x)[:, 0] - heat_true).pow(2).mean())
        print(f"{name:>9}: MSE {mse:.2e}, total-heat violation {violation:.2e}")

    y = heat.coordinates
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax0.plot(y, true[0], "k:", label="initial")
    ax0.plot(y, true[-1], "k-", label=f"true, t = {heat.eval_t_end:g}")
    for name, x in pred.items():
        ax0.plot(y, x[-1], "--", label=name)
    ax0.set(xlabel="y", ylabel="u", title="temperature profiles")
    ax0.legend()
    ax1.plot(t, heat_true, "k-", label="true")
    for name, x in pred.items():
        ax1.plot(t, heat.nodal_sum(x)[:, 0], "--", label=name)
    ax1.set(xlabel="t", ylabel="sum of nodal values", title="total heat")
    ax1.legend()
    fig.tight_layout()
    path = out / "heat_surrogate.png"
    fig.savefig(path, dpi=120)
    print(f"saved {path} ({time.perf_counter() - start:.0f} s in all)")


if __name__ == "__main__":
    main()
