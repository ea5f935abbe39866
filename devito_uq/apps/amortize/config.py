"""Every knob of amortized posteriors (``devito-uq amortize simulate|train|study|all``).

One flat dataclass for both problems (``problem = "avp"`` or ``"imaging"``), so that one
TOML file drives the whole workflow: simulate the training set, train the conditional
flow by maximum likelihood, then study it on surveys (the Sleipner survey and shifted
ones for AVP; a held-out Marmousi section for imaging), with the physics-based latent
correction and the per-survey baselines. Fields are grouped: common, AVP only, imaging
only; a field of the other problem is ignored. The defaults are the AVP workflow of
``make amortize`` (< 30 min on 2 cores); ``examples/amortize_marmousi.toml`` sets the
2D case. Units: angles in degrees, times in ms, frequencies in Hz, lengths in m,
squared slowness in s²/km².
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from devito_uq.apps import knob as _knob
from devito_uq.errors import InvalidArgumentError
from devito_uq.validation import (
    check_choice,
    check_in_range,
    check_int,
    check_nonnegative_int,
    check_positive_int,
    check_positive_scalar,
    check_scalar,
)

__all__ = ["AmortizeConfig", "PROBLEMS"]

#: The problems an amortized posterior is built for.
PROBLEMS = ("avp", "imaging")


@dataclass
class AmortizeConfig:
    """Training set, conditional flow, training and study of an amortized posterior."""

    # -- common -------------------------------------------------------------------------------
    problem: str = _knob("avp", "'avp' (Sleipner plane-wave profiles) or 'imaging' (2D Born)")
    dataset: str = _knob("", "folder of the training set ('': OUT/dataset)")
    checkpoint: str = _knob("", "trained amortized posterior file ('': OUT/amortized.pt)")
    n_train: int = _knob(50000, "training pairs (model, data) simulated from the prior")
    n_validation: int = _knob(2000, "validation pairs (whole shards after the training ones)")
    shard_size: int = _knob(1000, "pairs per on-disk shard (the unit of resume and of MPI work)")
    flow_steps: int = _knob(6, "conditional flow steps (per level for imaging)")
    flow_hidden: int = _knob(128, "conditioner width (channels for imaging)")
    flow_levels: int = _knob(2, "multiscale levels of the 2D conditional flow (imaging)")
    flow_kind: str = _knob("hint", "2D conditional flow: 'hint' or 'glow' (imaging)")
    summary_features: int = _knob(
        128, "summary network output: features (AVP data) or channels (imaging Jᵀd)"
    )
    summary_hidden: int = _knob(256, "summary network width")
    iterations: int = _knob(5000, "maximum-likelihood training iterations")
    batch_size: int = _knob(128, "training pairs per iteration")
    lr: float = _knob(2e-3, "Adam learning rate (cosine decay to lr·lr_final)")
    lr_final: float = _knob(0.01, "final learning rate as a fraction of lr")
    validate_every: int = _knob(250, "iterations between validation losses")
    checkpoint_every: int = _knob(500, "iterations between training checkpoints")
    device: str = _knob("cpu", "where the flow trains and samples: 'cpu', 'cuda' or 'auto'")
    n_samples: int = _knob(1000, "posterior samples per survey in the study")
    correct_iterations: int = _knob(
        200, "latent-correction iterations per survey (reverse KL with the physics)"
    )
    correct_batch_size: int = _knob(8, "flow samples per correction iteration")
    correct_lr: float = _knob(1e-2, "Adam learning rate of the correction")
    vi_iterations: int = _knob(2000, "iterations of the per-survey VI fit compared with")
    n_truths: int = _knob(200, "simulated truths of the calibration (SBC, coverage)")
    noise_factor: float = _knob(2.0, "noise of the shifted survey relative to training")
    shift_fraction: float = _knob(
        0.5, "fraction of ray parameters (AVP) or shots (imaging) kept by the shifted survey"
    )
    snr_db: float = _knob(
        0.0, "SNR of the scattered data, dB (AVP: Sleipner; imaging: the held-out section)"
    )
    seed: int = _knob(0, "seed of the training set, the flow and the study")
    label: str = _knob("default", "schedule name written to summary.json", cli=False)

    # -- AVP only -----------------------------------------------------------------------------
    prior_norm_std: float = _knob(
        0.05, "σ₀ of the prior's norm term around the Sleipner background, s²/km² (AVP)"
    )
    prior_strength: float = _knob(1e-2, "σ_p² / ‖D m_Sleipner‖² of the smoothness prior (AVP)")
    mala_steps: int = _knob(
        6000,
        "MALA reference steps per chain after a burn-in of a quarter of them, from the MAP (AVP)",
    )
    mala_chains: int = _knob(8, "MALA reference chains (AVP)")

    # -- imaging only -------------------------------------------------------------------------
    x_start: float = _knob(5400.0, "left edge of the held-out Marmousi window, m (imaging)")
    width: float = _knob(1200.0, "window width, m (imaging; training crops have this size)")
    depth: float = _knob(600.0, "window depth, m (imaging)")
    spacing: float = _knob(30.0, "grid spacing, m (imaging)")
    smoothing: float = _knob(150.0, "smoothing length of the background, m (imaging)")
    nshots: int = _knob(8, "sources of the survey (imaging)")
    nreceivers: int = _knob(41, "receivers per shot (imaging)")
    t1: float = _knob(1000.0, "record length, ms (imaging)")
    f0: float = _knob(8.0, "Ricker peak frequency, Hz (imaging)")
    prior_std: float = _knob(0.03, "std of the per-survey VI's Gaussian prior, s²/km² (imaging)")
    correlation_length: float = _knob(60.0, "its correlation length, m (imaging)")
    data_dt: float = _knob(4.0, "sample interval of the recorded data, ms (imaging)")
    vmax: float = _knob(4.8, "largest velocity the solver steps stably for, km/s (imaging)")
    nbl: int = _knob(20, "absorbing boundary width, grid cells (imaging)")
    space_order: int = _knob(8, "finite-difference order in space (imaging)")
    condition: str = _knob(
        "normal",
        "how Jᵀd is simulated (imaging): 'normal' (assemble JᵀMJ once, nx·nz Born + adjoint "
        "solves per shot, then no solve per pair) or 'explicit' (J and Jᵀ per pair)",
    )
    augment_flip: bool = _knob(True, "mirror half of the training crops in x (imaging)")
    augment_amplitude: float = _knob(
        0.2, "training δm scaled by a factor in [1/(1+a), 1+a], log-uniform (imaging; 0: off)"
    )
    augment_warp: float = _knob(
        30.0, "largest smooth random displacement of a training crop, m (imaging; 0: off)"
    )
    augment_depth: float = _knob(
        0.0,
        "crops start at a depth uniform in [0, augment_depth] m, δm zeroed in the survey's "
        "known water (imaging; 0: surface crops only)",
    )
    deconvolve: bool = _knob(
        True,
        "the summary network sees the least-squares image (H/σ² + C⁻¹)⁻¹Jᵀd/σ² (a fixed "
        "linear map of Jᵀd, C the Gaussian prior) instead of the standardized Jᵀd (imaging)",
    )

    def _validate_imaging(self) -> None:
        from devito_uq.validation import check_bool, check_nonnegative_scalar

        check_choice("condition", self.condition, ("normal", "explicit"))
        check_positive_scalar("data_dt", self.data_dt)
        check_positive_scalar("vmax", self.vmax)
        check_nonnegative_int("nbl", self.nbl)
        check_choice("space_order", self.space_order, (2, 4, 6, 8, 10, 12, 16))
        check_bool("augment_flip", self.augment_flip)
        check_bool("deconvolve", self.deconvolve)
        check_nonnegative_scalar("augment_amplitude", self.augment_amplitude)
        check_nonnegative_scalar("augment_warp", self.augment_warp)
        check_nonnegative_scalar("augment_depth", self.augment_depth)
        if self.data_dt >= self.t1:
            raise InvalidArgumentError(f"data_dt={self.data_dt} ms must be below t1={self.t1}")

    @classmethod
    def short(cls, **overrides: Any) -> AmortizeConfig:
        """The AVP workflow of ``make amortize`` (< 30 min on 2 cores)."""
        return cls(**overrides)

    def validate(self) -> AmortizeConfig:
        """Raise :class:`InvalidArgumentError` naming the first bad value; return ``self``."""
        check_choice("problem", self.problem, PROBLEMS)
        check_choice("flow_kind", self.flow_kind, ("hint", "glow"))
        check_choice("device", self.device, ("cpu", "cuda", "auto"))
        for name in ("dataset", "checkpoint"):
            if not isinstance(getattr(self, name), str):
                raise InvalidArgumentError(f"{name}={getattr(self, name)!r} must be a path or ''")
        for name in (
            "n_train",
            "n_validation",
            "shard_size",
            "flow_steps",
            "flow_hidden",
            "flow_levels",
            "summary_features",
            "summary_hidden",
            "iterations",
            "batch_size",
            "validate_every",
            "checkpoint_every",
            "n_samples",
            "correct_batch_size",
            "vi_iterations",
            "mala_chains",
            "nshots",
            "nreceivers",
        ):
            check_positive_int(name, getattr(self, name))
        check_nonnegative_int("correct_iterations", self.correct_iterations)
        check_nonnegative_int("mala_steps", self.mala_steps)
        check_int("n_truths", self.n_truths, minimum=2)
        for name in (
            "lr",
            "correct_lr",
            "noise_factor",
            "prior_norm_std",
            "prior_strength",
            "spacing",
            "smoothing",
            "t1",
            "f0",
            "prior_std",
            "correlation_length",
            "width",
            "depth",
        ):
            check_positive_scalar(name, getattr(self, name))
        check_in_range("lr_final", self.lr_final, 0.0, 1.0, low_open=True)
        check_in_range("shift_fraction", self.shift_fraction, 0.0, 1.0, low_open=True)
        check_scalar("snr_db", self.snr_db)
        check_scalar("x_start", self.x_start)
        check_int("seed", self.seed, minimum=0)
        self._validate_imaging()
        if self.n_train % self.shard_size or self.n_validation % self.shard_size:
            raise InvalidArgumentError(
                f"n_train={self.n_train} and n_validation={self.n_validation} must be multiples "
                f"of shard_size={self.shard_size} (validation takes whole shards)"
            )
        if self.batch_size > self.n_train:
            raise InvalidArgumentError(
                f"batch_size={self.batch_size} exceeds the n_train={self.n_train} training pairs"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
