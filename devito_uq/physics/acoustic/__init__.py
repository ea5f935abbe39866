"""Acoustic physics: DSL factories (:mod:`.operators`), the compile-once
:class:`~.solver.AcousticSolver` (:mod:`.solver`, imports Devito) and the torch
modules :class:`AcousticModeling` and :class:`BornModeling` (:mod:`.modeling`)."""

from devito_uq.physics.acoustic.modeling import AcousticModeling, BornModeling

__all__ = ["AcousticModeling", "BornModeling"]
