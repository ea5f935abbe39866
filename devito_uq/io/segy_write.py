"""Write shot records as SEG-Y in the header convention of :mod:`devito_uq.io.segy`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from segyio import BinField

from devito_uq.errors import InvalidShapeError, SegyError
from devito_uq.io.segy import _T
from devito_uq.io.segy_encode import (
    _as_numpy,
    _atomic_segy,
    _scalar_for,
    _scaled,
    _text_header,
    _whole,
)
from devito_uq.physics.survey import Survey

__all__ = ["write_shots"]


def write_shots(path: str | os.PathLike, survey: Survey, data: Any) -> Path:
    """Write shot records ``data`` ``[shot, time, max_receivers]`` of ``survey`` as SEG-Y.

    One float32 trace per (shot, receiver) of that shot, shot-major, with the headers of
    :mod:`devito_uq.io.segy`'s docstring. ``data`` is a numpy array or torch tensor (any
    float dtype, stored as float32); shots with fewer receivers than ``max(survey.nreceivers)`` are
    zero-padded there (:func:`~devito_uq.physics.survey.pad_traces`), and the padding is
    not written. Dead traces (``survey.trace_mask`` False) are written with
    ``TraceIdentificationCode`` 2, so :func:`~devito_uq.io.segy.read_shots` gives back
    the same mask.
    The time axis written is ``survey.data_axis`` (the solver axis unless the survey has
    its own data axis): its ``dt`` must be a whole number of µs and ``t0`` of ms.

    Raises :class:`SegyError` / :class:`InvalidShapeError` before anything is
    written; an existing file at ``path`` is replaced only by a complete new one.
    Returns the path.
    """
    path = Path(path)
    if not isinstance(survey, Survey):
        raise SegyError(f"survey must be a devito_uq Survey, got {type(survey).__name__}")
    d = _as_numpy("data", data)
    axis = survey.data_axis  # the solver axis unless the survey has its own data axis
    nrecs = survey.nreceivers
    want = (survey.nshots, axis.nt, max(nrecs))
    if d.shape != want:
        raise InvalidShapeError(
            f"data has shape {list(d.shape)}; expected [shot, time, receiver] = {list(want)}"
            + ("" if survey.shared_receivers else f" (receiver counts {nrecs}, zero-padded)")
        )
    # The traces written, shot-major: receiver r of shot s exists when r < nrecs[s].
    shot_of, rec_of = np.nonzero(np.arange(want[2])[None, :] < np.array(nrecs)[:, None])
    traces = d.transpose(0, 2, 1)[shot_of, rec_of]  # [trace, time]; padding dropped
    bad = ~np.isfinite(traces)
    if bad.any():
        k, t = np.argwhere(bad)[0]
        raise SegyError(
            f"data contains NaN or infinite values (first at shot {shot_of[k]}, sample {t}, "
            f"receiver {rec_of[k]}); nothing was written to {path}"
        )
    if np.max(np.abs(traces)) > np.finfo(np.float32).max:
        raise SegyError(f"data exceeds the float32 range of SEG-Y samples; cannot write {path}")
    dt_us = _whole(axis.dt, 1000.0, "dt", 1, 32767, path)
    t0_ms = _whole(axis.t0, 1.0, "t0", -32768, 32767, path)
    if axis.nt > 65535:
        raise SegyError(f"nt={axis.nt} samples exceeds SEG-Y's 65535 per trace ({path})")

    dim, nshot, nt, ntr = survey.dim, survey.nshots, axis.nt, len(shot_of)
    src = survey.src_positions[shot_of]  # [trace, dim]
    rec = np.concatenate(survey.rec_positions)  # [trace, dim], the same shot-major order
    xy_scalar = _scalar_for(
        np.concatenate([src[:, :-1], rec[:, :-1]]), "a horizontal coordinate", path
    )
    z_scalar = _scalar_for(np.concatenate([src[:, -1], rec[:, -1]]), "a depth", path)
    sx, rx = _scaled(src[:, 0], xy_scalar), _scaled(rec[:, 0], xy_scalar)
    zero = np.zeros(ntr, dtype=np.int64)
    sy = _scaled(src[:, 1], xy_scalar) if dim == 3 else zero
    ry = _scaled(rec[:, 1], xy_scalar) if dim == 3 else zero
    sz, rz = _scaled(src[:, -1], z_scalar), _scaled(rec[:, -1], z_scalar)
    code = np.where(survey.trace_mask[shot_of, rec_of], 1, 2)  # 1 seismic data, 2 dead
    traces = np.ascontiguousarray(traces, dtype=np.float32)

    def fill(f: Any) -> None:
        f.text[0] = _text_header(
            [
                "devito_uq shot records: one trace per shot and receiver, shot-major",
                f"{nshot} shots, {min(nrecs)}-{max(nrecs)} receivers, {nt} samples of "
                f"{dt_us} us, {dim}D",
                "x,y: SourceX/Y GroupX/Y times SourceGroupScalar (m)",
                "z down: SourceDepth, -ReceiverGroupElevation times ElevationScalar (m)",
                "shot: FieldRecord (1-based), receiver: TraceNumber (1-based)",
                "t0: DelayRecordingTime (ms); format 5 IEEE float; dead: TraceIdCode 2",
            ]
        )
        f.bin.update(
            {
                BinField.Interval: dt_us,
                BinField.IntervalOriginal: dt_us,
                BinField.Samples: nt,
                BinField.Traces: max(nrecs),  # data traces per ensemble (shot), at most
                BinField.AuxTraces: 0,
                BinField.MeasurementSystem: 1,  # metres
            }
        )
        for k in range(ntr):
            f.header[k] = {
                _T.TRACE_SEQUENCE_LINE: k + 1,
                _T.TRACE_SEQUENCE_FILE: k + 1,
                _T.FieldRecord: int(shot_of[k]) + 1,
                _T.TraceIdentificationCode: int(code[k]),
                _T.TraceNumber: int(rec_of[k]) + 1,
                _T.SourceX: int(sx[k]),
                _T.SourceY: int(sy[k]),
                _T.GroupX: int(rx[k]),
                _T.GroupY: int(ry[k]),
                _T.SourceGroupScalar: xy_scalar,
                _T.SourceDepth: int(sz[k]),
                _T.ReceiverGroupElevation: -int(rz[k]),
                _T.ElevationScalar: z_scalar,
                _T.CoordinateUnits: 1,
                _T.TRACE_SAMPLE_COUNT: nt,
                _T.TRACE_SAMPLE_INTERVAL: dt_us,
                _T.DelayRecordingTime: t0_ms,
            }
            f.trace[k] = traces[k]

    return _atomic_segy(path, nt, ntr, fill)
