"""Models from the field's own files: m/s, km/s or squared slowness, any depth origin, and
``simulate`` with a window start, source and receiver depths and a recording delay."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_apps_imaging import INV, SIM, H, _true_velocity

from devito_uq.apps.imaging import InvertConfig, SimulateConfig
from devito_uq.apps.imaging.problem import build_problem
from devito_uq.apps.imaging.simulate import run_simulate
from devito_uq.errors import InvalidArgumentError, SegyError
from devito_uq.io import read_image, read_shots, read_velocity, write_image

V = _true_velocity()  # km/s, [16, 10]
FIELD = dict(SIM, x_start=100.0, z_start=520.0, src_depth=545.0, rec_depth=535.0, record_delay=20.0)
AS_STORED = {"km/s": V, "m/s": 1000 * V, "s2/km2": V**-2.0, "s2/m2": 1e-6 * V**-2.0}


@pytest.mark.parametrize("units", sorted(AS_STORED))
def test_each_unit_is_detected_and_converted(tmp_path, units):
    write_image(tmp_path / "m.sgy", AS_STORED[units], (H, H), (0.0, 250.0))
    v, spacing, origin, found = read_velocity(tmp_path / "m.sgy")
    np.testing.assert_allclose(v, V, rtol=1e-5)
    assert found == f"{units} (detected)" and origin == (0.0, 250.0) and spacing == (H, H)
    assert read_velocity(tmp_path / "m.sgy", units)[3] == units  # stated: as stated


def test_units_no_magnitude_explains_are_refused(tmp_path):
    write_image(tmp_path / "m.sgy", 40 * V, (H, H))
    with pytest.raises(SegyError, match="median value 7[0-9.]+ .* state model_units"):
        read_velocity(tmp_path / "m.sgy")
    with pytest.raises(SegyError, match="model_units='ft/s'"):
        read_velocity(tmp_path / "m.sgy", "ft/s")
    with pytest.raises(InvalidArgumentError, match="model_units='ft/s'"):
        InvertConfig(model_units="ft/s").validate()


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """A survey simulated from an m/s model whose depth axis starts at 500 m, the window
    starting at 520 m, sources at 545 m, receivers at 535 m, recording from 20 ms."""
    out = tmp_path_factory.mktemp("field")
    write_image(out / "model.sgy", 1000 * V, (H, H), (100.0, 500.0))
    acq = run_simulate(SimulateConfig(model=str(out / "model.sgy"), **FIELD), out)
    return out, acq


def test_simulate_takes_a_depth_start_depths_and_a_delay(field):
    out, acq = field
    assert acq["model_units"] == "m/s (detected)"
    v, _, origin = read_image(out / "true_model.sgy")
    assert origin == (100.0, 520.0)
    np.testing.assert_allclose(v, V[:, 2:], rtol=1e-5)  # the window starts 2 cells down
    survey, d = read_shots(out / "shots.sgy", f0_hz=SIM["f0"], delay=100.0)
    assert np.allclose(survey.src_positions[:, 1], 545.0)
    assert np.allclose(survey.rec_positions[0][:, 1], 535.0)
    assert survey.data_axis.t0 == 20.0 and d.shape[1] == survey.data_axis.nt
    assert json.loads((out / "acquisition.json").read_text())["record_delay_ms"] == 20.0
    with pytest.raises(InvalidArgumentError, match="z_start=525.0 m is not a depth"):
        run_simulate(
            SimulateConfig(model=str(out / "model.sgy"), **dict(FIELD, z_start=525.0)), out
        )
    with pytest.raises(InvalidArgumentError, match="record_delay=2.5"):
        SimulateConfig(record_delay=2.5).validate()
    with pytest.raises(InvalidArgumentError, match=r"source of shot 0 at \[.*, 400.0\]"):
        run_simulate(SimulateConfig(model=str(out / "model.sgy"), **dict(FIELD, src_depth=400.0)),
                     out / "no")  # fmt: skip


def test_invert_reads_models_in_any_unit_with_their_origin(field):
    out, _ = field
    v0, spacing, origin = read_image(out / "background.sgy")
    write_image(out / "bg_slowness2.sgy", v0**-2.0, spacing, origin)
    cfg = InvertConfig(**dict(INV, background="bg_slowness2.sgy"))
    problem = build_problem(cfg, out)
    assert problem.report["model_units"] == {
        "background": "s2/km2 (detected)",
        "truth": "km/s (detected)",
    }
    assert problem.origin == (100.0, 520.0)
    np.testing.assert_allclose(problem.m0.numpy(), v0.astype(np.float64) ** -2.0, rtol=1e-5)


def test_refusals_name_the_unit_and_never_ask_for_a_run_that_cannot_end(field):
    out, _ = field
    write_image(out / "bg_ms.sgy", 1000 * read_image(out / "background.sgy")[0], (H, H),
                (100.0, 520.0))  # fmt: skip
    stated = InvertConfig(**dict(INV, background="bg_ms.sgy", model_units="km/s"))
    with pytest.raises(InvalidArgumentError, match="look like m/s .* model_units='m/s'") as err:
        build_problem(stated, out)
    assert "vmax >=" not in str(err.value)
    slow = InvertConfig(**dict(INV, vmax=1.9))  # a real bound problem: the bound is named
    with pytest.raises(InvalidArgumentError, match=r"vmax >= 2\.[0-9]+ \(the solver"):
        build_problem(slow, out)
