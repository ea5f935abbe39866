"""End-to-end test of the Sleipner AVP experiment on a tiny schedule, and its CLI."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from devito_uq.avp import AVPConfig, build_problem, load_sleipner, run_avp
from devito_uq.cli import main
from devito_uq.errors import InvalidArgumentError

FIGURES = ("models.png", "std.png", "interval.png", "samples.png", "data_fit.png", "loss.png")


def _tiny(**kw) -> AVPConfig:
    base = dict(
        iterations=6,
        map_iterations=3,
        mala_steps=6,
        mala_burn_in=2,
        mala_thin=1,
        mala_chains=2,
        n_samples=16,
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


def test_end_to_end_writes_outputs(tmp_path):
    out = tmp_path / "run"
    cfg = _tiny()
    summary = run_avp(cfg, out, progress=False)
    for name in FIGURES:
        assert (out / name).stat().st_size > 1000, name
    with open(out / "summary.json") as fh:
        loaded = json.load(fh)
    assert loaded["relative_error"].keys() == {
        "background",
        "map",
        "vi_posterior_mean",
        "mala_posterior_mean",
    }
    for v in loaded["relative_error"].values():
        assert 0 < v < 1
    assert 0 <= loaded["truth_inside_90pct_interval"]["vi"] <= 1
    assert loaded["vi_std_vs_mala_std_mean_relative_difference"] >= 0
    assert loaded["wall_time_s"] > 0
    # Each VI step is one batched forward + adjoint of batch × 7 ray parameters.
    assert loaded["pde_solves"]["by_phase"]["vi"] == cfg.iterations * cfg.batch_size * 7 * 2
    assert loaded["pde_solves"]["total"] == sum(loaded["pde_solves"]["by_phase"].values())
    assert summary["vi"]["iterations_this_run"] == cfg.iterations
    samples = torch.load(out / "posterior_samples.pt")
    assert samples["vi"].shape == (cfg.n_samples, 128)
    # The bound holds in every sample (an untrained flow may sit on it in float32).
    assert bool(torch.all(samples["vi"] >= cfg.lower))


def test_resume_continues_vi(tmp_path):
    out = tmp_path / "run"
    run_avp(_tiny(iterations=4), out, progress=False, figures=False)
    # The checkpoint records the total iteration count; a longer schedule is another run.
    summary = run_avp(_tiny(iterations=4), out, resume=True, progress=False, figures=False)
    assert summary["vi"]["iterations_this_run"] == 0
    assert summary["pde_solves"]["by_phase"]["vi"] == 0  # nothing recomputed on resume


def test_config_errors():
    with pytest.raises(InvalidArgumentError, match=r"iterations=0 must be a positive integer"):
        AVPConfig.short(iterations=0).validate()
    with pytest.raises(InvalidArgumentError, match=r"lr_decay=1.5 must lie in \(0, 1\]"):
        AVPConfig.short(lr_decay=1.5).validate()


def test_cli_avp(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["avp", "--out", str(out), "--iterations", "3", "--mala-steps", "3"]
    argv += ["--mala-burn-in", "1", "--mala-thin", "1", "--mala-chains", "2"]
    argv += ["--no-figures", "--quiet"]
    assert main(argv) == 0
    assert os.path.exists(out / "summary.json")
    assert "relative_error" in capsys.readouterr().out


def test_cli_reports_bad_option(tmp_path, capsys):
    assert main(["avp", "--out", str(tmp_path), "--iterations", "-1", "--quiet"]) == 2
    assert "iterations=-1 must be a positive integer" in capsys.readouterr().err
