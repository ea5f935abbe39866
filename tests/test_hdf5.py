"""HDF5 models without an HDF5 library: JUDI's layout read exactly from files libhdf5 wrote
(``tests/data/make_hdf5_fixtures.py``), and every unsupported or broken file refused by
name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devito_uq.errors import DevitoUQError, SegyError
from devito_uq.io import read_image, read_velocity
from devito_uq.io.hdf5 import is_hdf5, read_hdf5, read_hdf5_model

DATA = Path(__file__).parent / "data"
NX, NZ = 16, 10


def _velocity() -> np.ndarray:
    """The fixture's model, ``[nx, nz]`` km/s."""
    x, z = np.meshgrid(np.arange(NX), np.arange(NZ), indexing="ij")
    return 1.5 + 0.1 * z + 0.01 * x


def test_every_dataset_is_read_exactly_as_stored():
    data = read_hdf5(DATA / "judi_model.h5")
    assert sorted(data) == ["big_endian", "d", "m", "m0", "n", "o", "scalar"]  # not the group
    np.testing.assert_array_equal(data["m"], np.load(DATA / "judi_model_expected.npy"))
    assert data["m"].dtype == np.float32 and data["m"].shape == (NZ, NX)
    np.testing.assert_array_equal(data["big_endian"], np.arange(6.0).reshape(2, 3))
    assert data["scalar"].shape == () and float(data["scalar"]) == 2.5
    assert data["n"].tolist() == [NX, NZ] and data["o"].tolist() == [100.0, 40.0]


def test_a_root_group_of_many_members_is_walked_whole():
    data = read_hdf5(DATA / "many.h5")
    assert sorted(data) == [f"a{i:02d}" for i in range(40)]
    assert all(data[f"a{i:02d}"].tolist() == [i, i, i] for i in range(40))


def test_judi_model_comes_out_nx_by_nz_with_its_grid():
    m, spacing, origin, name = read_hdf5_model(DATA / "judi_model.h5")
    assert name == "m" and spacing == (10.0, 10.0) and origin == (100.0, 40.0)
    np.testing.assert_allclose(m, 1.0 / _velocity() ** 2, rtol=1e-6)
    m0, _, _, name = read_hdf5_model(DATA / "judi_model.h5", ("m0", "m"))
    assert name == "m0" and np.allclose(m0[0], m0[-1])  # the laterally constant background


def test_read_velocity_takes_hdf5_by_its_signature():
    assert is_hdf5(DATA / "judi_model.h5") and not is_hdf5(DATA / "judi_model_expected.npy")
    v, spacing, origin, units = read_velocity(DATA / "judi_model.h5")
    np.testing.assert_allclose(v, _velocity(), rtol=1e-6)
    assert units == "s2/km2 (detected), HDF5 dataset 'm'"
    assert spacing == (10.0, 10.0) and origin == (100.0, 40.0)
    assert read_velocity(DATA / "judi_model.h5", "s2/km2", ("m0",))[3].endswith("'m0'")


def test_simulate_runs_on_a_judi_model(tmp_path):
    from devito_uq.apps.imaging import SimulateConfig
    from devito_uq.apps.imaging.simulate import run_simulate

    config = SimulateConfig(
        model=str(DATA / "judi_model.h5"),
        x_start=100.0,
        width=0.0,
        depth=0.0,
        spacing=10.0,
        smoothing=30.0,
        nshots=2,
        nreceivers=16,
        t1=300.0,
        f0=20.0,
        data_dt=2.0,
        vmax=2.6,
        vmin=1.3,
        nbl=10,
        space_order=4,
        data="born",
    )
    acq = run_simulate(config, tmp_path, progress=False, figures=False)
    assert acq["model_units"] == "s2/km2 (detected), HDF5 dataset 'm'"
    v, _, origin = read_image(tmp_path / "true_model.sgy")
    assert origin == (100.0, 40.0)
    np.testing.assert_allclose(v, _velocity(), rtol=1e-5)


@pytest.mark.parametrize(
    "name,match",
    [
        ("judi_chunked.h5", "compressed or filtered: write it uncompressed"),
        ("judi_latest.h5", "superblock version 3 .* libver='earliest'"),
    ],
)
def test_unsupported_layouts_are_refused_by_name(name, match):
    with pytest.raises(SegyError, match=match):
        read_velocity(DATA / name)


def test_broken_files_are_refused_not_misread(tmp_path):
    raw = (DATA / "judi_model.h5").read_bytes()
    for cut in (64, 800, len(raw) - 200):
        (tmp_path / "cut.h5").write_bytes(raw[:cut])
        with pytest.raises(DevitoUQError, match="cut.h5"):
            read_velocity(tmp_path / "cut.h5")
    (tmp_path / "bad.h5").write_bytes(raw[:8] + bytes([7]) + raw[9:])
    with pytest.raises(SegyError, match="superblock version 7"):
        read_hdf5(tmp_path / "bad.h5")
    with pytest.raises(SegyError, match="no model dataset .*looked for vp.* holds a00"):
        read_hdf5_model(DATA / "many.h5", "vp")


def test_no_cut_or_flipped_byte_escapes_as_anything_but_a_named_error(tmp_path):
    """Every 53rd truncation point and 300 random single-byte corruptions: either the file
    still reads, or the error is a DevitoUQError naming it — never an IndexError, a hang or
    a giant allocation."""
    raw = (DATA / "judi_model.h5").read_bytes()
    rng = np.random.default_rng(0)
    cases = [raw[:cut] for cut in range(0, len(raw), 53)]
    for pos, value in zip(rng.integers(0, len(raw), 300), rng.integers(0, 256, 300)):
        flipped = bytearray(raw)
        flipped[pos] = value
        cases.append(bytes(flipped))
    for i, case in enumerate(cases):
        path = tmp_path / f"case{i}.h5"
        path.write_bytes(case)
        try:
            read_hdf5_model(path)
        except DevitoUQError as exc:
            assert f"case{i}.h5" in str(exc)
