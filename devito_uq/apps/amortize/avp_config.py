"""Every knob of the amortized Sleipner AVP posterior (``problem = "avp"``).

The common training knobs (:class:`~devito_uq.apps.amortize.training_config.AmortizeTraining`),
the Sleipner noise rule and the proper prior the training models are drawn from (the
AVP calibration's groups, :mod:`devito_uq.apps.pieces`) and the MALA reference of the
study. The defaults are the workflow of ``make amortize`` (< 30 min on 2 cores).
"""

from __future__ import annotations

from dataclasses import dataclass

from devito_uq.apps import knob
from devito_uq.apps.amortize.training_config import AmortizeTraining, problem_knob
from devito_uq.apps.pieces import ProperPrior, SleipnerNoise
from devito_uq.validation import check_nonnegative_int, check_positive_int

__all__ = ["AVPAmortizeConfig"]


@dataclass
class AVPAmortizeConfig(SleipnerNoise, ProperPrior, AmortizeTraining):
    """Training set, conditional flow, training and study of the amortized AVP posterior."""

    problem: str = problem_knob("avp")
    mala_steps: int = knob(
        6000,
        "MALA reference steps per chain after a burn-in of a quarter of them, from the MAP (AVP)",
    )
    mala_chains: int = knob(8, "MALA reference chains (AVP)")

    def validate(self) -> AVPAmortizeConfig:
        """Raise :class:`~devito_uq.errors.InvalidArgumentError` naming the first bad value;
        return ``self``."""
        self.check_training()
        self.check_sleipner_noise()
        self.check_proper_prior()
        check_positive_int("mala_chains", self.mala_chains)
        check_nonnegative_int("mala_steps", self.mala_steps)
        return self
