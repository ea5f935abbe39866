"""The AVP calibration (devito_uq.apps.avp.calibration) and ``devito-uq calibrate``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from devito_uq.apps.avp import AVPCalibrationConfig
from devito_uq.apps.avp.calibration import (
    TruncatedGaussianPrior,
    run_avp_calibration,
    smoothness_precision,
)
from devito_uq.apps.avp.problem import SLEIPNER_DZ, load_sleipner
from devito_uq.cli import load_config_file, main
from devito_uq.errors import CheckpointError, InvalidArgumentError
from devito_uq.inference import GaussianPrior, SmoothnessPrior

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "avp_calibrate.toml"


def test_precision_is_the_smoothness_prior():
    """The truth prior's Gaussian and the posterior's SmoothnessPrior differ by a constant."""
    _, _, m_b = load_sleipner()
    sp, s0 = 0.0046, 0.05
    gauss = GaussianPrior(m_b, precision=smoothness_precision(128, SLEIPNER_DZ, sp, s0))
    smooth = SmoothnessPrior(sp, axes=(0,), spacing=SLEIPNER_DZ, sigma_norm=s0, reference=m_b)
    m = m_b + 0.02 * torch.randn(6, 128, dtype=torch.float64)
    diff = gauss.negative_log(m) - smooth.negative_log(m)
    assert smooth.negative_log(m).std() > 10.0  # the values do vary between models
    torch.testing.assert_close(diff, torch.zeros_like(diff), atol=1e-9, rtol=0)
    # A wrong spacing or σ would not match.
    wrong = GaussianPrior(m_b, precision=smoothness_precision(128, 1.0, sp, s0))
    assert (wrong.negative_log(m) - smooth.negative_log(m)).abs().max() > 1.0


def test_truncated_prior_moments_and_bound():
    _, _, m_b = load_sleipner()
    prec = smoothness_precision(128, SLEIPNER_DZ, 0.0046, 0.05)
    far = TruncatedGaussianPrior(m_b, prec, lower=0.01)  # the bound never bites
    x = far.sample(3000)
    assert far.accepted == far.drawn
    rel = (x.std(0) / far.std - 1).abs()
    assert rel.max() < 0.1 and rel.mean() < 0.03  # 3000 draws: ~1.3 % std error
    assert ((x.mean(0) - m_b).abs() / far.std).max() < 0.1
    near = TruncatedGaussianPrior(m_b, prec, lower=1 / 9)
    y = near.sample(500)
    assert y.shape == (500, 128) and bool((y > 1 / 9).all())
    assert 0.2 < near.accepted / near.drawn < 0.8  # the bound does bite: ~47 %
    with pytest.raises(InvalidArgumentError, match="too tight"):
        TruncatedGaussianPrior(m_b, prec, lower=0.14).sample(10, max_rounds=3)


def test_mala_gets_the_vi_budget():
    for its, batch, chains, n in ((400, 8, 8, 96), (50, 4, 3, 20), (7, 8, 2, 5)):
        c = AVPCalibrationConfig(vi_iterations=its, batch_size=batch, mala_chains=chains)
        c.n_samples = n
        s = c.mala_schedule()
        total = s["burn_in"] + s["steps"]
        assert chains * (total + 1) <= its * batch < chains * (total + 2)
        assert (s["steps"] // s["thin"]) * chains >= n
    with pytest.raises(InvalidArgumentError, match="n_samples=96"):
        AVPCalibrationConfig(vi_iterations=10).mala_schedule()
    with pytest.raises(InvalidArgumentError, match="methods='both-ish'"):
        AVPCalibrationConfig(methods="both-ish").validate()
    # the refinement's draws are checked only where the refined method runs
    few = dict(refine_chains=2, refine_steps=40, n_samples=96)
    AVPCalibrationConfig(methods="vi", **few).validate()
    for methods in ("refined", "all"):
        with pytest.raises(InvalidArgumentError, match="cannot give n_samples=96 refined"):
            AVPCalibrationConfig(methods=methods, **few).validate()


def test_example_config_is_the_standard_run():
    values = load_config_file(EXAMPLE, AVPCalibrationConfig)
    assert AVPCalibrationConfig.standard(**values) == AVPCalibrationConfig.standard()
    assert values["n_truths"] >= 100


def _tiny_toml(path: Path) -> Path:
    path.write_text(
        "n_truths = 3\nn_samples = 6\nvi_iterations = 6\nbatch_size = 2\nmala_chains = 2\n"
        "flow_steps = 1\nflow_hidden = 8\nflow_leaf = 8\nn_windows = 2\nseed = 5\n"
        "refine_steps = 6\nrefine_chains = 2\nrefine_burn_in = 2\n"
    )
    return path


def test_calibrate_end_to_end_writes_files_and_resumes(tmp_path, capsys):
    """Tiny run through the CLI; then resume: finished truths are loaded, not recomputed."""
    cfg = _tiny_toml(tmp_path / "tiny.toml")
    out = tmp_path / "cal"
    assert main(["calibrate", str(cfg), "--out", str(out), "--quiet", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    shown = json.loads(printed[: printed.rindex("}") + 1])
    assert set(shown) == {"verdict", "costs"} and shown["costs"]["truths_computed_this_run"] == 6
    rep = json.loads((out / "report.json").read_text())
    for name in ("vi", "mala"):
        files = sorted(p.name for p in (out / name).glob("truth_*.npz"))
        assert files == [f"truth_{i:06d}.npz" for i in range(3)]
        assert rep[name]["n_truths"] == 3 and rep[name]["n_samples"] == 6
        assert {"sbc", "coverage_central", "tarp", "verdict", "seconds_per_truth"} <= set(rep[name])
        assert rep[name]["verdict"].startswith(name.upper() + ":")
    assert "coverage_hpd" in rep["vi"] and "coverage_hpd" not in rep["mala"]  # flows only
    grads = rep["setting"]["likelihood_gradients_per_truth"]
    assert grads == {"vi": 12, "mala": 12, "refined": 12 + 2 * (2 + 6 + 1)}
    assert rep["config"]["n_truths"] == 3 and rep["config"]["seed"] == 5
    for png in ("coverage", "tarp", "prior", "vi_ranks", "mala_ranks"):
        assert (out / f"calibration_{png}.png").stat().st_size > 1000
    old = {p: p.stat().st_mtime_ns for p in out.glob("*/truth_*.npz")}
    ranks = np.load(out / "vi" / "truth_000001.npz")["ranks"]

    # Resume with one more truth: only truth 3 is computed, for each method.
    argv = ["calibrate", str(cfg), "--out", str(out), "--quiet", "--no-figures", "--resume"]
    assert main(argv + ["--n-truths", "4"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["costs"]["truths_computed_this_run"] == 2
    assert rep["vi"]["n_truths"] == 4 and rep["mala"]["n_truths"] == 4
    assert all(p.stat().st_mtime_ns == t for p, t in old.items())
    assert (out / "vi" / "truth_000003.npz").exists()
    capsys.readouterr()

    # Resuming under a setting that changes results is refused, naming it.
    assert main(argv + ["--n-truths", "4", "--vi-iterations", "7"]) == 2
    assert "vi_iterations=6" in capsys.readouterr().err

    # Without --resume the folder starts afresh; the same seed gives the same ranks.
    cfg2 = AVPCalibrationConfig.standard(**load_config_file(cfg, AVPCalibrationConfig))
    rep = run_avp_calibration(cfg2, out, progress=False, figures=False)
    assert rep["costs"]["truths_computed_this_run"] == 6
    assert not (out / "vi" / "truth_000003.npz").exists()
    np.testing.assert_array_equal(np.load(out / "vi" / "truth_000001.npz")["ranks"], ranks)


def test_calibrate_refuses_a_folder_of_other_results(tmp_path):
    """run_calibration's own guard: a folder of another L is not mixed in."""
    cfg = AVPCalibrationConfig.standard(
        **load_config_file(_tiny_toml(tmp_path / "t.toml"), AVPCalibrationConfig)
    )
    cfg.methods = "mala"
    out = tmp_path / "cal"
    run_avp_calibration(cfg, out, progress=False, figures=False)
    (out / "calibration_config.json").unlink()  # as if made by an older version
    cfg.n_samples = 4
    with pytest.raises(CheckpointError, match="n_samples"):
        run_avp_calibration(cfg, out, resume=True, progress=False, figures=False)
    assert math.isfinite(json.loads((out / "report.json").read_text())["mala"]["tarp"]["atc"])


def test_flow_draws_carry_their_exact_log_density():
    """FlowDraws.log_prob of its own draws = log q via g⁻¹ (where g⁻¹ exists); others invert."""
    from devito_uq.apps.avp.calibration import FlowDraws
    from devito_uq.flows import HINT, Flow
    from devito_uq.inference import Parameterization, VariationalPosterior

    ref = torch.full((8,), 0.2, dtype=torch.float64)
    g = Parameterization(ref, scale=0.02, lower=0.15)
    flow = Flow(HINT(8, steps=2, hidden=8, leaf_size=4), (8,)).double()
    vi = VariationalPosterior(flow, None, GaussianPrior(ref, covariance=1e-4), g)
    post = FlowDraws(vi)
    m = post.sample(10)
    truth = ref + 0.01
    torch.testing.assert_close(post.log_prob(truth[None]), vi.log_prob(truth[None]).detach())
    direct = torch.cat([post.log_prob(m[:4]), post.log_prob(m[4:])])  # in order, in chunks
    torch.testing.assert_close(direct, vi.log_prob(m).detach(), rtol=1e-9, atol=1e-9)
    # A draw exactly on the bound (float rounding) has a finite density; g⁻¹ would refuse it.
    post._m[0, 0] = 0.15
    post._cursor = 0  # as after a fresh sample()
    assert torch.isfinite(post.log_prob(post._m[:1].clone())).all()
    with pytest.raises(InvalidArgumentError, match="lower bound"):
        vi.log_prob(post._m[:1])


@pytest.mark.mpi
@pytest.mark.timeout(300)
def test_calibrate_under_mpiexec_matches_the_serial_run(tmp_path):
    """2 ranks share the truths; one report (rank 0); ranks equal the serial run's."""
    import os
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "mpiexec"
    if not exe.exists():
        pytest.skip(f"no mpiexec next to {sys.executable} (install the 'mpich' package)")
    cfg = _tiny_toml(tmp_path / "tiny.toml")
    out = tmp_path / "mpi"
    cmd = [str(exe), "-n", "2", sys.executable, "-m", "devito_uq.cli", "calibrate", str(cfg)]
    cmd += ["--out", str(out), "--quiet", "--no-figures", "--threads", "1", "--methods", "all"]
    env = dict(os.environ, OMP_NUM_THREADS="1", DEVITO_LOGGING="ERROR")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("results written to") == 1  # printed by rank 0 only
    rep = json.loads((out / "report.json").read_text())
    assert rep["costs"]["ranks"] == 2 and rep["costs"]["truths_computed_this_run"] == 9
    # the refinement chains' diagnostics of every truth, gathered from both ranks
    assert rep["refined"]["chains"]["truths"] == 3
    serial = AVPCalibrationConfig.standard(**load_config_file(cfg, AVPCalibrationConfig))
    serial.methods = "all"
    run_avp_calibration(serial, tmp_path / "serial", progress=False, figures=False)
    for name in ("vi", "mala", "refined"):
        for i in range(3):
            a = np.load(out / name / f"truth_{i:06d}.npz")
            b = np.load(tmp_path / "serial" / name / f"truth_{i:06d}.npz")
            for key in ("ranks", "summary_ranks", "tarp_rank", "log_prob_rank"):
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {i} {key}")
