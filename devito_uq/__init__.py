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

from devito_uq._lazy import lazy_exports
from devito_uq.errors import DevitoUQError as DevitoUQError

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

__all__, __getattr__, __dir__ = lazy_exports(__name__, _WHERE, ("DevitoUQError", "__version__"))
