"""Post-stack SEG-Y images: posterior means, standard deviations and quantiles on a 2D grid.

One trace per x position, samples running down in depth; see :func:`write_image` for
the header convention (shared helpers and atomic writing live in :mod:`devito_uq.io.segy`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from segyio import BinField, TraceField

from devito_uq.errors import InvalidShapeError, SegyError
from devito_uq.io.segy import (
    _apply_scalar,
    _as_numpy,
    _atomic_segy,
    _read_all,
    _scalar_for,
    _scaled,
    _text_header,
    _whole,
)

__all__ = ["write_image", "read_image"]

_T = TraceField


def write_image(
    path: str | os.PathLike,
    image: Any,
    spacing: Sequence[float],
    origin: Sequence[float] = (0.0, 0.0),
) -> Path:
    """Write a 2D image ``[nx, nz]`` (e.g. a posterior mean or std) as post-stack SEG-Y.

    One trace per x position (``CDP`` = 1-based index, ``CDP_X`` = x in m with
    ``SourceGroupScalar``); the samples run down in z. SEG-Y has only a time axis,
    so depth is stored in the time fields in devito_uq's unit convention (m where
    ms go): the sample interval field holds ``dz`` in mm (where µs go; a whole
    number of mm) and ``DelayRecordingTime`` the first depth in m (a whole number).
    ``spacing`` = (dx, dz) m, ``origin`` = (x0, z0) m. Atomic like
    :func:`~devito_uq.io.segy_write.write_shots`.
    """
    path = Path(path)
    img = _as_numpy("image", image)
    if img.ndim != 2 or min(img.shape) < 2:
        raise InvalidShapeError(f"image has shape {list(img.shape)}; expected [nx, nz], both >= 2")
    if not np.all(np.isfinite(img)):
        raise SegyError(f"image contains NaN or infinite values; nothing was written to {path}")
    try:
        dx, dz = (float(s) for s in spacing)
        x0, z0 = (float(o) for o in origin)
    except (TypeError, ValueError) as exc:
        raise SegyError(f"spacing={spacing!r} and origin={origin!r} must be (x, z) pairs") from exc
    if not (np.isfinite(dx) and dx > 0):
        raise SegyError(f"x spacing={dx!r} m must be finite and positive")
    dz_mm = _whole(dz, 1000.0, "z spacing", 1, 32767, path)  # a signed 16-bit field
    z0_m = _whole(z0, 1.0, "z origin", -32768, 32767, path)
    nx, nz = img.shape
    x = x0 + dx * np.arange(nx)
    scalar = _scalar_for(x, "an x coordinate", path)
    cx = _scaled(x, scalar)
    traces = img.astype(np.float32)

    def fill(f: Any) -> None:
        f.text[0] = _text_header(
            [
                "devito_uq image: one trace per x, samples are DEPTH (not time)",
                f"{nx} traces x {nz} depth samples",
                "x: CDP_X times SourceGroupScalar (m); CDP: 1-based x index",
                "sample interval field = dz in mm (where us go); delay = first z in m",
            ]
        )
        f.bin.update(
            {
                BinField.Interval: dz_mm,
                BinField.IntervalOriginal: dz_mm,
                BinField.Samples: nz,
                BinField.MeasurementSystem: 1,
            }
        )
        for i in range(nx):
            f.header[i] = {
                _T.TRACE_SEQUENCE_LINE: i + 1,
                _T.TRACE_SEQUENCE_FILE: i + 1,
                _T.CDP: i + 1,
                _T.CDP_X: int(cx[i]),
                _T.CDP_Y: 0,
                _T.SourceGroupScalar: scalar,
                _T.CoordinateUnits: 1,
                _T.TRACE_SAMPLE_COUNT: nz,
                _T.TRACE_SAMPLE_INTERVAL: dz_mm,
                _T.DelayRecordingTime: z0_m,
            }
            f.trace[i] = traces[i]

    return _atomic_segy(path, nz, nx, fill)


def read_image(
    path: str | os.PathLike,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Read an image written by :func:`write_image`: ``(image [nx, nz] float32, spacing, origin)``.

    ``spacing`` = (dx, dz) m from the ``CDP_X`` step and the depth interval (mm);
    ``origin`` = (x0, z0) m. The ``CDP_X`` values must be evenly spaced.
    """
    path = Path(path)
    h, traces, interval = _read_all(path, (_T.CDP_X, _T.SourceGroupScalar, _T.DelayRecordingTime))
    x = _apply_scalar(h[_T.CDP_X], h[_T.SourceGroupScalar])
    if x.size < 2:
        raise SegyError(f"{str(path)!r} holds {x.size} trace; an image needs at least 2")
    steps = np.diff(x)
    if steps[0] <= 0 or np.ptp(steps) > 1e-6 * abs(steps[0]):
        raise SegyError(f"{str(path)!r}: CDP_X values are not evenly increasing")
    return (
        traces,
        (float(steps[0]), interval / 1000.0),
        (float(x[0]), float(h[_T.DelayRecordingTime][0])),
    )
