r"""The 2D amortized study (``devito-uq amortize study`` with ``problem = "imaging"``).

:func:`run_study` (``devito-uq amortize study`` with ``problem = "imaging"``) puts the
amortized posterior of the held-out Marmousi section beside per-survey answers:

* ``heldout``: the held-out section's survey, simulated by ``devito-uq simulate``
  (Born data, ``snr_db``) into ``OUT/survey`` and read back from SEG-Y like a user's survey;
  the per-survey VI is ``devito-uq invert`` itself on those files (MAP + Laplace + VI,
  ``vi_iterations``, the correlated Gaussian prior ``prior_std``/``correlation_length``) in
  ``OUT/vi``; ``invert --amortized`` writes the amortized outputs in ``OUT/amortized``;
* ``half_shots`` (``shift_fraction`` of the shots), ``dead_traces`` (``shift_fraction`` of
  each shot's traces kept, the others zeroed at random: dead receivers; its own ``JᵀMJ`` is
  assembled, the solves reported) and ``double_noise`` (``noise_factor`` × σ): the shifted
  surveys, simulated in memory by explicit ``J``/``Jᵀ`` calls. A Gaussian-residual
  posterior (``residual``) is conditioned on each survey's own geometry
  (``set_geometry``); ``amortized_training_geometry`` is what it gives when it is not.

For each survey: the amortized posterior (uncorrected), its latent correction
(:meth:`~devito_uq.inference.AmortizedPosterior.correct`, ``correct_iterations`` of
``correct_batch_size``, against the Born likelihood evaluated through the assembled
``JᵀMJ``
(:class:`~devito_uq.apps.amortize.imaging_posterior.NormalLikelihood`: the same function up to a
constant, no solve; the equivalent solve count is reported) and the correlated Gaussian
prior of the per-survey VI), and the exact posterior under that Gaussian prior (closed form
from ``JᵀMJ``: what per-survey VI converges to). Metrics against the truth: relative L2 and
SSIM of the mean (image δm and velocity), 90 % band coverage, mean std, and the correlation
of each std map with the reference's. For the shifted surveys of a deconvolving posterior
(``deconvolve``) also ``amortized_adapted``/``corrected_adapted``: conditioned on
:func:`adapted_condition`, so that the summary sees the survey's own least-squares image.
Then a calibration (SBC, coverage curve) over ``n_truths`` prior draws with
:func:`devito_uq.inference.run_calibration`.

The amortized posterior is trained under the crop prior (Marmousi-II residuals), the
baselines under a Gaussian prior: they answer different priors by design, so the
comparison measures what the learned prior buys (or costs) against the per-survey answer.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import numpy as np
import torch

from devito_uq.apps.amortize.imaging_posterior import NormalLikelihood
from devito_uq.apps.amortize.imaging_scores import (
    gaussian_posterior,
    gaussian_stats,
    posterior_scores,
    sample_stats,
)
from devito_uq.apps.imaging.config import InvertConfig, SimulateConfig
from devito_uq.apps.imaging.posterior import load_posterior
from devito_uq.apps.imaging.problem import ImagingProblem, build_problem, pde_solves
from devito_uq.apps.imaging.run import run_invert
from devito_uq.apps.imaging.simulate import run_simulate
from devito_uq.errors import DevitoUQWarning
from devito_uq.inference import PosteriorTarget, run_calibration
from devito_uq.parallel import allreduce_sum

__all__ = [
    "run_study",
    "survey_condition",
    "gaussian_posterior",
    "adapted_condition",
    "warn_if_miscalibrated",
]

_SBC_SAMPLES = 99  # draws per truth of the calibration: ranks in 0..99


def survey_condition(problem: ImagingProblem) -> torch.Tensor:
    """The condition of a survey: its migrated scattered data, summed over ranks.

    ``Jᵀ M (d − F(m0))``: one Born and one adjoint solve per shot of this rank.

    Parameters
    ----------
    problem : ImagingProblem
        A born problem (``data`` holds ``d − F(m0)``).

    Returns
    -------
    torch.Tensor
        ``[1, nx, nz]`` float64.
    """
    y = torch.zeros(problem.shape, dtype=torch.float64)
    if problem.survey is not None:
        u = torch.zeros(problem.shape, requires_grad=True)
        d = problem.operator(u)
        mask = torch.from_numpy(problem.survey.mask())[:, None, :].to(d.dtype)
        (g,) = torch.autograd.grad(d, u, grad_outputs=problem.data.to(d.dtype) * mask)
        y = g.double()
    return allreduce_sum(y, problem.comm)[None]


def _draw(sampler, n: int, seed: int) -> tuple[torch.Tensor, float]:
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        s = sampler(n)
        return s.detach().cpu().float(), time.perf_counter() - t0


def adapted_condition(
    setting, y: torch.Tensor, shots: list[int], sigma: float, H: torch.Tensor | None = None
) -> torch.Tensor:
    r"""The migrated image the training survey would give for this survey's least-squares
    image: ``(H + σ_t² C⁻¹) P_s y`` ``[1, nx, nz]``, ``P_s = (H_s/σ² + C⁻¹)⁻¹/σ²`` with
    ``H_s`` over ``shots`` at the survey's ``σ`` and ``H``, ``σ_t`` the training ones.

    A deconvolving posterior maps it back to ``P_s y``: the summary network then sees the
    survey's own least-squares image (free here: shot subsets of the training acquisition
    and other noise levels reuse the assembled ``H_s``)."""
    n = int(np.prod(setting.shape))
    sqrt = setting.gaussian_prior().sqrt()
    eye = torch.eye(n, dtype=torch.float64)
    L = sqrt.matvec(eye.reshape(n, *setting.shape)).reshape(n, n).T
    H_shots = setting.normal_matrices()
    Hs = H_shots[shots].sum(0) if H is None else H
    z = L @ torch.linalg.solve(eye + L.T @ Hs @ L / sigma**2, L.T @ y.reshape(-1).double())
    z = z / sigma**2
    c_inv_z = torch.linalg.solve(L.T, torch.linalg.solve(L, z))
    y2 = H_shots.sum(0) @ z + setting.sigma**2 * c_inv_z
    return y2.reshape(1, *setting.shape)


def _correct(setting, posterior, H, condition, y, sigma, progress: bool):
    """The latent correction of ``q(· | condition)`` against the normal-equations Born
    likelihood of the survey's migrated image ``y`` and the Gaussian prior; returns
    ``(VariationalPosterior, seconds)``."""
    c = setting.config
    target = PosteriorTarget(
        NormalLikelihood(H, y, sigma), setting.gaussian_prior(), posterior.parameterization
    )
    t0 = time.perf_counter()
    vi = posterior.correct(
        target,
        condition.float(),
        c.correct_iterations,
        batch_size=c.correct_batch_size,
        lr=c.correct_lr,
        seed=c.seed,
        progress=progress,
    )
    return vi, time.perf_counter() - t0


def _heldout_survey(setting, out: str, progress: bool, figures: bool) -> dict[str, Any]:
    """Simulate the held-out survey to SEG-Y (``OUT/survey``), run ``devito-uq invert`` on
    it (``OUT/vi``); return the survey's condition, σ, VI statistics and costs."""
    c = setting.config
    folder = os.path.join(out, "survey")
    common = dict(nbl=c.nbl, space_order=c.space_order, vmax=c.vmax, f0=c.f0)
    sim = SimulateConfig(
        x_start=c.x_start, width=c.width, depth=c.depth, spacing=c.spacing,
        smoothing=c.smoothing, nshots=c.nshots, nreceivers=c.nreceivers, t1=c.t1,
        data_dt=c.data_dt, data="born", snr_db=c.snr_db, seed=c.seed + 1, **common,
    )  # fmt: skip
    run_simulate(sim, folder, progress=progress, figures=figures)
    files = {k: os.path.join(os.path.abspath(folder), f"{k}.sgy") for k in ("background",)}
    inv = InvertConfig(
        shots=os.path.join(os.path.abspath(folder), "shots.sgy"),
        background=files["background"],
        truth=os.path.join(os.path.abspath(folder), "true_model.sgy"),
        problem="born", prior_std=c.prior_std, correlation_length=c.correlation_length,
        iterations=c.vi_iterations, n_samples=max(c.n_samples, 2), seed=c.seed,
        checkpoint_every=max(c.vi_iterations, 1), **common,
    )  # fmt: skip
    problem = build_problem(inv, folder)
    s0 = pde_solves()
    y = survey_condition(problem)
    t0, s1 = time.perf_counter(), pde_solves()
    vi_summary = run_invert(inv, os.path.join(out, "vi"), progress=progress, figures=figures)
    vi_seconds, vi_solves = time.perf_counter() - t0, pde_solves() - s1
    post = load_posterior(os.path.join(out, "vi", "posterior.pt"))
    vi_samples = post.sample(max(c.n_samples, 2), c.seed)
    return {
        "condition": y,
        "sigma": problem.sigma,
        "vi_samples": vi_samples,
        "vi": {
            "seconds": vi_seconds,
            "pde_solves": vi_solves,
            "iterations": c.vi_iterations,
            "metrics": vi_summary.get("metrics", {}),
        },
        "migration_solves": s1 - s0,
        "config": inv,
    }


def run_study(setting, posterior, out: str, progress: bool = True, figures: bool = True):
    """The study of the module docstring; returns the summary (``run.py`` writes it)."""
    c = setting.config
    a = setting.acquisition
    truth, m0 = a["dm_true"].double().numpy(), a["m0"].double().numpy()
    posterior = posterior.cpu().eval()
    H_shots = setting.normal_matrices(progress=progress)
    cost = {f"normal_operator_{k}": v for k, v in setting.normal_cost().items()}
    sigma = setting.sigma
    prior = setting.gaussian_prior()
    held = _heldout_survey(setting, out, progress, figures)
    g = torch.Generator().manual_seed(c.seed + 7)
    half = setting.shot_subset(c.shift_fraction)
    every = list(range(c.nshots))
    dead = setting.dead_trace_mask(c.shift_fraction, torch.Generator().manual_seed(c.seed + 11))
    surveys = {  # condition (None: simulated here), σ, shots, trace mask (None: all live)
        "heldout": (held["condition"], held["sigma"], every, None),
        "half_shots": (None, sigma, half, None),
        "dead_traces": (None, sigma, every, dead),
        "double_noise": (None, c.noise_factor * sigma, every, None),
    }
    # A Gaussian-residual posterior is told each survey's own geometry (its JᵀMJ and σ).
    residual = hasattr(posterior, "set_geometry")
    results: dict[str, Any] = {}
    panels: dict[str, dict] = {}
    for name, (y, sig, shots, mask) in surveys.items():
        s0, t0 = pde_solves(), time.perf_counter()
        H = (H_shots if mask is None else setting.normal_matrices(progress, mask))[shots].sum(0)
        geometry = {"pde_solves": pde_solves() - s0, "seconds": time.perf_counter() - t0}
        if y is None:  # explicit J, Jᵀ calls: what a survey of this kind would record
            y = setting.migrate(a["dm_true"][None], g, sigma=sig, shots=shots, mask=mask)[0]
        gauss = gaussian_stats(H, y, sig, prior)
        refs = {"exact_gaussian": gauss["std"]}
        if name == "heldout":
            refs["vi"] = sample_stats(held["vi_samples"])["std"]
        entry: dict[str, Any] = {
            "shots": shots,
            "live_traces": int((a["mask"] if mask is None else mask)[shots].sum()),
            "noise_sigma": sig,
            # assembling this survey's own JᵀMJ (0: a shot subset of the training one)
            "own_normal_operator": geometry,
            "exact_gaussian": posterior_scores(gauss, truth, m0, refs, setting.water),
        }
        panels[name] = {"exact Gaussian": gauss}
        if name == "heldout":
            vi_stats = sample_stats(held["vi_samples"])
            entry["vi"] = {
                **posterior_scores(vi_stats, truth, m0, refs, setting.water),
                **held["vi"],
            }
            panels[name]["per-survey VI"] = vi_stats
        conditions = {"": y}
        if residual and name != "heldout":
            # what the flow gives when not told the survey's geometry (training's kept)
            naive, _ = _draw(lambda n, y=y: posterior.sample(n, y.float()), c.n_samples, c.seed)
            entry["amortized_training_geometry"] = posterior_scores(
                sample_stats(naive), truth, m0, refs, setting.water
            )
            posterior.set_geometry(H, sig)
        elif c.deconvolve and name != "heldout":
            conditions["_adapted"] = adapted_condition(setting, y, shots, sig, H)
        for suffix, cond in conditions.items():
            amortized, sample_s = _draw(
                lambda n, cond=cond: posterior.sample(n, cond.float()), c.n_samples, c.seed
            )
            entry["amortized" + suffix] = {
                **posterior_scores(sample_stats(amortized), truth, m0, refs, setting.water),
                "sample_seconds": sample_s,
            }
            panels[name]["amortized" + suffix] = sample_stats(amortized)
            if c.correct_iterations:
                vi, secs = _correct(setting, posterior, H, cond, y, sig, progress)
                corrected, _ = _draw(vi.sample, c.n_samples, c.seed)
                entry["corrected" + suffix] = {
                    **posterior_scores(sample_stats(corrected), truth, m0, refs, setting.water),
                    "seconds": secs,
                    "iterations": c.correct_iterations,
                    # Born (2) and adjoint (1) per shot and sample, were J used
                    "equivalent_pde_solves": c.correct_iterations
                    * c.correct_batch_size
                    * 3
                    * len(shots),
                }
                panels[name]["corrected" + suffix] = sample_stats(corrected)
        results[name] = entry
        if residual:  # back to the training survey's (the calibration's) geometry
            posterior.set_geometry(H_shots.sum(0), sigma)
    summary: dict[str, Any] = {
        "problem": "imaging",
        "grid": list(setting.shape),
        "nshots": c.nshots,
        "noise_sigma": sigma,
        "surveys": results,
        "cost": {
            **cost,
            "condition": c.condition,
            "explicit_solves_per_pair": 3 * c.nshots,
            "training_set_solves": 2 * c.nshots  # σ: J δm_true
            + (
                cost["normal_operator_pde_solves"]
                if c.condition == "normal"
                else (c.n_train + c.n_validation) * 3 * c.nshots
            ),
            "heldout_migration_solves": held["migration_solves"],
        },
    }
    if c.heldout_draws:
        summary["heldout_draws"] = _noise_draws(setting, posterior, H_shots.sum(0))
    if c.n_truths:
        summary["calibration"] = _calibration(setting, posterior, out, progress)
        warn_if_miscalibrated(summary["calibration"])
    if figures:
        from devito_uq.apps.amortize.imaging_figures import write_figures  # lazy: matplotlib

        summary["figures"] = write_figures(out, setting, panels, summary.get("calibration"))
    return summary


def warn_if_miscalibrated(calibration: dict[str, Any]) -> None:
    """One :class:`DevitoUQWarning` line when the study's calibration report (over truths
    of the training prior) finds the bands over- or under-confident beyond its standard
    error; nothing when calibrated or inconclusive."""
    coverage = calibration["coverage_central"]
    if coverage["verdict"] in ("under-confident", "over-confident"):
        warnings.warn(
            f"the amortized posterior is {coverage['verdict']} on {calibration['n_truths']} "
            f"truths of its own training prior (central coverage area {coverage['text']}); "
            "summary.json 'calibration' has the details",
            DevitoUQWarning,
            stacklevel=3,
        )


_DRAW_METRICS = (
    "image_relative_l2",
    "truth_inside_90pct_band",
    "truth_inside_90pct_band_below_water",
    "std_correlation_with_exact_gaussian",
)


def _noise_draws(setting, posterior, H) -> dict[str, Any]:
    """The held-out truth under ``heldout_draws`` noise draws of the training survey (free
    with the assembled ``JᵀMJ``; 3 solves per shot and draw otherwise): the exact
    Gaussian-prior posterior, the amortized one and its correction scored on each; mean,
    standard error over draws and the values, per metric — one survey's numbers vary
    with its noise by more than the differences they are read for."""
    c, a = setting.config, setting.acquisition
    truth, m0 = a["dm_true"].double().numpy(), a["m0"].double().numpy()
    prior = setting.gaussian_prior()
    rows: dict[str, list[dict]] = {"exact_gaussian": [], "amortized": [], "corrected": []}
    if not c.correct_iterations:
        del rows["corrected"]
    for k in range(c.heldout_draws):
        gen = torch.Generator().manual_seed(c.seed + 1000 + k)
        y = setting.conditions(a["dm_true"][None], gen)[0]
        gauss = gaussian_stats(H, y, setting.sigma, prior)
        refs = {"exact_gaussian": gauss["std"]}
        rows["exact_gaussian"].append(posterior_scores(gauss, truth, m0, refs, setting.water))
        draws, _ = _draw(lambda n, y=y: posterior.sample(n, y.float()), c.n_samples, c.seed + k)
        rows["amortized"].append(
            posterior_scores(sample_stats(draws), truth, m0, refs, setting.water)
        )
        if "corrected" in rows:
            vi, _ = _correct(setting, posterior, H, y, y, setting.sigma, False)
            draws, _ = _draw(vi.sample, c.n_samples, c.seed + k)
            rows["corrected"].append(
                posterior_scores(sample_stats(draws), truth, m0, refs, setting.water)
            )
    out: dict[str, Any] = {"draws": c.heldout_draws}
    for name, scores in rows.items():
        out[name] = {}
        for key in _DRAW_METRICS:
            v = np.array([r[key] for r in scores])
            se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
            out[name][key] = {"mean": float(v.mean()), "se": se, "values": v.tolist()}
    return out


def _calibration(setting, posterior, out: str, progress: bool) -> dict[str, Any]:
    """SBC and coverage over ``n_truths`` crop-prior draws (free per truth with the
    assembled normal operator; 3 solves per shot and truth otherwise)."""
    c = setting.config

    def prior():
        seed = int(torch.randint(0, 2**62, ()))
        return setting.draw_models(1, torch.Generator().manual_seed(seed))[0][0].float()

    def simulate(truth):
        seed = int(torch.randint(0, 2**62, ()))
        return setting.conditions(truth[None], torch.Generator().manual_seed(seed))[0].float()

    class _Fixed:
        def __init__(self, y):
            self.y = y

        def sample(self, n):
            return posterior.sample(n, self.y)

    s0, t0 = pde_solves(), time.perf_counter()
    result = run_calibration(
        prior, simulate, _Fixed, c.n_truths, _SBC_SAMPLES, use_log_prob=False,
        tarp_scale=torch.full(setting.shape, c.prior_std), seed=c.seed,
        out_dir=os.path.join(out, "calibration"), progress=progress,
    )  # fmt: skip
    report = result.report()
    curve = result.coverage("central", levels=np.linspace(0.0, 1.0, 11))
    report["coverage_curve"] = {
        "levels": curve.levels.tolist(),
        "coverage": curve.coverage.tolist(),
    }
    report["seconds"] = time.perf_counter() - t0
    report["pde_solves"] = pde_solves() - s0
    return report
