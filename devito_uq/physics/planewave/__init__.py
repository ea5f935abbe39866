"""Plane-wave (τ-p) physics: DSL factories (:mod:`.operators`), the compile-once
:class:`~.solver.PlaneWaveSolver` (:mod:`.solver`, imports Devito) and the torch
modules :class:`PlaneWaveModeling` and :class:`PlaneWaveBornModeling` (:mod:`.modeling`)."""

from devito_uq.physics.planewave.modeling import (
    PlaneWaveBornModeling,
    PlaneWaveModeling,
    ray_parameters_from_angles,
)

__all__ = ["PlaneWaveModeling", "PlaneWaveBornModeling", "ray_parameters_from_angles"]
