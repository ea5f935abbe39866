"""The Born posterior on nonlinear data (what field data are): flagged, or calibrated.

On the tiny survey of ``test_apps_imaging.py`` with the wave equation's data the Born 90 %
band held the truth at 49 % with no warning; Born data of the same model give 97.5 %. The
noise model's check at the MAP (:mod:`devito_uq.apps.imaging.noise`) must tell the two
apart, say so in one line and in ``summary.json``, and its remedy (``sigma_inflation =
"auto"``) must widen the band. ``velocity_mean.sgy`` never holds a velocity outside
``[vmin, vmax]``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_apps_imaging import INV, SIM, H, _true_velocity

from devito_uq.apps.imaging import InvertConfig, SimulateConfig
from devito_uq.apps.imaging.noise import model_check_line
from devito_uq.apps.imaging.outputs import bounded_velocity, write_outputs
from devito_uq.apps.imaging.run import run_invert
from devito_uq.apps.imaging.simulate import run_simulate
from devito_uq.errors import DevitoUQWarning
from devito_uq.io import read_image, write_image

RUN = dict(INV, iterations=30, n_samples=400)
FILES = ("shots.sgy", "acquisition.json", "background.sgy", "true_model.sgy")


def _survey(root: Path, data: str) -> Path:
    out = root / data
    out.mkdir()
    write_image(out / "model.sgy", _true_velocity(), (H, H))
    run_simulate(SimulateConfig(model=str(out / "model.sgy"), **dict(SIM, data=data)), out)
    return out


def _invert(survey: Path, name: str, **overrides) -> tuple[dict, list[str]]:
    out = survey / name
    out.mkdir()
    for f in FILES:
        os.symlink(survey / f, out / f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_invert(InvertConfig(**dict(RUN, **overrides)), out, False, False, False)
    return summary, [str(w.message) for w in caught if issubclass(w.category, DevitoUQWarning)]


@pytest.fixture(scope="module")
def nonlinear(tmp_path_factory) -> Path:
    return _survey(tmp_path_factory.mktemp("nonlinear"), "nonlinear")


@pytest.fixture(scope="module")
def plain(nonlinear) -> tuple[dict, list[str]]:
    return _invert(nonlinear, "plain")


def test_born_on_nonlinear_data_is_flagged_or_calibrated(plain, tmp_path):
    summary, lines = plain
    check = summary["model_check"]
    coverage = summary["metrics"]["truth_inside_90pct_band"]
    assert coverage >= 0.8 or check["verdict"] == "fails", (coverage, check)
    # Here it is over-confident, and flagged before VI with the remedy, in one line.
    assert coverage < 0.8 and check["verdict"] == "fails"
    assert check["excess"] > 0.1 and check["linearization"] > 0.1
    said = [line for line in lines if "chi2/n" in line]
    assert len(said) == 1 and "\n" not in said[0] and "sigma_inflation='auto'" in said[0]
    assert "problem='fwi'" in check["remedy"]
    # The same survey with Born data: the check holds, nothing is said.
    born, lines = _invert(_survey(tmp_path, "born"), "plain")
    assert born["model_check"]["verdict"] == "holds" and not any("chi2/n" in x for x in lines)
    assert abs(born["model_check"]["excess"]) < 3 * born["model_check"]["spread"] + 0.05


def test_sigma_inflation_auto_widens_the_band(nonlinear, plain):
    plain = plain[0]
    auto, lines = _invert(nonlinear, "auto", sigma_inflation="auto")
    check = auto["model_check"]
    assert check["verdict"] == "fails" and check["inflation"] > 1.5
    assert check["after_inflation"]["verdict"] == "holds"
    sigma0 = plain["problem"]["noise_sigma"]
    assert auto["problem"]["noise_sigma"] == pytest.approx(sigma0 * check["inflation"])
    before = plain["metrics"]["truth_inside_90pct_band"]
    after = auto["metrics"]["truth_inside_90pct_band"]
    assert after > before + 0.15, (before, after)
    assert any("inflated" in line for line in lines)
    v = read_image(nonlinear / "auto" / "velocity_mean.sgy")[0]
    assert v.min() >= INV["vmin"] - 1e-6 and v.max() <= INV["vmax"] + 1e-6


class _Fixed:
    """A posterior whose every sample is one image (what write_outputs reads)."""

    kind, truth, spacing, origin = "born", None, (H, H), (0.0, 0.0)

    def __init__(self, m0: torch.Tensor, dm: torch.Tensor) -> None:
        self.m0, self.dm = m0, dm
        self.illumination = torch.ones_like(m0, dtype=torch.float64)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        return self.dm + 1e-4 * torch.randn(n, *self.dm.shape, generator=torch.Generator())

    def to_output_unit(self, u: torch.Tensor) -> torch.Tensor:
        return u


def test_velocity_mean_is_clipped_to_the_bounds_and_counted(tmp_path):
    m0 = torch.full((NX := 8, 4), 1 / 2.0**2)
    dm = torch.zeros(NX, 4)
    dm[0, 0] = -1.0  # m0 + dm < 0: 1000 km/s before
    dm[1, 0] = 1.0  # slower than vmin
    with pytest.warns(DevitoUQWarning, match=r"2 of 32 pixels \(6.2 %\).*1 non-positive"):
        summary = write_outputs(str(tmp_path), _Fixed(m0, dm), 16, figures=False,
                                velocity_bounds=(1.3, 4.8))  # fmt: skip
    v = read_image(tmp_path / "velocity_mean.sgy")[0]
    assert v[0, 0] == pytest.approx(4.8, rel=1e-4) and v[1, 0] == pytest.approx(1.3, rel=1e-4)
    assert np.allclose(v[2:], 2.0, rtol=1e-3)
    clipped = summary["velocity_mean_clipped"]
    assert clipped["pixels"] == 2 and clipped["non_positive"] == 1
    assert clipped["fraction"] == pytest.approx(2 / 32)
    v, report = bounded_velocity(m0 + dm, None)  # no bounds: still never above 100 km/s
    assert v.max() <= 100.0 and report["pixels"] == 1


def test_the_check_line_names_numbers_and_remedy():
    check = dict(chi2_per_datum=1.3, expected=0.98, spread=0.02, verdict="fails",
                 remedy="sigma_inflation='auto' (sigma x 2.7); or problem='fwi'",
                 linearization=0.25, linearization_over_noise=6.5, inflation=2.7)  # fmt: skip
    line = model_check_line(check)
    assert "chi2/n = 1.3" in line and "0.98" in line and "0.25" in line
    assert line.endswith("or problem='fwi'") and "\n" not in line
    assert model_check_line(dict(check, verdict="holds")) is None
    line = model_check_line(dict(check, after_inflation={"verdict": "holds"}))
    assert "inflated x2.7" in line
