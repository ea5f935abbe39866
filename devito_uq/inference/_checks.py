"""Argument checks shared by the VI trainer, the MCMC samplers and MAP estimation."""

from __future__ import annotations

from typing import Any

from devito_uq.errors import InvalidArgumentError
from devito_uq.inference.parameterization import Parameterization

__all__ = ["check_int", "check_target"]


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an integer ``>= minimum``, or :class:`InvalidArgumentError` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_target(likelihood: Any, prior: Any, parameterization: Any) -> None:
    """Validate the pieces of a posterior target: a callable likelihood and/or a prior
    with ``negative_log(m)``, and an optional :class:`Parameterization`."""
    if likelihood is None and prior is None:
        raise InvalidArgumentError("give a likelihood, a prior or both; got neither")
    if likelihood is not None and not callable(likelihood):
        raise InvalidArgumentError(f"likelihood must be callable, got {type(likelihood).__name__}")
    if prior is not None and not callable(getattr(prior, "negative_log", None)):
        raise InvalidArgumentError(
            f"prior must provide negative_log(m), got {type(prior).__name__}"
        )
    if parameterization is not None and not isinstance(parameterization, Parameterization):
        raise InvalidArgumentError(
            f"parameterization must be a Parameterization, got {type(parameterization).__name__}"
        )
