"""Every knob of the 2D imaging application, validated in one place.

Three config dataclasses, one per ``devito-uq`` command:

* :class:`SimulateConfig` (``devito-uq simulate``): a true model (a window of Marmousi-II
  or a SEG-Y velocity image) and a surface acquisition → ``shots.sgy`` and its sidecar
  ``acquisition.json``, ``true_model.sgy``, ``background.sgy``;
* :class:`InvertConfig` (``devito-uq invert``): SEG-Y shots + a background / starting
  velocity → posterior of the Born image (``problem = "born"``) or of the velocity
  (``problem = "fwi"``);
* :class:`ImagingConfig` (``devito-uq imaging``): both, one after the other, in one folder —
  the default Marmousi case (:meth:`ImagingConfig.short`, ``make imaging``) and the full one.

Each field's help text lives in its ``metadata["help"]``; the command-line options and the
TOML keys are the field names. The survey, solver and prior knobs shared with other
applications are the groups of :mod:`devito_uq.apps.pieces`. Units: metres, ms, Hz,
km/s, squared slowness s²/km².
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from devito_uq.apps import knob as _knob
from devito_uq.apps.pieces import (
    ImagePrior,
    LowestVelocity,
    ModelUnits,
    ShotHeaders,
    SurfaceSurvey,
    WaveSolver,
)
from devito_uq.errors import InvalidArgumentError
from devito_uq.validation import (
    check_allocation,
    check_choice,
    check_count,
    check_in_range,
    check_int,
    check_nonnegative_int,
    check_positive_int,
    check_positive_scalar,
    check_scalar,
)

__all__ = ["SimulateConfig", "InvertConfig", "ImagingConfig", "SummarizeConfig", "InfoConfig"]


def _fields_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _number(name: str, value: Any) -> float:
    """``value`` of a number-or-``'auto'`` field as a float, or a refusal naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{name}={value!r} must be a number or 'auto'")
    return float(value)


@dataclass
class SimulateConfig(SurfaceSurvey, WaveSolver, LowestVelocity, ModelUnits):
    """Model and acquisition of a synthetic survey (``devito-uq simulate``)."""

    model: str = _knob(
        "marmousi",
        "true velocity: 'marmousi' (the shipped Marmousi-II model), a SEG-Y image in "
        "model_units (x in CDP_X, depth down the samples, any origin: devito_uq.io.write_image) "
        "or HDF5 in JUDI's layout (m [nz, nx], d, o)",
    )
    data: str = _knob(
        "nonlinear",
        "'nonlinear' (wave-equation shots of the true model) or 'born' (background shots + "
        "Born data of the true perturbation: the linearized problem is then exact)",
    )
    snr_db: float = _knob(
        20.0, "signal-to-noise ratio of the scattered data (shots minus background shots), dB"
    )
    seed: int = _knob(1, "noise seed")
    z_start: float | str = _knob(
        "auto",
        "depth of the window's top, m, in the model's depth frame (on its grid; 'auto': the "
        "model's first depth)",
    )
    src_depth: float | str = _knob(
        "auto", "source depth, m (z down; 'auto': two grid cells below the window's top)"
    )
    rec_depth: float | str = _knob(
        "auto", "receiver depth, m (z down; 'auto': one grid cell below the window's top)"
    )
    record_delay: float = _knob(
        0.0,
        "time of the first recorded sample, ms (SEG-Y DelayRecordingTime: whole ms; the "
        "source fires at 0)",
    )

    @classmethod
    def short(cls, **overrides: Any) -> SimulateConfig:
        return cls(**overrides)

    def validate(self) -> SimulateConfig:
        """Raise :class:`InvalidArgumentError` naming the first bad value; return ``self``."""
        if not isinstance(self.model, str) or not self.model:
            raise InvalidArgumentError(f"model={self.model!r} must be 'marmousi' or a file path")
        self.check_surface_survey()
        self.check_wave_solver()
        self.check_survey_grid(self.nbl)
        self.check_lowest_velocity(self.vmax)
        self.check_model_units()
        check_scalar("snr_db", self.snr_db)
        check_choice("data", self.data, ("nonlinear", "born"))
        check_int("nreceivers", self.nreceivers, minimum=2)
        check_int("seed", self.seed)
        for name in ("z_start", "src_depth", "rec_depth"):
            if getattr(self, name) != "auto":
                check_scalar(name, _number(name, getattr(self, name)))
        check_in_range("record_delay", self.record_delay, -32768.0, 32767.0)
        if self.record_delay != round(self.record_delay) or self.record_delay >= self.t1:
            raise InvalidArgumentError(
                f"record_delay={self.record_delay} ms must be a whole number of ms (SEG-Y "
                f"stores it so) below t1={self.t1}"
            )
        if round(self.data_dt * 1000) != self.data_dt * 1000:  # before any solve
            raise InvalidArgumentError(
                f"data_dt={self.data_dt} ms must be a whole number of µs: SEG-Y stores the "
                "sample interval in µs"
            )
        nyquist = 500.0 / self.data_dt
        if 3.0 * self.f0 >= nyquist:  # the Ricker spectrum reaches ~3 f0
            raise InvalidArgumentError(
                f"data_dt={self.data_dt} ms has Nyquist {nyquist:g} Hz, below 3·f0 = "
                f"{3 * self.f0:g} Hz where the Ricker wavelet still has energy; lower data_dt"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)


@dataclass
class InvertConfig(WaveSolver, LowestVelocity, ImagePrior, ShotHeaders, ModelUnits):
    """The posterior of a 2D survey (``devito-uq invert``)."""

    shots: str = _knob("shots.sgy", "SEG-Y shot records (relative paths: inside --out)")
    background: str = _knob(
        "background.sgy",
        "SEG-Y velocity image (model_units) of the background (born) or starting model "
        "(fwi), or HDF5 in JUDI's layout (m0, else m); it sets the grid and its origin",
    )
    truth: str = _knob(
        "true_model.sgy",
        "SEG-Y (or JUDI HDF5) true velocity (model_units) for the metrics ('': none)",
    )
    problem: str = _knob("born", "'born' (linearized image δm around the background) or 'fwi'")
    sigma: float | str = _knob(
        0.0,
        "noise standard deviation of the data (0: from acquisition.json beside the shots; "
        "'auto': estimated from the samples before the first arrivals, as devito-uq info "
        "reports it)",
    )
    sigma_inflation: float | str = _knob(
        1.0,
        "factor on sigma (>= 1), or 'auto': when the data misfit at the MAP says the "
        "Gaussian-noise model does not hold (summary.json model_check), sigma is inflated "
        "by the measured misfit and linearization error and the MAP and Laplace redone",
    )
    fixed_water: bool = _knob(
        False,
        "hold the background's water layer fixed (the leading run of its top velocity, "
        "<= 1.55 km/s, in each column) in both problems, and leave it out of the metrics",
    )
    prior: str = _knob(
        "gaussian",
        "'gaussian' (correlated, exponential kernel), 'tv', or 'flow' (a trained posterior)",
    )
    prior_file: str = _knob("", "posterior.pt of an earlier run, the prior when prior='flow'")
    tv_weight: float = _knob(
        3000.0, "TV prior weight λ of λ·Σ_pixels |∇m| (tv only), per (s²/km² per m)"
    )
    flow: str = _knob("hint", "2D flow: 'hint' (multiscale HINT) or 'glow'")
    flow_levels: int = _knob(2, "multiscale levels (the grid is padded to a multiple of 2^L)")
    flow_steps: int = _knob(2, "flow steps per level")
    flow_hidden: int = _knob(32, "conditioner channels")
    map_iterations: int = _knob(
        400,
        "most L-BFGS iterations of the MAP estimate, the flow's centre (FWI, or a non-Gaussian "
        "prior): it stops once 10 iterations gain < 1 nat, and says so when the cap comes "
        "first; Born with a Gaussian prior solves for it by CG to an estimated error of 1 % "
        "instead; 0: no MAP",
    )
    probes: int = _knob(4, "random probes of the illumination diag(JᵀJ)/σ²")
    rank: int = _knob(
        1000,
        "rank of the Laplace start when the Hessian comes from products (2·(rank+oversample) "
        "of them, or N when no more: exact; at least the eigenvalues > 1 for calibrated bars)",
    )
    oversample: int = _knob(10, "extra random vectors of the randomized eigensolver")
    hessian: str = _knob(
        "auto",
        "how the Laplace phase gets the Gauss-Newton Hessian: 'green' (exact, from shots + "
        "receivers wave solves and dense algebra: receiver Green's functions), 'products' "
        "(rank and oversample), 'auto' (green when it fits in memory and is estimated no "
        "slower than an exact assembly by products)",
    )
    coverage_check: bool = _knob(
        True,
        "when rank < N ≤ 6000 unknowns: before the Laplace phase, estimate how many directions "
        "the data inform (a laterally stationary Hessian from 2·nz + 36 Gauss-Newton products) "
        "and say whether rank covers them",
    )
    residual: str = _knob(
        "prior",
        "spread of the directions beyond rank: 'prior' (conservative) or 'tail' (a power-law "
        "guess of the missing eigenvalues; narrower)",
    )
    iterations: int = _knob(200, "VI iterations")
    batch_size: int = _knob(2, "flow samples per VI iteration")
    vi_shots: int = _knob(
        4,
        "shots per VI iteration (0, or at least the survey's: all): a random subset, the same "
        "on every MPI rank, misfit scaled by nshots/vi_shots (unbiased); MAP, Laplace and "
        "metrics use all shots. 4 of 8 matched the all-shot posterior at half the VI solves "
        "(benchmarks/results/bench_shot_subsets.md)",
    )
    lr: float = _knob(2e-3, "Adam learning rate (cosine decay to 1 % over the run)")
    checkpoint_every: int = _knob(50, "VI checkpoint interval, iterations")
    n_samples: int = _knob(
        1024,
        "posterior samples drawn for the summary (the mean's Monte Carlo error, "
        "summary.json monte_carlo, falls as 1/sqrt(n_samples): 6.7 % at 256 on 5,151 unknowns)",
    )
    device: str = _knob("cpu", "where the flow trains: 'cpu', 'cuda' or 'auto' (Devito: CPU)")
    amortized: str = _knob(
        "",
        "amortized.pt of 'devito-uq amortize train' (imaging): sample its posterior for this "
        "survey instead of MAP + VI ('': off)",
    )
    correct: bool = _knob(
        False,
        "with amortized: fit its latent correction to this survey (reverse KL with the "
        "physics, `iterations` steps of `batch_size`)",
    )
    seed: int = _knob(1, "flow and sampling seed")
    overwrite: bool = _knob(
        False,
        "remove another kind of run's outputs (born, fwi or amortized) from the output folder "
        "instead of refusing to mix them",
    )
    label: str = _knob("short", "schedule name written to summary.json", cli=False)

    @classmethod
    def short(cls, **overrides: Any) -> InvertConfig:
        return cls(**overrides)

    def validate(self) -> InvertConfig:
        """Raise :class:`InvalidArgumentError` naming the first bad value; return ``self``."""
        for name in ("shots", "background"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InvalidArgumentError(f"{name}={getattr(self, name)!r} must be a file path")
        if not isinstance(self.truth, str):
            raise InvalidArgumentError(f"truth={self.truth!r} must be a path or ''")
        check_choice("problem", self.problem, ("born", "fwi"))
        check_choice("prior", self.prior, ("gaussian", "tv", "flow"))
        if not isinstance(self.prior_file, str):
            raise InvalidArgumentError(f"prior_file={self.prior_file!r} must be a path or ''")
        check_choice("flow", self.flow, ("hint", "glow"))
        check_choice("device", self.device, ("cpu", "cuda", "auto"))
        check_choice("residual", self.residual, ("prior", "tail"))
        check_choice("hessian", self.hessian, ("auto", "green", "products"))
        self.check_wave_solver()
        self.check_lowest_velocity(self.vmax)
        self.check_image_prior()
        self.check_shot_headers()
        self.check_model_units()
        for name in ("tv_weight", "lr"):
            check_positive_scalar(name, getattr(self, name))
        if self.sigma != "auto":
            check_in_range("sigma", _number("sigma", self.sigma), 0.0, float("inf"))
        if self.sigma_inflation != "auto":
            check_in_range(
                "sigma_inflation", _number("sigma_inflation", self.sigma_inflation), 1.0, 1e6
            )
        for name in (
            "flow_levels",
            "flow_steps",
            "flow_hidden",
            "probes",
            "rank",
            "iterations",
            "batch_size",
            "checkpoint_every",
        ):
            check_positive_int(name, getattr(self, name))
        for name in ("flow_levels", "flow_steps", "flow_hidden", "probes", "rank", "batch_size"):
            check_count(name, getattr(self, name))
        check_count("flow_levels", self.flow_levels, maximum=16)  # the grid pads to 2^L
        check_nonnegative_int("map_iterations", self.map_iterations)
        check_count("oversample", self.oversample, minimum=0)
        check_count("vi_shots", self.vi_shots, minimum=0)
        check_count("n_samples", self.n_samples, minimum=2)  # a std needs two samples
        check_int("seed", self.seed)
        # Two 3x3 convolutions of flow_hidden channels per step and level, float32, each
        # with its gradient and Adam's two moments.
        check_allocation(
            f"the flow's conditioners (flow_hidden={self.flow_hidden} channels, "
            f"flow_steps={self.flow_steps} x flow_levels={self.flow_levels}, with Adam)",
            4 * 9 * self.flow_hidden**2 * 2 * self.flow_steps * self.flow_levels * 4,
        )
        if not isinstance(self.label, str):
            raise InvalidArgumentError(f"label={self.label!r} must be a string")
        if not isinstance(self.amortized, str):
            raise InvalidArgumentError(f"amortized={self.amortized!r} must be a path or ''")
        if not isinstance(self.correct, bool):
            raise InvalidArgumentError(f"correct={self.correct!r} must be true or false")
        if not isinstance(self.coverage_check, bool):
            raise InvalidArgumentError(
                f"coverage_check={self.coverage_check!r} must be true or false"
            )
        if not isinstance(self.fixed_water, bool):
            raise InvalidArgumentError(f"fixed_water={self.fixed_water!r} must be true or false")
        if not isinstance(self.overwrite, bool):
            raise InvalidArgumentError(f"overwrite={self.overwrite!r} must be true or false")
        if self.correct and not self.amortized:
            raise InvalidArgumentError("correct=True needs amortized=PATH (a trained posterior)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)


#: InvertConfig fields that do not change the posterior a VI checkpoint holds.
NOT_IN_VI = frozenset({"checkpoint_every", "n_samples", "label", "truth", "device", "overwrite"})


@dataclass
class ImagingConfig(InvertConfig, SimulateConfig):
    """``devito-uq imaging``: simulate the survey, then invert it, in one output folder.

    :meth:`short` (the default, ``make imaging``) is the Marmousi case sized for a few
    minutes on 2 cores; :meth:`full` is a larger window, finer grid and longer schedule
    meant for ``mpiexec`` on many cores. The invert fields' file names refer to the files
    the simulation writes into the output folder.
    """

    @classmethod
    def short(cls, **overrides: Any) -> ImagingConfig:
        """1.2 km × 0.6 km of Marmousi at 30 m (41 × 21), 8 shots of 41 receivers, Born data
        (the Born posterior is then exact, so its calibration can be checked against the
        truth), a full-rank Laplace start and 200 VI iterations: a few minutes on 2 cores."""
        base: dict[str, Any] = dict(data="born")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def full(cls, **overrides: Any) -> ImagingConfig:
        """3 km × 1.5 km of Marmousi at 30 m (101 × 51), 16 shots of 101 receivers, a
        full-rank Laplace start (≈ 10,300 Gauss–Newton products: meant for ``mpiexec`` over
        many cores) and 1,000 VI iterations of batch 4 with a deeper flow."""
        base = dict(
            data="born",
            x_start=4500.0,
            width=3000.0,
            depth=1500.0,
            nreceivers=101,
            t1=1600.0,
            nshots=16,
            vi_shots=8,  # the measured default's half of the shots (4 of 8)
            rank=6000,
            flow_levels=3,
            flow_steps=4,
            flow_hidden=64,
            map_iterations=60,
            probes=8,
            iterations=1000,
            batch_size=4,
            lr=1e-3,
            checkpoint_every=100,
            n_samples=1000,
            label="full",
        )
        base.update(overrides)
        return cls(**base)

    def validate(self) -> ImagingConfig:
        SimulateConfig.validate(self)
        InvertConfig.validate(self)
        return self

    def simulate_config(self) -> SimulateConfig:
        names = {f.name for f in dataclasses.fields(SimulateConfig)}
        return SimulateConfig(**{k: v for k, v in self.to_dict().items() if k in names})

    def invert_config(self) -> InvertConfig:
        names = {f.name for f in dataclasses.fields(InvertConfig)}
        return InvertConfig(**{k: v for k, v in self.to_dict().items() if k in names})


@dataclass
class SummarizeConfig:
    """``devito-uq summarize``: more samples and the outputs of a finished posterior."""

    posterior: str = _knob("posterior.pt", "posterior file of an invert run (relative: in --out)")
    n_samples: int = _knob(256, "posterior samples to draw")
    seed: int = _knob(0, "sampling seed")

    @classmethod
    def short(cls, **overrides: Any) -> SummarizeConfig:
        return cls(**overrides)

    def validate(self) -> SummarizeConfig:
        if not isinstance(self.posterior, str) or not self.posterior:
            raise InvalidArgumentError(f"posterior={self.posterior!r} must be a file path")
        check_count("n_samples", self.n_samples, minimum=2)
        check_int("seed", self.seed)
        return self

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)


@dataclass
class InfoConfig(ShotHeaders):
    """``devito-uq info SEGY``: what a SEG-Y shot file holds, read as ``invert`` would read
    it with the same ``convention``, ``datum`` and ``line_tolerance``."""

    segy: str = _knob("", "SEG-Y file to describe")
    f0: float = _knob(
        8.0, "Ricker peak frequency of the source, Hz (when its wavelet starts: the noise estimate)"
    )
    vmax: float = _knob(
        4.8,
        "fastest velocity of the medium, km/s: samples before onset + offset/vmax give the "
        "noise estimate (sigma = 'auto' of invert)",
    )

    @classmethod
    def short(cls, **overrides: Any) -> InfoConfig:
        return cls(**overrides)

    def validate(self) -> InfoConfig:
        if not isinstance(self.segy, str) or not self.segy:
            raise InvalidArgumentError("give the SEG-Y file: devito-uq info FILE.sgy")
        self.check_shot_headers()
        for name in ("f0", "vmax"):
            check_positive_scalar(name, getattr(self, name))
        return self

    def to_dict(self) -> dict[str, Any]:
        return _fields_dict(self)
