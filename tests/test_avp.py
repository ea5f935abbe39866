"""The Sleipner AVP application (devito_uq.apps.avp): data, a short run against known
answers, resume from a VI checkpoint, the MAP/MALA cache, configuration errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from devito_uq.apps.avp import AVPConfig, build_problem, load_sleipner, run_avp, train_vi
from devito_uq.errors import CheckpointError, DevitoUQWarning, InvalidArgumentError
from devito_uq.io import load_checkpoint

FIGURES = ("models.png", "std.png", "interval.png", "samples.png", "data_fit.png", "loss.png")
N_P = 7  # ray parameters of the default configuration


def _tiny(**kw) -> AVPConfig:
    base = dict(
        iterations=4,
        map_iterations=3,
        mala_steps=6,
        mala_burn_in=2,
        mala_thin=1,
        mala_chains=2,
        n_samples=16,
        refine_steps=4,
        refine_chains=2,
        refine_burn_in=1,
    )
    base.update(kw)
    return AVPConfig.short(**base)


def test_sleipner_profile_units():
    depth, m_true, m_bg = load_sleipner()
    assert depth.shape == m_true.shape == m_bg.shape == (128,)
    assert depth[1] - depth[0] == pytest.approx(3.048)
    # s²/km²: the profile spans 2.0 … 2.7 km/s.
    v = 1 / torch.sqrt(m_true)
    assert float(v.min()) == pytest.approx(2.0, abs=1e-6)
    assert float(v.max()) == pytest.approx(2.7, abs=1e-6)


def test_problem_noise_level_is_0db_of_scattered_data():
    problem = build_problem(AVPConfig.short())
    scattered = problem.data_clean - problem.operator(problem.m_background.float())
    noise = problem.data - problem.data_clean
    snr = 10 * math.log10(float(scattered.pow(2).mean()) / float(noise.pow(2).mean()))
    assert abs(snr) < 0.2  # 0 dB up to the randomness of 5607 noise samples
    # p = sin θ / v_min of the true model: the largest is sin 32° / 2.0 km/s.
    assert problem.ray_parameters.max() == pytest.approx(math.sin(math.radians(32)) / 2.0)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """200 VI iterations, a 30-step MALA of 4 chains: enough to beat the background.

    (The default one-coupling-per-step flow is at 0.74–0.85× the background's error
    after 100 iterations, 0.41–0.44× after 200; seeds 1 and 2.)"""
    out = tmp_path_factory.mktemp("avp")
    cfg = AVPConfig.short(
        iterations=200,
        map_iterations=10,
        mala_chains=4,
        mala_steps=20,
        mala_burn_in=10,
        mala_thin=1,
        n_samples=256,
        refine_steps=20,
        refine_chains=4,
        refine_burn_in=10,
    )
    with pytest.warns(DevitoUQWarning, match="refinement chains have not converged"):
        summary = run_avp(cfg, out, progress=False)  # 20 steps: R̂ says so
    return cfg, out, summary


def test_short_run_beats_the_background(short_run):
    """Every estimate is closer to the truth than the starting (background) model."""
    _, out, summary = short_run
    err = json.loads((out / "summary.json").read_text())["relative_error"]
    assert err == summary["relative_error"]
    for method in ("map", "vi_posterior_mean", "mala_posterior_mean"):
        assert err[method] < 0.7 * err["background"], method


def test_short_run_coverage_and_samples(short_run):
    """The summary's coverage is the fraction of depths inside the samples' 5–95 % range,
    recomputed here from posterior_samples.pt; every sample respects the lower bound."""
    cfg, out, summary = short_run
    samples = load_checkpoint(out / "posterior_samples.pt")
    assert samples["vi"].shape == (cfg.n_samples, 128)
    assert samples["mala"].shape == (cfg.mala_chains * cfg.mala_steps, 128)
    _, m_true, _ = load_sleipner()
    for method in ("vi", "mala"):
        s = samples[method].double()
        lo, hi = torch.quantile(s, 0.05, dim=0), torch.quantile(s, 0.95, dim=0)
        inside = ((m_true >= lo) & (m_true <= hi)).double().mean().item()
        assert summary["truth_inside_90pct_interval"][method] == pytest.approx(inside)
    assert bool(torch.all(samples["vi"] >= cfg.lower))
    refined = summary["refined"]
    assert samples["refined"].shape == (cfg.refine_chains * cfg.refine_steps, 128)
    assert refined["draws"] == cfg.refine_chains * cfg.refine_steps
    s = samples["refined"].double()
    lo, hi = torch.quantile(s, 0.05, dim=0), torch.quantile(s, 0.95, dim=0)
    inside = ((m_true >= lo) & (m_true <= hi)).double().mean().item()
    assert refined["truth_inside_90pct_interval"] == pytest.approx(inside)
    assert refined["sampler"] == "MALA in the flow latent" and not refined["converged"]
    assert 0.0 < refined["acceptance_rate"] <= 1.0 and refined["rhat_max"] > 1.05
    for name in FIGURES:
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name


def test_short_run_counts_every_pde_solve(short_run):
    """Known solve counts: setup = d(m_true) + d(m_background); each VI step one batched
    forward + adjoint; MALA one value-and-gradient per chain per step plus the start;
    L-BFGS forward + adjoint per evaluation plus one final forward."""
    cfg, _, summary = short_run
    by_phase = summary["pde_solves"]["by_phase"]
    assert by_phase["setup"] == 2 * N_P
    assert by_phase["vi"] == cfg.iterations * cfg.batch_size * N_P * 2
    steps = cfg.mala_burn_in + cfg.mala_steps + 1
    assert by_phase["mala"] == cfg.mala_chains * steps * N_P * 2
    assert (by_phase["map"] - N_P) % (2 * N_P) == 0 and by_phase["map"] > 2 * N_P
    refine = cfg.refine_chains * (cfg.refine_burn_in + cfg.refine_steps + 1)
    assert by_phase["refine"] == refine * N_P * 2  # MALA in the flow latent
    # The phases ran inside the wall-clock interval.
    assert summary["wall_time_s"] >= sum(summary["time_s"].values())


def test_resume_continues_from_the_checkpoint(tmp_path):
    """A run interrupted after the checkpoint at iteration 2 resumes there and ends
    bit-identical to an uninterrupted run; resuming a finished run recomputes nothing."""
    cfg = _tiny(checkpoint_every=2)
    reference = run_avp(cfg, tmp_path / "ref", progress=False, figures=False)

    out = tmp_path / "run"
    out.mkdir()

    def interrupt(iteration, terms):
        if iteration == 3:  # after the checkpoint at 2, before the one at 4
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_vi(build_problem(cfg), cfg, out / "vi_checkpoint.pt", False, callback=interrupt)
    resumed = run_avp(cfg, out, resume=True, progress=False, figures=False)
    assert resumed["vi"]["resumed_from"] == 2
    assert resumed["vi"]["iterations_this_run"] == 2
    assert resumed["pde_solves"]["by_phase"]["vi"] == 2 * cfg.batch_size * N_P * 2
    assert resumed["vi"]["final_loss"] == reference["vi"]["final_loss"]
    a = load_checkpoint(tmp_path / "ref" / "posterior_samples.pt")
    b = load_checkpoint(out / "posterior_samples.pt")
    assert torch.equal(a["vi"], b["vi"]) and torch.equal(a["mala"], b["mala"])

    again = run_avp(cfg, out, resume=True, progress=False, figures=False)
    assert again["vi"]["resumed_from"] == cfg.iterations
    assert again["pde_solves"]["by_phase"]["vi"] == 0
    # MAP and MALA come from the cache: their recorded solves are the first run's.
    assert again["pde_solves"]["by_phase"]["mala"] == resumed["pde_solves"]["by_phase"]["mala"]


def test_cache_refused_for_another_configuration(tmp_path):
    run_avp(_tiny(), tmp_path, progress=False, figures=False)
    with pytest.raises(CheckpointError, match=r"map_mala\.pt.*mala_steps=6.*mala_steps=7"):
        run_avp(_tiny(mala_steps=7), tmp_path, resume=True, progress=False, figures=False)
    with pytest.raises(CheckpointError, match=r"map_mala\.pt.*snr_db=0.0.*snr_db=3.0"):
        run_avp(_tiny(snr_db=3.0), tmp_path, resume=True, progress=False, figures=False)
    # A VI-side field (how many samples to draw) leaves the MAP/MALA cache valid.
    summary = run_avp(_tiny(n_samples=8), tmp_path, resume=True, progress=False, figures=False)
    assert summary["config"]["n_samples"] == 8
    assert summary["pde_solves"]["by_phase"]["vi"] == 0


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("iterations", 0, r"iterations=0 must be an integer >= 1"),
        ("batch_size", 2.5, r"batch_size=2.5 must be an integer"),
        ("mala_chains", True, r"mala_chains=True must be an integer"),
        ("lr_decay", 1.5, r"lr_decay=1.5 must lie in \(0, 1\]"),
        ("lr", float("nan"), r"lr=nan must be finite and positive"),
        ("dtype", "float16", r"dtype='float16' must be one of"),
        ("corners", (5.0, 30.0, 50.0), r"corners=.* must have 4 entries"),
        ("angle_max", 95.0, r"angle_max=95.0 must lie in \(0, 90\)"),
        ("mala_thin", 50, r"mala_thin=50 must not exceed mala_steps=20"),
        ("n_samples", 1, r"n_samples=1 must be an integer >= 2"),
        ("temper_fraction", 1.5, r"temper_fraction=1.5 must lie in \[0, 1\]"),
        ("refine_chains", 1, r"refine_chains=1 must be an integer >= 2"),
        ("refine_steps", 3, r"refine_steps=3 must be an integer >= 4"),
        ("refine_burn_in", -1, r"refine_burn_in=-1 must be"),
        ("refine_steps", 10**12, r"8000000000000 refined draws .* needs .* available"),
    ],
)
def test_config_errors(field, value, message):
    cfg = AVPConfig.short(mala_steps=20, **{field: value})
    with pytest.raises(InvalidArgumentError, match=message):
        cfg.validate()
    with pytest.raises(InvalidArgumentError, match=message):
        run_avp(cfg, "/nonexistent/never-created")  # refused before any file or solve


def test_demo_schedule_tempers_three_quarters_of_vi(tmp_path):
    """``make demo``'s VI raises the target's weight from 0.1 to 1 over the first 3/4 of
    its iterations (docs/results/calibration.md: 2 points more of the 90 % bands hold the
    truth at no cost); the full schedule does not temper."""
    assert AVPConfig.full().temper_fraction == 0.0
    cfg = _tiny(iterations=8)
    assert cfg.temper_fraction == 0.75
    vi = train_vi(build_problem(cfg), cfg, tmp_path / "vi.pt", progress=False)
    beta = vi.history["beta"]
    assert beta[0] == pytest.approx(0.1) and beta[5] < 1.0 and beta[6:] == [1.0, 1.0]
