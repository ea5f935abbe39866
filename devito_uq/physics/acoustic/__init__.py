"""Acoustic physics: DSL factories (:mod:`~devito_uq.physics.acoustic.operators`), the
compile-once :class:`~devito_uq.physics.acoustic.solver.AcousticSolver`
(:mod:`~devito_uq.physics.acoustic.solver`, imports Devito) and the torch modules
:class:`AcousticModeling` and :class:`BornModeling`
(:mod:`~devito_uq.physics.acoustic.modeling`)."""

from devito_uq.physics.acoustic.modeling import AcousticModeling, BornModeling

__all__ = ["AcousticModeling", "BornModeling"]
