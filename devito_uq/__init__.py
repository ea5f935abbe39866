"""devito_uq: uncertainty quantification for seismic imaging with Devito and torch."""

from devito_uq.errors import DevitoUQError

__version__ = "0.1.0"

__all__ = ["DevitoUQError", "__version__"]
