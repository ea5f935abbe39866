r"""Simulation-based calibration of VI and MALA in the Sleipner AVP setting.

``devito-uq calibrate [CONFIG]`` (:func:`run_avp_calibration`) draws ``N`` synthetic
truths from a proper prior, simulates plane-wave data with noise for each, and
computes per truth a VI posterior (a fresh HINT flow, short schedule) and a MALA
reference at the same budget of likelihood gradients; then SBC ranks, expected
coverage (central and, for the flow, highest-density) and TARP for both
(:func:`devito_uq.inference.run_calibration`).

The setting, fixed once from the shipped Sleipner profile exactly as the AVP
experiment builds it (:func:`~devito_uq.apps.avp.problem.build_problem`): the
operator and ray parameters, the noise σ (the app's SNR rule applied to the
Sleipner scattered data, then held fixed so that the likelihood every posterior
uses is the exact data model of every truth), the parameterization and the flow.

The prior, from which truths are drawn and which every posterior uses:

.. math::
    p(m) \propto \exp\Big(-\frac{\|D(m - m_b)\|^2}{2\sigma_p^2}
        - \frac{\|m - m_b\|^2}{2\sigma_0^2}\Big)\,\mathbf 1\{m > m_{\min}\}

the app's first-difference smoothness prior (``σ_p² = prior_strength ·
‖D m_Sleipner‖²``), centred on the background ``m_b`` and made proper by the norm
term (``σ₀ = prior_norm_std``; 0.05 s²/km² gives a marginal std of 0.019 s²/km²
inside the profile, the RMS deviation of the Sleipner truth from its background),
truncated at the lower bound (``m ≥ 1/9`` s²/km²) by rejection — exactly the
support the parameterization gives every posterior. TARP distances are scaled by
the untruncated prior's marginal std.

Files in the output folder: ``vi/`` and ``mala/`` (``calibration.json`` and one
``truth_000123.npz`` per finished truth), ``calibration_config.json``,
``report.json`` (tests, verdict, costs) and the figures ``calibration_*.png``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from devito_uq.apps.avp.calibration_config import AVPCalibrationConfig
from devito_uq.apps.avp.problem import SLEIPNER_DZ, AVPProblem, build_problem, fit_vi
from devito_uq.apps.avp.truth_prior import TruncatedGaussianPrior, smoothness_precision
from devito_uq.errors import CheckpointError
from devito_uq.inference import (
    MALA,
    CachedDraws,
    CalibrationResult,
    GaussianLikelihood,
    PosteriorTarget,
    SmoothnessPrior,
    VariationalPosterior,
    refine_with_mcmc,
    run_calibration,
    window_mean,
)
from devito_uq.inference.diagnostics import expected_z_fraction
from devito_uq.io._atomic import atomic_path
from devito_uq.io._files import read_input_json
from devito_uq.io.checkpoint import check_identity
from devito_uq.parallel import allreduce_sum, rank_and_size

__all__ = [
    "TruncatedGaussianPrior",
    "FlowDraws",
    "CalibrationSetting",
    "smoothness_precision",
    "build_setting",
    "method_report",
    "run_avp_calibration",
]

#: Fields that do not change any truth's result: a folder made under other values
#: of these is resumed (n_truths may grow, methods may be added).
_NOT_IN_RESULTS = frozenset({"n_truths", "methods", "label"})


class FlowDraws(CachedDraws):
    """A trained VI posterior's draws with their exact log-density (:class:`CachedDraws`)."""

    def __init__(self, vi: VariationalPosterior) -> None:
        super().__init__(vi.flow, vi.to_model, vi.log_prob)
        self.vi = vi


@dataclass
class CalibrationSetting:
    """What every truth shares: the Sleipner problem (operator, σ, parameterization),
    the posterior's prior, the truth prior and the summaries."""

    config: AVPCalibrationConfig
    problem: AVPProblem
    prior: SmoothnessPrior
    truth_prior: TruncatedGaussianPrior
    summaries: dict[str, Any]
    refine_log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def dtype(self) -> torch.dtype:
        return self.problem.data.dtype

    def simulate(self, truth: torch.Tensor) -> torch.Tensor:
        """``[p, nt]`` noisy plane-wave data of ``truth`` ``[nz]`` (global generator)."""
        with torch.no_grad():
            clean = self.problem.operator(truth.to(self.dtype))
        noise = torch.randn(clean.shape, dtype=torch.float64).to(self.dtype)
        return clean + self.problem.sigma * noise

    def target(self, data: torch.Tensor) -> PosteriorTarget:
        lik = GaussianLikelihood(self.problem.operator, data, sigma=self.problem.sigma)
        return PosteriorTarget(lik, self.prior, self.problem.parameterization)

    def vi(self, data: torch.Tensor) -> FlowDraws:
        """A fresh HINT flow trained by VI on ``data`` (``vi_iterations · batch_size`` grads)."""
        c = self.config
        seed = int(torch.randint(0, 2**31 - 1, ()))  # the flow's weights: the global
        vi = fit_vi(  # generator as seeded for this truth
            self.problem,
            c.vi_iterations,
            target=self.target(data),
            batch_size=c.batch_size,
            lr=c.lr,
            lr_final=c.lr_final,
            seed=seed,
            estimator=c.vi_estimator,
            temper_iterations=c.vi_temper_iterations,
        )
        return FlowDraws(vi)

    def mala(self, data: torch.Tensor) -> torch.Tensor:
        """``[n_samples, nz]`` MALA draws on ``data`` at VI's gradient budget, the
        chains started at the background (the prior's centre)."""
        c = self.config
        s = c.mala_schedule()
        seed = int(torch.randint(0, 2**31 - 1, ()))
        res = MALA(self.target(data), step_size=c.mala_step_size).run(
            s["steps"],
            n_chains=c.mala_chains,
            burn_in=s["burn_in"],
            thin=s["thin"],
            seed=seed,
            progress=False,
        )
        return res.flat()[-c.n_samples :]

    def refined(self, data: torch.Tensor) -> torch.Tensor:
        """``[n_samples, nz]`` draws of VI's flow refined by MALA in its latent
        (:func:`~devito_uq.inference.refine_with_mcmc`), spread evenly over every chain's
        kept steps; the run's diagnostics are appended to ``refine_log``."""
        c = self.config
        vi = self.vi(data).vi
        seed = int(torch.randint(0, 2**31 - 1, ()))
        res = refine_with_mcmc(
            vi, c.refine_steps, n_chains=c.refine_chains, burn_in=c.refine_burn_in, seed=seed
        )
        self.refine_log.append(res.to_dict())
        draws = res.chains.samples  # [steps, chains, nz]
        per_chain = math.ceil(c.n_samples / c.refine_chains)
        steps = torch.linspace(0, draws.shape[0] - 1, per_chain).round().long()
        return draws[steps].reshape(-1, draws.shape[-1])[: c.n_samples]


def build_setting(config: AVPCalibrationConfig) -> CalibrationSetting:
    """The Sleipner problem and the proper prior (see the module docstring)."""
    config.validate()
    problem = build_problem(config.avp_config())
    m_b = problem.m_background
    n = m_b.numel()
    sigma_p = float(problem.prior.sigma)
    prior = SmoothnessPrior(
        sigma_p,
        axes=(0,),
        spacing=SLEIPNER_DZ,
        sigma_norm=config.prior_norm_std,
        reference=m_b.to(problem.data.dtype),
    )
    precision = smoothness_precision(n, SLEIPNER_DZ, sigma_p, config.prior_norm_std)
    truth_prior = TruncatedGaussianPrior(m_b, precision, config.lower)
    edges = np.linspace(0, n, config.n_windows + 1).round().astype(int)
    summaries = {
        f"mean {a * SLEIPNER_DZ:.0f}-{b * SLEIPNER_DZ:.0f} m": window_mean(slice(a, b))
        for a, b in zip(edges[:-1], edges[1:])
    }
    return CalibrationSetting(config, problem, prior, truth_prior, summaries)


def _barrier(comm: Any) -> None:
    if rank_and_size(comm)[1] > 1:
        comm.Barrier()


def _prepare(out: Path, config: AVPCalibrationConfig, resume: bool, comm: Any) -> None:
    """Rank 0 clears (no resume) or checks (resume) the folder; every rank then waits."""
    if rank_and_size(comm)[0] == 0:
        path = out / "calibration_config.json"
        if not resume:
            for sub in ("vi", "mala"):
                shutil.rmtree(out / sub, ignore_errors=True)
        elif path.exists():
            saved = read_input_json(path, "calibration config", CheckpointError)
            now = config.to_dict()
            keys = sorted(
                (set(saved) | set(now) if isinstance(saved, dict) else set()) - _NOT_IN_RESULTS
            )
            check_identity(path, saved, now, keys, hint="; run without --resume to start afresh")
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(config.to_dict(), indent=1))
    _barrier(comm)


def method_report(name: str, result: CalibrationResult) -> dict[str, Any]:
    """``result.report()`` plus the verdict and the costs of one method.

    Parameters
    ----------
    name : str
        The method's name in the verdict line (``"VI"``, ``"MALA"``, ``"amortized"``).
    result : CalibrationResult
        Its calibration over the truths (``metrics`` with ``seconds``, ``z_fraction``,
        ``rms_std`` and ``rmse`` per truth).

    Returns
    -------
    dict
        The report with ``verdict`` (one line: every area with its standard error and
        a label only where the evidence exceeds it at 5 %), ``miscalibrated`` (SBC,
        TARP KS or a significant central area), ``mean_pit_offset``,
        ``expected_z_fraction``, ``std_over_error`` and ``seconds_per_truth``.
    """
    rep = result.report()
    cov, tarp, sbc = result.coverage("central").assess(), result.tarp(), result.sbc()
    atc = tarp.assess()
    bias = float(np.mean(sbc.pit_offset[: result.ranks[0].size]))
    signed = ("under-confident", "over-confident")
    miscalibrated = (not sbc.passed) or cov.label in signed or tarp.ks_pvalue < 0.05
    state = "no coverage bias" if cov.label == "calibrated" else cov.label
    sec = result.metrics["seconds"]
    rep["verdict"] = (
        f"{name}: {'mis-calibrated' if miscalibrated else 'calibrated'}, {state} — "
        f"central-interval coverage area {cov.estimate:+.3f} ± {cov.se:.3f} (p "
        f"{cov.pvalue:.2g}; ±{cov.resolution:g} needs {cov.truths_needed} truths; 90 % "
        f"intervals hold the truth {rep['coverage_central']['at_0.9']:.1%}); TARP ATC "
        f"{atc.estimate:+.3f} ± {atc.se:.3f} ({atc.label}), KS p {tarp.ks_pvalue:.2g}; "
        f"{rep['joint']['label']}; SBC "
        f"{'passes' if sbc.passed else 'fails'} (Holm family p {sbc.family_pvalue:.2g}, "
        f"{len(sbc.failed())} of {len(sbc.names)} quantities rejected); mean PIT − 1/2 "
        f"{bias:+.3f}; |z| > 2 at {np.mean(result.metrics['z_fraction']):.1%} of depths "
        f"(calibrated: {expected_z_fraction(result.n_samples):.1%})"
    )
    rep["miscalibrated"] = bool(miscalibrated)
    rep["mean_pit_offset"] = bias
    rep["expected_z_fraction"] = expected_z_fraction(result.n_samples)
    # Spread-skill ratio: RMS predicted std / RMS error over all truths and depths;
    # √(L/(L + 1)) ≈ 1 for a calibrated posterior (the mean of L draws adds σ²/L).
    met = result.metrics
    rep["std_over_error"] = float(np.sqrt(np.mean(met["rms_std"] ** 2) / np.mean(met["rmse"] ** 2)))
    spent = {"mean": sec.mean(), "median": np.median(sec), "max": sec.max(), "sum": sec.sum()}
    rep["seconds_per_truth"] = {k: float(v) for k, v in spent.items()}
    return rep


def _figures(out: Path, setting: CalibrationSetting, results: dict[str, CalibrationResult]):
    # lazy: matplotlib, only for figures
    from devito_uq.inference.diagnostics.plots import plot_coverage, save_calibration_figures
    from devito_uq.inference.plotting import plt

    curves, labels, tarps, tlabels = [], [], [], []
    for name, res in results.items():
        save_calibration_figures(res, out, prefix=f"calibration_{name}")
        curves.append(res.coverage("central"))
        labels.append(f"{name.upper()} central")
        t = res.tarp()
        tarps.append(t.curve)
        tlabels.append(f"{name.upper()} TARP, ATC {t.atc:+.3f}")
    if "vi" in results:
        curves.append(results["vi"].coverage("hpd"))
        labels.append("VI HPD (log q)")
    n = next(iter(results.values())).n_truths
    for items, names, kind in ((curves, labels, "coverage"), (tarps, tlabels, "tarp")):
        title = f"AVP {'TARP' if kind == 'tarp' else kind}, {n} truths"
        plt.close(plot_coverage(items, names, title=title, path=out / f"calibration_{kind}.png"))
    # A few truths: what the prior looks like next to the Sleipner profile.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(setting.config.seed)
        draws = setting.truth_prior.sample(5)
    p = setting.problem
    z = p.depth.numpy()
    fig, ax = plt.subplots(figsize=(3.6, 5.0))
    for k, d in enumerate(draws):
        label = "prior draws" if k == 0 else None
        ax.plot(1 / np.sqrt(d.numpy()), z, lw=0.8, color="0.6", label=label)
    ax.plot(1 / np.sqrt(p.m_true.numpy()), z, "k", lw=1.2, label="Sleipner")
    ax.plot(1 / np.sqrt(p.m_background.numpy()), z, "C1--", label="background (prior mean)")
    ax.axvline(1 / math.sqrt(setting.config.lower), color="C3", lw=0.8, label="bound")
    ax.invert_yaxis()
    ax.set_xlabel("velocity (km/s)")
    ax.set_ylabel("depth (m)")
    ax.legend(fontsize=7, loc="lower left", framealpha=0.9)
    ax.set_title("truths: draws of the prior", fontsize=9)
    fig.tight_layout()
    with atomic_path(out / "calibration_prior.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _refine_diagnostics(log: list[dict[str, Any]], comm: Any) -> dict[str, Any]:
    """The refinement chains' diagnostics over the truths computed this run (all ranks)."""
    if rank_and_size(comm)[1] > 1:
        log = [d for part in comm.allgather(log) for d in part]
    if not log:
        return {"truths": 0}
    keys = ("acceptance_rate", "step_size", "rhat_max", "ess_min", "ess_median", "seconds")
    out: dict[str, Any] = {"truths": len(log), "converged": sum(d["converged"] for d in log)}
    for key in keys:
        v = np.array([d[key] for d in log], dtype=float)
        out[key] = {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}
    return out


def run_avp_calibration(
    config: AVPCalibrationConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    comm: Any = None,
) -> dict[str, Any]:
    """Calibrate VI and MALA over ``config.n_truths`` prior truths; write ``out``.

    Parameters
    ----------
    config : AVPCalibrationConfig
        The schedule (:meth:`AVPCalibrationConfig.standard`).
    out : str or os.PathLike
        Output folder (created; see the module docstring).
    resume : bool
        Keep the finished truths in ``out`` (made under the same settings, except
        ``n_truths`` and ``methods``) and compute only the others; otherwise start afresh.
    progress : bool
        A bar over each rank's truths.
    figures : bool
        Write the PNG figures (``report.json`` is always written).
    comm : MPI communicator, optional
        Truths dealt over ranks; rank 0 writes the report.

    Returns
    -------
    dict
        The report, also written to ``out/report.json``.

    Raises
    ------
    CheckpointError
        With ``resume``, a folder made under other settings (naming the key).
    """
    config.validate()
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    out = Path(out)
    _prepare(out, config, resume, comm)
    setting = build_setting(config)
    setup_s = time.perf_counter() - t_start
    build = {"vi": setting.vi, "mala": setting.mala, "refined": setting.refined}
    groups = {"both": ("vi", "mala"), "all": ("vi", "mala", "refined")}
    methods = groups.get(config.methods, (config.methods,))
    results: dict[str, CalibrationResult] = {}
    wall: dict[str, float] = {}
    computed = 0
    for name in methods:
        t0 = time.perf_counter()
        results[name] = run_calibration(
            setting.truth_prior,
            setting.simulate,
            build[name],
            config.n_truths,
            config.n_samples,
            summaries=setting.summaries,
            tarp_reference="prior",
            tarp_scale=setting.truth_prior.std,
            seed=config.seed,
            out_dir=out / name,
            comm=comm,
            progress=progress,
            # a truth file from another configuration is refused naming the key
            identity={k: v for k, v in config.to_dict().items() if k not in _NOT_IN_RESULTS},
        )
        wall[name] = time.perf_counter() - t0
        computed += len(results[name].computed)
    rank, size = rank_and_size(comm)
    if size > 1:
        computed = int(allreduce_sum(torch.tensor([computed], dtype=torch.float64), comm)[0])
    s = config.mala_schedule()
    report: dict[str, Any] = {
        "experiment": "Sleipner AVP calibration (SBC, coverage, TARP)",
        "schedule": config.label,
        "setting": {
            "noise_sigma": setting.problem.sigma,
            "prior_sigma_p": setting.prior.sigma,
            "prior_sigma_0": config.prior_norm_std,
            "prior_std_range": [
                float(setting.truth_prior.std.min()),
                float(setting.truth_prior.std.max()),
            ],
            "summaries": list(setting.summaries),
            "likelihood_gradients_per_truth": {
                "vi": config.vi_iterations * config.batch_size,
                "mala": config.mala_chains * (s["burn_in"] + s["steps"] + 1),
                "refined": config.vi_iterations * config.batch_size
                + config.refine_chains * (config.refine_burn_in + config.refine_steps + 1),
            },
            "mala_schedule": {"chains": config.mala_chains, **s},
        },
        **{name: method_report(name.upper(), res) for name, res in results.items()},
    }
    report["verdict"] = {name: report[name]["verdict"] for name in results}
    if "refined" in results:
        report["refined"]["chains"] = _refine_diagnostics(setting.refine_log, comm)
    report["costs"] = {
        "ranks": size,
        "threads_per_rank": torch.get_num_threads(),
        "truths_computed_this_run": computed,
        "wall_time_s": time.perf_counter() - t_start,
        "setup_s": setup_s,
        "wall_time_s_by_method": wall,
        "seconds_per_truth_mean": {n: report[n]["seconds_per_truth"]["mean"] for n in results},
        "load_average_1min": [load_start, os.getloadavg()[0]],
        "note": "seconds per truth are one rank's wall time for one truth (prior draw, "
        "simulation, posterior, statistics), measured as it ran",
    }
    report["config"] = config.to_dict()
    if rank == 0:
        if figures:
            _figures(out, setting, results)
        with atomic_path(out / "report.json") as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1))
    _barrier(comm)
    return report
