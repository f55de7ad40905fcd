"""The training recipe of a Table 1 run, as one frozen object.

A :class:`Recipe` carries every choice of a run: architectures, epochs, batch sizes, steps,
the form of the contrastive loss, the refinement stage and the evaluation solver. Two are
named: :meth:`Recipe.paper` (the paper's protocol as its authors ran it),
:meth:`Recipe.table1` (the paper's plus our changes, the default) and
:meth:`Recipe.trajectories` (table1's, with no derivative labels: every dynamics model fitted
to the observed trajectories through ``odeint``). A task states where it
departs from whichever recipe it runs with (``Task.departures``, beside the task), and
:meth:`Recipe.describe` is the one rendering of a recipe in words, read by the CLI help and
the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace

from ..training import cosine_schedule

__all__ = ["Recipe"]

# A smoke run divides every epoch and step count by this and evaluates a tenth of the horizon
# at loose tolerances: it checks that the pipeline runs, its numbers mean nothing.
SMOKE_DIVISOR = 50


@dataclass(frozen=True)
class Recipe:
    """Every choice of a Table 1 training run.

    Attributes:
        name: what the recipe is called in reports (``"table1"``, ``"paper"``, ...).
        hidden, depth, activation: the MLPs (vector fields and invariants).
        n_invariants: number of learned invariants ``m``.
        lr: Adam's peak step in every stage.
        anneal: let every stage's step fall to 0 along a cosine over its epochs
            (:func:`~concernet_ode.cosine_schedule`) rather than stay constant.
        contrastive_epochs, contrastive_batch: the contrastive stage (batches of trajectories).
        normalize_features: standardise the features over each batch (eq. (8)) rather than
            use them raw (eq. (4)), whose scale the network then sets itself.
        positives: ``"sum"`` (eq. (4) as printed) or ``"mean"`` (the log-similarity averaged
            over a trajectory's pairs); see :func:`~concernet_ode.contrastive_invariant_loss`.
        invariant_weight_decay: decoupled weight decay of the contrastive stage.
        flow_weight: weight of :func:`~concernet_ode.flow_alignment_loss` in the contrastive
            stage (not the paper's method; 0 in both named recipes).
        anneal_contrastive: with ``anneal``, anneal the contrastive stage too.
        refine_steps, refine_lr, refine_batch: the refinement of the learned invariant's level
            sets against the observed derivatives (:func:`~concernet_ode.refine_invariants`),
            about ``refine_steps`` steps in all (0: no refinement).
        dynamics_epochs, dynamics_batch: the dynamics stage (batches of points).
        dynamics_fit: ``"derivatives"`` (the dynamics stage fits the observed ``dxdt``, as
            in the paper) or ``"trajectories"``: no derivative labels anywhere; the
            contrastive stage sees the states, the refinement derivatives estimated from
            them (:func:`~concernet_ode.estimate_derivatives`), and every dynamics model is
            fitted to the observed trajectories by :func:`~concernet_ode.fit_trajectories`
            (after a warm start on the estimated derivatives, ``warmup_epochs``).
        warmup_epochs: with ``"trajectories"``, epochs of the dynamics stage on the estimated
            derivatives before the rollouts (0: start from the initial weights).
        trajectory_steps, trajectory_window, trajectory_batch: the rollout stage: about
            ``trajectory_steps`` steps of ``trajectory_batch`` windows of
            ``trajectory_window`` samples.
        trajectory_substeps: fixed RK4 steps per sample interval of the rollouts (a task
            whose orbits turn fast between samples departs: ``Task.trajectory_departures``).
        trajectory_starts: the windows' starts (``fit_trajectories(starts=...)``).
        autoencoder_hidden, autoencoder_latent, autoencoder_epochs, autoencoder_batch: the
            autoencoder of tasks learned in a latent space.
        eval_rtol, eval_atol: the evaluation solver (adaptive Dormand-Prince, float64).
        smoke: a smoke run (epochs and steps divided by 50, a tenth of the evaluation
            horizon at loose tolerances); labelled as such in everything it writes.
        progress: progress bars (on a terminal).
    """

    name: str = "table1"
    hidden: int = 100
    depth: int = 2
    activation: str = "tanh"
    n_invariants: int = 1
    lr: float = 1e-3
    anneal: bool = True
    contrastive_epochs: int = 1000
    contrastive_batch: int = 10
    normalize_features: bool = True
    positives: str = "mean"
    invariant_weight_decay: float = 0.3
    flow_weight: float = 0.0
    anneal_contrastive: bool = True
    refine_steps: int = 1000
    refine_lr: float = 1e-2
    refine_batch: int = 500
    dynamics_epochs: int = 1000
    dynamics_batch: int = 100
    dynamics_fit: str = "derivatives"
    warmup_epochs: int = 0
    trajectory_steps: int = 3000
    trajectory_window: int = 10
    trajectory_batch: int = 256
    trajectory_substeps: int = 1
    trajectory_starts: str = "estimated"
    autoencoder_hidden: tuple[int, ...] = (32, 16)
    autoencoder_latent: int = 9
    autoencoder_epochs: int = 1000
    autoencoder_batch: int = 100
    eval_rtol: float = 1e-7
    eval_atol: float = 1e-9
    smoke: bool = False
    progress: bool = False

    @classmethod
    def table1(cls) -> Recipe:
        """The recommended recipe: the paper's with four changes (see :meth:`describe`)."""
        return cls()

    @classmethod
    def paper(cls) -> Recipe:
        """The paper's recipe: constant Adam step, eq. (4) as printed, no weight decay, no
        refinement."""
        return cls(name="paper", anneal=False, positives="sum", invariant_weight_decay=0.0,
                   refine_steps=0)

    @classmethod
    def trajectories(cls) -> Recipe:
        """:meth:`table1` without derivative labels: the dynamics fitted to trajectories."""
        return cls(name="trajectories", dynamics_fit="trajectories", warmup_epochs=300)

    @classmethod
    def named(cls, name: str) -> Recipe:
        """A recipe of :data:`RECIPES` by name.

        Raises:
            ValueError: ``name`` is none of them.
        """
        if name not in RECIPES:
            msg = f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}"
            raise ValueError(msg)
        return RECIPES[name]()

    def with_changes(self, changes: Mapping[str, object]) -> Recipe:
        """This recipe with some fields replaced.

        Raises:
            ValueError: a key is not a field of :class:`Recipe`.
        """
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            msg = f"{unknown} are not fields of Recipe; valid: {[f.name for f in fields(self)]}"
            raise ValueError(msg)
        return replace(self, **changes)

    def as_smoke(self) -> Recipe:
        """The same recipe as a smoke run (see ``smoke``)."""
        return replace(self, smoke=True)

    def epochs(self, stage: str) -> int:
        """Epochs of ``stage`` (``"contrastive"``, ``"dynamics"``, ``"autoencoder"`` or
        ``"warmup"``)."""
        value = getattr(self, f"{stage}_epochs")
        return max(1, round(value / SMOKE_DIVISOR)) if self.smoke else value

    @property
    def fits_trajectories(self) -> bool:
        """Whether the dynamics are fitted to trajectories (no derivative labels)."""
        return self.dynamics_fit == "trajectories"

    def trajectory_epochs(self, n_windows: int) -> int:
        """Epochs of ``trajectory_batch`` windows that make about ``trajectory_steps`` steps
        on ``n_windows`` windows (at least 1)."""
        steps = self.trajectory_steps
        if self.smoke:
            steps = max(1, round(steps / SMOKE_DIVISOR))
        return max(1, round(steps / math.ceil(n_windows / self.trajectory_batch)))

    def schedule(self, epochs: int, *, stage: str = "") -> Callable[[int], float] | None:
        """The ``lr_schedule`` of a stage of ``epochs`` epochs (``None``: constant step)."""
        anneal = self.anneal and (stage != "contrastive" or self.anneal_contrastive)
        return cosine_schedule(epochs) if anneal else None

    def refine_epochs(self, n_points: int) -> int:
        """Epochs of ``refine_batch`` points that make about ``refine_steps`` steps on
        ``n_points`` points (at least 1; 0 when the stage is off)."""
        steps = self.refine_steps
        if self.smoke and steps:
            steps = max(1, round(steps / SMOKE_DIVISOR))
        if not steps:
            return 0
        return max(1, round(steps / math.ceil(n_points / self.refine_batch)))

    @property
    def eval_fraction(self) -> float:
        """Share of the evaluation grid that is integrated (all of it but in a smoke run)."""
        return 0.1 if self.smoke else 1.0

    @property
    def eval_options(self) -> dict[str, object]:
        """Keyword arguments of the evaluation solver."""
        if self.smoke:
            return {"method": "dopri5", "rtol": 1e-4, "atol": 1e-6}
        return {"method": "dopri5", "rtol": self.eval_rtol, "atol": self.eval_atol}

    def describe(self) -> str:
        """The recipe in words: the paper's protocol and where this one departs from it."""
        base = Recipe.paper()
        parts = [f"MLPs {self.depth} x {self.hidden} ({self.activation}); Adam at {self.lr:g}"]
        if self.anneal:
            parts.append("every stage's step annealed to 0 along a cosine"
                         + ("" if self.anneal_contrastive else
                            " except the contrastive stage's, kept constant"))
        else:
            parts.append("a constant step, as in the paper")
        parts.append(f"contrastive stage {self.contrastive_epochs} epochs of "
                     f"{self.contrastive_batch} trajectories, m = {self.n_invariants}, "
                     + ("standardised features (eq. (8))" if self.normalize_features
                        else "raw features (eq. (4))")
                     + (", eq. (4) as printed" if self.positives == base.positives else
                        f", positives={self.positives!r} (log-similarity averaged over pairs)")
                     + (f", weight decay {self.invariant_weight_decay:g}"
                        if self.invariant_weight_decay else ", no weight decay")
                     + (f", flow alignment weighted {self.flow_weight:g}"
                        if self.flow_weight else ""))
        if self.refine_steps:
            parts.append(f"then about {self.refine_steps} refinement steps of "
                         f"{self.refine_batch} points at a peak step of {self.refine_lr:g} "
                         "against the observed derivatives")
        else:
            parts.append("no refinement of the invariant, as in the paper")
        if self.fits_trajectories:
            parts[-1] = parts[-1].replace("the observed derivatives",
                                          "derivatives estimated from the states")
            parts.append(
                "no derivative labels: "
                + (f"dynamics warmed up for {self.warmup_epochs} epochs of "
                   f"{self.dynamics_batch} points on the estimated derivatives, then "
                   if self.warmup_epochs else "dynamics ")
                + f"fitted to the observed trajectories by about {self.trajectory_steps} "
                f"steps of {self.trajectory_batch} windows of {self.trajectory_window} "
                f"samples, RK4 at {self.trajectory_substeps} steps per sample interval, "
                f"{self.trajectory_starts} window starts")
        else:
            parts.append(f"dynamics {self.dynamics_epochs} epochs of {self.dynamics_batch} "
                         "points")
        text = f"recipe {self.name!r}: " + "; ".join(parts) + "."
        return f"SMOKE RUN (numbers mean nothing): {text}" if self.smoke else text


RECIPES: dict[str, Callable[[], Recipe]] = {"table1": Recipe.table1, "paper": Recipe.paper,
                                            "trajectories": Recipe.trajectories}
