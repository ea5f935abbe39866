"""What a SEG-Y shot-record file holds, and how :func:`~devito_uq.io.read_shots` would read it.

:func:`segy_info` reads the trace headers (one column at a time, ``f.attributes``) and
scans the samples in chunks of bounded size (only to count dead traces and find the
largest amplitude); it never holds all the samples in memory. It returns plain JSON-able
data; :func:`format_segy_info` turns that into a short human-readable report.

The header conventions tried are those of :mod:`devito_uq.io.segy_geometry`: a preset
*fits* the file when every source and receiver depth it reads lies at or below the datum
(z ≥ 0 after adding ``datum``), which is what :func:`read_shots` requires. The suggested
preset is the first that fits, in the order ``devito_uq``, ``judi``, except that a preset
reading only zero depths gives way to one that finds the depths (e.g. a JUDI file: depths
in ``SourceSurfaceElevation``/``ReceiverGroupElevation``, ``SourceDepth`` 0).
"""

from __future__ import annotations

import inspect
import os
import re
import warnings as _warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from segyio import BinField, TraceField

from devito_uq.errors import InvalidArgumentError, SegyError
from devito_uq.io import segy_geometry as geo
from devito_uq.io.segy import _group, _open, _read_headers, read_shots
from devito_uq.validation import check_bool, check_choice, check_nonnegative_scalar, check_scalar

__all__ = ["segy_info", "format_segy_info"]

_T = TraceField

# SEG-Y rev 2 data sample format codes (binary header bytes 3225–3226).
_FORMATS = {
    1: "4-byte IBM float",
    2: "4-byte integer",
    3: "2-byte integer",
    4: "4-byte fixed point with gain (obsolete)",
    5: "4-byte IEEE float",
    6: "8-byte IEEE float",
    8: "1-byte integer",
    10: "4-byte unsigned integer",
    11: "2-byte unsigned integer",
    16: "1-byte unsigned integer",
}

# Trace-header fields that may hold depths or elevations, reported when non-zero.
_DEPTH_FIELDS = (
    "SourceDepth",
    "SourceSurfaceElevation",
    "ReceiverGroupElevation",
    "SourceDatumElevation",
    "ReceiverDatumElevation",
    "SourceWaterDepth",
    "GroupWaterDepth",
)

# Bytes of samples scanned at a time for dead traces (bounded memory).
_CHUNK_BYTES = 16 * 2**20

# read_shots options that choose the wavelet, the solver axis or the shots to read:
# they do not change what the file holds, so segy_info accepts and ignores them.
_IGNORED = set(inspect.signature(read_shots).parameters) - {
    "path",
    "dim",
    "group_by",
    "convention",
    "datum",
    "line_tolerance",
}


def _range(x: np.ndarray) -> list[float]:
    return [float(np.min(x)), float(np.max(x))]


def _scan(f: Any, path: Path, ntr: int, ns: int) -> dict[str, Any]:
    """All-zero and non-finite traces and the largest finite |sample|, chunk by chunk."""
    chunk = max(1, _CHUNK_BYTES // (4 * ns))
    zero, nonfinite, peak = [], [], 0.0
    try:
        for i in range(0, ntr, chunk):
            j = min(ntr, i + chunk)
            block = np.asarray(f.trace.raw[i:j], dtype=np.float32).reshape(j - i, ns)
            finite = np.isfinite(block)
            zero.extend((i + np.flatnonzero(~np.any(block != 0, axis=1))).tolist())
            nonfinite.extend((i + np.flatnonzero(~finite.all(axis=1))).tolist())
            if finite.any():
                peak = max(peak, float(np.max(np.abs(block[finite]))))
    except Exception as exc:
        raise SegyError(f"cannot read the traces of {str(path)!r} (truncated?): {exc}") from exc
    return {"zero": np.array(zero, dtype=np.int64), "nonfinite": nonfinite, "peak": peak}


def segy_info(
    path: str | os.PathLike,
    *,
    dim: int = 2,
    group_by: str = "source",
    convention: str | Mapping[str, str] | None = None,
    datum: float = 0.0,
    line_tolerance: float = 10.0,
    scan_traces: bool = True,
    **read_shots_kwargs: Any,
) -> dict[str, Any]:
    """Describe the SEG-Y shot-record file ``path`` as :func:`read_shots` would read it.

    Parameters
    ----------
    path : SEG-Y file.
    dim, group_by, datum, line_tolerance : as in :func:`read_shots` (2D line projection,
        shot grouping ``"source"`` or ``"field_record"``, metres added to every depth,
        largest off-line distance in m).
    convention : a preset name or mapping as in :func:`read_shots`; ``None`` or ``"auto"``
        (default) uses the suggested preset (see the module docstring).
    scan_traces : read the samples (in chunks of about 16 MiB) to count all-zero and
        non-finite traces; ``False`` reads the headers only (dead traces by header).
    read_shots_kwargs : the other options of :func:`read_shots` (``f0_hz``, ``wavelet``,
        ``shots``, ``model``, ``vmax``, …) are accepted and ignored, so one set of options
        serves both; an unknown name is an error.

    Returns
    -------
    dict of numbers, strings, lists and dicts (``json.dumps`` takes it): ``traces``,
    ``samples_per_trace``, ``sample_interval_ms`` and ``sample_interval_source``,
    ``delay_ms``, ``record_length_ms`` (first to last sample), ``format``, ``shots`` and
    ``grouped_by``, ``receivers_per_shot`` ``[min, max]``, ``extent_m`` (source/receiver
    x, y, z ``[min, max]`` after the scalars, z down under ``convention``),
    ``depth_fields`` (non-zero depth/elevation fields, raw), ``conventions`` (each
    preset's depths and whether it fits), ``convention``, ``convention_suggested``,
    ``line`` (2D: azimuth, largest off-line distance, projected extents), ``dead_traces``,
    ``max_abs_amplitude``, ``text_header``, ``warnings`` (what read_shots would refuse
    or misread) and ``notes`` (ambiguities, e.g. JUDI depths vs land elevations).

    Raises :class:`SegyError` naming the file when it is missing, not a file, not SEG-Y
    or truncated (as :func:`read_shots` does), and :class:`InvalidArgumentError` for a bad
    option.
    """
    path = Path(path)
    unknown = sorted(set(read_shots_kwargs) - _IGNORED)
    if unknown:
        raise InvalidArgumentError(
            f"segy_info got an unknown option {unknown[0]!r}; it takes read_shots' options "
            f"and scan_traces"
        )
    check_choice("dim", dim, (2, 3))
    check_choice("group_by", group_by, ("source", "field_record"))
    datum = check_scalar("datum", datum)
    line_tolerance = check_nonnegative_scalar("line_tolerance", line_tolerance)
    scan_traces = check_bool("scan_traces", scan_traces)
    convention = geo.parse_convention(convention)
    if convention == geo.AUTO:
        convention = None
    user_conv = None if convention is None else geo.resolve_convention(convention)
    presets = {name: geo.resolve_convention(name) for name in geo.CONVENTIONS}
    fields = set().union(*(geo.header_fields(c) for c in presets.values()))
    fields |= geo.header_fields(user_conv or {})
    fields |= {int(getattr(_T, n)) for n in _DEPTH_FIELDS}
    fields |= {_T.FieldRecord, _T.DelayRecordingTime, _T.TraceIdentificationCode}
    fields |= {_T.CoordinateUnits, _T.ElevationScalar}

    with _open(path) as f:
        h, interval_us = _read_headers(f, path, sorted(fields))
        layout = f.devito_uq_layout
        ntr, ns = f.tracecount, len(f.samples)
        try:
            binary_us = int(f.bin[BinField.Interval])
            fmt = int(f.bin[BinField.Format])
            units = int(f.bin[BinField.MeasurementSystem])
            text = bytes(f.text[0]).decode("ascii", errors="replace")
        except Exception as exc:
            raise SegyError(f"cannot read the headers of {str(path)!r}: {exc}") from exc
        scan = _scan(f, path, ntr, ns) if scan_traces else None

    warnings: list[str] = []
    table = {name: geo.convention_depths(h, c, datum) for name, c in presets.items()}
    suggested = geo.suggest_convention(table)
    if user_conv is None:
        label, conv = suggested or "devito_uq", presets[suggested or "devito_uq"]
    else:
        label = convention if isinstance(convention, str) else dict(convention)
        conv = user_conv
    table_used = geo.convention_depths(h, conv, datum)
    if not table_used["fits"]:
        warnings.append(
            f"read_shots(convention={label!r}, datum={datum:g}) would refuse the file: a "
            f"source or receiver lies {table_used['datum_needed_m'] - datum:.6g} m above the "
            f"datum; give datum={table_used['datum_needed_m']:.6g} (land elevations) or "
            + (f"convention={suggested!r}" if suggested else "the convention it was written in")
        )

    if user_conv is not None:  # depth fields the given convention reads as zeros
        with _warnings.catch_warnings(record=True) as caught:
            _warnings.simplefilter("always")
            geo.choose_convention(convention, h, datum, path)
        warnings += [str(w.message) for w in caught]

    notes: list[str] = []
    if suggested == "judi" and not table["devito_uq"]["fits"]:
        need = table["devito_uq"]["datum_needed_m"]
        notes.append(
            "the elevation fields hold values read as depths (down) by the JUDI preset; if "
            "they are land elevations (up) instead, read with convention='devito_uq' and "
            f"datum >= {need:.6g} m (the elevation of the model's top)"
        )
    xyz = geo.coordinates(h, conv, datum)
    for name, k, value in geo.bad_scalars(h, conv):
        warnings.append(
            f"trace {k} has {name}={value}, outside SEG-Y's 0, ±1 … ±10000: read_shots refuses it"
        )
    for key, k, value, med, extent in geo.outliers(xyz):
        warnings.append(
            f"the {key} of trace {k} is {value:.6g} m, {abs(value - med) / 1000:.6g} km from the "
            f"survey's median {med:.6g} m (extent {extent:.6g} m): read_shots refuses it"
        )
    _, by_source = _group(h, conv, "source")
    _, by_record = _group(h, conv, "field_record")
    groups = by_source if group_by == "source" else by_record
    nrec = [len(g) for g in groups]
    if len(by_record) > len(by_source) and group_by == "source":
        warnings.append(
            f"{len(by_record)} FieldRecords share {len(by_source)} source positions: "
            "group_by='source' merges shots fired at one position"
        )
    if group_by == "field_record":
        src = np.stack([xyz["src_x"], xyz["src_y"], xyz["src_z"]], 1)
        multi = [i for i, g in enumerate(groups) if np.ptp(src[g], axis=0).max() > 0]
        if multi:
            warnings.append(
                f"{len(multi)} FieldRecords hold several source positions (first: shot "
                f"{multi[0]}): read_shots(group_by='field_record') refuses them"
            )

    line = None
    if dim == 2:
        sx, rx, rep = geo.project_line(
            xyz["src_x"], xyz["src_y"], xyz["rec_x"], xyz["rec_y"], np.inf
        )
        line = {
            "azimuth_deg": rep["azimuth_deg"],
            "projected": rep["projected"],
            "max_offline_m": rep["max_offline_m"],
            "line_tolerance_m": line_tolerance,
            "source_x_m": _range(sx),
            "receiver_x_m": _range(rx),
        }
        if rep["max_offline_m"] > line_tolerance:
            warnings.append(
                f"the line is not straight: a point lies {rep['max_offline_m']:.6g} m off the "
                f"best-fit line, more than line_tolerance={line_tolerance:g} m; read_shots "
                "refuses it (raise line_tolerance or read with dim=3)"
            )

    delays = np.unique(h[_T.DelayRecordingTime])
    if delays.size > 1:
        warnings.append(
            f"traces have different delays {delays[:5].tolist()} ms: read_shots refuses"
        )
    if units == 2:
        warnings.append("the binary header says feet (MeasurementSystem 2); devito_uq reads metres")
    coord_units = np.unique(h[_T.CoordinateUnits])
    if np.any(coord_units > 1):
        warnings.append(
            f"CoordinateUnits {coord_units.tolist()}: coordinates are not lengths (2: arc "
            "seconds, 3: degrees); project them to metres first"
        )

    by_header = np.flatnonzero(h[_T.TraceIdentificationCode] == 2)
    dead = {"by_header": int(by_header.size), "scanned": scan is not None}
    if scan is not None:
        union = np.union1d(by_header, scan["zero"])
        dead.update(
            all_zero=int(scan["zero"].size),
            total=int(union.size),
            first=union[:10].tolist(),
            non_finite=len(scan["nonfinite"]),
        )
        if scan["nonfinite"]:
            warnings.append(
                f"{len(scan['nonfinite'])} traces hold NaN or infinite samples (first: trace "
                f"{scan['nonfinite'][0]}): read_shots refuses the shots holding them"
            )
    else:
        dead.update(total=int(by_header.size), first=by_header[:10].tolist())

    depth_fields = {}
    for name in _DEPTH_FIELDS:
        col = h[int(getattr(_T, name))]
        if np.any(col != 0):
            depth_fields[name] = {
                "nonzero_traces": int(np.count_nonzero(col)),
                "raw": [int(col.min()), int(col.max())],
            }

    dt_ms = interval_us / 1000.0
    return {
        "path": str(path),
        "format": {"code": fmt, "name": _FORMATS.get(fmt, "unknown")},
        "byte_order": f"{layout['byte_order']}-endian (from the {layout['byte_order_from']})",
        "traces": int(ntr),
        "samples_per_trace": int(ns),
        "sample_interval_ms": dt_ms,
        "sample_interval_source": "binary header"
        if binary_us > 0
        else "trace headers (the binary header's is 0)",
        "delay_ms": float(delays[0]),
        "record_length_ms": (ns - 1) * dt_ms,
        "shots": len(groups),
        "grouped_by": "FieldRecord"
        if group_by == "field_record"
        else "source position (" + ", ".join(conv[k][2] for k in ("src_x", "src_y", "src_z")) + ")",
        "shots_by_source_position": len(by_source),
        "field_records": len(by_record),
        "receivers_per_shot": [min(nrec), max(nrec)],
        "dim": dim,
        "datum_m": datum,
        "convention": label,
        "convention_suggested": suggested,
        "conventions": table,
        "depth_fields": depth_fields,
        "scalars": {
            "SourceGroupScalar": np.unique(h[_T.SourceGroupScalar])[:5].tolist(),
            "ElevationScalar": np.unique(h[_T.ElevationScalar])[:5].tolist(),
        },
        "extent_m": {
            "source_x": _range(xyz["src_x"]),
            "source_y": _range(xyz["src_y"]),
            "source_z": _range(xyz["src_z"]),
            "receiver_x": _range(xyz["rec_x"]),
            "receiver_y": _range(xyz["rec_y"]),
            "receiver_z": _range(xyz["rec_z"]),
        },
        "line": line,
        "dead_traces": dead,
        "max_abs_amplitude": None if scan is None else scan["peak"],
        "text_header": _text_lines(text)[:4],
        "warnings": warnings,
        "notes": notes,
    }


def _text_lines(text: str) -> list[str]:
    """The non-blank 80-character lines of a textual header, without blank ``C nn`` cards."""
    lines = [text[i : i + 80].strip() for i in range(0, len(text), 80)]
    return [s for s in lines if s and not re.fullmatch(r"C\s*\d*", s)]


def _r(r: list[float]) -> str:
    return f"{r[0]:g}" if r[0] == r[1] else f"{r[0]:g} … {r[1]:g}"


def format_segy_info(info: Mapping[str, Any]) -> str:
    """A multi-line human-readable report of :func:`segy_info`'s result."""
    e, d = info["extent_m"], info["dead_traces"]
    dead = f"{d['total']} dead ({d['by_header']} by TraceIdentificationCode 2"
    dead += f", {d['all_zero']} all-zero)" if d["scanned"] else "; samples not scanned)"
    nr = info["receivers_per_shot"]
    out = [
        f"SEG-Y file {info['path']}",
        f"  format      {info['format']['name']} (code {info['format']['code']}), "
        f"{info['byte_order']}",
        f"  traces      {info['traces']}, {dead}",
        f"  shots       {info['shots']} (grouped by {info['grouped_by']}; "
        f"{info['shots_by_source_position']} source positions, "
        f"{info['field_records']} FieldRecords)",
        f"  receivers   {_r(nr)} per shot",
        f"  time        {info['samples_per_trace']} samples of {info['sample_interval_ms']:g} ms "
        f"(interval from the {info['sample_interval_source']}), delay {info['delay_ms']:g} ms, "
        f"record length {info['record_length_ms']:g} ms",
    ]
    for who in ("source", "receiver"):
        out.append(
            f"  {who:<11} x {_r(e[who + '_x'])} m, y {_r(e[who + '_y'])} m, "
            f"z {_r(e[who + '_z'])} m (down)"
        )
    line = info["line"]
    if line is not None:
        if line["projected"]:
            out.append(
                f"  line        azimuth {line['azimuth_deg']:.2f}° (clockwise from north), "
                f"projected onto it: largest off-line distance {line['max_offline_m']:.3g} m; "
                f"along-line x: sources {_r(line['source_x_m'])} m, receivers "
                f"{_r(line['receiver_x_m'])} m"
            )
        else:
            out.append("  line        along x (y constant): no projection")
    fields = ", ".join(
        f"{k} ({v['nonzero_traces']} traces, raw {_r(v['raw'])})"
        for k, v in info["depth_fields"].items()
    )
    out.append(f"  depths      non-zero fields: {fields or 'none (all depths 0)'}")
    sc = info["scalars"]
    out.append(
        f"  scalars     SourceGroupScalar {sc['SourceGroupScalar']}, "
        f"ElevationScalar {sc['ElevationScalar']}"
    )
    for name, c in info["conventions"].items():
        verdict = "fits" if c["fits"] else f"needs datum={c['datum_needed_m']:.6g} m"
        out.append(
            f"  convention  {name!r}: sources z {_r(c['src_z_m'])} m, receivers z "
            f"{_r(c['rec_z_m'])} m: {verdict}"
        )
    sugg = info["convention_suggested"]
    out.append(
        f"  read with   convention={info['convention']!r}"
        + (f" (suggested: {sugg!r})" if sugg else " (no preset fits: give datum=)")
    )
    if info["max_abs_amplitude"] is not None:
        out.append(f"  amplitude   max |sample| {info['max_abs_amplitude']:.6g}")
    out += [f"  note        {w}" for w in info["notes"]]
    out += [f"  warning     {w}" for w in info["warnings"]]
    return "\n".join(out)
