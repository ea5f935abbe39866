"""Tests of devito_uq.io.segy_info: what a SEG-Y shot file holds, as read_shots would read it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import segyio
from segyio import BinField, TraceField

from devito_uq.errors import InvalidArgumentError, SegyError
from devito_uq.io import format_segy_info, read_shots, segy_info, write_shots
from devito_uq.io import segy_inspect as inspect_module
from devito_uq.physics import Survey, pad_traces


def varying_survey(t0=4.0):
    """Three shots of 5, 3 and 7 receivers along x; coordinates on a 0.25 m grid."""
    counts = [5, 3, 7]
    src = np.stack([12.25 + 100.0 * np.arange(3), np.full(3, 20.0)], 1)
    recs = [
        np.stack([np.arange(n) * 12.5 + 50.0 * i, np.full(n, 7.5)], 1) for i, n in enumerate(counts)
    ]
    rng = np.random.default_rng(0)
    data, _ = pad_traces([rng.standard_normal((201, n)) for n in counts])
    return Survey(src, recs, t1=t0 + 300.0, dt=1.5, t0=t0, f0_hz=10.0), data


@pytest.fixture
def written(tmp_path):
    survey, data = varying_survey()
    return write_shots(tmp_path / "shots.sgy", survey, data), survey, data


def test_info_of_a_written_file(written):
    path, survey, _ = written
    info = segy_info(path)
    json.dumps(info)  # plain data
    assert info["traces"] == 15 and info["shots"] == 3 and info["field_records"] == 3
    assert info["grouped_by"] == "source position (SourceX, SourceY, SourceDepth)"
    assert info["receivers_per_shot"] == [3, 7]
    assert info["samples_per_trace"] == 201 and info["sample_interval_ms"] == 1.5
    assert info["sample_interval_source"] == "binary header"
    assert info["delay_ms"] == 4.0 and info["record_length_ms"] == 300.0
    assert info["format"] == {"code": 5, "name": "4-byte IEEE float"}
    ext = info["extent_m"]
    assert ext["source_x"] == [12.25, 212.25] and ext["source_z"] == [20.0, 20.0]
    assert ext["receiver_x"] == [0.0, 100.0 + 75.0] and ext["receiver_z"] == [7.5, 7.5]
    assert info["line"]["projected"] is False
    assert info["convention"] == info["convention_suggested"] == "devito_uq"
    assert info["conventions"]["devito_uq"]["fits"]
    assert not info["conventions"]["judi"]["fits"]  # reads receivers at -0.75 m
    assert set(info["depth_fields"]) == {"SourceDepth", "ReceiverGroupElevation"}
    assert info["dead_traces"]["total"] == 0 and info["warnings"] == []
    text = format_segy_info(info)
    for part in ("15, 0 dead", "3 … 7 per shot", "201 samples of 1.5 ms", "delay 4 ms"):
        assert part in text
    assert "x 12.25 … 212.25 m" in text and "convention='devito_uq'" in text
    assert info["text_header"][0].endswith(
        "devito_uq shot records: one trace per shot and receiver, shot-major"
    )


def judi_file(path, azimuth=90.0, jitter=0.0, binary_interval=0, nrec=4):
    """SegyIO.jl/JUDI style: depths (down) in the elevation fields with the coordinate
    scalar, SourceDepth 0, binary interval 0 (the trace headers hold 2 ms); a line of 3
    shots at ``azimuth`` degrees clockwise from north, crooked by ±``jitter`` m."""
    u = np.array([np.sin(np.radians(azimuth)), np.cos(np.radians(azimuth))])
    n = np.array([-u[1], u[0]])
    origin = np.array([1000.0, 2000.0])
    rows = []
    for s in range(3):
        sxy = origin + (50.0 + 40.0 * s) * u + (-1) ** s * jitter * n
        for r in range(nrec):
            rxy = origin + 20.0 * r * u - (-1) ** r * jitter * n
            rows.append((s, sxy, rxy))
    spec = segyio.spec()
    spec.format, spec.samples, spec.tracecount = 5, np.arange(101, dtype=float), len(rows)
    data = np.random.default_rng(1).standard_normal((len(rows), 101)).astype(np.float32)
    with segyio.create(str(path), spec) as f:
        f.bin.update({BinField.Interval: binary_interval})
        for k, (s, sxy, rxy) in enumerate(rows):
            f.header[k] = {
                TraceField.FieldRecord: s + 1,
                TraceField.SourceX: round(100 * sxy[0]),
                TraceField.SourceY: round(100 * sxy[1]),
                TraceField.GroupX: round(100 * rxy[0]),
                TraceField.GroupY: round(100 * rxy[1]),
                TraceField.SourceGroupScalar: -100,
                TraceField.SourceSurfaceElevation: 1250,  # 12.5 m deep
                TraceField.ReceiverGroupElevation: 500,  # 5 m deep
                TraceField.SourceDepth: 0,
                TraceField.TRACE_SAMPLE_INTERVAL: 2000,
                TraceField.TRACE_SAMPLE_COUNT: 101,
            }
            f.trace[k] = data[k]
    return path


def test_judi_convention_found(tmp_path):
    path = judi_file(tmp_path / "judi.segy")
    info = segy_info(path)
    assert info["sample_interval_ms"] == 2.0
    assert info["sample_interval_source"] == "trace headers (the binary header's is 0)"
    assert set(info["depth_fields"]) == {"SourceSurfaceElevation", "ReceiverGroupElevation"}
    assert info["depth_fields"]["ReceiverGroupElevation"] == {
        "nonzero_traces": 12,
        "raw": [500, 500],
    }
    # The default convention reads the receivers 500 m above the surface (ElevationScalar 0).
    assert info["conventions"]["devito_uq"] == {
        "src_z_m": [0.0, 0.0],
        "rec_z_m": [-500.0, -500.0],
        "fits": False,
        "datum_needed_m": 500.0,
    }
    assert info["convention_suggested"] == info["convention"] == "judi"
    assert info["extent_m"]["source_z"] == [12.5, 12.5]
    assert info["extent_m"]["receiver_z"] == [5.0, 5.0]
    assert info["shots"] == 3 and info["receivers_per_shot"] == [4, 4]
    # The convention info suggests is the one read_shots needs.
    survey, _ = read_shots(path, f0_hz=10.0, convention=info["convention"])
    np.testing.assert_allclose(survey.rec_positions[0][:, 1], 5.0)
    # Asked for the default convention, info says why read_shots would refuse it.
    forced = segy_info(path, convention="devito_uq")
    assert forced["convention"] == "devito_uq"
    assert any("would refuse" in w and "convention='judi'" in w for w in forced["warnings"])
    assert "convention='judi' (suggested: 'judi')" in format_segy_info(info)


def test_land_elevations(tmp_path):
    """Positive elevations fit the JUDI preset (as depths): info says so, and what a land
    file needs instead; a file no preset fits gets no suggestion and the datum it needs."""
    path = judi_file(tmp_path / "land.segy")
    with segyio.open(str(path), "r+", ignore_geometry=True) as f:
        for k in range(f.tracecount):  # elevations 300 m up, scalar 1
            f.header[k] = {TraceField.ReceiverGroupElevation: 300, TraceField.ElevationScalar: 1}
    info = segy_info(path)
    assert info["convention_suggested"] == "judi" and info["warnings"] == []
    assert info["conventions"]["devito_uq"]["datum_needed_m"] == 300.0
    assert any("land elevations" in n and "datum >= 300 m" in n for n in info["notes"])
    assert "note        the elevation fields" in format_segy_info(info)
    assert segy_info(path, datum=300.0)["convention_suggested"] == "devito_uq"
    with segyio.open(str(path), "r+", ignore_geometry=True) as f:
        for k in range(f.tracecount):  # sources above the datum in both presets
            f.header[k] = {TraceField.SourceDepth: -2, TraceField.SourceSurfaceElevation: -100}
    info = segy_info(path)
    assert info["convention_suggested"] is None and info["convention"] == "devito_uq"
    assert info["conventions"]["devito_uq"]["datum_needed_m"] == 300.0
    assert info["conventions"]["judi"]["datum_needed_m"] == 1.0
    assert any("give datum=300" in w for w in info["warnings"])
    assert "no preset fits: give datum=" in format_segy_info(info)


@pytest.mark.parametrize("azimuth", [30.0, 135.0])
def test_rotated_line(tmp_path, azimuth):
    path = judi_file(tmp_path / "az.segy", azimuth=azimuth, jitter=2.0)
    info = segy_info(path)
    line = info["line"]
    assert line["projected"] and abs((line["azimuth_deg"] - azimuth + 180) % 360 - 180) < 1.0
    assert 1.5 < line["max_offline_m"] < 3.0 and info["warnings"] == []
    assert info["convention"] == "judi" and len(info["notes"]) == 1  # JUDI or land?
    # Along-line distances as read_shots gives them.
    survey, _ = read_shots(path, f0_hz=10.0, convention="judi")
    np.testing.assert_allclose(
        line["source_x_m"], [survey.src_positions[:, 0].min(), survey.src_positions[:, 0].max()]
    )
    assert "azimuth" in format_segy_info(info)
    tight = segy_info(path, line_tolerance=1.0)
    assert any("line_tolerance=1 m" in w for w in tight["warnings"])
    assert segy_info(path, dim=3)["line"] is None


def test_dead_traces_counted_in_chunks(tmp_path, monkeypatch):
    path = judi_file(tmp_path / "dead.segy", nrec=5)
    with segyio.open(str(path), "r+", ignore_geometry=True) as f:
        f.header[1] = {TraceField.TraceIdentificationCode: 2}  # dead by header
        for k in (6, 7, 14):
            f.trace[k] = np.zeros(101, dtype=np.float32)
        f.trace[9] = np.full(101, np.nan, dtype=np.float32)
    full = segy_info(path)["dead_traces"]
    assert full == {
        "by_header": 1,
        "scanned": True,
        "all_zero": 3,
        "total": 4,
        "first": [1, 6, 7, 14],
        "non_finite": 1,
    }
    # Chunks of 2 traces (cut between 6 and 7, 14 last alone) count the same.
    monkeypatch.setattr(inspect_module, "_CHUNK_BYTES", 2 * 4 * 101)
    info = segy_info(path)
    assert info["dead_traces"] == full
    assert any("NaN or infinite samples (first: trace 9)" in w for w in info["warnings"])
    headers_only = segy_info(path, scan_traces=False)
    assert headers_only["dead_traces"] == {
        "by_header": 1,
        "scanned": False,
        "total": 1,
        "first": [1],
    }
    assert "samples not scanned" in format_segy_info(headers_only)


def test_broken_files_refused_naming_the_path(written, tmp_path):
    path = written[0]
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(SegyError, match="shots.sgy' is not a readable SEG-Y file"):
        segy_info(path)
    junk = tmp_path / "junk.sgy"
    junk.write_bytes(b"hello" * 100)
    with pytest.raises(SegyError, match="junk.sgy' is not a readable SEG-Y"):
        segy_info(junk)
    with pytest.raises(SegyError, match="nope.sgy' does not exist"):
        segy_info(tmp_path / "nope.sgy")
    with pytest.raises(SegyError, match="is a folder"):
        segy_info(tmp_path)


def test_options(written):
    path = written[0]
    # read_shots options that do not change what the file holds are accepted.
    assert segy_info(path, f0_hz=10.0, shots=[0], vmax=2.0)["shots"] == 3
    with pytest.raises(InvalidArgumentError, match="unknown option 'f0'"):
        segy_info(path, f0=10.0)
    with pytest.raises(InvalidArgumentError, match="group_by='offset'"):
        segy_info(path, group_by="offset")
    with pytest.raises(SegyError, match="convention='segyio' is not one of"):
        segy_info(path, convention="segyio")
    by_record = segy_info(path, group_by="field_record")
    assert by_record["grouped_by"] == "FieldRecord" and by_record["shots"] == 3


def test_judi_receivers_at_the_surface(tmp_path):
    """Receivers at depth 0: the default preset fits too, but reads every depth as 0 while
    JUDI's finds the sources' 12.5 m; the preset that finds the depths is suggested."""
    path = judi_file(tmp_path / "surface.segy")
    with segyio.open(str(path), "r+", ignore_geometry=True) as f:
        for k in range(f.tracecount):
            f.header[k] = {TraceField.ReceiverGroupElevation: 0}
    info = segy_info(path)
    assert info["conventions"]["devito_uq"]["fits"] and info["conventions"]["judi"]["fits"]
    assert info["convention_suggested"] == "judi" and info["notes"] == []
    assert info["extent_m"]["source_z"] == [12.5, 12.5]
