"""Knob groups shared by several applications' configs, each declared once.

An application's config dataclass inherits the groups it uses and adds its own fields;
``dataclasses.fields`` of the result stays flat, so the command line (one option per
field, :mod:`devito_uq.cli`) and the TOML keys are the field names. Each group checks
its own fields (``check_<group>``), called from the application's ``validate()``; an
application adds the checks that differ (a bound that only it needs).

==========================  ====================================================  ================
group                       fields                                                used by
==========================  ====================================================  ================
:class:`SleipnerNoise`      ``snr_db``, ``prior_strength``                        avp, calibrate,
                                                                                  amortize avp
:class:`ProperPrior`        ``prior_norm_std``                                    calibrate,
                                                                                  amortize avp
:class:`ProfilePosterior`   ``scale``, ``lower``, ``flow_steps``,                 avp, calibrate
                            ``flow_hidden``, ``flow_leaf``, ``dtype``
:class:`FlowRefinement`     ``refine_steps``, ``refine_chains``,                  avp, calibrate
                            ``refine_burn_in``
:class:`WaveSolver`         ``f0``, ``vmax``, ``nbl``, ``space_order``            simulate, invert,
                                                                                  amortize imaging
:class:`LowestVelocity`     ``vmin``                                              simulate, invert
:class:`ModelUnits`         ``model_units``                                       simulate, invert
:class:`SurfaceSurvey`      ``x_start``, ``width``, ``depth``, ``spacing``,       simulate,
                            ``smoothing``, ``nshots``, ``nreceivers``, ``t1``,    amortize imaging
                            ``data_dt``
:class:`ImagePrior`         ``prior_std``, ``correlation_length``                 invert,
                                                                                  amortize imaging
:class:`ShotHeaders`        ``convention``, ``datum``, ``line_tolerance``         invert, imaging,
                                                                                  info
==========================  ====================================================  ================

Units: squared slowness in s²/km², lengths in m, times in ms, frequencies in Hz,
velocities in km/s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devito_uq.apps import knob
from devito_uq.errors import InvalidArgumentError
from devito_uq.validation import (
    check_allocation,
    check_choice,
    check_count,
    check_grid,
    check_in_range,
    check_int,
    check_nonnegative_int,
    check_positive_scalar,
    check_scalar,
)

__all__ = [
    "FlowRefinement",
    "ImagePrior",
    "LowestVelocity",
    "ModelUnits",
    "ProfilePosterior",
    "ProperPrior",
    "ShotHeaders",
    "SleipnerNoise",
    "SurfaceSurvey",
    "WaveSolver",
    "SPACE_ORDERS",
]

#: Finite-difference orders in space the 2D solvers offer.
SPACE_ORDERS = (2, 4, 6, 8, 10, 12, 16)


# -- the Sleipner AVP posterior --------------------------------------------------------------
@dataclass
class SleipnerNoise:
    """Noise rule and smoothness prior of the Sleipner AVP posterior.

    The noise σ is set once from ``snr_db`` relative to the Sleipner scattered data
    ``d(m_true) − d(m_background)``; the first-difference prior has
    ``σ_p² = prior_strength · ‖D m_Sleipner‖²``.
    """

    snr_db: float = knob(0.0, "SNR of the Sleipner scattered data, dB (sets the noise σ)")
    prior_strength: float = knob(
        1e-2, "σ_p² / ‖D m_Sleipner‖² of the smoothness prior (the original used 1e-3)"
    )

    def check_sleipner_noise(self) -> None:
        """Raise :class:`InvalidArgumentError` naming the first bad field."""
        check_scalar("snr_db", self.snr_db)
        check_positive_scalar("prior_strength", self.prior_strength)


@dataclass
class ProperPrior:
    """The norm term ``‖m − m_b‖²/(2σ₀²)`` that makes the smoothness prior proper (the
    prior that simulated truths are drawn from)."""

    prior_norm_std: float = knob(
        0.05, "σ₀ of the prior's norm term around the Sleipner background, s²/km² (makes it proper)"
    )

    def check_proper_prior(self) -> None:
        """Raise :class:`InvalidArgumentError` when ``prior_norm_std`` is not positive."""
        check_positive_scalar("prior_norm_std", self.prior_norm_std)


@dataclass
class ProfilePosterior:
    """Parameterization ``m = g(x)`` and HINT flow of a 1D profile posterior, and the
    floating-point type of the experiment."""

    scale: float = knob(0.02, "latent scale of the parameterization, s²/km²")
    lower: float = knob(1.0 / 9.0, "lower bound of m, s²/km² (1/9: v ≤ 3 km/s)")
    flow_steps: int = knob(5, "HINT steps")
    flow_hidden: int = knob(64, "HINT conditioner width")
    flow_leaf: int = knob(
        128,
        "HINT recursion leaf size (≥ 128, the profile length: one full-width coupling per step)",
    )
    dtype: str = knob("float32", "floating-point type (float32 or float64)")

    def check_profile_posterior(self) -> None:
        """Raise :class:`InvalidArgumentError` naming the first bad field."""
        for name in ("flow_steps", "flow_hidden", "flow_leaf"):
            check_count(name, getattr(self, name))
        for name in ("scale", "lower"):
            check_positive_scalar(name, getattr(self, name))
        check_choice("dtype", self.dtype, ("float32", "float64"))


@dataclass
class FlowRefinement:
    """MALA chains in a trained flow's latent that turn VI's draws into exact ones
    (:func:`devito_uq.inference.refine_with_mcmc`)."""

    refine_steps: int = knob(
        3000,
        "steps per chain of MALA in the trained flow's latent after burn-in, which turns "
        "VI's draws into exact ones (0: no refinement)",
    )
    refine_chains: int = knob(8, "refinement chains, each started at a flow draw")
    refine_burn_in: int = knob(200, "refinement burn-in steps (the MALA step adapts)")

    def check_flow_refinement(self, n_model: int, itemsize: int) -> None:
        """Raise :class:`InvalidArgumentError` naming the first bad field, or when the kept
        draws (``[refine_chains · refine_steps, n_model]`` of ``itemsize`` bytes, twice
        over for their summary) would not fit in memory."""
        check_int("refine_steps", self.refine_steps, minimum=0)
        if self.refine_steps != 0:
            check_int("refine_steps", self.refine_steps, minimum=4)  # R̂ splits each chain
        check_int("refine_chains", self.refine_chains, minimum=2)  # R̂ compares chains
        check_nonnegative_int("refine_burn_in", self.refine_burn_in)
        kept = self.refine_chains * self.refine_steps
        check_allocation(
            f"{kept} refined draws (refine_chains x refine_steps)", 2 * kept * n_model * itemsize
        )


# -- 2D imaging ------------------------------------------------------------------------------
@dataclass
class WaveSolver:
    """The 2D acoustic solver: source frequency, stability bound and boundary."""

    f0: float = knob(8.0, "Ricker peak frequency of the source, Hz")
    vmax: float = knob(
        4.8, "largest velocity the solver must step stably for, km/s (≥ the fastest model)"
    )
    nbl: int = knob(20, "absorbing boundary width, grid cells")
    space_order: int = knob(8, "finite-difference order in space")

    def check_wave_solver(self) -> None:
        """Raise :class:`InvalidArgumentError` naming the first bad field."""
        for name in ("f0", "vmax"):
            check_positive_scalar(name, getattr(self, name))
        check_nonnegative_int("nbl", self.nbl)
        check_choice("space_order", self.space_order, SPACE_ORDERS)


@dataclass
class LowestVelocity:
    """The smallest velocity a model may take (the FWI lower bound)."""

    vmin: float = knob(1.3, "smallest velocity a model may take, km/s (FWI lower bound)")

    def check_lowest_velocity(self, vmax: float) -> None:
        """Raise :class:`InvalidArgumentError` unless ``0 < vmin < vmax`` (km/s)."""
        check_positive_scalar("vmin", self.vmin)
        if self.vmin >= vmax:
            raise InvalidArgumentError(f"vmin={self.vmin} km/s must be below vmax={vmax}")

    def check_model_velocity(self, v: Any, vmax: float, what: str, units: str) -> None:
        """Refuse a model whose velocities leave ``[vmin, vmax]``, with a hint that never
        starts a run that cannot end (a vmax of 1,500 km/s for m/s read as km/s).

        Parameters
        ----------
        v : numpy.ndarray
            The velocities, km/s.
        vmax : float
            The solver's largest velocity, km/s.
        what : str
            The model's name and file, for the message.
        units : str
            What the file was read as (:func:`devito_uq.io.read_velocity`).
        """
        lo, hi = float(v.min()), float(v.max())
        if self.vmin <= lo and hi <= vmax:
            return
        if 0.3 <= lo / 1000 and hi / 1000 <= 20 and units.startswith("km/s"):
            hint = "they look like m/s read as km/s: set model_units='m/s' (or 'auto')"
        elif lo < 0.3 or hi > 20:  # no rock or fluid: the unit is wrong, not the bounds
            hint = "no medium is that slow or fast: state the file's model_units"
        else:
            hint = (
                f"set vmin <= {lo:.4g} and vmax >= {hi:.4g} (the solver's time step shrinks "
                "as 1/vmax)"
            )
        raise InvalidArgumentError(
            f"{what} velocities {lo:.4g}..{hi:.4g} km/s (read as {units}) leave "
            f"[vmin={self.vmin}, vmax={vmax}]; {hint}"
        )


@dataclass
class ModelUnits:
    """The unit of the model files a command reads (:func:`devito_uq.io.read_velocity`)."""

    model_units: str = knob(
        "auto",
        "unit of the model SEG-Y files: 'auto' (from the magnitude: km/s, m/s, or squared "
        "slowness s2/km2 or s2/m2; reported), 'km/s', 'm/s', 's2/km2' or 's2/m2'",
    )

    def check_model_units(self) -> None:
        """Raise :class:`~devito_uq.errors.InvalidArgumentError` for an unknown unit."""
        # lazy: the SEG-Y module is needed only when a command runs, not for --help
        from devito_uq.io.segy_image import MODEL_UNITS

        check_choice("model_units", self.model_units, ("auto", *MODEL_UNITS))


@dataclass
class SurfaceSurvey:
    """A window of a velocity model on a regular grid and its surface acquisition:
    ``nshots`` sources evenly spread along the line, ``nreceivers`` spanning it."""

    x_start: float = knob(5400.0, "left edge of the window cut from the model, m")
    width: float = knob(1200.0, "window width, m (0: the whole model)")
    depth: float = knob(600.0, "window depth from the top, m (0: the whole model)")
    spacing: float = knob(30.0, "grid spacing of the inversion grid, m (the model is resampled)")
    smoothing: float = knob(
        150.0, "Gaussian smoothing length of the slowness that makes the background model, m"
    )
    nshots: int = knob(8, "number of sources, evenly spread along the line")
    nreceivers: int = knob(41, "receivers per shot, spanning the line")
    t1: float = knob(1000.0, "record length, ms")
    data_dt: float = knob(4.0, "SEG-Y sample interval of the recorded data, ms")

    def check_surface_survey(self) -> None:
        """Raise :class:`InvalidArgumentError` naming the first bad field."""
        check_scalar("x_start", self.x_start)
        for name in ("width", "depth"):
            check_in_range(name, getattr(self, name), 0.0, float("inf"))
        for name in ("spacing", "smoothing", "t1", "data_dt"):
            check_positive_scalar(name, getattr(self, name))
        check_count("nshots", self.nshots)
        check_count("nreceivers", self.nreceivers)
        if self.data_dt >= self.t1:
            raise InvalidArgumentError(f"data_dt={self.data_dt} ms must be below t1={self.t1}")
        nt = int(self.t1 / self.data_dt) + 1
        check_allocation(
            f"the shot records (nshots={self.nshots} x nreceivers={self.nreceivers} x {nt} "
            f"samples of t1={self.t1:g} ms / data_dt={self.data_dt:g} ms, float32)",
            4 * self.nshots * self.nreceivers * nt,
        )

    def check_survey_grid(self, nbl: int) -> None:
        """Raise :class:`~devito_uq.errors.InsufficientMemoryError` when the window's grid
        (``width`` x ``depth`` at ``spacing``, ``nbl`` boundary cells each side, a few
        float32 wavefields) cannot fit in memory; a zero ``width``/``depth`` (the whole
        model, known once it is read) is checked by the solver instead."""
        if self.width > 0 and self.depth > 0:
            check_grid((self.width, self.depth), self.spacing, pad=nbl)


@dataclass
class ImagePrior:
    """The correlated Gaussian prior of a 2D image (exponential kernel)."""

    prior_std: float = knob(0.03, "prior standard deviation of squared slowness, s²/km²")
    correlation_length: float = knob(60.0, "prior correlation length, m")

    def check_image_prior(self) -> None:
        """Raise :class:`InvalidArgumentError` naming the first bad field."""
        for name in ("prior_std", "correlation_length"):
            check_positive_scalar(name, getattr(self, name))


# -- reading shot records --------------------------------------------------------------------
@dataclass
class ShotHeaders:
    """How SEG-Y shot records keep their geometry (:func:`devito_uq.io.read_shots`): every
    command that reads shots takes these three, and ``devito-uq info`` reports the same."""

    convention: str = knob(
        "auto",
        "trace-header convention of the shots: 'auto' (the preset that fits, as devito-uq info "
        "finds it; refused when ambiguous), 'devito_uq', 'judi' (SegyIO.jl/JUDI), or fields "
        "such as 'src_z=SourceDepth,rec_z=-ReceiverGroupElevation'",
    )
    datum: float = knob(0.0, "metres added to every source and receiver depth (z down)")
    line_tolerance: float = knob(
        10.0, "largest distance off the best-fit line of a 2D survey, m (the line is projected)"
    )

    def check_shot_headers(self) -> None:
        """Raise :class:`~devito_uq.errors.DevitoUQError` naming the first bad field."""
        # lazy: segyio's field names are needed only when a command runs, not for --help
        from devito_uq.io.segy_geometry import fields_to_read

        if not isinstance(self.convention, str) or not self.convention:
            raise InvalidArgumentError(
                f"convention={self.convention!r} must be 'auto', a preset name or fields"
            )
        fields_to_read(self.convention)  # names every bad preset, key or field
        check_scalar("datum", self.datum)
        check_in_range("line_tolerance", self.line_tolerance, 0.0, float("inf"))

    def shot_headers(self) -> dict[str, Any]:
        """The keyword arguments of :func:`devito_uq.io.read_shots` these fields set."""
        return {
            "convention": self.convention,
            "datum": self.datum,
            "line_tolerance": self.line_tolerance,
        }
