"""Header conventions chosen per file: ``convention="auto"``, the warning when depth fields
disagree with the convention read with, hints that never repeat what was given, and the
``convention``/``datum``/``line_tolerance`` keys of every command that reads shots."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import segyio
from segyio import BinField, TraceField

from devito_uq.apps.imaging import InvertConfig
from devito_uq.apps.imaging.config import InfoConfig
from devito_uq.cli import main
from devito_uq.errors import DevitoUQError, SegyError, SegyHeaderWarning
from devito_uq.io import read_shots, segy_info, write_shots
from devito_uq.physics import Survey


def raw_file(path, src_depth=0, src_elevation=1250, rec_elevation=500, elevation_scalar=0):
    """Three shots of four receivers along x, coordinates scaled by -100: by default a
    SegyIO.jl/JUDI file (sources 12.5 m, receivers 5 m deep in the elevation fields)."""
    spec = segyio.spec()
    spec.format, spec.samples, spec.tracecount = 5, np.arange(51, dtype=float), 12
    with segyio.create(str(path), spec) as f:
        f.bin.update({BinField.Interval: 2000})
        for k in range(12):
            s, r = divmod(k, 4)
            f.header[k] = {
                TraceField.FieldRecord: s + 1,
                TraceField.SourceX: 5000 + 4000 * s,
                TraceField.GroupX: 2000 * r,
                TraceField.SourceGroupScalar: -100,
                TraceField.SourceSurfaceElevation: src_elevation,
                TraceField.ReceiverGroupElevation: rec_elevation,
                TraceField.SourceDepth: src_depth,
                TraceField.ElevationScalar: elevation_scalar,
                TraceField.TRACE_SAMPLE_INTERVAL: 2000,
                TraceField.TRACE_SAMPLE_COUNT: 51,
            }
            f.trace[k] = np.full(51, 1.0 + k, dtype=np.float32)
    return path


def our_file(path, rec_depth=7.5):
    src = np.array([[10.0, 20.0], [60.0, 20.0]])
    rec = np.stack([np.arange(5) * 10.0, np.full(5, rec_depth)], 1)
    survey = Survey(src, rec, t1=100.0, dt=2.0, f0_hz=10.0)
    return write_shots(path, survey, np.ones((2, survey.nt, 5)))


def test_auto_reads_a_judi_file_as_info_suggests(tmp_path):
    path = raw_file(tmp_path / "judi.sgy")
    # The default preset cannot: the receivers would be 500 m above the surface.
    with pytest.warns(SegyHeaderWarning, match="land elevations.*datum >= 500"):
        survey, _ = read_shots(path, f0_hz=10.0, convention="auto")
    assert survey.segy_report["convention"] == segy_info(path)["convention_suggested"] == "judi"
    np.testing.assert_allclose(survey.src_positions[:, 1], 12.5)
    np.testing.assert_allclose(survey.rec_positions[0][:, 1], 5.0)
    # The text form of a mapping (the command line's) reads the same depths.
    text = "src_z=SourceSurfaceElevation,rec_z=ReceiverGroupElevation,z_scalar=SourceGroupScalar"
    mapped, _ = read_shots(path, f0_hz=10.0, convention=text)
    np.testing.assert_allclose(mapped.src_positions, survey.src_positions)
    with pytest.raises(SegyError, match="'rec_z' is not key=Field"):
        read_shots(path, f0_hz=10.0, convention="src_z=SourceDepth,rec_z")


def test_auto_on_our_own_files_is_silent(tmp_path):
    for depth in (7.5, 0.0):  # receivers below the surface, then at it
        path = our_file(tmp_path / f"ours{depth}.sgy", rec_depth=depth)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            survey, _ = read_shots(path, f0_hz=10.0, convention="auto")
        assert survey.segy_report["convention"] == "devito_uq"
        np.testing.assert_allclose(survey.src_positions[:, 1], 20.0)


def test_auto_refuses_when_ambiguous_or_when_nothing_fits(tmp_path):
    # Sources 10 m deep in SourceDepth but 3 m in SourceSurfaceElevation, receivers at 0:
    # both presets fit with different depths.
    path = raw_file(tmp_path / "both.sgy", src_depth=10, src_elevation=300, rec_elevation=0)
    with pytest.raises(
        SegyError, match=r"cannot choose .*several presets fit.*'devito_uq'.*'judi'"
    ):
        read_shots(path, f0_hz=10.0, convention="auto")
    read_shots(path, f0_hz=10.0, convention="devito_uq")  # an explicit choice reads it
    path = raw_file(tmp_path / "none.sgy", src_depth=-2, src_elevation=-100, rec_elevation=300)
    with pytest.raises(SegyError, match=r"no preset fits .*needs datum=300.*needs datum=1\b"):
        read_shots(path, f0_hz=10.0, convention="auto")


def test_a_depth_field_the_convention_ignores_is_a_warning(tmp_path):
    """A JUDI file whose receiver depth field is 0: the default preset fits, and would
    silently put every source at 0 m."""
    path = raw_file(tmp_path / "surface.sgy", rec_elevation=0)
    with pytest.warns(SegyHeaderWarning, match=r"reads every source at depth 0 m, but conv"):
        read_shots(path, f0_hz=10.0)
    assert any(
        "every source at depth 0 m" in w
        for w in segy_info(path, convention="devito_uq")["warnings"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_shots(path, f0_hz=10.0, convention="judi")


def test_hints_never_suggest_what_was_given(tmp_path):
    # JUDI's preset reads the elevation (-75, scalar -10) with the coordinate scalar (1)
    path = our_file(tmp_path / "ours.sgy")
    with pytest.raises(SegyError, match="above the datum") as exc:
        with pytest.warns(SegyHeaderWarning, match="every source at depth 0 m"):
            read_shots(path, f0_hz=10.0, convention="judi")
    assert "convention='judi'" not in str(exc.value).split("read as depth")[1]
    assert "give datum=75 " in str(exc.value) and "convention='devito_uq'" in str(exc.value)
    path = raw_file(tmp_path / "judi.sgy")
    with pytest.raises(SegyError, match="give datum=500 .* or convention='judi'") as exc:
        with pytest.warns(SegyHeaderWarning, match="every source at depth 0 m"):
            read_shots(path, f0_hz=10.0, datum=0.0)
    assert "convention='devito_uq'" not in str(exc.value)


def test_every_command_that_reads_shots_takes_the_header_options(tmp_path, capsys):
    assert InvertConfig().shot_headers() == {
        "convention": "auto",
        "datum": 0.0,
        "line_tolerance": 10.0,
    }
    cfg = InvertConfig(convention="judi", datum=3.0, line_tolerance=2.5).validate()
    assert cfg.shot_headers() == {"convention": "judi", "datum": 3.0, "line_tolerance": 2.5}
    for bad, match in (
        (dict(convention="segyio"), "convention='segyio' is not one of"),
        (dict(convention="rec_z=Nope"), "'Nope' is not a SEG-Y trace field"),
        (dict(datum=float("nan")), "datum"),
        (dict(line_tolerance=-1.0), "line_tolerance=-1.0"),
    ):
        with pytest.raises(DevitoUQError, match=match):
            InvertConfig(**bad).validate()
        with pytest.raises(DevitoUQError, match=match):
            InfoConfig(segy="x.sgy", **bad).validate()
    path = raw_file(tmp_path / "judi.sgy")
    assert main(["info", str(path), "--convention", "judi", "--datum", "2"]) == 0
    out = capsys.readouterr().out
    assert "read with   convention='judi'" in out and "z 14.5 m (down)" in out
    assert main(["info", str(path), "--convention", "devito_uq"]) == 0
    assert "would refuse the file" in capsys.readouterr().out
    assert main(["info", str(path), "--line-tolerance", "-1"]) == 2
    assert "line_tolerance=-1.0" in capsys.readouterr().err


def test_invert_reads_the_shots_with_the_given_convention(tmp_path):
    """``invert`` (``build_problem``) passes convention, datum and line_tolerance to
    read_shots: a JUDI file is read as JUDI wrote it, or refused with the hint."""
    from devito_uq.apps.imaging.problem import build_problem
    from devito_uq.io import write_image

    raw_file(tmp_path / "judi.sgy")
    write_image(tmp_path / "bg.sgy", np.full((16, 10), 1.5), (10.0, 10.0))
    base = dict(shots="judi.sgy", background="bg.sgy", truth="", problem="fwi", sigma=1.0)
    base.update(f0=10.0, vmax=2.0, vmin=1.3, nbl=4, space_order=4)
    with pytest.warns(SegyHeaderWarning, match="land elevations"):
        problem = build_problem(InvertConfig(**base), tmp_path)
    np.testing.assert_allclose(problem.survey.src_positions[:, 1], 12.5)
    problem = build_problem(InvertConfig(**base, convention="judi", datum=10.0), tmp_path)
    np.testing.assert_allclose(problem.survey.rec_positions[0][:, 1], 15.0)
    assert problem.survey.segy_report["datum_m"] == 10.0
    with pytest.raises(SegyError, match="give datum=500 .* or convention='judi'"):
        with pytest.warns(SegyHeaderWarning):
            build_problem(InvertConfig(**base, convention="devito_uq"), tmp_path)
