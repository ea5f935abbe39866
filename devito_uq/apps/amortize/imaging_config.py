"""Every knob of the amortized 2D Born imaging posterior (``problem = "imaging"``).

The common training knobs (:class:`~devito_uq.apps.amortize.training_config.AmortizeTraining`),
the held-out Marmousi window and its acquisition, the wave solver and the per-survey
Gaussian prior (the imaging application's groups, :mod:`devito_uq.apps.pieces`), the 2D
conditional flow and the training set's augmentations. ``examples/amortize_marmousi.toml``
sets every key. Units: lengths in m, times in ms, frequencies in Hz, velocities in km/s,
squared slowness in s²/km².
"""

from __future__ import annotations

from dataclasses import dataclass

from devito_uq.apps import knob
from devito_uq.apps.amortize.training_config import AmortizeTraining, problem_knob
from devito_uq.apps.pieces import ImagePrior, SurfaceSurvey, WaveSolver
from devito_uq.errors import InvalidArgumentError
from devito_uq.validation import (
    check_bool,
    check_choice,
    check_count,
    check_nonnegative_scalar,
    check_positive_scalar,
    check_scalar,
)

__all__ = ["ImagingAmortizeConfig"]


@dataclass
class ImagingAmortizeConfig(SurfaceSurvey, WaveSolver, ImagePrior, AmortizeTraining):
    """Training set, conditional flow, training and study of the amortized 2D posterior.

    The survey window is the held-out section (training crops have its size and never
    overlap it); ``prior_std`` is also the flow's latent scale.
    """

    problem: str = problem_knob("imaging")
    flow_levels: int = knob(2, "multiscale levels of the 2D conditional flow (imaging)")
    flow_kind: str = knob("hint", "2D conditional flow: 'hint' or 'glow' (imaging)")
    snr_db: float = knob(0.0, "SNR of the held-out section's scattered data, dB (sets σ)")
    condition: str = knob(
        "normal",
        "how Jᵀd is simulated (imaging): 'normal' (assemble JᵀMJ once, nx·nz Born + adjoint "
        "solves per shot, then no solve per pair) or 'explicit' (J and Jᵀ per pair)",
    )
    augment_flip: bool = knob(True, "mirror half of the training crops in x (imaging)")
    augment_amplitude: float = knob(
        0.2, "training δm scaled by a factor in [1/(1+a), 1+a], log-uniform (imaging; 0: off)"
    )
    augment_warp: float = knob(
        30.0, "largest smooth random displacement of a training crop, m (imaging; 0: off)"
    )
    augment_depth: float = knob(
        0.0,
        "crops start at a depth uniform in [0, augment_depth] m, δm zeroed in the survey's "
        "known water (imaging; 0: surface crops only)",
    )
    deconvolve: bool = knob(
        True,
        "the summary network sees the least-squares image (H/σ² + C⁻¹)⁻¹Jᵀd/σ² (a fixed "
        "linear map of Jᵀd, C the Gaussian prior) instead of the standardized Jᵀd (imaging)",
    )

    heldout_draws: int = knob(
        10,
        "noise draws of the held-out survey the study scores every posterior on, for the "
        "standard errors of its metrics (imaging; free with condition='normal'; 0: off)",
    )
    residual: bool = knob(
        True,
        "the flow models the residual around the survey's exact Gaussian-prior posterior "
        "(mean P Jᵀd, whitened by its covariance, both from the survey's own JᵀMJ and σ), "
        "not δm itself; needs deconvolve (imaging)",
    )

    def validate(self) -> ImagingAmortizeConfig:
        """Raise :class:`~devito_uq.errors.InvalidArgumentError` naming the first bad value;
        return ``self``."""
        self.check_training()
        check_choice("flow_kind", self.flow_kind, ("hint", "glow"))
        check_count("flow_levels", self.flow_levels, maximum=16)  # the grid pads to 2^L
        check_scalar("snr_db", self.snr_db)
        self.check_surface_survey()
        for name in ("width", "depth"):  # a training crop needs a size
            check_positive_scalar(name, getattr(self, name))
        self.check_wave_solver()
        self.check_survey_grid(self.nbl)
        self.check_image_prior()
        check_choice("condition", self.condition, ("normal", "explicit"))
        check_bool("augment_flip", self.augment_flip)
        check_bool("deconvolve", self.deconvolve)
        check_bool("residual", self.residual)
        check_count("heldout_draws", self.heldout_draws, minimum=0, maximum=10_000)
        if self.residual and not self.deconvolve:
            raise InvalidArgumentError(
                "residual=true models the residual around the least-squares image: it "
                "needs deconvolve=true"
            )
        for name in ("augment_amplitude", "augment_warp", "augment_depth"):
            check_nonnegative_scalar(name, getattr(self, name))
        return self
