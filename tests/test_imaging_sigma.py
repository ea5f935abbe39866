"""``sigma = "auto"``: the noise level estimated from the samples before the first arrivals.

On a simulated survey whose noise σ is known (``acquisition.json``), the estimate that
``devito-uq info`` prints and that ``invert`` uses must lie within 20 % of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_apps_imaging import INV, SIM, H, _true_velocity

from devito_uq.apps.imaging import InfoConfig, InvertConfig, SimulateConfig
from devito_uq.apps.imaging import problem as problem_module
from devito_uq.apps.imaging.noise import pre_arrival_sigma
from devito_uq.apps.imaging.problem import build_problem
from devito_uq.apps.imaging.simulate import run_simulate
from devito_uq.apps.imaging.tools import noise_estimate
from devito_uq.errors import InvalidArgumentError
from devito_uq.io import read_shots, write_image

NT = 176  # samples per trace: 350 ms at 2 ms


@pytest.fixture(scope="module")
def survey(tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("sigma")
    write_image(out / "model.sgy", _true_velocity(), (H, H))
    run_simulate(SimulateConfig(model=str(out / "model.sgy"), **dict(SIM, data="nonlinear")), out)
    return out, json.loads((out / "acquisition.json").read_text())["noise_sigma"]


def test_the_pre_arrival_estimate_is_within_20_percent(survey):
    out, sigma = survey
    est = noise_estimate(InfoConfig(segy=str(out / "shots.sgy"), f0=SIM["f0"], vmax=2.6), 2, NT)
    assert est["samples"] >= 200 and abs(est["sigma"] / sigma - 1) < 0.2, (est, sigma)
    # A window that reaches the arrivals (vmax far too slow) is no noise estimate.
    wrong = noise_estimate(InfoConfig(segy=str(out / "shots.sgy"), f0=SIM["f0"], vmax=0.3), 2, NT)
    assert wrong["sigma"] > 3 * sigma


def test_the_window_ends_at_the_first_possible_arrival(survey):
    """Records that hold energy from the direct wave's peak time on (the Ricker's delay
    1/f0 plus offset/vmax) give σ = 0: no sample of it is in the window; energy from
    20 ms on is (at the far offsets, 150 m / 2.6 km/s = 58 ms)."""
    out, _ = survey
    s, d = read_shots(out / "shots.sgy", f0_hz=SIM["f0"])
    t = s.data_axis.times[:, None]
    arrival = np.zeros_like(d)
    for i in range(s.nshots):
        dist = np.linalg.norm(s.rec_positions[i] - s.src_positions[i], axis=1)
        arrival[i] = t >= 1000.0 / SIM["f0"] + dist[None, :] / 2.6
    est = pre_arrival_sigma(s, arrival, vmax=2.6)
    assert est["sigma"] == 0.0 and est["samples"] > 200
    early = np.broadcast_to(t >= 20.0, d.shape[1:])[None].repeat(s.nshots, 0)
    assert pre_arrival_sigma(s, early.astype(np.float32), vmax=2.6)["sigma"] > 0.1


def test_invert_uses_the_estimate_and_reports_it(survey, monkeypatch):
    out, sigma = survey
    cfg = InvertConfig(**dict(INV, sigma="auto", sigma_inflation=2.0))
    problem = build_problem(cfg, out)
    noise = problem.report["noise"]
    assert noise["sigma_from"] == "estimate" and abs(noise["sigma"] / sigma - 1) < 0.2
    assert problem.sigma == pytest.approx(2.0 * noise["sigma"])  # then inflated
    assert problem.likelihood.local.sigma == problem.sigma
    monkeypatch.setattr(problem_module, "MIN_WINDOW_SAMPLES", 10**9)  # a window too short
    with pytest.raises(InvalidArgumentError, match=r"sigma='auto' found \d+ samples .* give sigma"):
        build_problem(InvertConfig(**dict(INV, sigma="auto")), out)
    with pytest.raises(InvalidArgumentError, match="sigma='loud'"):
        InvertConfig(**dict(INV, sigma="loud")).validate()
    with pytest.raises(InvalidArgumentError, match="sigma_inflation=0.5"):
        InvertConfig(**dict(INV, sigma_inflation=0.5)).validate()


def test_info_prints_the_estimate_and_toml_takes_auto(survey, tmp_path):
    out, sigma = survey
    env = dict(os.environ, OMP_NUM_THREADS="1", DEVITO_LOGGING="ERROR")
    proc = subprocess.run(
        [sys.executable, "-m", "devito_uq.cli", "info", str(out / "shots.sgy"), "--f0", "20",
         "--vmax", "2.6"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "noise sigma" in x)
    assert abs(float(line.split()[2]) / sigma - 1) < 0.2, line
    from devito_uq.cli import load_config_file

    (tmp_path / "c.toml").write_text('sigma = "auto"\nsigma_inflation = "auto"\n')
    values = load_config_file(tmp_path / "c.toml", InvertConfig)
    assert values == {"sigma": "auto", "sigma_inflation": "auto"}
    (tmp_path / "c.toml").write_text("sigma = 0.5\n")
    assert load_config_file(tmp_path / "c.toml", InvertConfig) == {"sigma": 0.5}
