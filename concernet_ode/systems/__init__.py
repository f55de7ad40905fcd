"""Benchmark systems: the paper's Table 1 and others, with their true invariants and protocol.

Each system offers ``vector_field(t, x)``, ``invariants(x)``, ``sample_initial(n, *, seed)``,
``trajectories(n_traj, *, t_end, n_times, noise, seed)``, ``state_dim``, ``n_invariants`` and
the protocol constants (``train_traj``, ``train_t_end``, ``train_n_times``, ``eval_traj``,
``eval_t_end``, ``eval_n_times``, ``noise``). Model choices (architectures, epochs) are not
the system's: they belong to whoever trains on its data.
"""

from .base import ConservativeSystem
from .chemical import ChemicalKinetics
from .damped_spring import DampedSpring
from .kepler import Kepler
from .lotka_volterra import LotkaVolterra
from .pendulum import Pendulum
from .rigid_body import RigidBody
from .spring import SpringMass

__all__ = [
    "ChemicalKinetics",
    "ConservativeSystem",
    "DampedSpring",
    "Kepler",
    "LotkaVolterra",
    "Pendulum",
    "RigidBody",
    "SpringMass",
]
