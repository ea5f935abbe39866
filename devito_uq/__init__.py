"""devito_uq: uncertainty quantification for seismic imaging with Devito and torch.

The public API lives in three subpackages and is re-exported here::

    from devito_uq.physics import AcousticModel, Survey, AcousticModeling, BornModeling
    from devito_uq.physics import PlaneWaveModeling
    from devito_uq.flows import Glow, HINT, ConditionalHINT, Flow
    from devito_uq.inference import GaussianLikelihood, VariationalPosterior, map_estimate
    from devito_uq.inference import MALA, SGLD, PosteriorTarget

Applications (``devito_uq.apps.avp``, …) and the ``devito-uq`` command
(:mod:`devito_uq.cli`) sit above these and are not re-exported.

Re-exports resolve lazily (PEP 562), so ``import devito_uq`` does not import Devito
or compile anything until a physics name is first used.
"""

from __future__ import annotations

import importlib

from devito_uq.errors import DevitoUQError

__version__ = "0.1.0"

_EXPORTS = {
    "devito_uq.physics": (
        "AcousticModel",
        "Survey",
        "AcousticModeling",
        "BornModeling",
        "PlaneWaveModeling",
        "PlaneWaveBornModeling",
        "squared_slowness",
        "velocity",
    ),
    "devito_uq.flows": ("Glow", "HINT", "MultiscaleHINT", "ConditionalHINT", "Flow"),
    "devito_uq.inference": (
        "GaussianLikelihood",
        "GaussianPrior",
        "SmoothnessPrior",
        "TotalVariationPrior",
        "Parameterization",
        "PosteriorTarget",
        "VariationalPosterior",
        "MALA",
        "SGLD",
        "map_estimate",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["DevitoUQError", "__version__", *_WHERE]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'devito_uq' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
