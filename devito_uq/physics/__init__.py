"""devito_uq.physics: acoustic models, surveys, Devito operators and their torch wrappers."""

from devito_uq.physics.acoustic import AcousticSolver, clear_solvers, get_solver
from devito_uq.physics.model import AcousticModel, squared_slowness, velocity
from devito_uq.physics.modeling import AcousticModeling, BornModeling
from devito_uq.physics.planewave import (
    PlaneWaveModeling,
    bandpass_wavelet,
    ray_parameters_from_angles,
)
from devito_uq.physics.survey import Shot, Survey, ricker

__all__ = [
    "AcousticModel",
    "AcousticModeling",
    "AcousticSolver",
    "BornModeling",
    "PlaneWaveModeling",
    "bandpass_wavelet",
    "ray_parameters_from_angles",
    "Shot",
    "Survey",
    "clear_solvers",
    "get_solver",
    "ricker",
    "squared_slowness",
    "velocity",
]
