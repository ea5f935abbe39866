"""devito_uq.physics: wave-equation physics as torch modules, one template per physics.

Layout (as Devito's ``examples/seismic``)::

    model.py                           the physics-neutral grid ``Model`` (subclassed per physics)
    survey.py, wavelets.py             acquisition (any ``Model``), source wavelets
    stencil.py                         the one CFL rule and the one time-axis rule
    padding.py                         model extension into the absorbing layer + adjoint
    resample.py, convert.py            data time axis (R, Rᵀ); tensor ↔ solver conversions
    solver.py                          compile-once solver base, wavefield pool, registry
    acoustic/  {model, operators, solver, modeling}   2D/3D acoustic (shot records)
    planewave/ {model, operators, solver, modeling}   1D plane-wave τ-p (AVP traces)

A new physics adds a package of the same four parts: a ``Model`` subclass with its
``critical_dt``, Devito-DSL operator factories, a ``Solver`` subclass, and the torch
modules (using :mod:`.convert`); then one case line in ``tests/test_physics_battery.py``.

Names resolve lazily (PEP 562): ``import devito_uq.physics`` and the geometry,
survey and wavelet classes do not import Devito; it is imported when a solver is
first built (the first solve).
"""

from __future__ import annotations

from devito_uq._lazy import lazy_exports

_EXPORTS = {
    "devito_uq.physics.model": ("Model", "squared_slowness", "velocity"),
    "devito_uq.physics.acoustic.model": ("AcousticModel",),
    "devito_uq.physics.planewave.model": ("PlaneWaveModel",),
    "devito_uq.physics.survey": ("Survey", "Shot", "pad_traces"),
    "devito_uq.physics.wavelets": ("ricker", "bandpass_wavelet", "load_wavelet"),
    "devito_uq.physics.resample": ("TimeAxis",),
    "devito_uq.physics.solver": ("get_solver", "clear_solvers", "total_compiles"),
    "devito_uq.physics.acoustic.modeling": ("AcousticModeling", "BornModeling"),
    "devito_uq.physics.acoustic.solver": ("AcousticSolver",),
    "devito_uq.physics.planewave.modeling": (
        "PlaneWaveModeling",
        "PlaneWaveBornModeling",
        "ray_parameters_from_angles",
    ),
    "devito_uq.physics.planewave.solver": ("PlaneWaveSolver",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _WHERE)
