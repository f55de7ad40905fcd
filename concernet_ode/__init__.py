"""concernet_ode: conservation-respecting learned dynamics for the PyTorch ODE stack.

The public names are listed in ``__all__``; everything else is internal.
"""

from .data import TrajectoryData
from .models import MLP, Autoencoder, InvariantNet
from .projection import ProjectedVectorField

__all__ = [
    "MLP",
    "Autoencoder",
    "InvariantNet",
    "ProjectedVectorField",
    "TrajectoryData",
]

__version__ = "0.1.0"
