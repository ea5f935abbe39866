"""SEG-Y mutations (issue 22): unknown sample formats, little-endian files, corrupt
coordinates, scalars and intervals are refused by ``read_shots`` (naming the trace and
the value) and reported by ``segy_info``; a little-endian file reads as its big-endian
twin and the report says which byte order was used."""

from __future__ import annotations

import numpy as np
import pytest
import segyio
import torch
from segyio import BinField, TraceField
from test_segy import moving_spread, random_data, same_geometry

from devito_uq.errors import SegyError
from devito_uq.io import read_shots, segy_info, write_shots
from devito_uq.io.segy import segy_layout


@pytest.fixture
def shots(tmp_path):
    survey = moving_spread(nshots=3, nrec=11, dt=1.5)
    data = random_data(survey)
    path = write_shots(tmp_path / "shots.sgy", survey, torch.from_numpy(data))
    return path, survey, data.astype(np.float32)


def _poke(path, offset: int, value: int, size: int, order: str = "big") -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(int(value).to_bytes(size, order, signed=value < 0))


def _set_trace(path, trace: int, field: int, value: int) -> None:
    with segyio.open(path, "r+", ignore_geometry=True) as f:
        f.header[trace] = {field: value}


@pytest.mark.parametrize("code", [0, 4, 7, 13, 255])
def test_unknown_sample_format_is_refused(shots, code):
    path, _, _ = shots
    _poke(path, 3224, code, 2)
    with pytest.raises(SegyError, match=rf"format code {code} \(big-endian\) in its"):
        read_shots(path, f0_hz=10.0)
    with pytest.raises(SegyError, match=f"sample-format code {code}"):
        segy_info(path)


def _to_little(src, dst, rev2_word: bool) -> None:
    with segyio.open(src, ignore_geometry=True) as f:
        spec = segyio.tools.metadata(f)
        spec.endian = "little"
        with segyio.create(dst, spec) as g:
            g.text[0] = f.text[0]
            g.bin = f.bin
            g.header = f.header
            g.trace = f.trace
    if rev2_word:  # 0x01020304 written in the file's (little) byte order
        _poke(dst, 3296, 0x01020304, 4, "little")


@pytest.mark.parametrize("rev2_word", [True, False])
def test_little_endian_file_reads_as_its_big_endian_twin(shots, tmp_path, rev2_word):
    path, survey, data = shots
    little = tmp_path / "little.sgy"
    _to_little(path, little, rev2_word)
    assert little.read_bytes()[3224:3226] == b"\x05\x00"  # format 5, little-endian
    layout = segy_layout(little)
    assert layout["byte_order"] == "little"
    assert layout["byte_order_from"] == ("rev2 word" if rev2_word else "format code")
    back, d = read_shots(little, f0_hz=10.0)
    same_geometry(back, survey)
    np.testing.assert_array_equal(d, data)
    assert back.segy_report["byte_order"] == "little"
    assert read_shots(path, f0_hz=10.0)[0].segy_report["byte_order"] == "big"
    assert segy_info(little)["byte_order"].startswith("little-endian")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        (TraceField.GroupX, 2**31 - 1, r"receiver of trace 4 has x = 2\.14748e\+07 m"),
        (TraceField.GroupX, -(2**31), r"receiver of trace 4 has x = -2\.14748e\+07 m"),
        (TraceField.SourceY, 2**31 - 1, r"source of trace 4 has y = 2\.14748e\+07 m"),
        (TraceField.SourceGroupScalar, 32767, r"trace 4 has SourceGroupScalar=32767"),
        (TraceField.ElevationScalar, -7, r"trace 4 has ElevationScalar=-7"),
    ],
)
def test_corrupt_geometry_is_refused_and_reported(shots, field, value, match):
    path, _, _ = shots
    _set_trace(path, 4, field, value)
    with pytest.raises(SegyError, match=match):
        read_shots(path, f0_hz=10.0)
    info = segy_info(path)
    assert any("read_shots refuses it" in w and "trace 4" in w for w in info["warnings"]), info


def test_binary_and_trace_intervals_that_disagree_are_refused(shots):
    path, _, _ = shots
    with segyio.open(path, "r+", ignore_geometry=True) as f:
        f.bin.update({BinField.Interval: 32767})
    with pytest.raises(SegyError, match="sample interval 1500 µs, the file 32767 µs"):
        read_shots(path, f0_hz=10.0)
    with pytest.raises(SegyError, match="32767"):
        segy_info(path)
