"""Tests of devito_uq.io.segy: round trips, header conventions and error handling."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import segyio
import torch
from segyio import BinField, TraceField

from devito_uq.errors import InvalidShapeError, SegyError, SegyHeaderWarning
from devito_uq.io import read_image, read_shots, write_image, write_shots
from devito_uq.io import segy_write as segy_write_module
from devito_uq.io.segy_image import check_image, image_quantity
from devito_uq.physics import Survey, ricker


def moving_spread(nshots=3, nrec=11, dt=1.5, t0=0.0) -> Survey:
    """2D survey whose receivers move with the shot; coordinates on a 0.25 m grid."""
    src = np.stack([12.25 + 100.0 * np.arange(nshots), np.full(nshots, 20.0)], 1)
    recs = [
        np.stack([np.linspace(0.0, 100.0, nrec) + 37.25 * i, np.full(nrec, 7.5)], 1)
        for i in range(nshots)
    ]
    return Survey(src, recs, t1=t0 + 300.0, dt=dt, t0=t0, f0_hz=10.0)


def random_data(survey: Survey, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((survey.nshots, survey.nt, survey.nreceivers[0]))


def same_geometry(a: Survey, b: Survey) -> None:
    np.testing.assert_allclose(a.src_positions, b.src_positions, rtol=0, atol=1e-9)
    assert len(a.rec_positions) == len(b.rec_positions)
    for ra, rb in zip(a.rec_positions, b.rec_positions):
        np.testing.assert_allclose(ra, rb, rtol=0, atol=1e-9)
    assert (a.nt, a.dt, a.t0) == (b.nt, b.dt, b.t0)
    assert a.t1 == pytest.approx(b.t1, rel=1e-12)


# -------------------------------------------------------------------- round trips
def test_shots_round_trip_2d(tmp_path):
    survey = moving_spread(dt=1.5, t0=4.0)
    data = random_data(survey)
    path = write_shots(tmp_path / "shots.sgy", survey, torch.from_numpy(data))
    back, d = read_shots(path, f0_hz=10.0)
    same_geometry(back, survey)
    assert d.dtype == np.float32 and d.shape == data.shape
    np.testing.assert_array_equal(d, data.astype(np.float32))
    np.testing.assert_allclose(back.wavelet[0], ricker(back.time, 10.0))
    # The headers follow the documented convention.
    with segyio.open(path, ignore_geometry=True) as f:
        h = f.header[12]  # shot 1, receiver 1
        assert f.bin[BinField.Interval] == 1500 and h[TraceField.TRACE_SAMPLE_INTERVAL] == 1500
        assert h[TraceField.FieldRecord] == 2 and h[TraceField.TraceNumber] == 2
        assert h[TraceField.SourceGroupScalar] == -100 and h[TraceField.SourceX] == 11225
        assert h[TraceField.GroupX] == round(100 * (10.0 + 37.25))
        assert h[TraceField.ElevationScalar] == -10
        assert h[TraceField.SourceDepth] == 200 and h[TraceField.ReceiverGroupElevation] == -75
        assert h[TraceField.DelayRecordingTime] == 4


def test_read_groups_receiver_sorted_file(written, tmp_path):
    """A file sorted by receiver (shots interleaved) still reads as [shot, time, receiver]."""
    path, survey, data = written
    nshots, nrec = survey.nshots, survey.nreceivers[0]
    order = [s * nrec + r for r in range(nrec) for s in range(nshots)]
    resorted = tmp_path / "by_receiver.sgy"
    with segyio.open(path, ignore_geometry=True) as src:
        spec = segyio.tools.metadata(src)
        with segyio.create(resorted, spec) as dst:
            dst.bin = src.bin
            for k, i in enumerate(order):
                dst.header[k] = src.header[i]
                dst.trace[k] = src.trace[i]
    back, d = read_shots(resorted, f0_hz=10.0)
    same_geometry(back, survey)
    np.testing.assert_array_equal(d, data.astype(np.float32))


def test_shots_round_trip_3d_field_record(tmp_path):
    src = np.array([[10.0, 5.0, 20.0], [10.0, 5.0, 20.0], [30.0, 15.0, 20.0]])  # 2 at one spot
    rec = np.stack([np.arange(4) * 10.0, np.arange(4) * 2.5, np.full(4, 10.0)], 1)
    wavelet = np.sin(np.linspace(0, 3, 101))
    survey = Survey(src, rec, t1=100.0, dt=1.0, wavelet=wavelet)
    data = random_data(survey, seed=1)
    path = write_shots(tmp_path / "shots3d.segy", survey, data)
    back, d = read_shots(path, wavelet=wavelet, dim=3, group_by="field_record")
    same_geometry(back, survey)
    np.testing.assert_array_equal(d, data.astype(np.float32))
    np.testing.assert_array_equal(back.wavelet[2], wavelet)
    # Grouping by source position merges the two shots fired at one spot (documented):
    # shots of 8 and 4 receivers, zero-padded, the padding masked out.
    merged, dm = read_shots(path, wavelet=wavelet[None].repeat(2, 0), dim=3)
    assert dm.shape == (2, survey.nt, 8) and merged.nreceivers == [8, 4]
    np.testing.assert_array_equal(merged.mask(), [[True] * 8, [True] * 4 + [False] * 4])
    assert not dm[1, :, 4:].any()


def test_write_replaces_atomically(tmp_path):
    survey = moving_spread()
    path = tmp_path / "shots.sgy"
    write_shots(path, survey, random_data(survey, 0))
    data1 = random_data(survey, 1)
    write_shots(path, survey, data1)  # overwrite
    np.testing.assert_array_equal(read_shots(path, f0_hz=10.0)[1], data1.astype(np.float32))
    assert sorted(os.listdir(tmp_path)) == ["shots.sgy"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_image_round_trip(tmp_path):
    img = np.random.default_rng(2).standard_normal((7, 9)).astype(np.float32)
    path = write_image(tmp_path / "img.sgy", torch.from_numpy(img), (12.5, 5.0), (100.0, 20.0))
    back, spacing, origin = read_image(path)
    np.testing.assert_array_equal(back, img)
    assert spacing == (12.5, 5.0) and origin == (100.0, 20.0)
    with segyio.open(path, ignore_geometry=True) as f:
        assert f.bin[BinField.Interval] == 5000  # dz in mm, in the µs field
        assert f.header[2][TraceField.CDP] == 3 and f.header[2][TraceField.CDP_X] == 1250


@pytest.mark.parametrize("dz", [10.0, 30.0, 50.0, 12.5, 100.0 / 3.0, 0.0125])
@pytest.mark.parametrize("dx", [10.0, 30.0, 50.0, 12.5])
def test_image_round_trip_at_any_spacing(tmp_path, dx, dz):
    """Any depth spacing (the rev 2 double interval; the 16-bit field stops at 32.767 m), a
    fractional depth origin, the quantity in the text header; a Fortran-ordered image is
    written without segyio's contiguous-array warning."""
    img = np.asfortranarray(np.random.default_rng(3).standard_normal((5, 7)))
    path = tmp_path / "img.sgy"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_image(path, img, (dx, dz), (-2.5, 12.25), quantity="velocity, km/s")
    back, spacing, origin = read_image(path)
    np.testing.assert_array_equal(back, img.astype(np.float32))
    assert spacing == (dx, dz) and origin == (-2.5, 12.25)
    assert image_quantity(path) == "velocity, km/s"
    with segyio.open(path, ignore_geometry=True) as f:
        whole = dz * 1000 <= 32767 and dz * 1000 == round(dz * 1000)
        assert f.bin[BinField.Interval] == (round(dz * 1000) if whole else 0)
        assert f.header[0][TraceField.ScalarTraceHeader] == -100  # 12.25 m = 1225 / 100
        assert "dz = " + repr(dz) in bytes(f.text[0]).decode()


def test_io_import_is_lazy():
    code = (
        "import sys, devito_uq.io.checkpoint, devito_uq.io as io; "
        "print(sorted(m for m in ('devito', 'segyio') if m in sys.modules), "
        "'read_shots' in dir(io))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[] True"


# ------------------------------------------------------------------------ errors
@pytest.fixture
def written(tmp_path):
    survey = moving_spread()
    data = random_data(survey)
    return write_shots(tmp_path / "shots.sgy", survey, data), survey, data


def test_missing_file(tmp_path):
    with pytest.raises(SegyError, match="nope.sgy' does not exist"):
        read_shots(tmp_path / "nope.sgy", f0_hz=10.0)


def test_path_that_is_not_a_file(tmp_path):
    """A folder, a FIFO or a device is named for what it is (a FIFO would block a read)."""
    with pytest.raises(SegyError, match="is a folder, not a file"):
        read_shots(tmp_path, f0_hz=10.0)
    fifo = tmp_path / "pipe.sgy"
    os.mkfifo(fifo)
    with pytest.raises(SegyError, match="pipe.sgy' is a FIFO, not a regular file"):
        read_shots(fifo, f0_hz=10.0)
    with pytest.raises(SegyError, match="'/dev/null' is a device or special file"):
        read_image("/dev/null")


def test_truncated_file(written):
    path = written[0]
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])  # cut inside the last trace
    with pytest.raises(SegyError, match="shots.sgy' is not a readable SEG-Y file"):
        read_shots(path, f0_hz=10.0)


def test_not_segy(tmp_path):
    path = tmp_path / "junk.sgy"
    path.write_bytes(b"hello" * 100)
    with pytest.raises(SegyError, match="junk.sgy' is not a readable SEG-Y"):
        read_shots(path, f0_hz=10.0)


def test_zero_sample_interval(written):
    path = written[0]
    with segyio.open(path, "r+", ignore_geometry=True) as f:
        f.bin.update({BinField.Interval: 0})
        for i in range(f.tracecount):
            f.header[i] = {TraceField.TRACE_SAMPLE_INTERVAL: 0}
    with pytest.raises(SegyError, match="zero sample interval"):
        read_shots(path, f0_hz=10.0)


def test_inconsistent_trace_lengths(written):
    path = written[0]
    with segyio.open(path, "r+", ignore_geometry=True) as f:
        f.header[5] = {TraceField.TRACE_SAMPLE_COUNT: 150}
    with pytest.raises(SegyError, match="trace 5 has 150 samples but the file has 201"):
        read_shots(path, f0_hz=10.0)


def test_inconsistent_receiver_counts(written):
    path = written[0]
    with segyio.open(path, "r+", ignore_geometry=True) as f:
        f.header[f.tracecount - 1] = {TraceField.SourceX: 99}  # a lone trace of a 4th shot
    back, d = read_shots(path, f0_hz=10.0)  # a lone trace of a 4th shot: padded, masked
    assert back.nreceivers == [11, 11, 10, 1] and d.shape[2] == 11
    assert back.mask().sum(axis=1).tolist() == [11, 11, 10, 1]


def test_line_not_along_x(written):
    path = written[0]
    with segyio.open(path, "r+", ignore_geometry=True) as f:
        f.header[3] = {TraceField.GroupY: 500000}  # 5 km off the line (scalar -100)
    with pytest.raises(
        SegyError, match=r"not straight: the .* of trace \d+ lies .* m off the best-fit line"
    ):
        read_shots(path, f0_hz=10.0)


def test_bad_read_arguments(written):
    with pytest.raises(SegyError, match="dim=4 must be 2 or 3"):
        read_shots(written[0], f0_hz=10.0, dim=4)
    with pytest.raises(SegyError, match="group_by='offset'"):
        read_shots(written[0], f0_hz=10.0, group_by="offset")


def _unchanged(path, before: bytes) -> None:
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == [path.name]  # no temporary left behind


def test_wrong_shape_leaves_file(written):
    path, survey, data = written
    before = path.read_bytes()
    with pytest.raises(InvalidShapeError, match=r"data has shape \[3, 201, 10\]; expected .*11"):
        write_shots(path, survey, data[..., :10])
    _unchanged(path, before)


def test_nan_leaves_file(written):
    path, survey, data = written
    before = path.read_bytes()
    data = data.copy()
    data[1, 7, 2] = np.nan
    with pytest.raises(SegyError, match="NaN or infinite values .*shot 1, sample 7, receiver 2"):
        write_shots(path, survey, data)
    _unchanged(path, before)


def test_dt_not_whole_microseconds(written):
    path, _, _ = written
    before = path.read_bytes()
    survey = moving_spread(dt=1.2345678)
    with pytest.raises(SegyError, match=r"dt=1.2345678 cannot be stored .*whole number of µs"):
        write_shots(path, survey, random_data(survey))
    _unchanged(path, before)


def test_failure_mid_write_leaves_file(written, monkeypatch):
    path, survey, data = written
    before = path.read_bytes()

    def broken(lines):
        raise OSError("disk full")

    monkeypatch.setattr(segy_write_module, "_text_header", broken)
    with pytest.raises(OSError, match="disk full"):
        write_shots(path, survey, data * 2)
    _unchanged(path, before)


def test_image_errors(tmp_path):
    path = tmp_path / "img.sgy"
    with pytest.raises(InvalidShapeError, match=r"image has shape \[2, 3, 4\]"):
        write_image(path, np.zeros((2, 3, 4)), (10.0, 10.0))
    with pytest.raises(SegyError, match="z spacing=0.0 m must be finite and positive"):
        write_image(path, np.zeros((3, 4)), (10.0, 0.0))
    with pytest.raises(SegyError, match="x spacing=-1.0 m must be finite and positive"):
        write_image(path, np.zeros((3, 4)), (-1.0, 10.0))
    with pytest.raises(SegyError, match=r"z origin=1e-05 m cannot be stored"):
        write_image(path, np.zeros((3, 4)), (10.0, 10.0), (0.0, 1e-5))
    with pytest.raises(SegyError, match=r"z origin=inf m cannot be stored"):
        write_image(path, np.zeros((3, 4)), (10.0, 10.0), (0.0, np.inf))
    with pytest.raises(SegyError, match="quantity='δm' must be ASCII"):
        write_image(path, np.zeros((3, 4)), (10.0, 10.0), quantity="δm")
    with pytest.raises(SegyError, match="nz=70000 depth samples exceeds"):
        check_image((3, 70000), (10.0, 10.0))
    with pytest.raises(SegyError, match="image contains NaN"):
        write_image(path, np.full((3, 4), np.nan), (10.0, 10.0))
    assert not path.exists()


# ------------------------------------------------------------- header conventions
def write_raw(path, src, recs, nt=101, dt_us=2000, binary_interval=None, z="judi", delay=0):
    """A shot-record SEG-Y written directly with segyio: ``src [shot, 3]`` (x, y, z down) and
    ``recs [shot][rec, 3]`` in m; depths stored in the ``z`` convention; scalar -100."""
    ntr = sum(len(r) for r in recs)
    spec = segyio.spec()
    spec.format, spec.samples, spec.tracecount = 5, np.arange(nt, dtype=float), ntr
    rng = np.random.default_rng(0)
    data = rng.standard_normal((ntr, nt)).astype(np.float32)
    with segyio.create(str(path), spec) as f:
        f.bin.update({BinField.Interval: dt_us if binary_interval is None else binary_interval})
        k = 0
        for s, rec in zip(src, recs):
            for r in rec:
                h = {
                    TraceField.FieldRecord: 1,
                    TraceField.SourceX: int(round(100 * s[0])),
                    TraceField.SourceY: int(round(100 * s[1])),
                    TraceField.GroupX: int(round(100 * r[0])),
                    TraceField.GroupY: int(round(100 * r[1])),
                    TraceField.SourceGroupScalar: -100,
                    TraceField.TRACE_SAMPLE_INTERVAL: dt_us,
                    TraceField.TRACE_SAMPLE_COUNT: nt,
                    TraceField.DelayRecordingTime: delay,
                }
                if z == "judi":  # depths in the elevation fields, coordinate scalar
                    h[TraceField.SourceSurfaceElevation] = int(round(100 * s[2]))
                    h[TraceField.ReceiverGroupElevation] = int(round(100 * r[2]))
                    h[TraceField.SourceDepth] = 0
                else:  # land: elevations positive up (m), scalar 1
                    h[TraceField.SourceDepth] = int(round(s[2]))
                    h[TraceField.ReceiverGroupElevation] = int(round(r[2]))
                    h[TraceField.ElevationScalar] = 1
                f.header[k] = h
                f.trace[k] = data[k]
                k += 1
    return data


def line(nshots=3, nrec=6, azimuth=0.0, jitter=0.0):
    """Sources and receivers along a line at ``azimuth`` degrees (clockwise from +y)."""
    u = np.array([np.sin(np.radians(azimuth)), np.cos(np.radians(azimuth))])
    n = np.array([-u[1], u[0]])
    origin = np.array([1000.0, 2000.0])
    s_along = 50.0 + 40.0 * np.arange(nshots)
    r_along = 10.0 * np.arange(nrec) * 2
    # Cross-line jitter of alternating sign (a slightly crooked line).
    src = np.array(
        [[*(origin + a * u + (-1) ** i * jitter * n), 12.5] for i, a in enumerate(s_along)]
    )
    recs = [
        np.array([[*(origin + a * u - (-1) ** i * jitter * n), 5.0] for i, a in enumerate(r_along)])
    ] * nshots
    return src, recs, s_along, r_along


def test_judi_preset_zero_binary_interval(tmp_path):
    src, recs, _, r_along = line()
    path = tmp_path / "judi.segy"
    write_raw(path, src, recs, binary_interval=0)
    survey, d = read_shots(path, f0_hz=10.0, convention="judi", dim=3)
    assert survey.dt == 2.0 and d.shape == (3, 101, 6)
    np.testing.assert_allclose(survey.src_positions[:, 2], 12.5)
    np.testing.assert_allclose(survey.rec_positions[0][:, 2], 5.0)
    # Read with the default convention the receivers land 5 m above the model: refused.
    with pytest.raises(SegyError, match=r"receiver of trace \d+ \(shot 0\) is at depth -500 m"):
        with pytest.warns(SegyHeaderWarning, match="every source at depth 0 m"):
            read_shots(path, f0_hz=10.0, dim=3)


def test_land_elevations_need_an_explicit_datum(tmp_path):
    src, recs, _, _ = line()
    src[:, 2] = 295.0  # elevations (m, up) of a land line; SourceDepth used as-is below
    recs = [r.copy() for r in recs]
    for r in recs:
        r[:, 2] = 300.0
    path = tmp_path / "land.segy"
    write_raw(path, src, recs, z="land")
    with pytest.raises(
        SegyError, match=r"receiver of trace \d+ \(shot 0\) is at depth -300 m.*datum"
    ):
        read_shots(path, f0_hz=10.0, dim=3)
    survey, _ = read_shots(path, f0_hz=10.0, dim=3, datum=305.0)
    np.testing.assert_allclose(survey.rec_positions[0][:, 2], 5.0)
    assert survey.segy_report["datum_m"] == 305.0
    # A mapping names other fields: receiver depth from ReceiverDatumElevation (0 here).
    with pytest.warns(SegyHeaderWarning, match="every receiver at depth 0 m"):
        mapped, _ = read_shots(
            path, f0_hz=10.0, dim=3, convention={"rec_z": "ReceiverDatumElevation"}
        )
    np.testing.assert_allclose(mapped.rec_positions[0][:, 2], 0.0)
    with pytest.raises(SegyError, match="convention key 'depth' is not one of"):
        read_shots(path, f0_hz=10.0, convention={"depth": "SourceDepth"})
    with pytest.raises(SegyError, match="'Nope' is not a SEG-Y trace field"):
        read_shots(path, f0_hz=10.0, convention={"rec_z": "-Nope"})
    with pytest.raises(SegyError, match="convention='segyio' is not one of"):
        read_shots(path, f0_hz=10.0, convention="segyio")


@pytest.mark.parametrize("azimuth", [0.0, 30.0, 135.0])
def test_2d_line_at_any_azimuth_is_projected(tmp_path, azimuth):
    src, recs, s_along, r_along = line(azimuth=azimuth, jitter=2.0)
    path = tmp_path / "az.segy"
    write_raw(path, src, recs)
    survey, _ = read_shots(path, f0_hz=10.0, convention="judi")
    rep = survey.segy_report
    # The least-squares line of a crooked line tilts slightly (0.6° here).
    assert rep["projected"] and abs((rep["azimuth_deg"] - azimuth + 180) % 360 - 180) < 1.0
    assert 1.5 < rep["max_offline_m"] < 3.0
    # Distances along the line (0 at its first point), to the jitter's tilt.
    np.testing.assert_allclose(survey.src_positions[:, 0], s_along, atol=0.5)
    np.testing.assert_allclose(survey.rec_positions[0][:, 0], r_along, atol=0.5)
    with pytest.raises(SegyError, match=r"lies [\d.]+ m off the best-fit line .*tolerance=1 m"):
        read_shots(path, f0_hz=10.0, convention="judi", line_tolerance=1.0)


def test_read_only_the_selected_shots(tmp_path):
    src, recs, _, _ = line(nshots=3, nrec=4)
    path = tmp_path / "sel.segy"
    data = write_raw(path, src, recs)
    with segyio.open(str(path), "r+", ignore_geometry=True) as f:
        f.trace[0] = np.full(101, np.nan, dtype=np.float32)  # shot 0 is unreadable
    with pytest.raises(SegyError, match="trace 0 contains NaN"):
        read_shots(path, f0_hz=10.0, convention="judi")
    survey, d = read_shots(path, f0_hz=10.0, convention="judi", shots=[2, 1])
    assert survey.nshots == 2 and survey.segy_report["shots"] == [2, 1]
    np.testing.assert_array_equal(d[0], data[8:12].T)
    np.testing.assert_array_equal(d[1], data[4:8].T)
    for bad in (True, [0.9], [1.0], 3, [-1]):
        with pytest.raises(SegyError, match="shots="):
            read_shots(path, f0_hz=10.0, convention="judi", shots=bad)


def test_dead_traces_are_masked(tmp_path):
    src, recs, _, _ = line(nshots=2, nrec=4)
    path = tmp_path / "dead.segy"
    write_raw(path, src, recs)
    with segyio.open(str(path), "r+", ignore_geometry=True) as f:
        f.header[1] = {TraceField.TraceIdentificationCode: 2}  # dead by header
        f.trace[6] = np.zeros(101, dtype=np.float32)  # a zero trace is not data
    survey, _ = read_shots(path, f0_hz=10.0, convention="judi")
    np.testing.assert_array_equal(survey.mask(), [[1, 0, 1, 1], [1, 1, 0, 1]])
    assert survey.segy_report["dead_traces"] == 2


def test_data_axis_from_file_with_a_model(tmp_path):
    from devito_uq.physics import AcousticModel

    src, recs, _, _ = line(nshots=1, nrec=4)
    path = tmp_path / "axis.segy"
    write_raw(path, src, recs, delay=100)
    model = AcousticModel((61, 41), (5.0, 5.0), origin=(0.0, 0.0), nbl=5, space_order=4)
    survey, d = read_shots(path, f0_hz=10.0, convention="judi", model=model, vmax=2.5)
    ax = survey.data_axis
    assert (ax.t0, ax.dt, ax.nt) == (100.0, 2.0, 101) and d.shape[1] == 101
    assert survey.dt <= model.critical_dt(2.5) and survey.t0 <= 0.0
    with pytest.raises(SegyError, match="give both model and vmax"):
        read_shots(path, f0_hz=10.0, convention="judi", model=model)


def test_write_shots_uses_the_data_axis(tmp_path):
    from devito_uq.physics import AcousticModel
    from devito_uq.physics.resample import TimeAxis

    model = AcousticModel((61, 41), (5.0, 5.0), nbl=5, space_order=4)
    src, rec = [[100.0, 10.0]], [[50.0, 5.0], [150.0, 5.0]]
    survey = Survey.for_data(model, src, rec, TimeAxis(100.0, 2.0, 51), vmax=2.5, f0_hz=10.0)
    assert survey.nt != 51
    data = np.ones((1, 51, 2))
    path = write_shots(tmp_path / "d.segy", survey, data)
    back, d = read_shots(path, f0_hz=10.0, model=model, vmax=2.5)
    assert (back.data_axis.t0, back.data_axis.dt, back.data_axis.nt) == (100.0, 2.0, 51)
    assert back.dt == survey.dt and back.t0 == survey.t0 and d.shape == (1, 51, 2)


def test_varying_receiver_counts_round_trip(tmp_path):
    """Shots of 5, 3 and 7 receivers (one dead trace): only each shot's own traces are
    written, and read_shots gives back the positions, counts, data and mask exactly."""
    from devito_uq.physics import pad_traces

    rng = np.random.default_rng(4)
    counts = [5, 3, 7]
    src = np.stack([12.25 + 100.0 * np.arange(3), np.full(3, 20.0)], 1)
    recs = [
        np.stack([np.arange(n) * 12.5 + 3.25 * i, np.full(n, 7.5 + i)], 1)
        for i, n in enumerate(counts)
    ]
    data, exists = pad_traces([rng.standard_normal((201, n)) for n in counts])
    mask = exists.copy()
    mask[1, 1] = False  # a dead trace of an existing receiver, nonzero samples kept
    survey = Survey(src, recs, t1=300.0, dt=1.5, f0_hz=10.0, trace_mask=mask)
    path = write_shots(tmp_path / "vary.sgy", survey, data)
    with segyio.open(path, ignore_geometry=True) as f:
        assert f.tracecount == sum(counts)  # no padding traces
        assert f.attributes(TraceField.FieldRecord)[:].tolist() == [1] * 5 + [2] * 3 + [3] * 7
        assert f.header[6][TraceField.TraceIdentificationCode] == 2
    back, d = read_shots(path, f0_hz=10.0)
    same_geometry(back, survey)
    assert back.nreceivers == counts
    np.testing.assert_array_equal(d, data.astype(np.float32))
    np.testing.assert_array_equal(back.mask(), mask)
    assert back.segy_report["dead_traces"] == 1
    # Padded data of the wrong width is refused, naming the counts.
    with pytest.raises(InvalidShapeError, match=r"expected .*7\] \(receiver counts \[5, 3, 7\]"):
        write_shots(tmp_path / "bad.sgy", survey, data[..., :5])
