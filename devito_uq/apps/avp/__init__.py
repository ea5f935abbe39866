"""The Sleipner AVP uncertainty experiment (Rizzuti et al., SEG 2020).

Posterior of a 1D squared-slowness profile from plane-wave (τ-p) data, sampled three
ways on the same data: a HINT normalizing flow trained by variational inference (the
method under test), MALA (the MCMC reference) and the MAP point estimate.

* :mod:`~devito_uq.apps.avp.config` — :class:`AVPConfig`, every knob, validated;
* :mod:`~devito_uq.apps.avp.problem` — data, likelihood, prior, parameterization, flow,
  the per-survey VI fit (:func:`fit_vi`) and what the methods produce (:class:`AVPResults`);
* :mod:`~devito_uq.apps.avp.run` — :func:`run_avp`: caches, metrics, ``summary.json``;
* :mod:`~devito_uq.apps.avp.figures` — the PNG figures;
* :mod:`~devito_uq.apps.avp.calibration` — :func:`run_avp_calibration`
  (``devito-uq calibrate``): SBC, coverage and TARP of VI and MALA over prior truths,
  configured by :class:`~devito_uq.apps.avp.calibration_config.AVPCalibrationConfig`.

Defaults follow the original scripts (slimgroup/Software.SEG2020,
rizzuti2020SEGuqavp): angles 12.8°…32° (7, linspace), 0.4 s at 0.5 ms, a
5–30–50–80 Hz band-pass wavelet, 0 dB SNR of the scattered data, lower bound
``m ≥ 1/9 s²/km²``, latent scale 0.02 s²/km², HINT with 5 steps and 64 hidden units,
Adam at 10⁻³ decaying ×0.9 every 1024 iterations, batch 8, 32,768 iterations.

One deliberate departure: the prior strength defaults to 10⁻², not the original
FWI script's 10⁻³. With 10⁻³ the prior over-smooths the blocky Sleipner profile so
much that even the MCMC reference's 90% interval holds the truth at only ~65% of
depths (measured); with 10⁻² MALA's holds it at ~95% and the MAP error drops from
4.3% to 3.0%. ``AVPConfig(prior_strength=1e-3)`` (CLI ``--prior-strength 1e-3``)
restores the original.

Importing this package loads only the config; the problem, run and figures modules
(and with them torch's physics and flows) load on first use of their names.
"""

from __future__ import annotations

from devito_uq._lazy import lazy_exports
from devito_uq.apps import Command
from devito_uq.apps.avp.calibration_config import AVPCalibrationConfig
from devito_uq.apps.avp.config import AVPConfig

_LAZY = {
    "SLEIPNER_DZ": "devito_uq.apps.avp.problem",
    "AVPProblem": "devito_uq.apps.avp.problem",
    "load_sleipner": "devito_uq.apps.avp.problem",
    "build_problem": "devito_uq.apps.avp.problem",
    "make_flow": "devito_uq.apps.avp.problem",
    "fit_vi": "devito_uq.apps.avp.problem",
    "AVPResults": "devito_uq.apps.avp.problem",
    "run_avp": "devito_uq.apps.avp.run",
    "train_vi": "devito_uq.apps.avp.run",
    "write_figures": "devito_uq.apps.avp.figures",
    "run_avp_calibration": "devito_uq.apps.avp.calibration",
}

__all__, __getattr__, __dir__ = lazy_exports(
    __name__, _LAZY, ("AVPConfig", "AVPCalibrationConfig", "COMMANDS")
)

_REPORT = (
    "relative_error",
    "truth_inside_90pct_interval",
    "vi_std_vs_mala_std_mean_relative_difference",
    "wall_time_s",
    "targets",
)


def _command(name: str, help: str, out: str, full_preset: str | None = None) -> Command:
    return Command(
        name=name,
        help=help,
        config=AVPConfig,
        preset="short",
        full_preset=full_preset,
        run="devito_uq.apps.avp.run:run_avp",
        default_out=out,
        report_keys=_REPORT,
    )


#: The ``devito-uq`` sub-commands of this application.
COMMANDS = (
    _command(
        "avp", "Sleipner AVP experiment (short schedule unless --full)", "outputs/avp", "full"
    ),
    _command(
        "demo",
        "Sleipner AVP experiment, short schedule (make demo, < 5 min on 2 cores)",
        "outputs/demo",
    ),
    Command(
        name="calibrate",
        help="SBC, coverage and TARP of VI and MALA over prior truths (Sleipner AVP)",
        config=AVPCalibrationConfig,
        preset="standard",
        run="devito_uq.apps.avp.calibration:run_avp_calibration",
        default_out="outputs/calibrate",
        report_keys=("verdict", "costs"),
        mpi=True,
    ),
)
