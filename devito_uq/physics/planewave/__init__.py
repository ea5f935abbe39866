"""Plane-wave (τ-p) physics: DSL factories
(:mod:`~devito_uq.physics.planewave.operators`), the compile-once
:class:`~devito_uq.physics.planewave.solver.PlaneWaveSolver`
(:mod:`~devito_uq.physics.planewave.solver`, imports Devito) and the torch modules
:class:`PlaneWaveModeling` and :class:`PlaneWaveBornModeling`
(:mod:`~devito_uq.physics.planewave.modeling`)."""

from devito_uq.physics.planewave.modeling import (
    PlaneWaveBornModeling,
    PlaneWaveModeling,
    ray_parameters_from_angles,
)

__all__ = ["PlaneWaveModeling", "PlaneWaveBornModeling", "ray_parameters_from_angles"]
