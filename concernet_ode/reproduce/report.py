"""Writing the reproduction's outputs: per-task JSON, the Table 1 markdown, Fig. 3 plots."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from .pipeline import METHODS, SeedResult
from .recipe import SMOKE_DIVISOR, Recipe
from .tasks import Task

__all__ = ["task_summary", "write_figure", "write_table"]


def _versions() -> dict[str, str]:
    import numpy
    import torchdiffeq

    from .. import __version__

    return {"concernet_ode": __version__, "torch": torch.__version__,
            "torchdiffeq": torchdiffeq.__version__, "numpy": numpy.__version__,
            "python": sys.version.split()[0], "platform": platform.platform(),
            "cpu_count": str(os.cpu_count()), "torch_threads": str(torch.get_num_threads())}


def _floats(values: torch.Tensor) -> list[float]:
    return [float(v) for v in values]


def task_summary(task: Task, results: list[SeedResult], wall_seconds: float,
                 recipe: Recipe, jobs: int = 1) -> dict:
    """The JSON document of one task: ``{"task", "seeds", "methods": {name: {"mse": [...],
    "violation": [...], ...}}, "invariant_r2", "wall_seconds", "versions", ...}``.

    Per method, besides the per-seed means, the per-trajectory values and their medians.
    ``invariant_r2`` holds one number per seed: the mean R^2 over the true invariants
    (each one is in ``invariant_r2_per_invariant``).
    """
    methods = {}
    for name in METHODS:
        evals = [r.evaluations[name] for r in results]
        methods[name] = {
            "mse": [e.mse for e in evals],
            "violation": [e.violation for e in evals],
            "mse_median": [float(e.mse_per_traj.median()) for e in evals],
            "violation_median": [float(e.violation_per_traj.median()) for e in evals],
            "mse_per_traj": [_floats(e.mse_per_traj) for e in evals],
            "violation_per_traj": [_floats(e.violation_per_traj) for e in evals],
        }
    names = list(results[0].invariant_r2)
    return {
        "task": task.name,
        "seeds": [r.seed for r in results],
        "methods": methods,
        "invariant_r2": [statistics.fmean(r.invariant_r2.values()) for r in results],
        "invariant_r2_per_invariant": {k: [r.invariant_r2[k] for r in results] for k in names},
        "wall_seconds": wall_seconds,
        "stage_seconds": [r.seconds for r in results],
        "authors_code_seconds_3_seeds": 3 * task.authors_seconds,
        "load_average": list(os.getloadavg()),
        "smoke": recipe.smoke,
        "recipe": asdict(recipe),
        "recipe_text": recipe.describe(),
        "jobs": jobs,
        "versions": _versions(),
    }


def _pm(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3g} ± {std:.2g}"


def _ref(ref: dict, method: str, metric: str) -> str:
    value = ref.get(method, {}).get(metric)
    if value is None:
        return "–"
    if isinstance(value, tuple):
        return f"{value[0]:.3g} ± {value[1]:.2g}"
    return f"{value:.3g}"


def _recipe(doc: dict) -> Recipe:
    """The recipe a task's JSON document records (JSON turns tuples into lists)."""
    fields = dict(doc["recipe"])
    fields["autoencoder_hidden"] = tuple(fields["autoencoder_hidden"])
    return Recipe(**fields)


def write_table(out: Path, tasks: list[Task]) -> Path:
    """Write ``out/table1.md`` from every ``out/<task>.json`` of the given tasks."""
    rows, timing, fidelity, notes, recipes, smoke = [], [], [], [], [], False
    for task in tasks:
        path = out / f"{task.name}.json"
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        recipe = _recipe(doc)
        smoke = smoke or recipe.smoke
        recipes.append(f"- {task.name}: {recipe.describe()}")
        if task.notes:  # a task's own caveats and recipe choices (e.g. heat's metric)
            notes += [task.notes, ""]
        for name in METHODS:
            m = doc["methods"][name]
            rows.append(
                f"| {task.name} | {name} | {_pm(m['mse'])} | "
                f"{statistics.median(v for s in m['mse_per_traj'] for v in s):.3g} | "
                f"{_ref(task.paper, name, 'mse')} | {_ref(task.authors, name, 'mse')} | "
                f"{_pm(m['violation'])} | "
                f"{statistics.median(v for s in m['violation_per_traj'] for v in s):.3g} | "
                f"{_ref(task.paper, name, 'violation')} | "
                f"{_ref(task.authors, name, 'violation')} |")
        r2 = ", ".join(f"{k} {_pm(v)}" for k, v in doc["invariant_r2_per_invariant"].items())
        fidelity.append(f"| {task.name} | {r2} |")
        ratio = doc["wall_seconds"] / doc["authors_code_seconds_3_seeds"]
        load = ", ".join(f"{v:.1f}" for v in doc["load_average"])
        timing.append(f"| {task.name} | {len(doc['seeds'])} | {doc['wall_seconds']:.0f} | "
                      f"{doc['authors_code_seconds_3_seeds']:.0f} | {ratio:.2f} | {load} |")
    banner = ([f"**SMOKE RUN**: `--quick`, epochs divided by {SMOKE_DIVISOR} and a tenth of "
               "the evaluation horizon; these numbers mean nothing about the method.", ""]
              if smoke else [])
    lines = [
        "# Table 1, reproduced",
        "",
        *banner,
        "Generated by `concernet-ode reproduce`; do not edit by hand. Ours: mean ± std over "
        "seeds (population std) and the median over all evaluation trajectories of all "
        "seeds. Paper: Table 1 of Zhang et al. (ICML 2023). Authors' code: their published "
        "scripts run on this project's machine (seed 2023, one run).",
        "",
        "| task | method | MSE (ours) | MSE median | MSE (paper) | MSE (authors' code) "
        "| violation (ours) | violation median | violation (paper) | violation (authors' code) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Methods: `baseline` an MLP vector field; `concernet` the same MLP behind the "
        "projection onto the contrastively learned invariant; `concernet_manifold` that "
        "model integrated with a Newton projection onto the learned invariant's level set "
        "at every output time (`odeint_projected(..., interpolate=True)`: where a solver step "
        "passes several output times, they are interpolated and projected with the step's "
        "end); `oracle` the same MLP behind the projection onto the true "
        "invariants, trained the same way (a reference, not a method: it needs the answer). "
        "All start from the same weights and see the same batches.",
        "",
        "Training, per task (the recipe with the task's departures; `--recipe paper` is the "
        "paper's own):",
        "",
        *recipes,
        "",
        *notes,
        "Invariant fidelity, R² of an affine readout of each true invariant from the learned "
        "ones (1000 fresh noise-free trajectories):",
        "",
        "| task | R² (mean ± std over seeds) |",
        "|---|---|",
        *fidelity,
        "",
        "Wall time of the whole run per task (all seeds; the authors' code: 3 × one seed):",
        "",
        "| task | seeds | ours (s) | authors' code (s) | ratio | load average at the end |",
        "|---|---|---|---|---|---|",
        *timing,
        "",
    ]
    path = out / "table1.md"
    path.write_text("\n".join(lines))
    return path


def write_figure(out: Path, task: Task, result: SeedResult, *, smoke: bool = False) -> Path:
    """Fig. 3 of the paper for one seed: a trajectory, violation and MSE against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    true = result.evaluations["baseline"].true
    t = result.evaluations["baseline"].t
    # A low-dimensional state is drawn as a phase portrait of its first two coordinates; a
    # discretised field (heat's 101 nodes) as its profile at the last evaluation time.
    profile = true.shape[-1] > 4

    def draw(states: torch.Tensor, style: str, **kwargs: object) -> None:
        if profile:
            axes[0].plot(states[-1, 0], style, **kwargs)
        else:
            axes[0].plot(states[:, 0, 0], states[:, 0, 1], style, **kwargs)

    draw(true, "k-", lw=2.5, label="true")
    styles = {"baseline": "C3--", "concernet": "C0-", "concernet_manifold": "C2:",
              "oracle": "C7-."}
    for name, style in styles.items():
        ev = result.evaluations[name]
        draw(ev.pred, style, lw=1.2, label=name)
        # From the first step on: at t = 0 both errors are exactly 0, off a log axis.
        axes[1].semilogy(t[1:], ev.violation_curve[1:].clamp_min(1e-30), style, label=name)
        axes[2].semilogy(t[1:], ev.mse_curve[1:].clamp_min(1e-30), style, label=name)
    if profile:
        axes[0].set(xlabel="node", ylabel="value",
                    title=f"evaluation trajectory 0 at t = {float(t[-1]):g}")
    else:
        axes[0].set(xlabel=task.state_names[0], ylabel=task.state_names[1],
                    title="evaluation trajectory 0")
    axes[1].set(xlabel="t", ylabel="violation", title="conservation violation")
    axes[2].set(xlabel="t", ylabel="MSE", title="trajectory MSE")
    # One legend for the three panels, below them, so that it hides no curve.
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=9,
               frameon=False)
    fig.suptitle(f"{task.name}, seed {result.seed}"
                 + (" (SMOKE RUN: these curves mean nothing)" if smoke else ""))
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path = out / f"{task.name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
