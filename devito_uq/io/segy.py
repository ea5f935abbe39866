r"""SEG-Y shot records (segyio): the header convention, the shared helpers and
:func:`read_shots`; the writer is :mod:`devito_uq.io.segy_write`, post-stack images
:mod:`devito_uq.io.segy_image`.

Header convention (read and written the same way, so files round-trip):

=====================  ===========================================================
 quantity               SEG-Y trace header (byte)
=====================  ===========================================================
 source x, y (m)        ``SourceX`` (73), ``SourceY`` (77) × ``SourceGroupScalar`` (71)
 receiver x, y (m)      ``GroupX`` (81), ``GroupY`` (85) × ``SourceGroupScalar``
 source z (m, down)     ``SourceDepth`` (49) × ``ElevationScalar`` (69)
 receiver z (m, down)   ``−ReceiverGroupElevation`` (41) × ``ElevationScalar``
 shot number            ``FieldRecord`` (9), 1-based; receiver number ``TraceNumber`` (13)
 first time t0 (ms)     ``DelayRecordingTime`` (109)
 sample interval        binary ``Interval`` (3217) and ``TRACE_SAMPLE_INTERVAL`` (117), µs
=====================  ===========================================================

The datum (z = 0) is the surface: a source ``SourceDepth`` below it sits at
``z = SourceDepth``; a receiver's elevation is positive *up* (SEG-Y), Devito's z
is positive *down*, hence the sign. Scalars follow SEG-Y: positive multiplies,
negative divides, 0 means 1. Writers pick the smallest power of ten (up to 10⁴,
i.e. 0.1 mm) that stores every coordinate exactly in the 32-bit fields.

Time is in ms in devito_uq and in µs in SEG-Y: ``dt`` must be a whole number of
µs to be written (choose e.g. ``floor(1000·critical_dt)/1000``). Samples are
IEEE float32 (format 5). The source wavelet is not stored in SEG-Y; give
``f0_hz=`` (Ricker) or ``wavelet=`` to :func:`read_shots`.

Every writer validates everything first, writes to a temporary file in the
target's folder and moves it over the target with ``os.replace``: a failure
never leaves a half-written file nor touches an existing one.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import segyio
from segyio import BinField, TraceField

from devito_uq.errors import SegyError
from devito_uq.io import segy_geometry as geo
from devito_uq.io._files import check_input_file
from devito_uq.physics.resample import TimeAxis
from devito_uq.physics.survey import Survey

__all__ = ["read_shots", "segy_layout", "READABLE_FORMATS"]

_T = TraceField


# ----------------------------------------------------------------------------- shots
#: Sample formats (binary header bytes 3225-3226) segyio decodes; any other code is
#: refused (segyio would read it as IBM floats, with only a warning).
READABLE_FORMATS = frozenset({1, 2, 3, 5, 6, 8, 9, 10, 11, 12, 16})
_BINARY_END = 3600
_FORMAT_AT, _BYTE_ORDER_AT = 3224, 3296  # 0-based offsets of the two binary-header words
_EXT_INTERVAL_AT, _REVISION_AT = 3272, 3500  # rev 2: the double interval, major revision


def segy_layout(path: str | os.PathLike) -> dict[str, Any]:
    """Byte order and sample format of a SEG-Y file, from its binary header alone.

    SEG-Y rev 2 allows little-endian files and marks the byte order with the word
    ``0x01020304`` at bytes 3297-3300; where that word is absent (rev 0/1 files) the
    order is the one in which the sample-format code is a known one (big-endian first).

    Returns
    -------
    dict
        ``byte_order`` (``"big"`` or ``"little"``), ``byte_order_from`` (``"rev2 word"``
        or ``"format code"``), ``format`` (the code) and ``extended_interval`` (rev 2's
        double sample interval when the file is rev ≥ 2 and it is positive, else None).

    Raises
    ------
    SegyError
        The file is shorter than its headers, or its format code is not one of
        :data:`READABLE_FORMATS` in either byte order (the message names the code).
    """
    path = check_input_file(path, "SEG-Y file", SegyError)
    try:
        with open(path, "rb") as fh:  # a regular file (checked above): bounded read
            head = fh.read(_BINARY_END)
    except OSError as exc:
        raise SegyError(f"SEG-Y file {str(path)!r} cannot be read: {exc.strerror}") from None
    if len(head) < _BINARY_END:
        raise SegyError(
            f"{str(path)!r} is not a readable SEG-Y file (truncated?): {len(head)} bytes, "
            f"shorter than the {_BINARY_END}-byte headers"
        )
    word = head[_BYTE_ORDER_AT : _BYTE_ORDER_AT + 4]
    code = {o: int.from_bytes(head[_FORMAT_AT : _FORMAT_AT + 2], o) for o in ("big", "little")}
    orders = {b"\x01\x02\x03\x04": "big", b"\x04\x03\x02\x01": "little"}
    if word in orders:
        order, source = orders[word], "rev2 word"
    else:
        order = next((o for o in ("big", "little") if code[o] in READABLE_FORMATS), None)
        source = "format code"
    if order is None or code[order] not in READABLE_FORMATS:
        shown = code[order] if order is not None else f"{code['big']} (big-endian)"
        raise SegyError(
            f"{str(path)!r} has the sample-format code {shown} in its binary header (bytes "
            f"3225-3226), not one of the readable codes {sorted(READABLE_FORMATS)}; its "
            "samples would be decoded as garbage"
        )
    ext = None  # rev 2: a non-zero extended interval overrides the 16-bit one
    if head[_REVISION_AT] >= 2:
        fmt = ">d" if order == "big" else "<d"
        ext = struct.unpack(fmt, head[_EXT_INTERVAL_AT : _EXT_INTERVAL_AT + 8])[0]
        ext = ext if np.isfinite(ext) and ext > 0 else None
    return {
        "byte_order": order,
        "byte_order_from": source,
        "format": code[order],
        "extended_interval": ext,
    }


def _open(path: Path) -> Any:
    """The open segyio file, in its own byte order; ``f.devito_uq_layout`` holds
    :func:`segy_layout`."""
    layout = segy_layout(path)
    try:
        f = segyio.open(str(path), "r", ignore_geometry=True, endian=layout["byte_order"])
    except Exception as exc:  # segyio raises RuntimeError/IOError for short or corrupt files
        raise SegyError(f"{str(path)!r} is not a readable SEG-Y file (truncated?): {exc}") from exc
    f.devito_uq_layout = layout
    return f


def _read_headers(f: Any, path: Path, fields: Sequence[int]) -> tuple[dict[int, np.ndarray], float]:
    """Header columns of an open file and its sample interval (µs), checked; no samples read."""
    try:
        ntr = f.tracecount
        if ntr == 0:
            raise SegyError(f"SEG-Y file {str(path)!r} holds no traces")
        ns = len(f.samples)
        cols = {k: np.asarray(f.attributes(k)[:], dtype=np.int64) for k in fields}
        counts = np.asarray(f.attributes(_T.TRACE_SAMPLE_COUNT)[:])
        intervals = np.asarray(f.attributes(_T.TRACE_SAMPLE_INTERVAL)[:])
        interval = int(f.bin[BinField.Interval])
    except SegyError:
        raise
    except Exception as exc:
        raise SegyError(f"cannot read the headers of {str(path)!r} (truncated?): {exc}") from exc
    odd = np.flatnonzero((counts != 0) & (counts != ns))
    if odd.size:
        raise SegyError(
            f"{str(path)!r}: trace {odd[0]} has {counts[odd[0]]} samples but the file has {ns} "
            "per trace (inconsistent trace lengths)"
        )
    if f.devito_uq_layout["extended_interval"] is not None:  # rev 2 overrides the 16 bits
        return cols, f.devito_uq_layout["extended_interval"]
    if interval <= 0:  # JUDI/SegyIO.jl may leave the binary interval 0
        interval = int(intervals[0])
    if interval <= 0:
        raise SegyError(f"{str(path)!r} has a zero sample interval (binary and trace headers)")
    odd = np.flatnonzero((intervals != 0) & (intervals != interval))
    if odd.size:
        raise SegyError(
            f"{str(path)!r}: trace {odd[0]} has sample interval {intervals[odd[0]]} µs, "
            f"the file {interval} µs"
        )
    return cols, interval


def _read_traces(f: Any, path: Path, index: np.ndarray | None = None) -> np.ndarray:
    """Samples ``[trace, sample]`` float32 of the traces ``index`` (all when None)."""
    try:
        ns = len(f.samples)
        if index is None:
            traces = np.asarray(f.trace.raw[:], dtype=np.float32).reshape(-1, ns)
            index = np.arange(traces.shape[0])
        else:
            traces = np.empty((len(index), ns), dtype=np.float32)
            for j, k in enumerate(index):
                traces[j] = f.trace.raw[int(k)]
    except Exception as exc:
        raise SegyError(f"cannot read the traces of {str(path)!r} (truncated?): {exc}") from exc
    bad = np.flatnonzero(~np.isfinite(traces).all(axis=1))
    if bad.size:
        raise SegyError(f"{str(path)!r}: trace {index[bad[0]]} contains NaN or infinite samples")
    return traces


def _read_all(path: Path, fields: Sequence[int]) -> tuple[dict[int, np.ndarray], np.ndarray, int]:
    """Header columns, traces ``[trace, sample]`` float32 and the sample interval (µs)."""
    with _open(path) as f:
        cols, interval = _read_headers(f, path, fields)
        traces = _read_traces(f, path)
    return cols, traces, interval


def read_shots(
    path: str | os.PathLike,
    f0_hz: float | None = None,
    wavelet: Any = None,
    dim: int = 2,
    group_by: str = "source",
    convention: str | Mapping[str, str] = "devito_uq",
    datum: float = 0.0,
    line_tolerance: float = 10.0,
    shots: Any = None,
    model: Any = None,
    vmax: float | None = None,
    delay: float | None = None,
    wavelet_dt: float | None = None,
    wavelet_t0: float = 0.0,
) -> tuple[Survey, np.ndarray]:
    """Read shot records written by :func:`~devito_uq.io.segy_write.write_shots` or in
    another header convention.

    Parameters
    ----------
    path : SEG-Y file.
    f0_hz, wavelet : the source wavelet (not stored in SEG-Y), passed to :class:`Survey`:
        a Ricker peak frequency (Hz) or samples (see ``survey_kwargs``).
    dim : 2 (x, z: a line, projected onto its best-fit direction when y varies) or 3.
    group_by : ``"source"`` (traces with equal source x, y, z form a shot; repeated
        shots at one position merge into one) or ``"field_record"`` (equal ``FieldRecord``).
        Shots are ordered by first appearance; receivers keep the file order.
    convention : ``"devito_uq"``, ``"judi"``, ``"auto"`` (the preset that fits the file,
        as ``devito-uq info`` detects it; refused when ambiguous) or a mapping of quantities
        to header fields, or its text form ``"src_z=SourceDepth,..."``
        (:mod:`devito_uq.io.segy_geometry`). Depth fields that disagree with it give one
        :class:`~devito_uq.errors.SegyHeaderWarning`.
    datum : metres added to every depth (z down); a depth above 0 after it is refused.
    line_tolerance : largest off-line distance (m) accepted when projecting a 2D line.
    shots : shot indices to read (default all): headers are read first, then only the
        samples of these shots (each MPI rank reads its own). Geometry (projection,
        shot numbering) is computed from all headers, so every rank agrees.
    model, vmax : an :class:`AcousticModel` and the largest velocity (km/s) to model:
        the survey then keeps the file's time axis as its *data* axis and picks a
        stable solver step (:meth:`Survey.for_data`). Without them the solver steps at
        the file's interval (which must then satisfy the CFL rule).
    delay, wavelet_dt, wavelet_t0 : passed on to :class:`Survey` (Ricker centre time, or
        the sampling of a user wavelet), ms.

    Returns
    -------
    survey : Survey of the selected shots (per-shot receivers, ``trace_mask`` False for
        dead traces: ``TraceIdentificationCode`` 2 or all-zero samples); ``survey.segy_report``
        holds the convention (the preset ``"auto"`` chose), datum, line azimuth and
        off-line distance, shots read.
    data : float32 ``[shot, time, max_receivers]``, zero-padded (see ``survey.mask()``).
    """
    path = Path(path)
    if dim not in (2, 3) or isinstance(dim, bool):
        raise SegyError(f"dim={dim!r} must be 2 or 3")
    if group_by not in ("source", "field_record"):
        raise SegyError(f"group_by={group_by!r} must be 'source' or 'field_record'")
    fields = geo.fields_to_read(convention) | {  # a bad convention: refused before opening
        _T.FieldRecord,
        _T.DelayRecordingTime,
        _T.TraceIdentificationCode,
    }
    try:
        datum = float(datum)
        line_tolerance = float(line_tolerance)
    except (TypeError, ValueError) as exc:
        raise SegyError(f"datum={datum!r} and line_tolerance must be numbers (m)") from exc
    if not np.isfinite(datum) or not (np.isfinite(line_tolerance) and line_tolerance >= 0):
        raise SegyError(f"datum={datum!r} must be finite, line_tolerance={line_tolerance!r} >= 0")
    if (model is None) != (vmax is None):
        raise SegyError("give both model and vmax (to pick the solver's time step) or neither")
    with _open(path) as f:
        h, interval = _read_headers(f, path, sorted(fields))
        layout = f.devito_uq_layout
        conv, label, hint = geo.choose_convention(convention, h, datum, path)
        geo.check_scalars(h, conv, path)
        xyz = geo.coordinates(h, conv, datum)
        geo.check_extent(xyz, path)
        shot_of_trace, groups = _group(h, conv, group_by)
        selected = _select(shots, len(groups))
        index = np.concatenate([groups[s] for s in selected])
        traces = _read_traces(f, path, index)  # only the selected shots' samples
    ns = traces.shape[1]
    delays = h[_T.DelayRecordingTime]
    if np.ptp(delays) > 0:
        raise SegyError(f"{str(path)!r}: traces have different delays {np.unique(delays)[:5]} ms")
    for key, what in (("src_z", "source"), ("rec_z", "receiver")):
        geo.check_depths(xyz[key][index], what, conv, shot_of_trace[index], datum, hint)
    report: dict[str, Any] = {"convention": label, "datum_m": datum, **layout}
    if dim == 2:
        sx, rx, line = geo.project_line(
            xyz["src_x"], xyz["src_y"], xyz["rec_x"], xyz["rec_y"], line_tolerance
        )
        report.update(line)
        src_all = np.stack([sx, xyz["src_z"]], 1)
        rec_all = np.stack([rx, xyz["rec_z"]], 1)
    else:
        src_all = np.stack([xyz["src_x"], xyz["src_y"], xyz["src_z"]], 1)
        rec_all = np.stack([xyz["rec_x"], xyz["rec_y"], xyz["rec_z"]], 1)
    src, rec, blocks = [], [], []
    pos = 0
    for s in selected:
        g = groups[s]
        if np.ptp(src_all[g], axis=0).max() > 0:
            raise SegyError(f"{str(path)!r}: shot {s} (FieldRecord) has several source positions")
        src.append(src_all[g[0]])
        rec.append(rec_all[g])
        blocks.append(traces[pos : pos + len(g)])
        pos += len(g)
    nmax = max(len(b) for b in blocks)
    data = np.zeros((len(selected), ns, nmax), dtype=np.float32)
    live = np.zeros((len(selected), nmax), dtype=bool)
    for i, (s, b) in enumerate(zip(selected, blocks)):
        data[i, :, : len(b)] = b.T
        dead = (h[_T.TraceIdentificationCode][groups[s]] == 2) | ~np.any(b != 0, axis=1)
        live[i, : len(b)] = ~dead
    if ns < 3:
        raise SegyError(f"{str(path)!r} has {ns} samples per trace; a survey needs at least 3")
    axis = TimeAxis(float(delays[0]), interval / 1000.0, ns)
    kw = dict(
        f0_hz=f0_hz,
        wavelet=wavelet,
        trace_mask=live,
        delay=delay,
        wavelet_dt=wavelet_dt,
        wavelet_t0=wavelet_t0,
    )
    if model is not None:
        survey = Survey.for_data(model, np.stack(src), rec, axis, vmax, **kw)
    else:  # the file's axis is the solver's (the time-axis rule absorbs round-off)
        survey = Survey(np.stack(src), rec, t1=axis.t1, dt=axis.dt, t0=axis.t0, **kw)
        if survey.nt != ns:  # pragma: no cover - guards the time-axis rule
            raise SegyError(f"{str(path)!r}: time axis of {survey.nt} samples, file has {ns}")
    report.update(shots=selected, nshots_in_file=len(groups), dead_traces=int((~live).sum()))
    report["dead_traces"] -= int(sum(nmax - len(b) for b in blocks))  # padding is not dead
    survey.segy_report = report
    return survey, data


def _group(h: dict, conv: dict, group_by: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Shot number of every trace and the trace indices of each shot (file order)."""
    if group_by == "source":
        keys = np.stack([h[conv[k][0]] for k in ("src_x", "src_y", "src_z")], 1)
    else:
        keys = h[_T.FieldRecord][:, None]
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    # Number the shots in order of first appearance, then split the traces by shot
    # (a stable sort keeps the file order of the receivers within a shot).
    shot_of_key = np.empty(len(first), dtype=np.int64)
    shot_of_key[np.argsort(first)] = np.arange(len(first))
    shot_of_trace = shot_of_key[inverse.ravel()]
    by_shot = np.argsort(shot_of_trace, kind="stable")
    return shot_of_trace, np.split(by_shot, np.cumsum(np.bincount(shot_of_trace))[:-1])


def _select(shots: Any, nshots: int) -> list[int]:
    """Validated shot indices (``None``: all) among ``nshots``; integers only."""
    if shots is None:
        return list(range(nshots))
    items = [shots] if not isinstance(shots, (list, tuple, np.ndarray)) else list(shots)
    out = []
    for s in items:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)):
            raise SegyError(f"shots={shots!r}: {s!r} is not a shot index (an integer)")
        if not 0 <= int(s) < nshots:
            raise SegyError(f"shots={shots!r}: index {int(s)} is out of range for {nshots} shots")
        out.append(int(s))
    if not out:
        raise SegyError("shots=[] selects no shot; give at least one index")
    return out
