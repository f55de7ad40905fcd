"""What limits the learned dynamics: the data's noise or the training budget?

Trains the Table 1 ``oracle`` model (the protocol's MLP behind the projection onto the true
invariants, so that the invariant plays no part) on a system's training set, with the
protocol's Gaussian noise and without it, for several numbers of epochs (Adam at 1e-3
annealed along a cosine, batches of 100 points, as ``concernet-ode reproduce`` trains), and
prints the evaluation MSE and violation of each. If the noise-free fit is no better than the
noisy one at the protocol's 1000 epochs but improves with more epochs, the training budget,
not the data, sets the error. ``--lr`` takes several peak steps (the protocol's is 1e-3) to
ask the same question another way: whether a larger step, annealed to 0 all the same, gets
further in the protocol's 1000 epochs. ``--noisy-only`` skips the noise-free fits.

First it prints, per seed, the squared error that the true vector field itself makes on the
noisy training points, against the label noise alone. The protocol adds noise to the states
as well as to the derivatives, so a model sees the state ``x + e`` paired with the
derivative ``f(x) + e'``: where ``f`` is steep (Kepler near r = 0.1, where the acceleration
1/r^2 changes by 2/r^3 per unit of r) the state noise, not the label noise, sets how well
any model can fit.

Scores on the evaluation states answer "what limits the error"; they must not choose a
setting. ``--held-out`` scores instead on the half of the training trajectories that the
protocol holds out, against their noisy observations, as a user without the true system
would: the mean squared error of the derivatives, and of a rollout from each held-out
trajectory's first (noisy) state over the training horizon. ``--model baseline`` trains the
plain MLP (no projection) instead of the oracle.

    python experiments/dynamics_fit.py [--system spring] [--seeds 0] [--epochs 1000 3000]
    python experiments/dynamics_fit.py --seeds 0 1 2 --epochs 1000 --lr 1e-3 3e-3 --noisy-only
    python experiments/dynamics_fit.py --system kepler --seeds 0 1 2 --floor-only
    python experiments/dynamics_fit.py --seeds 0 1 2 --epochs 1000 --lr 1e-3 3e-3 \
        --noisy-only --held-out --model baseline
"""

from __future__ import annotations

import argparse
import copy
import itertools
import platform

import torch
from torchdiffeq import odeint

import concernet_ode
from concernet_ode import MLP, ProjectedVectorField, TrajectoryData, cosine_schedule, fit_dynamics
from concernet_ode.metrics import evaluate
from concernet_ode.reproduce import Recipe, get_task
from concernet_ode.reproduce.pipeline import EVAL_SEED_OFFSET

SYSTEMS = ("spring", "chemical", "kepler")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=SYSTEMS, default="spring")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", nargs="+", type=int, default=[1000, 3000])
    parser.add_argument("--lr", nargs="+", type=float, default=[1e-3],
                        help="peak Adam steps (cosine-annealed to 0)")
    parser.add_argument("--noisy-only", action="store_true",
                        help="train on the protocol's noisy data only")
    parser.add_argument("--held-out", action="store_true",
                        help="score on the held-out training trajectories, not the evaluation")
    parser.add_argument("--model", choices=("oracle", "baseline"), default="oracle")
    parser.add_argument("--floor-only", action="store_true",
                        help="print the noise table only (no training)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task(args.system)
    system, recipe = task.system, task.recipe_for(Recipe.table1())
    if not args.floor_only:
        print(f"{args.system}: {args.model} model, float32 training, float64 evaluation, scored "
              f"on {'the held-out training trajectories' if args.held_out else 'the evaluation'}")
    print(machine_line())
    print()
    scores = ("held-out dxdt MSE", "held-out rollout MSE") if args.held_out else (
        "MSE", "violation")
    print("| seed | label noise alone | true field on the noisy states |")
    print("|---|---|---|")
    for seed in args.seeds:
        label, total = noise_floor(system, seed)
        print(f"| {seed} | {label:.3g} | {total:.3g} |")
    if args.floor_only:
        return
    print()
    print(f"| seed | training noise | epochs | peak lr | final training loss | {scores[0]} | "
          f"{scores[1]} |")
    print("|---|---|---|---|---|---|---|")

    def wrap(net):
        return net if args.model == "baseline" else ProjectedVectorField(net, system.invariants)

    for seed in args.seeds:
        if args.held_out:
            _, held_out = system.train_data(seed, dtype=torch.float64)
        else:
            x0 = system.sample_initial(system.eval_traj, seed=EVAL_SEED_OFFSET + seed,
                                       evaluation=True)
            t = system.eval_grid()
            true = system.solve(x0, t).movedim(-2, 0)
        for noisy in (True,) if args.noisy_only else (True, False):
            train, _ = system.train_data(seed, dtype=torch.float32, noise=noisy)
            noise = system.noise if noisy else 0.0
            for epochs, lr in itertools.product(args.epochs, args.lr):
                torch.manual_seed(seed)
                mlp = MLP(system.state_dim, system.state_dim, hidden=recipe.hidden,
                          depth=recipe.depth, activation=recipe.activation)
                history = fit_dynamics(wrap(mlp), train, epochs=epochs,
                                       batch_size=recipe.dynamics_batch, lr=lr,
                                       seed=seed, progress=False,
                                       lr_schedule=cosine_schedule(epochs))
                model = wrap(copy.deepcopy(mlp).double())
                with torch.no_grad():
                    if args.held_out:
                        first, second = held_out_scores(held_out, model)
                        cells = f"{first:.3g} | {second:.3g}"
                    else:
                        ev = evaluate(model, x0, t, system.invariants, true=true, rtol=1e-7,
                                      atol=1e-9)
                        cells = f"{ev.mse:.3g} | {ev.violation:.2g}"
                print(f"| {seed} | {noise:g} | {epochs} | {lr:g} | {history['loss'][-1]:.3g} | "
                      f"{cells} |", flush=True)


def machine_line() -> str:
    """The machine, the thread count and the versions, for the head of the output."""
    return (f"machine: {platform.machine()} {platform.processor() or ''} "
            f"{torch.get_num_threads()} thread(s); python {platform.python_version()}, "
            f"torch {torch.__version__}, concernet_ode {concernet_ode.__version__}")


def noise_floor(system, seed: int) -> tuple[float, float]:
    """Mean squared error (per coordinate) of the noisy training derivatives against the
    true field at the noise-free states (the label noise alone), and against the true field
    at the noisy states (what a perfect model of ``f`` scores on the training loss)."""
    noisy, _ = system.train_data(seed, dtype=torch.float64)
    clean, _ = system.train_data(seed, dtype=torch.float64, noise=False)
    x, dxdt = noisy.points()
    x_clean, _ = clean.points()
    label = (system.vector_field(0.0, x_clean) - dxdt).pow(2).mean()
    total = (system.vector_field(0.0, x) - dxdt).pow(2).mean()
    return float(label), float(total)


def held_out_scores(test: TrajectoryData, model) -> tuple[float, float]:
    """Derivative and rollout MSE on held-out (noisy) trajectories, against their data."""
    dxdt = model(test.t[0], test.x)
    rollout = odeint(model, test.x[:, 0], test.t, method="dopri5", rtol=1e-7, atol=1e-9)
    return (float((dxdt - test.dxdt).pow(2).mean()),
            float((rollout.movedim(0, 1) - test.x).pow(2).mean()))


if __name__ == "__main__":
    main()
