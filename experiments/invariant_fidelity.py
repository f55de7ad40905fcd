"""Acceptance run of issue 4: how faithfully the contrastive loss recovers the true invariants.

The paper's protocol (design.md): per system, the noisy training set of ``train_data(seed)``
(half of the trajectories held out), an ``InvariantNet`` of two hidden layers of 100 with the
task's activation (ReLU for chemical kinetics, tanh otherwise), ``fit_invariants`` for 1000
epochs in batches of 10 trajectories, Adam at lr 1e-3. The learned invariants are then
compared, by the R^2 of the best affine readout (``invariant_fidelity``), with the true ones
on fresh noise-free trajectories drawn like the training ones (1000 by default, as for the
anchors). Targets: spring R^2 >= 0.996 against q^2 + p^2, chemical >= 0.99999 against A + C,
Kepler with m = 2: >= 0.95 for E, >= 0.9 for L.

    python experiments/invariant_fidelity.py                       # all systems, seeds 0 1 2
    python experiments/invariant_fidelity.py --systems spring --seeds 0 --epochs 200
    python experiments/invariant_fidelity.py --recipe table1       # as concernet-ode reproduce

``--recipe paper`` (the default) trains with ``Recipe.paper()`` (standardised features,
eq. (4) as printed, a constant step, no weight decay) on the task's architecture;
``--recipe table1`` trains as the Table 1 run does, ``get_task(name).recipe_for(
Recipe.table1())`` and its contrastive stage: ``positives="mean"``, the Adam step annealed
by a cosine and a decoupled weight decay of 0.3, except where the task departs from it
(``Task.departures``): chemical kinetics keeps a constant step and raw (not standardised)
features without weight decay, and Kepler trains without weight decay (for its Table 1
invariant, m = 1; add ``--weight-decay 0.3`` for the m = 2 run of issue 4).
``--positives`` overrides the loss form of either recipe, ``--schedule cosine|constant`` its
step schedule, ``--weight-decay`` its weight decay. Each line also prints the spread of each
learned feature within a trajectory over its spread across all (mean over trajectories of
the std along each, over the std of all states): near 0 for an invariant, near 1 for a
feature that varies along the flow; the R^2 of a cubic readout; and for Kepler the affine
R^2 against the semi-major axis ``a = -1/(2E)``, an invertible function of E that the
learned features follow more closely than E itself.

Each line ends with the contrastive loss (the recipe's form, 100 random batches of 10
training trajectories, the same for all) of the learned features, of the true invariants, and,
for Kepler, of the true invariants with E replaced by ``a = -1/(2E)``: on Kepler's orbits the
loss is lower for ``(a, L)`` than for ``(E, L)`` on seeds 0, 1, 2 (measured with ``--recipe
table1 --kepler-m 2``), so the loss itself prefers features affine in ``a``, not in E.

Prints one line per system and seed and a summary, and writes JSON with ``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from concernet_ode import contrastive_invariant_loss, invariant_fidelity
from concernet_ode.discovery import symbolic_readout
from concernet_ode.reproduce import Recipe, get_task
from concernet_ode.reproduce.pipeline import contrastive_stage

SYSTEMS = ("spring", "chemical", "kepler")
TARGETS = {"spring": (0.996,), "chemical": (0.99999,), "kepler": (0.95, 0.9)}
# Invertible functions of a true invariant that a learned feature may follow more closely
# than the invariant itself (the loss fixes features only up to such maps): the affine R^2
# against them is printed beside the targets' R^2. Kepler's features follow the semi-major
# axis a = -1/(2E), which over the sampled orbits is a strongly curved function of E.
RELATED = {"kepler": {"a = -1/(2E)": lambda inv: -0.5 / inv[:, 0]}}


def cubic_features(h: torch.Tensor) -> torch.Tensor:
    """All monomials of degree 1 to 3 of the learned features, ``(N, m) -> (N, k)``."""
    cols = [h[:, i] for i in range(h.shape[1])]
    out = list(cols)
    for i, a in enumerate(cols):
        for j in range(i, len(cols)):
            out.append(a * cols[j])
            out.extend(a * cols[j] * cols[k] for k in range(j, len(cols)))
    return torch.stack(out, -1)


def objective(features: torch.Tensor, *, seed: int, n_batches: int = 100,
              **loss_options) -> float:
    """Mean contrastive loss of ``features`` ``(B, T, m)`` over ``n_batches`` random batches
    of 10 trajectories (``loss_options``: ``contrastive_invariant_loss``'s keywords)."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(n_batches):
        idx = torch.randperm(features.shape[0], generator=gen)[:10]
        total += float(contrastive_invariant_loss(features[idx], **loss_options))
    return total / n_batches


def invariant_recipe(name: str, recipe: str, *, epochs: int, m: int | None,
                     positives: str | None = None, schedule: str = "recipe",
                     weight_decay: float | None = None) -> Recipe:
    """The recipe of ``name``'s contrastive stage: ``recipe`` and the command-line overrides."""
    task = get_task(name)
    if recipe == "table1":  # as concernet-ode reproduce trains the task's invariant
        base = task.recipe_for(Recipe.table1())
    else:  # the paper's recipe, on the task's architecture (chemical kinetics: ReLU)
        base = Recipe.paper().with_changes(
            {"activation": task.recipe_for(Recipe.paper()).activation})
    changes: dict[str, object] = {"contrastive_epochs": epochs}
    if m is not None:
        changes["n_invariants"] = m
    if positives is not None:
        changes["positives"] = positives
    if schedule != "recipe":
        changes.update(anneal=schedule == "cosine", anneal_contrastive=True)
    if weight_decay is not None:
        changes["invariant_weight_decay"] = weight_decay
    return base.with_changes(changes)


def run_one(name: str, seed: int, *, epochs: int, m: int | None, eval_traj: int,
            dtype: torch.dtype, recipe: str = "paper", positives: str | None = None,
            schedule: str = "recipe", weight_decay: float | None = None) -> dict:
    system = get_task(name).system
    plan = invariant_recipe(name, recipe, epochs=epochs, m=m, positives=positives,
                            schedule=schedule, weight_decay=weight_decay)
    m = plan.n_invariants
    train, _ = system.train_data(seed, dtype=dtype)
    start = time.perf_counter()
    net = contrastive_stage(train, seed, plan)
    seconds = time.perf_counter() - start
    fresh = system.trajectories(eval_traj, t_end=system.train_t_end,
                                n_times=system.train_n_times, noise=0.0, seed=10_000 + seed,
                                dtype=dtype)
    x = fresh.x.reshape(-1, system.state_dim)
    with torch.no_grad():
        learned = net(x)
    true = system.invariants(x)
    r2 = invariant_fidelity(learned, true).tolist()
    # Diagnostic: the R^2 of a cubic (not affine) readout separates "the invariant was not
    # learned" from "it was learned as a nonlinear function of the true one".
    r2_cubic = invariant_fidelity(cubic_features(learned), true).tolist()
    related = {label: float(invariant_fidelity(learned, fn(true).unsqueeze(-1))[0])
               for label, fn in RELATED.get(name, {}).items()}
    # What the loss itself prefers: its value on the training batches for the learned
    # features, the true invariants and the true ones with the first replaced by each related
    # function (same batches). A related function scoring below the true invariants is what
    # a perfect optimiser would learn instead of them.
    with torch.no_grad():
        feats = net(train.x)
    inv = system.invariants(train.x)
    loss_options = {"normalize": plan.normalize_features, "positives": plan.positives}
    losses = {"learned": objective(feats, seed=seed, **loss_options),
              "true": objective(inv, seed=seed, **loss_options)}
    for label, fn in RELATED.get(name, {}).items():
        swapped = torch.cat([fn(inv.reshape(-1, inv.shape[-1])).reshape(inv.shape[:-1])
                             .unsqueeze(-1), inv[..., 1:]], dim=-1)
        losses[label] = objective(swapped, seed=seed, **loss_options)
    per_traj = learned.reshape(eval_traj, -1, m)
    spread = (per_traj.std(1).mean(0) / learned.std(0)).tolist()
    result = {"system": name, "seed": seed, "m": m, "epochs": epochs, "recipe": recipe, "r2": r2,
              "r2_cubic": r2_cubic, "r2_related": related, "spread_within": spread,
              "invariants": list(system.invariant_names), "train_seconds": seconds,
              "objective": losses}
    if m == 1:
        readout = symbolic_readout(learned[::10, 0], x[::10], names=system.state_names)
        result["readout"] = str(readout.expression)
        result["readout_r2"] = readout.r2
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--kepler-m", type=int, default=2)
    parser.add_argument("--eval-traj", type=int, default=1000)
    parser.add_argument("--float64", action="store_true",
                        help="train in float64 (networks built in float64)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--recipe", choices=("paper", "table1"), default="paper")
    parser.add_argument("--positives", choices=("sum", "mean"), default=None,
                        help="override the recipe's contrastive loss form")
    parser.add_argument("--schedule", choices=("recipe", "cosine", "constant"),
                        default="recipe", help="override the recipe's Adam step schedule")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="override the recipe's weight decay (AdamW)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.float64 else torch.float32
    torch.set_default_dtype(dtype)  # contrastive_stage builds its network in the default dtype
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, {dtype}, {args.threads} thread(s), epochs {args.epochs}, "
          f"recipe {args.recipe}, schedule {args.schedule}, weight decay "
          f"{'recipe' if args.weight_decay is None else args.weight_decay}")
    results = []
    for name in args.systems:
        for seed in args.seeds:
            m = args.kepler_m if name == "kepler" else None
            res = run_one(name, seed, epochs=args.epochs, m=m, eval_traj=args.eval_traj,
                          dtype=dtype, recipe=args.recipe, positives=args.positives,
                          schedule=args.schedule, weight_decay=args.weight_decay)
            results.append(res)
            met = all(r >= t for r, t in zip(res["r2"], TARGETS[name], strict=False))
            r2 = ", ".join(f"{n}: {v:.7f}" for n, v in zip(res["invariants"], res["r2"],
                                                            strict=True))
            extra = f" readout {res['readout']}" if "readout" in res else ""
            cubic = ", ".join(f"{v:.5f}" for v in res["r2_cubic"])
            related = "".join(f", affine R^2 vs {k} {v:.5f}" for k, v in res["r2_related"].items())
            spread = ", ".join(f"{v:.2f}" for v in res["spread_within"])
            loss = ", ".join(f"{k} {v:.4f}" for k, v in res["objective"].items())
            print(f"{name:9s} seed {seed} m={res['m']} R^2 {r2} (cubic readout {cubic}){related}"
                  f"  target {'met' if met else 'MISSED'}, spread within/across {spread}  "
                  f"({res['train_seconds']:.0f} s){extra}; training loss of {loss}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
