"""The AVP study: amortized vs corrected vs per-survey VI vs MALA, shifts, and SBC.

:func:`study` measures, on the setting of :mod:`devito_uq.apps.amortize.avp`:

1. the Sleipner survey: the amortized posterior (one pass of the flow), the same with
   the physics-based latent correction (``correct_iterations`` of reverse KL), a fresh
   per-survey VI fit (``vi_iterations``, as the calibration fits it) and a long MALA
   reference (``mala_steps`` × ``mala_chains`` after a quarter as burn-in, started at the
   MAP): relative error of the mean, truth inside the 90 % band, std against MALA, the
   ELBO (the reverse-KL objective up to the evidence: higher is closer to the
   posterior), the time of 1,000 amortized draws and the cost of each fit in
   iterations, PDE solves and seconds;
2. distribution shift: ``noise_factor``·σ of noise, and ``shift_fraction`` of the ray
   parameters (missing traces zero in the condition; the likelihood models the kept
   ones only): uncorrected vs corrected vs per-survey VI; the half-ray survey also with
   its missing traces filled by the training data's mean (``cond_mean``), the same
   likelihood and VI fit;
3. SBC / coverage / TARP of the amortized posterior over ``n_truths`` prior truths
   (:func:`devito_uq.inference.run_calibration`, HPD ranks from the flow's ``log q``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from devito_uq.apps.avp.calibration import method_report
from devito_uq.apps.avp.problem import fit_vi
from devito_uq.inference import MALA, CachedDraws, map_estimate, run_calibration, summarize
from devito_uq.parallel import rank_and_size

__all__ = ["study", "AmortizedDraws", "posterior_stats", "elbo"]

#: The full per-survey VI schedule of the AVP experiment (AVPConfig.full).
FULL_VI_ITERATIONS = 32768


class AmortizedDraws(CachedDraws):
    """The amortized posterior at one condition, for :func:`run_calibration`: its draws
    keep their ``log q(m | y)`` (:class:`~devito_uq.inference.CachedDraws`); the
    truth goes through ``g⁻¹``."""

    def __init__(self, posterior, condition: torch.Tensor) -> None:
        super().__init__(
            posterior.conditioned(condition),
            posterior.to_model,
            lambda m: posterior.log_prob(m, condition),
        )
        self.posterior, self.condition = posterior, condition


def posterior_stats(
    samples: torch.Tensor, truth: torch.Tensor, reference_std: torch.Tensor | None = None
) -> dict[str, Any]:
    """Relative error of the mean, truth inside the 90 % band (fraction of depths), mean
    std and, with ``reference_std``, the mean relative std difference to it."""
    s = summarize(samples.double())
    t = truth.double()
    lo, hi = s.credible_interval(0.9)
    out = {
        "relative_mean_error": float(torch.linalg.norm(s.mean - t) / torch.linalg.norm(t)),
        "truth_in_90pct_band": float(((t >= lo) & (t <= hi)).double().mean()),
        "mean_std": float(s.std.mean()),
    }
    if reference_std is not None:
        ref = reference_std.double()
        ok = bool((ref > 0).all())  # a chain that never moved has no std: no comparison
        out["std_relative_difference"] = float(((s.std - ref).abs() / ref).mean()) if ok else None
        out["std_ratio"] = float((s.std / ref).mean()) if ok else None
    return out


@torch.no_grad()
def elbo(flow, target, n: int = 256, chunk: int = 8) -> dict[str, float]:
    """Monte-Carlo ELBO ``E_q[−misfit − prior + log|det J_g| − log q_x]`` (nats; the
    log-evidence minus KL(q‖p)) and its standard error, over ``n`` draws of a latent
    ``flow`` (``rsample_and_log_prob``), in chunks of ``chunk`` (one compiled batch)."""
    values = []
    for i in range(0, n, chunk):
        x, log_qx = flow.rsample_and_log_prob(min(chunk, n - i))
        t = target.terms(x)
        values.append((-(t.misfit + t.prior) + t.logdet - log_qx).double())
    v = torch.cat(values)
    return {"elbo": float(v.mean()), "elbo_stderr": float(v.std() / np.sqrt(v.numel()))}


def _time_sampling(posterior, condition: torch.Tensor, n: int = 1000) -> float:
    posterior.sample(8, condition)  # warm-up (allocations, first-call overheads)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        posterior.sample(n, condition)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@contextlib.contextmanager
def _cost(operator, iterations: int, batch_size: int) -> Iterator[dict[str, Any]]:
    """A fit's cost: ``iterations``, ``batch_size``, then the ``pde_solves`` and
    ``seconds`` spent inside the block (filled in when it ends)."""
    cost: dict[str, Any] = {"iterations": iterations, "batch_size": batch_size}
    t0, s0 = time.perf_counter(), operator.n_solves
    yield cost
    cost.update(pde_solves=operator.n_solves - s0, seconds=time.perf_counter() - t0)


def _run_vi(setting, survey, progress: bool, seed: int):
    """A fresh HINT flow fitted by VI to ``survey`` (the calibration's schedule)."""
    c, cal = setting.config, setting.calibration.config
    with _cost(survey.operator, c.vi_iterations, cal.batch_size) as cost:
        vi = fit_vi(
            setting.problem,
            c.vi_iterations,
            target=survey.target,
            batch_size=cal.batch_size,
            lr=cal.lr,
            lr_final=cal.lr_final,
            seed=seed,
            init_seed=seed,
            progress=progress,
        )
    return vi, cost


def _run_correction(setting, posterior, survey, progress: bool, seed: int):
    c = setting.config
    with _cost(survey.operator, c.correct_iterations, c.correct_batch_size) as cost:
        vi = (
            posterior.correct(
                survey.target,
                survey.condition,
                c.correct_iterations,
                batch_size=c.correct_batch_size,
                lr=c.correct_lr,
                seed=seed,
                progress=progress,
            )
            if c.correct_iterations > 0
            else None
        )
    return vi, cost


def _run_mala(setting, survey, progress: bool, seed: int):
    """MAP (L-BFGS from the background), then MALA chains started there."""
    c = setting.config
    op = survey.operator
    t0, s0 = time.perf_counter(), op.n_solves
    target = survey.target
    m_map = map_estimate(
        target, x0=setting.problem.m_background.to(setting.dtype), iterations=60
    ).model
    burn = max(1, c.mala_steps // 4)
    steps = max(1, c.mala_steps)
    thin = max(1, steps * c.mala_chains // (2 * c.n_samples))
    thin = min(thin, steps)
    res = MALA(target, step_size=setting.calibration.config.mala_step_size).run(
        steps,
        n_chains=c.mala_chains,
        x0=m_map,
        burn_in=burn,
        thin=thin,
        seed=seed,
        progress=progress,
    )
    ess = res.effective_sample_size() if res.samples.shape[0] >= 4 else None
    info = {
        "chains": c.mala_chains,
        "steps": steps,
        "burn_in": burn,
        "thin": thin,
        "kept_draws": int(res.flat().shape[0]),
        "acceptance_rate": res.acceptance_rate,
        "min_effective_sample_size": None if ess is None else float(ess.min()),
        "median_effective_sample_size": None if ess is None else float(ess.median()),
        "pde_solves": op.n_solves - s0,
        "seconds": time.perf_counter() - t0,
    }
    return res.flat(), m_map, info


def _compare(
    setting, posterior, survey, progress, seed, reference_std=None, vi_std_ref=False, vi=None
):
    """Amortized, corrected and per-survey VI on one survey: stats, ELBO, costs, draws,
    and the VI fit ``(vi, cost)`` (``vi``: one made for the same target, reused)."""
    c = setting.config
    n = c.n_samples
    amortized = posterior.sample(n, survey.condition)
    corrected, corr_cost = _run_correction(setting, posterior, survey, progress, seed)
    vi, vi_cost = vi if vi is not None else _run_vi(setting, survey, progress, seed + 1)
    draws = {
        "amortized": amortized,
        "corrected": corrected.sample(n) if corrected is not None else amortized,
        "vi": vi.sample(n),
    }
    ref = reference_std
    if ref is None and vi_std_ref:
        ref = summarize(draws["vi"].double()).std
    stats = {k: posterior_stats(v, survey.truth, ref) for k, v in draws.items()}
    flows = {
        "amortized": posterior.conditioned(survey.condition),
        "corrected": corrected.flow if corrected is not None else None,
        "vi": vi.flow,
    }
    for k, f in flows.items():
        if f is not None:
            stats[k].update(elbo(f, survey.target))
    if flows["corrected"] is None:
        stats["corrected"].update({x: stats["amortized"][x] for x in ("elbo", "elbo_stderr")})
    costs = {"correction": corr_cost, "vi": vi_cost}
    return stats, costs, draws, (vi, vi_cost)


def study(setting, posterior, out, progress=True, figures=True, comm=None) -> dict[str, Any]:
    """Run the study (module docstring); write the figures; return the summary dict."""
    c = setting.config
    out = Path(out)
    rank, _ = rank_and_size(comm)
    posterior.eval()
    posterior.to("cpu")
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    times: dict[str, float] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        gen = torch.Generator().manual_seed(c.seed + 1)
        surveys = {
            "sleipner": setting.sleipner(),
            "noise": setting.noisy_survey(c.noise_factor, gen),
            "half_rays": setting.partial_survey(c.shift_fraction),
        }
        sl = surveys["sleipner"]
        t0 = time.perf_counter()
        mala_draws, m_map, mala_info = _run_mala(setting, sl, progress, c.seed)
        times["mala_reference"] = time.perf_counter() - t0
        mala_std = summarize(mala_draws.double()).std
        sample_1000 = _time_sampling(posterior, sl.condition)
        t0 = time.perf_counter()
        stats, costs, draws, _ = _compare(setting, posterior, sl, progress, c.seed, mala_std)
        times["sleipner"] = time.perf_counter() - t0
        stats["mala"] = posterior_stats(mala_draws, sl.truth, mala_std)
        stats["mala"].update(mala_info)
        shift: dict[str, Any] = {}
        shift_draws: dict[str, Any] = {}
        t0 = time.perf_counter()
        # The half-ray survey twice: missing traces zero (the shift as specified), and
        # filled with the training data's mean (what the flow saw most; same likelihood).
        surveys["half_rays_mean_filled"] = setting.partial_survey(
            c.shift_fraction, fill=posterior.cond_mean
        )
        fits: dict[str, Any] = {}
        for name in ("noise", "half_rays", "half_rays_mean_filled"):
            sv = surveys[name]
            st, co, dr, fits[name] = _compare(
                setting,
                posterior,
                sv,
                progress,
                c.seed + 10,
                vi_std_ref=True,
                vi=fits.get("half_rays") if name == "half_rays_mean_filled" else None,
            )
            shift[name] = {
                **st,
                "costs": co,
                "sigma": sv.sigma,
                "std_reference": "per-survey VI",
                "kept_ray_parameters": [float(setting.operator.ray_parameters[i]) for i in sv.kept],
            }
            shift_draws[name] = dr
        times["shift"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    calib = _calibration(setting, posterior, out, progress, comm, figures and rank == 0)
    times["calibration"] = time.perf_counter() - t0

    corr, vi = costs["correction"], costs["vi"]
    summary: dict[str, Any] = {
        "experiment": "Sleipner AVP amortized posterior (conditional HINT on simulated pairs)",
        "schedule": c.label,
        "noise_sigma": setting.sigma,
        "sleipner": stats,
        "sample_1000_seconds": sample_1000,
        "costs": {
            "correction": corr,
            "per_survey_vi": vi,
            "mala_reference": {k: mala_info[k] for k in ("pde_solves", "seconds")},
            "correction_over_per_survey_vi_iterations": corr["iterations"] / vi["iterations"],
            "correction_over_full_vi_iterations": corr["iterations"] / FULL_VI_ITERATIONS,
            "correction_over_per_survey_vi_seconds": corr["seconds"] / max(vi["seconds"], 1e-9),
        },
        "shift": shift,
        "calibration": calib,
    }
    a, k = stats["amortized"], stats["corrected"]

    def within(value, bound):
        return value is not None and value <= bound

    summary["targets"] = {
        "amortized_std_within_30pct_of_mala": within(a["std_relative_difference"], 0.3),
        "amortized_truth_in_90pct_band_at_least_80pct": a["truth_in_90pct_band"] >= 0.8,
        "sample_1000_under_1s": sample_1000 < 1.0,
        "correction_at_most_10pct_of_full_vi": corr["iterations"] <= 0.1 * FULL_VI_ITERATIONS,
        "correction_at_most_10pct_of_per_survey_vi": corr["iterations"] <= 0.1 * vi["iterations"],
        "correction_improves_elbo": k["elbo"] > a["elbo"],
        "corrected_std_within_30pct_of_mala": within(k["std_relative_difference"], 0.3),
    }
    times["study_total"] = time.perf_counter() - t_start
    summary["time_s"] = times
    summary["load_average_1min"] = [load0, os.getloadavg()[0]]
    if figures and rank == 0:
        from devito_uq.apps.amortize.avp_figures import write_figures  # lazy: matplotlib

        write_figures(out, setting, surveys, draws, mala_draws, shift_draws)
    return summary


def _calibration(setting, posterior, out: Path, progress, comm, figures: bool) -> dict[str, Any]:
    """SBC / coverage / TARP of the amortized posterior over ``n_truths`` prior truths."""
    c, cal = setting.config, setting.calibration
    result = run_calibration(
        cal.truth_prior,
        cal.simulate,
        lambda data: AmortizedDraws(posterior, data),
        c.n_truths,
        c.n_samples,
        summaries=cal.summaries,
        tarp_reference="prior",
        tarp_scale=cal.truth_prior.std,
        seed=c.seed,
        out_dir=None,
        comm=comm,
        progress=progress,
    )
    rep = method_report("amortized", result)
    if figures:
        # lazy: matplotlib, only for figures
        from devito_uq.inference.diagnostics.plots import save_calibration_figures

        save_calibration_figures(result, out, prefix="calibration_amortized")
    keep = ("verdict", "miscalibrated", "mean_pit_offset", "std_over_error", "expected_z_fraction")
    cov = result.coverage("central")
    out_rep = {k: rep[k] for k in keep if k in rep}
    out_rep.update(
        {
            "n_truths": result.n_truths,
            "n_samples": result.n_samples,
            "central_coverage_area": float(cov.area),
            "coverage_at_90pct": float(cov.at(0.9)),
            "hpd_coverage_area": float(result.coverage("hpd").area),
            "tarp_atc": float(result.tarp().atc),
            "tarp_ks_pvalue": float(result.tarp().ks_pvalue),
            "sbc_passed": bool(result.sbc().passed),
            "sbc_family_pvalue": float(result.sbc().family_pvalue),
            "seconds_per_truth_mean": rep["seconds_per_truth"]["mean"],
        }
    )
    return out_rep
