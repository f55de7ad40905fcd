"""The paper's Table 1 as code: tasks, one seed's pipeline, and the results of several seeds.

A :class:`Task` is a small declarative object: a name, a function that runs one seed and
returns a :class:`SeedResult`, and the reference numbers (paper, authors' code) to print
beside ours. Tasks live in a registry (:func:`register_task`, :func:`get_task`); the
conservative systems of :mod:`concernet_ode.systems` are registered here, and other tasks (the
heat equation, which needs an autoencoder and a latent stage) register themselves the same way.

For one seed of a conservative system (:func:`run_conservative_seed`):

1. noisy training data by the protocol (half the trajectories held out);
2. a contrastive invariant ``H`` (``InvariantNet``, eqs. (4), (8), normalised features),
   then its level sets refined against the observed derivatives
   (:func:`~concernet_ode.refine_invariants`; ``RunConfig.refine_steps``, 0 for the paper's);
3. three dynamics models from the same initial weights, trained on the same batches with the
   same optimiser: ``baseline`` (plain MLP), ``concernet`` (MLP behind the projection of
   eq. (6) onto the learned ``H``) and ``oracle`` (behind the projection onto the true
   invariants: what a perfect ``H`` would give);
4. evaluation in float64 from the same initial states against the exact solution, all models
   in one batched adaptive solve, plus ``concernet_manifold``: the concernet model integrated
   with ``odeint_projected`` on the learned ``H`` (``interpolate=True``: the evaluation grid
   of 1001 points is finer than the solver's steps for some tasks).
"""

from __future__ import annotations

import copy
import importlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torchdiffeq import odeint

from ._stacked import StackedField, StackedMLP, fit_stacked_dynamics
from .data import TrajectoryData
from .manifold import odeint_projected
from .metrics import Evaluation, evaluate, invariant_fidelity
from .models import MLP, InvariantNet
from .projection import ProjectedVectorField
from .systems import ChemicalKinetics, ConservativeSystem, Kepler, SpringMass
from .training import cosine_schedule, fit_invariants, refine_invariants

__all__ = [
    "INVARIANT_OPTIONS",
    "METHODS",
    "RunConfig",
    "SeedResult",
    "StageClock",
    "Task",
    "available_tasks",
    "contrastive_stage",
    "get_task",
    "refine_stage",
    "register_task",
    "registered_tasks",
    "run_conservative_seed",
]

METHODS = ("baseline", "concernet", "concernet_manifold", "oracle")
# Seeds of the evaluation initial states and of the fresh noise-free trajectories for R^2,
# derived from the task seed and disjoint from the training data's.
EVAL_SEED_OFFSET, FIDELITY_SEED_OFFSET = 10_000, 20_000


@dataclass(frozen=True)
class RunConfig:
    """How long to train and how to evaluate: the protocol, or a smoke run.

    The default evaluation solver is adaptive Dormand-Prince in float64 at rtol 1e-7 and
    atol 1e-9: its error (squared, as the metrics see it) is far below every score, and far
    below that of the authors' RK45 with the default atol 1e-6, so the scores measure the
    models rather than the solver.

    ``anneal`` (on by default; the first of our two changes to the paper's recipe) lets every
    training stage's Adam step fall from ``lr`` to 0 along a cosine over its epochs
    (:func:`~concernet_ode.cosine_schedule`) instead of staying at ``lr``: at a constant
    step Adam keeps jittering around the minimum of these noisy losses, and that jitter,
    not the data, set the models' error. It applies to every model alike (baseline,
    ConCerNet, oracle, invariant, autoencoder), except where a task keeps its invariant at a
    constant step (chemical kinetics; see its ``Task.notes``); ``anneal=False``
    (``--constant-lr``) is the paper's protocol exactly.

    ``positives`` picks the form of the contrastive loss
    (:func:`~concernet_ode.contrastive_invariant_loss`): ``"mean"`` (the default, our second
    change) averages the log-similarity over a trajectory's pairs, so that every pair is
    pulled together; ``"sum"`` (``--positives sum``) is eq. (4) as printed, whose sum over
    positives a trajectory spread along a curve in feature space already satisfies.

    ``invariant_weight_decay`` (0.3 by default, our third change; ``--invariant-weight-decay
    0`` for the paper's) is the decoupled weight decay of the contrastive stage, where the
    features are standardised (``fit_invariants(weight_decay=...)``): the loss fixes the
    invariant only up to an invertible map, and decay picks the least curved one, for the
    spring ``q^2 + p^2`` itself (``python benchmarks/invariant_fidelity.py --recipe table1``
    with ``--weight-decay 0``, 0.3). Tasks whose invariant trains on raw features leave it
    out (their scale is the kernel's width). The dynamics models never decay: it shrinks
    the field they fit.

    ``refine_steps`` (1000 by default, our fourth change; ``--refine-steps 0`` for the
    paper's) adds a stage after the contrastive one: :func:`~concernet_ode.refine_invariants`
    on batches of ``refine_batch_size`` training points, at step ``refine_lr`` (1e-2; Kepler
    sets 1e-3 as its own, in ``Task.overrides``) annealed like the others, for as many epochs as
    make about ``refine_steps`` steps (the same budget for every task, whatever its number
    of points), turns the learned level sets until the observed derivatives lie in them.
    The contrastive loss fixes the invariant's values well and its gradient, which is all
    the projection uses, less well: the ReLU invariant of chemical kinetics is accurate to
    1 - R^2 below 1e-5 while its gradient is tilted by 8e-3 to 4e-2 rad, enough to lose to
    the unprojected baseline (``python benchmarks/refinement.py``). The stage uses the
    derivative data, which the dynamics stage uses anyway.
    """

    contrastive_epochs: int = 1000
    dynamics_epochs: int = 1000
    eval_rtol: float = 1e-7
    eval_atol: float = 1e-9
    eval_fraction: float = 1.0
    progress: bool = False
    anneal: bool = True
    positives: str = "mean"
    invariant_weight_decay: float = 0.3
    refine_steps: int = 1000
    refine_lr: float = 1e-2
    refine_batch_size: int = 500

    @classmethod
    def quick(cls, progress: bool = False) -> RunConfig:
        """A smoke-test configuration (a few epochs, a tenth of the evaluation horizon at
        loose tolerances; the numbers mean nothing)."""
        return cls(contrastive_epochs=20, dynamics_epochs=10, eval_rtol=1e-4, eval_atol=1e-6,
                   eval_fraction=0.1, progress=progress, refine_steps=4)

    def schedule(self, epochs: int) -> Callable[[int], float] | None:
        """The ``lr_schedule`` for a stage of ``epochs`` epochs (``None``: constant)."""
        return cosine_schedule(epochs) if self.anneal else None

    def invariant_options(self, *, normalize: bool = True, anneal_invariant: bool = True,
                          decay_invariant: bool = True) -> dict:
        """Keyword arguments of ``fit_invariants`` for the contrastive stage of this run.

        The run's loss form, step schedule and weight decay, less what a task leaves out
        (its ``INVARIANT_OPTIONS``, which are exactly these keyword arguments).
        """
        return {"normalize": normalize, "positives": self.positives,
                "lr_schedule": self.schedule(self.contrastive_epochs) if anneal_invariant
                else None,
                "weight_decay": self.invariant_weight_decay if decay_invariant else 0.0}

    def refine_epochs(self, n_points: int) -> int:
        """Epochs of ``refine_batch_size`` points that make about ``refine_steps`` steps on
        ``n_points`` training points (at least 1; 0 when ``refine_steps`` is 0)."""
        if not self.refine_steps:
            return 0
        per_epoch = math.ceil(n_points / self.refine_batch_size)
        return max(1, round(self.refine_steps / per_epoch))

    @property
    def eval_options(self) -> dict:
        return {"method": "dopri5", "rtol": self.eval_rtol, "atol": self.eval_atol}


@dataclass
class SeedResult:
    """What one seed of a task produced.

    Attributes:
        seed: the task seed.
        evaluations: one :class:`~concernet_ode.metrics.Evaluation` per method.
        invariant_r2: R^2 of the learned invariant against each true invariant.
        seconds: wall time of each stage.
    """

    seed: int
    evaluations: dict[str, Evaluation]
    invariant_r2: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A row of Table 1.

    Attributes:
        name: the CLI name.
        run_seed: ``run_seed(seed, config) -> SeedResult``.
        state_names: coordinate names (for figures).
        paper: the paper's ``{method: {"mse": (mean, std), "violation": (mean, std)}}``.
        authors: the authors' code on this machine, ``{method: {"mse": v, "violation": v}}``.
        authors_seconds: the authors' code's wall time for one seed on this machine.
        notes: the task's own caveats and recipe choices, printed under the table.
        overrides: ``RunConfig`` fields the task sets itself, whatever the run's config says
            (its ``run_seed`` applies them; :meth:`config_for` gives the config it runs
            with, which the CLI records).
    """

    name: str
    run_seed: Callable[[int, RunConfig], SeedResult]
    state_names: tuple[str, ...]
    paper: dict[str, dict[str, tuple[float, float]]]
    authors: dict[str, dict[str, float]]
    authors_seconds: float
    notes: str = ""
    overrides: dict[str, object] = field(default_factory=dict)

    def config_for(self, config: RunConfig) -> RunConfig:
        """The configuration this task's seeds run with: ``config`` with its overrides."""
        return replace(config, **self.overrides) if self.overrides else config


_REGISTRY: dict[str, Task] = {}
# Tasks that register themselves when their module is imported; the module is imported on
# first request, so that ``concernet_ode`` itself never depends on it.
_PLUGINS: dict[str, str] = {"heat": "integrations.py_pde_benchmark"}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry (replacing one of the same name) and return it."""
    if not isinstance(task, Task):
        msg = f"`task` must be a Task, got {type(task).__name__}"
        raise TypeError(msg)
    _REGISTRY[task.name] = task
    return task


def registered_tasks() -> list[str]:
    """Names of the registered tasks, in registration order."""
    return list(_REGISTRY)


def _load_plugin(name: str) -> None:
    if name in _PLUGINS and name not in _REGISTRY:
        try:
            importlib.import_module(_PLUGINS[name])
        except ImportError:
            pass


def available_tasks() -> list[str]:
    """Registered task names, after importing the modules that register optional tasks."""
    for name in _PLUGINS:
        _load_plugin(name)
    return registered_tasks()


def get_task(name: str) -> Task:
    """The registered task called ``name``.

    Raises:
        ValueError: no such task, or a known task whose module has not registered it; the
            message lists the registered ones.
    """
    _load_plugin(name)
    if name not in _REGISTRY:
        valid = ", ".join(_REGISTRY) or "none"
        if name in _PLUGINS:
            msg = (f"task {name!r} is not available yet: it is registered by "
                   f"{_PLUGINS[name]}, which did not register it; registered tasks: {valid}")
        else:
            msg = f"unknown task {name!r}; registered tasks: {valid}"
        raise ValueError(msg)
    return _REGISTRY[name]


class StageClock:
    """Wall time of the consecutive stages of a run: ``lap(name)`` ends a stage.

    ``seconds`` maps each stage's name to its duration, as :class:`SeedResult` keeps it.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, key: str) -> None:
        """Record the time since the previous lap (or since creation) as stage ``key``."""
        now = time.perf_counter()
        self.seconds[key] = now - self._last
        self._last = now


def _fidelity(system: ConservativeSystem, H: torch.nn.Module, seed: int) -> dict[str, float]:
    """R^2 of an affine readout of each true invariant from the learned ones, measured on
    1000 fresh noise-free trajectories from the training distribution."""
    clean = system.trajectories(1000, t_end=system.train_t_end, n_times=system.train_n_times,
                                seed=FIDELITY_SEED_OFFSET + seed)
    x = clean.x.reshape(-1, system.state_dim)
    with torch.no_grad():
        r2 = invariant_fidelity(H(x), system.invariants(x))
    return dict(zip(system.invariant_names, r2.tolist(), strict=True))


def contrastive_stage(system: ConservativeSystem, train: TrajectoryData, seed: int,
                      config: RunConfig, *, normalize: bool = True, flow_weight: float = 0.0,
                      anneal_invariant: bool = True,
                      decay_invariant: bool = True) -> InvariantNet:
    """The contrastive invariant of one Table 1 seed (options as in
    :func:`run_conservative_seed`), its initial weights drawn after ``torch.manual_seed(seed)``.
    """
    torch.manual_seed(seed)
    H = InvariantNet(system.state_dim, system.latent_dim, activation=system.activation)
    fit_invariants(H, train, epochs=config.contrastive_epochs, batch_size=10, seed=seed,
                   progress=config.progress, flow_weight=flow_weight,
                   **config.invariant_options(normalize=normalize,
                                              anneal_invariant=anneal_invariant,
                                              decay_invariant=decay_invariant))
    return H


def refine_stage(H: torch.nn.Module, train: TrajectoryData, seed: int,
                 config: RunConfig) -> int:
    """Refine ``H`` in place as a Table 1 run does (``config.refine_*``); the number of
    epochs it ran (0: the stage is off)."""
    epochs = config.refine_epochs(train.n_traj * train.n_times)
    if epochs:
        refine_invariants(H, train, epochs=epochs, batch_size=config.refine_batch_size,
                          lr=config.refine_lr, seed=seed, progress=config.progress,
                          lr_schedule=config.schedule(epochs))
    return epochs


def run_conservative_seed(system: ConservativeSystem, seed: int, config: RunConfig, *,
                          normalize: bool = True, flow_weight: float = 0.0,
                          anneal_invariant: bool = True,
                          decay_invariant: bool = True) -> SeedResult:
    """One seed of the Table 1 protocol on a conservative system (see the module docstring).

    ``normalize`` chooses the contrastive loss: standardised features (eq. (8)) or the raw
    features of eq. (4), whose scale the network then sets itself. ``flow_weight`` adds
    :func:`~concernet_ode.flow_alignment_loss` to it (not the paper's method; 0 in Table 1).
    ``anneal_invariant=False`` keeps the contrastive stage at a constant step even where
    ``config.anneal`` anneals the others; ``decay_invariant=False`` trains it without
    ``config.invariant_weight_decay``. The refinement stage (``config.refine_steps``) follows
    the contrastive one whatever these options say.

    Every random choice is seeded from ``seed``: the data (``seed``), the initial weights
    (``torch.manual_seed(seed)`` before each model, so all three dynamics models start from
    the same weights), the batch order (``seed``, in every stage), the evaluation states
    (``10000 + seed``) and the fidelity trajectories (``20000 + seed``).
    """
    clock = StageClock()
    n, act = system.state_dim, system.activation
    train, _ = system.train_data(seed, dtype=torch.float32)
    H = contrastive_stage(system, train, seed, config, normalize=normalize,
                          flow_weight=flow_weight, anneal_invariant=anneal_invariant,
                          decay_invariant=decay_invariant)
    clock.lap("contrastive")
    if refine_stage(H, train, seed, config):
        clock.lap("refine")
    H.requires_grad_(False)

    members = []
    for _ in range(3):
        torch.manual_seed(seed)
        members.append(MLP(n, n, activation=act))
    stacked = StackedMLP(members)
    projections = [None, H, system.invariants]
    fit_stacked_dynamics(stacked, projections, train, epochs=config.dynamics_epochs,
                         batch_size=100, lr=1e-3, seed=seed, progress=config.progress,
                         lr_schedule=config.schedule(config.dynamics_epochs))
    stacked.write_back()
    clock.lap("dynamics")

    x0 = system.sample_initial(system.eval_traj, seed=EVAL_SEED_OFFSET + seed, evaluation=True)
    t = system.eval_grid()
    t = t[: max(2, round(len(t) * config.eval_fraction))]
    true = system.solve(x0, t).movedim(-2, 0)  # (T, B, n)
    H64 = copy.deepcopy(H).double()
    field64 = StackedField(copy.deepcopy(stacked).double(), [None, H64, system.invariants])
    with torch.no_grad():
        pred = odeint(field64, x0.expand(3, -1, -1), t, **config.eval_options)  # (T, 3, B, n)
    evaluations = {name: Evaluation.from_trajectories(t, pred[:, k], true, system.invariants)
                   for k, name in enumerate(("baseline", "concernet", "oracle"))}
    clock.lap("evaluate")

    concernet = ProjectedVectorField(copy.deepcopy(members[1]).double(), H64)
    evaluations["concernet_manifold"] = evaluate(
        concernet, x0, t, system.invariants, true=true, integrator=odeint_projected, H=H64,
        interpolate=True, **config.eval_options)
    clock.lap("evaluate_manifold")
    r2 = _fidelity(system, H64, seed)
    clock.lap("fidelity")
    return SeedResult(seed, {m: evaluations[m] for m in METHODS}, r2, clock.seconds)


# Where a Table 1 task trains its invariant unlike the default (standardised features, the
# run's step schedule and weight decay): keyword arguments of run_conservative_seed, read by
# the registrations below and by the benchmarks that reproduce the Table 1 recipe.
# Chemical kinetics: concentrations of 0.1-140 give raw features of that scale, so the
# similarities of eq. (4) are sharp from the start and each trajectory collapses to one
# value; features standardised to unit variance leave the kernel soft and the learned level
# sets tilted (`python benchmarks/invariant_fidelity.py --systems chemical` trains that way).
# Weight decay would shrink that scale, so it is left out. Why its contrastive stage keeps a
# constant step: its Task.notes, printed under the table.
# Kepler (one learned invariant): weight decay made the feature follow E less closely on
# fresh training-distribution trajectories, R^2 E 0.753 / 0.808 / 0.692 and L 0.991 / 0.998 /
# 0.980 against 0.768 / 0.827 / 0.699 and 0.994 / 0.991 / 0.980 without (`python
# benchmarks/invariant_fidelity.py --systems kepler --kepler-m 1 --recipe table1`, with
# `--weight-decay 0.3`), so it trains without. (With two features decay helps: add
# `--kepler-m 2`.)
INVARIANT_OPTIONS: dict[str, dict[str, bool]] = {
    "chemical": {"normalize": False, "anneal_invariant": False, "decay_invariant": False},
    "kepler": {"decay_invariant": False},
}


def _conservative_task(system: ConservativeSystem, paper: dict, authors: dict,
                       authors_seconds: float, *, notes: str = "",
                       overrides: dict[str, object] | None = None) -> Task:
    options = INVARIANT_OPTIONS.get(system.name, {})

    def run_seed(seed: int, config: RunConfig) -> SeedResult:
        return run_conservative_seed(system, seed, task.config_for(config), **options)

    task = Task(system.name, run_seed, system.state_names, paper, authors, authors_seconds,
                notes, overrides or {})
    return task


def _ref(mse_b: float, viol_b: float, mse_c: float, viol_c: float) -> dict:
    return {"baseline": {"mse": mse_b, "violation": viol_b},
            "concernet": {"mse": mse_c, "violation": viol_c}}


# The paper's Table 1 (mean, std over 3 seeds) and the authors' published code as run on
# this project's 2-core machine (shared/anchors.md), with its wall time per seed.
register_task(_conservative_task(
    SpringMass(),
    _ref((0.209, 0.172), (0.096, 0.080), (0.076, 0.063), (0.002, 0.002)),
    _ref(0.119, 0.155, 0.00073, 1.1e-5), 119.0))
register_task(_conservative_task(
    ChemicalKinetics(),
    _ref((0.064, 0.006), (0.025, 0.012), (0.031, 0.033), (0.003, 0.001)),
    _ref(0.0054, 0.0187, 0.0046, 0.0027), 102.0,
    notes=("chemical: the invariant trains on raw rather than standardised features, without "
           "weight decay, and its contrastive stage keeps Adam's constant step (the dynamics "
           "stage anneals like every other task's), chosen when, annealed, 1 of 7 seeds "
           "stopped at a tilted invariant (at commit 7753ec2); with the current loss both "
           "give 1 - R² below 1e-5 on all 7 seeds, constant 4e-7 to 6.6e-6, annealed 3e-7 to "
           "8.9e-6 (`python benchmarks/invariant_fidelity.py --systems chemical --recipe "
           "table1 --seeds 0 1 2 3 4 5 6 [--schedule cosine]`).")))
register_task(_conservative_task(
    Kepler(),
    _ref((0.854, 0.103), (0.060, 0.011), (0.328, 0.026), (0.009, 0.012)),
    _ref(0.918, 16.1, 0.823, 5.35), 381.0,
    notes=("kepler: the one learned invariant trains without weight decay, which made it "
           "follow E less closely on fresh training-distribution trajectories (`python "
           "benchmarks/invariant_fidelity.py --systems kepler --kepler-m 1 --recipe table1`, "
           "with `--weight-decay 0.3`), and is refined at a peak step of 1e-3, not 1e-2, "
           "which raised the normal flow of the held-out training trajectories on two seeds of "
           "three (`python benchmarks/refinement.py --systems kepler --lr 1e-3 1e-2`)."),
    # At 1e-2 the held-out normal flow (the derivatives of the held-out half of the training
    # trajectories) rose from 2.1e-3 to 5.0e-3 (seed 0) and from 3.8e-3 to 9.3e-3 (seed 2),
    # and fell from 7.8e-3 to 7.1e-3 (seed 1); spring and chemical kinetics gained at 1e-2 on
    # every seed (`python benchmarks/refinement.py --lr 1e-3 1e-2`).
    overrides={"refine_lr": 1e-3}))
# The heat row (paper: baseline 0.133 / 0.686, ConCerNet 0.098 / 0.178; authors' code
# 6.8e-5 / 0.0180 and 6.9e-5 / 0.0140 in 1099 s) is registered by the py-pde integration.
