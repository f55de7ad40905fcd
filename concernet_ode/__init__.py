"""concernet_ode: conservation-respecting learned dynamics for the PyTorch ODE stack.

The public names are listed in ``__all__``; everything else is internal.
"""

from .data import TrajectoryData, estimate_derivatives
from .latent import LatentAdapter
from .losses import (
    contrastive_invariant_loss,
    flow_alignment_loss,
    normal_flow_loss,
    ranking_loss,
)
from .manifold import ConvergenceError, odeint_projected, project_to_level_set
from .metrics import conservation_violation, invariant_fidelity, trajectory_mse
from .models import MLP, Autoencoder, InvariantNet
from .projection import DissipativeVectorField, ProjectedVectorField
from .shooting import fit_trajectories
from .training import (
    NonFiniteLossError,
    cosine_schedule,
    fit_autoencoder,
    fit_dynamics,
    fit_invariants,
    refine_invariants,
)
from .workflow import ConservationModel, LearnSettings, learn, load

__all__ = [
    "MLP",
    "Autoencoder",
    "ConservationModel",
    "ConvergenceError",
    "DissipativeVectorField",
    "InvariantNet",
    "LatentAdapter",
    "LearnSettings",
    "NonFiniteLossError",
    "ProjectedVectorField",
    "TrajectoryData",
    "conservation_violation",
    "contrastive_invariant_loss",
    "cosine_schedule",
    "estimate_derivatives",
    "fit_autoencoder",
    "fit_dynamics",
    "fit_invariants",
    "fit_trajectories",
    "flow_alignment_loss",
    "invariant_fidelity",
    "learn",
    "load",
    "normal_flow_loss",
    "odeint_projected",
    "project_to_level_set",
    "ranking_loss",
    "refine_invariants",
    "trajectory_mse",
]

__version__ = "0.1.0"
