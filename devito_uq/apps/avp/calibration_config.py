"""Every knob of the AVP calibration (``devito-uq calibrate``), validated in one place.

Kept apart from :mod:`devito_uq.apps.avp.calibration` so that building the CLI
parser loads no torch. The noise rule, prior, parameterization and flow are the AVP
experiment's knob groups (:mod:`devito_uq.apps.pieces`), declared once for both.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

from devito_uq.apps import knob as _knob
from devito_uq.apps.avp.config import AVPConfig
from devito_uq.apps.pieces import FlowRefinement, ProfilePosterior, ProperPrior, SleipnerNoise
from devito_uq.errors import InvalidArgumentError
from devito_uq.validation import (
    check_choice,
    check_count,
    check_in_range,
    check_int,
    check_positive_int,
    check_positive_scalar,
)

__all__ = ["AVPCalibrationConfig"]

_METHODS = ("both", "vi", "mala", "refined", "all")
_ESTIMATORS = ("reparameterization", "path")  # inference.path_gradient's, without torch


@dataclass
class AVPCalibrationConfig(SleipnerNoise, ProfilePosterior, ProperPrior, FlowRefinement):
    """Simulation-based calibration of VI and MALA for the Sleipner AVP setting.

    Per truth VI trains a fresh HINT flow for ``vi_iterations`` steps of ``batch_size``
    samples, i.e. ``vi_iterations · batch_size`` likelihood gradients; MALA gets the
    same budget (:meth:`mala_schedule`). Units: squared slowness in s²/km².
    """

    n_truths: int = _knob(100, "synthetic truths drawn from the prior (N)")
    n_samples: int = _knob(96, "posterior draws per truth and method (L; ranks in 0..L)")
    vi_iterations: int = _knob(400, "VI iterations per truth")
    batch_size: int = _knob(8, "flow samples per VI iteration (likelihood gradients)")
    lr: float = _knob(2e-3, "Adam learning rate at the start")
    lr_final: float = _knob(0.1, "learning rate at the end as a fraction of lr (exponential)")
    vi_estimator: str = _knob(
        "reparameterization", "VI gradient: reparameterization or path (sticking the landing)"
    )
    vi_temper_iterations: int = _knob(
        0, "VI iterations over which the target's tempering rises from 0.1 to 1 (0: none)"
    )
    mala_chains: int = _knob(8, "parallel MALA chains (the budget is shared among them)")
    mala_burn_in_fraction: float = _knob(0.5, "fraction of MALA steps spent on burn-in")
    mala_step_size: float = _knob(0.05, "initial MALA step, latent units² (adapted in burn-in)")
    methods: str = _knob(
        "both",
        "posteriors to calibrate: both (vi and mala), vi, mala, refined (VI, then MALA in "
        "the flow's latent) or all",
    )
    n_windows: int = _knob(4, "depth windows whose mean is ranked as a summary")
    seed: int = _knob(0, "seeds truth i through (seed, i): truths, noise, flow, chains")
    label: str = _knob("standard", "schedule name written to report.json", cli=False)

    @classmethod
    def standard(cls, **overrides: Any) -> AVPCalibrationConfig:
        """100 truths, 400 VI iterations of 8 (3,200 gradients) per truth and method."""
        return cls(**overrides)

    def mala_schedule(self) -> dict[str, int]:
        """MALA at VI's budget: ``chains · (steps + 1) = vi_iterations · batch_size``
        (MALA also spends one gradient on the starting point).

        Returns ``burn_in``, ``steps`` (kept part) and ``thin`` such that every chain
        keeps at least ``ceil(n_samples / chains)`` draws; the last ``n_samples`` of
        them are used.
        """
        budget = self.vi_iterations * self.batch_size
        total = budget // self.mala_chains - 1
        burn = int(total * self.mala_burn_in_fraction)
        kept = total - burn
        per_chain = math.ceil(self.n_samples / self.mala_chains)
        if kept < per_chain:
            raise InvalidArgumentError(
                f"the MALA budget ({budget} gradients over mala_chains={self.mala_chains}, "
                f"{kept} steps after burn-in) cannot give n_samples={self.n_samples} draws; "
                "raise vi_iterations or batch_size, or lower n_samples or mala_burn_in_fraction"
            )
        return {"burn_in": burn, "steps": kept, "thin": kept // per_chain}

    def avp_config(self) -> AVPConfig:
        """The AVP experiment's config with this calibration's physics and flow (the
        shared groups' fields), ``batch_size`` and ``seed``."""
        names = [f.name for piece in (SleipnerNoise, ProfilePosterior) for f in fields(piece)]
        shared = {name: getattr(self, name) for name in (*names, "batch_size", "seed")}
        return AVPConfig.short(**shared)

    def validate(self) -> AVPCalibrationConfig:
        """Raise :class:`InvalidArgumentError` naming the first bad value; return ``self``."""
        check_int("n_truths", self.n_truths, minimum=2)
        for name in (
            "n_samples",
            "vi_iterations",
            "batch_size",
            "mala_chains",
            "n_windows",
        ):
            check_positive_int(name, getattr(self, name))
        for name in ("n_truths", "n_samples", "batch_size", "mala_chains"):
            check_count(name, getattr(self, name))
        check_int("seed", self.seed, minimum=0)
        for name in ("lr", "mala_step_size"):
            check_positive_scalar(name, getattr(self, name))
        self.check_sleipner_noise()
        self.check_profile_posterior()
        self.check_proper_prior()
        check_in_range("lr_final", self.lr_final, 0.0, 1.0, low_open=True)
        check_in_range(
            "mala_burn_in_fraction", self.mala_burn_in_fraction, 0.0, 1.0, high_open=True
        )
        check_choice("methods", self.methods, _METHODS)
        self.check_flow_refinement(128, 8)  # the Sleipner profile, float64 at most
        refined = self.refine_chains * self.refine_steps
        if self.methods in ("refined", "all") and refined < self.n_samples:
            raise InvalidArgumentError(
                f"refine_chains={self.refine_chains} x refine_steps={self.refine_steps} "
                f"cannot give n_samples={self.n_samples} refined draws"
            )
        check_choice("vi_estimator", self.vi_estimator, _ESTIMATORS)
        check_int("vi_temper_iterations", self.vi_temper_iterations, minimum=0)
        if self.n_windows > 128:
            raise InvalidArgumentError(f"n_windows={self.n_windows} exceeds the 128 depths")
        self.mala_schedule()
        self.avp_config().validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-data copy (written to ``report.json`` and compared on resume)."""
        return dataclasses.asdict(self)
