"""One seed of a Table 1 task: data, invariant, dynamics, evaluation, invariant fidelity.

:func:`run_seed` is the whole pipeline for all four tasks; a latent task (heat) differs only
by its state space, an autoencoder's latent space, entered by eqs. (9)-(10):

1. noisy training data by the paper's protocol (half the trajectories held out);
2. for a latent task, an autoencoder fitted to the training states, and the data mapped to
   ``(z, zdot)`` by :meth:`~concernet_ode.LatentAdapter.to_latent`;
3. a contrastive invariant ``H`` (``InvariantNet``, eqs. (4), (8)), then its level sets refined
   against the observed derivatives (:func:`~concernet_ode.refine_invariants`) where the
   recipe asks for it;
4. dynamics models from the same initial weights, on the same batches with the same
   optimiser, trained side by side: ``baseline`` (plain MLP), ``concernet`` (the MLP behind
   the projection of eq. (6) onto the learned ``H``) and ``oracle`` (behind the projection
   onto the true invariants: what a perfect ``H`` gives; for a latent task a full-space MLP);
   fitted to the observed derivatives, or, when the recipe fits trajectories
   (:meth:`Recipe.trajectories`), to the observed states through ``odeint``
   (:func:`~concernet_ode.fit_trajectories`, all members in one call on the product state
   of :class:`EnsembleField`), the derivative data dropped before step 2 so that no stage
   can use it (the refinement and the warm start use derivatives estimated from the
   states);
5. evaluation in float64 from the same initial states against the reference solution, all
   models of a space in one batched adaptive solve, plus ``concernet_manifold``: the
   concernet model integrated with ``odeint_projected`` on the learned ``H``
   (``interpolate=True``), every metric computed in the full space;
6. R^2 of an affine readout of each true invariant from the learned ones on fresh
   noise-free trajectories.

Every random choice is seeded from the task seed: the data (``seed``), the initial weights
(``torch.manual_seed(seed)`` before each network), the batch orders (``seed``), the
evaluation states (``10000 + seed``) and the fidelity trajectories (``20000 + seed``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torchdiffeq import odeint

from ..data import TrajectoryData, estimate_derivatives
from ..latent import LatentAdapter
from ..manifold import odeint_projected
from ..metrics import Evaluation, invariant_fidelity
from ..models import MLP, Autoencoder, InvariantNet
from ..projection import ProjectedVectorField
from ..shooting import fit_trajectories
from ..training import fit_autoencoder, fit_dynamics, fit_invariants, refine_invariants
from .ensemble import Ensemble, EnsembleField, fit_ensemble
from .recipe import Recipe
from .tasks import Task

__all__ = ["METHODS", "SeedResult", "contrastive_stage", "dynamics_stage", "invariant_r2",
           "refine_stage", "run_seed"]

METHODS = ("baseline", "concernet", "concernet_manifold", "oracle")
# Seeds of the evaluation initial states and of the fresh noise-free trajectories for R^2,
# derived from the task seed and disjoint from the training data's.
EVAL_SEED_OFFSET, FIDELITY_SEED_OFFSET = 10_000, 20_000


@dataclass
class SeedResult:
    """What one seed of a task produced.

    Attributes:
        seed: the task seed.
        evaluations: one :class:`~concernet_ode.metrics.Evaluation` per method.
        invariant_r2: R^2 of the learned invariants against each true invariant.
        seconds: wall time of each stage.
    """

    seed: int
    evaluations: dict[str, Evaluation]
    invariant_r2: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)


class _StageClock:
    """Wall time of consecutive stages: ``lap(name)`` ends a stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, key: str) -> None:
        now = time.perf_counter()
        self.seconds[key] = now - self._last
        self._last = now


def contrastive_stage(data: TrajectoryData, seed: int, recipe: Recipe) -> InvariantNet:
    """The contrastive invariant of ``recipe`` on ``data``, its initial weights drawn after
    ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    H = InvariantNet(data.state_dim, recipe.n_invariants, hidden=recipe.hidden,
                     depth=recipe.depth, activation=recipe.activation)
    epochs = recipe.epochs("contrastive")
    fit_invariants(H, data, epochs=epochs, batch_size=recipe.contrastive_batch, lr=recipe.lr,
                   seed=seed, progress=recipe.progress, normalize=recipe.normalize_features,
                   positives=recipe.positives, weight_decay=recipe.invariant_weight_decay,
                   flow_weight=recipe.flow_weight,
                   lr_schedule=recipe.schedule(epochs, stage="contrastive"))
    return H


def refine_stage(H: torch.nn.Module, data: TrajectoryData, seed: int, recipe: Recipe) -> int:
    """Refine ``H`` in place as ``recipe`` says; the number of epochs run (0: no stage).

    Data without derivatives (the trajectory recipe) are refined against derivatives
    estimated from the states (:func:`~concernet_ode.estimate_derivatives`)."""
    epochs = recipe.refine_epochs(data.n_traj * data.n_times)
    if epochs:
        if data.dxdt is None:
            data = estimate_derivatives(data)
        # No held-out guard: the committed Table 1 was run without one (the guard would
        # train on four fifths of the data and change every number).
        refine_invariants(H, data, epochs=epochs, batch_size=recipe.refine_batch,
                          lr=recipe.refine_lr, seed=seed, progress=recipe.progress,
                          lr_schedule=recipe.schedule(epochs), validation=None)
    return epochs


def dynamics_stage(model: torch.nn.Module, data: TrajectoryData, seed: int,
                   recipe: Recipe) -> None:
    """Train ``model`` (an :class:`EnsembleField` or one field) as ``recipe`` says.

    Fitting derivatives: ``dynamics_epochs`` epochs on ``data.dxdt``. Fitting trajectories:
    ``warmup_epochs`` epochs on derivatives estimated from the states, then about
    ``trajectory_steps`` steps of :func:`~concernet_ode.fit_trajectories` on the states; an
    ensemble's members all train in that one call, on their product state (each member's
    windows start from its own estimates), their rollouts' squared errors averaged.
    """
    ensemble = isinstance(model, EnsembleField)
    common = {"seed": seed, "progress": recipe.progress}

    def fit_points(points: TrajectoryData, epochs: int) -> None:
        schedule = recipe.schedule(epochs)
        if ensemble:
            fit_ensemble(model, points, epochs=epochs, batch_size=recipe.dynamics_batch,
                         lr=recipe.lr, lr_schedule=schedule, **common)
        else:
            fit_dynamics(model, points, epochs=epochs, batch_size=recipe.dynamics_batch,
                         lr=recipe.lr, lr_schedule=schedule, **common)

    if not recipe.fits_trajectories:
        fit_points(data, recipe.epochs("dynamics"))
        return
    data = TrajectoryData(data.t, data.x)  # states only, whatever the caller passed
    if recipe.warmup_epochs:
        fit_points(estimate_derivatives(data), recipe.epochs("warmup"))
    if ensemble:
        data = TrajectoryData(data.t, model.tile(data.x))
    window = recipe.trajectory_window
    epochs = recipe.trajectory_epochs(data.n_traj * (data.n_times - window + 1))
    fit_trajectories(model, data, window=window, epochs=epochs,
                     batch_size=recipe.trajectory_batch, lr=recipe.lr,
                     lr_schedule=recipe.schedule(epochs), starts=recipe.trajectory_starts,
                     method="rk4", substeps=recipe.trajectory_substeps, **common)


def _fit_autoencoder(train: TrajectoryData, seed: int, recipe: Recipe) -> LatentAdapter:
    torch.manual_seed(seed)
    autoencoder = Autoencoder(train.state_dim, recipe.autoencoder_latent,
                              hidden=recipe.autoencoder_hidden)
    epochs = recipe.epochs("autoencoder")
    fit_autoencoder(autoencoder, train, epochs=epochs, batch_size=recipe.autoencoder_batch,
                    lr=recipe.lr, seed=seed, progress=recipe.progress,
                    lr_schedule=recipe.schedule(epochs))
    return LatentAdapter(autoencoder.requires_grad_(False))


def _mlp(dim: int, seed: int, recipe: Recipe) -> MLP:
    torch.manual_seed(seed)
    return MLP(dim, dim, hidden=recipe.hidden, depth=recipe.depth,
               activation=recipe.activation)


def _integrate(adapter: LatentAdapter | None, func: Callable, x0: torch.Tensor,
               t: torch.Tensor, odeint_fn: Callable = odeint, **kwargs: object,
               ) -> torch.Tensor:
    """``odeint_fn`` in the full space, or through the latent space of ``adapter``."""
    with torch.no_grad():
        if adapter is None:
            return odeint_fn(func, x0, t, **kwargs)
        return adapter.integrate(func, x0, t, odeint_fn=odeint_fn, **kwargs)


def invariant_r2(task: Task, adapter: LatentAdapter | None, H: torch.nn.Module, seed: int,
              recipe: Recipe) -> dict[str, float]:
    """R^2 of an affine readout of each true invariant from the learned ones, on fresh
    noise-free trajectories from the training distribution."""
    system = task.system
    n_traj = task.fidelity_traj
    if recipe.smoke:
        n_traj = max(10, round(n_traj * recipe.eval_fraction))
    clean = system.trajectories(n_traj, t_end=system.train_t_end,
                                n_times=system.train_n_times, seed=FIDELITY_SEED_OFFSET + seed)
    x = clean.x.reshape(-1, system.state_dim)
    with torch.no_grad():
        z = x if adapter is None else adapter.encode(x)
        r2 = invariant_fidelity(H(z), system.invariants(x))
    return dict(zip(system.invariant_names, r2.tolist(), strict=True))


def run_seed(task: Task, seed: int, recipe: Recipe | None = None) -> SeedResult:
    """One seed of ``task`` (see the module docstring).

    Args:
        task: the Table 1 row.
        seed: the task seed.
        recipe: the training recipe, before the task's departures
            (:meth:`Task.recipe_for` is applied here); ``Recipe.table1()`` by default.

    Returns:
        The evaluations of :data:`METHODS`, the invariant's R^2 and each stage's seconds.
    """
    recipe = task.recipe_for(Recipe.table1() if recipe is None else recipe)
    system, clock = task.system, _StageClock()
    train, _ = system.train_data(seed, dtype=torch.float32)
    if recipe.fits_trajectories:  # no derivative labels anywhere: the states alone
        train = TrajectoryData(train.t, train.x)
    clock.lap("data")
    adapter, data = None, train
    if task.latent:
        adapter = _fit_autoencoder(train, seed, recipe)
        data = adapter.to_latent(train)
        clock.lap("autoencoder")
    H = contrastive_stage(data, seed, recipe)
    clock.lap("contrastive")
    if refine_stage(H, data, seed, recipe):
        clock.lap("refine")
    H.requires_grad_(False)

    # Same initial weights, batches and optimiser for every model of the ensemble; the
    # oracle of a latent task lives in the full space and trains on its own.
    members = [_mlp(data.state_dim, seed, recipe) for _ in range(2 if task.latent else 3)]
    projections = [None, H] if task.latent else [None, H, system.invariants]
    ensemble = Ensemble(members)
    dynamics_stage(EnsembleField(ensemble, projections), data, seed, recipe)
    ensemble.write_back()
    oracle = None
    if task.latent:
        oracle = ProjectedVectorField(_mlp(system.state_dim, seed, recipe), system.invariants)
        dynamics_stage(oracle, train, seed, recipe)
    clock.lap("dynamics")

    x0 = system.sample_initial(system.eval_traj, seed=EVAL_SEED_OFFSET + seed, evaluation=True)
    t = system.eval_grid()
    t = t[: max(2, round(len(t) * recipe.eval_fraction))]
    true = system.solve(x0, t).movedim(-2, 0)  # (T, B, n)
    metric, opts = task.violation_invariants, recipe.eval_options
    adapter64 = None if adapter is None else copy.deepcopy(adapter).double()
    H64 = copy.deepcopy(H).double()
    field64 = EnsembleField(copy.deepcopy(ensemble).double(),
                            [H64 if p is H else p for p in projections])
    z0 = x0 if adapter64 is None else adapter64.encode(x0)
    pred = field64.untile(_integrate(None, field64, field64.tile(z0), t, **opts))
    if adapter64 is not None:
        pred = adapter64.decode(pred)  # (T, B, K, n)
    names = ("baseline", "concernet", "oracle")[:len(members)]
    evaluations = {name: Evaluation.from_trajectories(t, pred[..., i, :], true, metric)
                   for i, name in enumerate(names)}
    concernet = ProjectedVectorField(copy.deepcopy(members[1]).double(), H64)
    pred = _integrate(adapter64, concernet, x0, t, odeint_projected, H=H64, interpolate=True,
                      **opts)
    evaluations["concernet_manifold"] = Evaluation.from_trajectories(t, pred, true, metric)
    if oracle is not None:
        oracle64 = ProjectedVectorField(copy.deepcopy(oracle.field).double(), system.invariants)
        pred = _integrate(None, oracle64, x0, t, **opts)
        evaluations["oracle"] = Evaluation.from_trajectories(t, pred, true, metric)
    clock.lap("evaluate")
    r2 = invariant_r2(task, adapter64, H64, seed, recipe)
    clock.lap("fidelity")
    return SeedResult(seed, {m: evaluations[m] for m in METHODS}, r2, clock.seconds)
