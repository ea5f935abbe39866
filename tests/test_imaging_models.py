"""Models from the field's own files: m/s, km/s or squared slowness, any depth origin, and
``simulate`` with a window start, source and receiver depths and a recording delay."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_apps_imaging import INV, NX, NZ, SIM, H, _true_velocity

from devito_uq.apps.imaging import InvertConfig, SimulateConfig
from devito_uq.apps.imaging.problem import build_problem
from devito_uq.apps.imaging.run import run_invert
from devito_uq.apps.imaging.simulate import run_simulate
from devito_uq.apps.scenarios import water_mask
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


def test_known_water_is_held_fixed_and_left_out_of_the_metrics(tmp_path):
    """``fixed_water``: the water of the tiny model (its top rows, where the lens does not
    reach) reaches neither the data nor the posterior (std 0, δm 0 there), and the band's
    coverage counts the pixels below it."""
    write_image(tmp_path / "model.sgy", V, (H, H))
    run_simulate(SimulateConfig(model=str(tmp_path / "model.sgy"), **SIM), tmp_path)
    cfg = dict(INV, fixed_water=True, iterations=5, rank=10, map_iterations=5, n_samples=64)
    cfg = InvertConfig(**cfg)
    problem = build_problem(cfg, tmp_path)
    water = problem.water.numpy()
    assert np.array_equal(water, water_mask(read_image(tmp_path / "background.sgy")[0]))
    assert NX * 2 < water.sum() <= NX * 3 and not water[:, 3:].any()  # the lens reaches up
    assert problem.report["water_held_fixed"]["pixels"] == water.sum()
    in_water, below = torch.zeros(2, NX, NZ)
    in_water[water], below[:, 5] = 0.05, 0.05
    with torch.no_grad():
        assert float(problem.operator(in_water[None]).abs().max()) == 0.0
        assert float(problem.operator(below[None]).abs().max()) > 0.0
    summary = run_invert(cfg, tmp_path, progress=False, figures=False)
    std, mean = (read_image(tmp_path / f"posterior_{k}.sgy")[0] for k in ("std", "mean"))
    assert np.all(std[water] == 0) and np.all(mean[water] == 0) and np.all(std[~water] > 0)
    m = summary["metrics"]
    assert m["metrics_over"] == f"{NX * NZ - water.sum()} pixels below the water bottom"
    per_depth = m["truth_inside_90pct_band_per_depth"]
    assert [k for k, c in enumerate(per_depth) if c is None] == [
        k for k in range(NZ) if water[:, k].all()
    ]
    lo, hi = (read_image(tmp_path / f"posterior_q{q}.sgy")[0] for q in ("05", "95"))
    truth = problem.truth.numpy()
    inside = (truth >= lo) & (truth <= hi)
    assert m["truth_inside_90pct_band"] == pytest.approx(inside[~water].mean(), abs=1e-6)
