"""Post-stack SEG-Y images: posterior means, standard deviations and quantiles on a 2D grid.

One trace per x position, samples running down in depth. SEG-Y has only a time axis, so
depth goes where time goes, in devito_uq's unit convention (m where ms go):

=====================  ====================================================================
 quantity               where (SEG-Y)
=====================  ====================================================================
 x (m)                  ``CDP_X`` (181) × ``SourceGroupScalar`` (71); ``CDP`` = 1-based x index
 depth spacing dz       rev 2 *extended sample interval* (binary bytes 3273-3280, IEEE
                        double) in mm where µs go — any spacing, exactly; the 16-bit
                        interval (binary 3217, trace 117) holds it too when it is a whole
                        number of mm ≤ 32767 (≤ 32.767 m), else 0
 first depth z0 (m)     ``DelayRecordingTime`` (109) × ``ScalarTraceHeader`` (215), the
                        rev 1 scalar of the trace's times
 quantity and unit      textual header line ``quantity: ...`` (e.g. ``velocity, km/s``),
                        beside the grid (dx, dz, x0, z0) in decimal
=====================  ====================================================================

The file is marked SEG-Y rev 2.0 (big-endian). :func:`check_image` runs every check of
:func:`write_image` on the grid alone, so an application refuses an image it could not write
before any solve. Files of earlier versions (dz in the 16-bit field only, rev 1) still read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from segyio import BinField, TraceField

from devito_uq.errors import InvalidShapeError, SegyError
from devito_uq.io.hdf5 import MODEL_DATASETS, is_hdf5, read_hdf5_model
from devito_uq.io.segy import _open, _read_all
from devito_uq.io.segy_encode import (
    _apply_scalar,
    _as_numpy,
    _atomic_segy,
    _scalar_for,
    _scaled,
    _text_header,
)

__all__ = [
    "MODEL_UNITS",
    "check_image",
    "image_quantity",
    "read_image",
    "read_velocity",
    "write_image",
]

_T = TraceField
_INT16 = (-32768, 32767)
_MAX_SAMPLES = 65535  # samples per trace: an unsigned 16-bit field
_QUANTITY = "quantity: "


def _delay_scalar(z0: float, path: Any) -> tuple[int, int]:
    """``(value, scalar)`` storing ``z0`` (m) exactly in the 16-bit delay, or SegyError."""
    for scalar in (1, -10, -100, -1000, -10000, 10, 100, 1000, 10000):
        unit = 1.0 / -scalar if scalar < 0 else float(scalar)  # negative scalars divide
        n = round(z0 / unit) if np.isfinite(z0) else None
        if (
            n is not None
            and abs(n * unit - z0) <= 1e-9 * max(1.0, abs(z0))
            and (_INT16[0] <= n <= _INT16[1])
        ):
            return int(n), scalar
    raise SegyError(
        f"z origin={z0!r} m cannot be stored in SEG-Y ({path}): the first depth goes in the "
        "16-bit delay with a scalar, i.e. to 0.1 mm up to 3.2767 m, to 1 m up to 32,767 m, "
        "to 10 km up to 327,670 km"
    )


def check_image(
    shape: Sequence[int],
    spacing: Sequence[float],
    origin: Sequence[float] = (0.0, 0.0),
    quantity: str = "",
    path: Any = "the image",
) -> dict[str, Any]:
    """Check that :func:`write_image` can store an image of this grid; no file is touched.

    Parameters
    ----------
    shape : (nx, nz)
        Traces and depth samples, both ≥ 2 (nz ≤ 65535).
    spacing, origin : (x, z) pairs
        m; any positive spacing, an origin with x to 0.1 mm and z as :func:`write_image`.
    quantity : str
        The quantity and unit for the textual header (printable ASCII, ≤ 64 characters).
    path : str or os.PathLike
        Named in the messages.

    Returns
    -------
    dict
        The header values (``dz_mm``, ``dz_mm_16bit``, ``delay``, ``delay_scalar``,
        ``x_scalar``, ``x``).

    Raises
    ------
    InvalidShapeError, SegyError
        Naming the value that cannot be stored.
    """
    if len(shape) != 2 or min(shape) < 2:
        raise InvalidShapeError(f"image has shape {list(shape)}; expected [nx, nz], both >= 2")
    nx, nz = (int(n) for n in shape)
    if nz > _MAX_SAMPLES:
        raise SegyError(f"nz={nz} depth samples exceeds SEG-Y's {_MAX_SAMPLES} per trace ({path})")
    try:
        dx, dz = (float(s) for s in spacing)
        x0, z0 = (float(o) for o in origin)
    except (TypeError, ValueError) as exc:
        raise SegyError(f"spacing={spacing!r} and origin={origin!r} must be (x, z) pairs") from exc
    for name, value in (("x spacing", dx), ("z spacing", dz)):
        if not (np.isfinite(value) and value > 0):
            raise SegyError(f"{name}={value!r} m must be finite and positive")
    if not np.isfinite(x0):
        raise SegyError(f"x origin={x0!r} m must be finite")
    if not (isinstance(quantity, str) and len(quantity) <= 64 and quantity.isascii()):
        raise SegyError(f"quantity={quantity!r} must be ASCII text of at most 64 characters")
    if not quantity.isprintable():
        raise SegyError(f"quantity={quantity!r} must be printable (one line)")
    delay, delay_scalar = _delay_scalar(z0, path)
    x = x0 + dx * np.arange(nx)
    dz_mm = dz * 1000.0
    whole = round(dz_mm) == dz_mm and dz_mm <= _INT16[1]
    return {
        "dz_mm": dz_mm,
        "dz_mm_16bit": int(dz_mm) if whole else 0,
        "delay": delay,
        "delay_scalar": delay_scalar,
        "x_scalar": _scalar_for(x, "an x coordinate", path),
        "x": x,
    }


def write_image(
    path: str | os.PathLike,
    image: Any,
    spacing: Sequence[float],
    origin: Sequence[float] = (0.0, 0.0),
    quantity: str = "",
) -> Path:
    """Write a 2D image ``[nx, nz]`` (e.g. a posterior mean or std) as post-stack SEG-Y.

    The header convention is this module's docstring. ``spacing`` = (dx, dz) m (any
    positive values, dz stored exactly), ``origin`` = (x0, z0) m, ``quantity`` the quantity
    and unit stated in the textual header (``"velocity, km/s"``). Atomic like
    :func:`~devito_uq.io.segy_write.write_shots`; everything is checked first
    (:func:`check_image`). Returns the path.
    """
    path = Path(path)
    img = _as_numpy("image", image)
    if img.ndim != 2:
        raise InvalidShapeError(f"image has shape {list(img.shape)}; expected [nx, nz], both >= 2")
    head = check_image(img.shape, spacing, origin, quantity, path)
    if not np.all(np.isfinite(img)):
        raise SegyError(f"image contains NaN or infinite values; nothing was written to {path}")
    nx, nz = img.shape
    cx = _scaled(head["x"], head["x_scalar"])
    traces = np.ascontiguousarray(img, dtype=np.float32)  # one contiguous row per trace
    (dx, dz), (x0, z0) = (float(s) for s in spacing), (float(o) for o in origin)

    def fill(f: Any) -> None:
        f.text[0] = _text_header(
            [
                "devito_uq image: one trace per x, samples are DEPTH (not time)",
                _QUANTITY + (quantity or "not stated"),
                f"{nx} traces x {nz} depth samples",
                f"dx = {dx!r} m, dz = {dz!r} m",
                f"first x = {x0!r} m, first z = {z0!r} m",
                "x: CDP_X times SourceGroupScalar (m); CDP: 1-based x index",
                "dz: rev 2 extended sample interval (bytes 3273-3280, double), mm",
                "where us go; also bytes 3217 and trace 117 when whole mm <= 32767",
                "first z: DelayRecordingTime times ScalarTraceHeader (byte 215), m",
            ]
        )
        f.bin.update(
            {
                BinField.Interval: head["dz_mm_16bit"],
                BinField.IntervalOriginal: head["dz_mm_16bit"],
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
                _T.SourceGroupScalar: head["x_scalar"],
                _T.CoordinateUnits: 1,
                _T.TRACE_SAMPLE_COUNT: nz,
                _T.TRACE_SAMPLE_INTERVAL: head["dz_mm_16bit"],
                _T.DelayRecordingTime: head["delay"],
                _T.ScalarTraceHeader: head["delay_scalar"],
            }
            f.trace[i] = traces[i]

    return _atomic_segy(path, nz, nx, fill, extended_interval=head["dz_mm"])


def read_image(
    path: str | os.PathLike,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Read an image written by :func:`write_image`: ``(image [nx, nz] float32, spacing, origin)``.

    ``spacing`` = (dx, dz) m: dx from the first and last ``CDP_X`` (evenly spaced to their
    precision), dz from the extended interval (or the 16-bit one), mm; ``origin`` = (x0, z0) m.
    """
    path = Path(path)
    fields = (_T.CDP_X, _T.SourceGroupScalar, _T.DelayRecordingTime, _T.ScalarTraceHeader)
    h, traces, interval = _read_all(path, fields)
    x = _apply_scalar(h[_T.CDP_X], h[_T.SourceGroupScalar])
    if x.size < 2:
        raise SegyError(f"{str(path)!r} holds {x.size} trace; an image needs at least 2")
    dx = (x[-1] - x[0]) / (x.size - 1)
    # Each x is stored to the scalar's unit (|scalar| divides): steps agree to two units.
    s = h[_T.SourceGroupScalar].astype(np.float64)
    unit = np.where(s < 0, 1.0 / np.maximum(np.abs(s), 1.0), np.maximum(s, 1.0))
    if dx <= 0 or np.ptp(np.diff(x)) > 2 * unit.max() + 1e-6 * abs(dx):
        raise SegyError(f"{str(path)!r}: CDP_X values are not evenly increasing")
    z0 = _apply_scalar(h[_T.DelayRecordingTime][:1], h[_T.ScalarTraceHeader][:1])[0]
    return traces, (float(dx), float(interval) / 1000.0), (float(x[0]), float(z0))


def image_quantity(path: str | os.PathLike) -> str | None:
    """The quantity and unit a :func:`write_image` file states (``None``: not stated)."""
    with _open(Path(path)) as f:
        text = bytes(f.text[0]).decode("ascii", errors="replace")
    for card in (text[i : i + 80] for i in range(0, len(text), 80)):
        body = card[4:].strip()  # "C nn " prefix
        if body.startswith(_QUANTITY):
            value = body[len(_QUANTITY) :]
            return None if value == "not stated" else value
    return None


#: Units a velocity model may come in: name → (km/s from the stored value, median range
#: that detects it). Squared slowness ``m`` gives ``1/√m``.
MODEL_UNITS = {
    "km/s": (lambda a: a, (1.0, 20.0)),
    "m/s": (lambda a: a / 1000.0, (100.0, 20000.0)),
    "s2/km2": (lambda a: 1.0 / np.sqrt(a), (0.0025, 1.0)),
    "s2/m2": (lambda a: 1e-3 / np.sqrt(a), (2.5e-9, 1e-6)),
}


def read_velocity(
    path: str | os.PathLike, units: str = "auto", datasets: Sequence[str] = MODEL_DATASETS
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float], str]:
    """Read a model (a SEG-Y image, :func:`read_image`, or HDF5 in JUDI's layout,
    :func:`~devito_uq.io.hdf5.read_hdf5_model`) as velocity in km/s, whatever it stores.

    Parameters
    ----------
    path : str or os.PathLike
        A SEG-Y image ``[nx, nz]`` or an HDF5 file (``m``/``m0`` ``[nz, nx]``, ``d``,
        ``o``), any origin; told apart by the file's signature.
    units : str
        ``"auto"`` (detected from the median value: km/s in 1–20, m/s in 100–20,000,
        squared slowness s²/km² in 0.0025–1 or s²/m² in 2.5·10⁻⁹–10⁻⁶) or one of
        :data:`MODEL_UNITS`.
    datasets : sequence of str
        HDF5 only: the model's dataset names in order of preference (a background
        reads ``("m0", "m", …)``).

    Returns
    -------
    v : numpy.ndarray
        ``[nx, nz]`` float32 velocity, km/s.
    spacing, origin : tuple of float
        m.
    units : str
        What the file held (``"m/s (detected)"`` when detected).

    Raises
    ------
    SegyError
        A bad file, non-finite or non-positive values, ``units`` unknown, or (``"auto"``)
        a median no unit explains (the message names it and asks for ``model_units``).
    """
    if units != "auto" and units not in MODEL_UNITS:
        raise SegyError(f"model_units={units!r} must be 'auto' or one of {sorted(MODEL_UNITS)}")
    hdf5 = is_hdf5(path)  # JUDI's layout (devito_uq.io.hdf5), told apart by its signature
    if hdf5:
        a, spacing, origin, name = read_hdf5_model(path, datasets)
    else:
        a, spacing, origin = read_image(path)
    if not np.all(np.isfinite(a)) or a.min() <= 0:
        raise SegyError(
            f"{str(path)!r} holds non-positive or non-finite values ({np.nanmin(a):.4g}): "
            "not a velocity or squared-slowness model"
        )
    label = units
    if units == "auto":
        median = float(np.median(a))
        found = [k for k, (_, (lo, hi)) in MODEL_UNITS.items() if lo <= median <= hi]
        if len(found) != 1:
            raise SegyError(
                f"{str(path)!r}: median value {median:.4g} is not a velocity in km/s (1-20) "
                "or m/s (100-20000) nor a squared slowness in s2/km2 (0.0025-1) or s2/m2; "
                f"state model_units ({', '.join(sorted(MODEL_UNITS))})"
            )
        units, label = found[0], f"{found[0]} (detected)"
    if hdf5:
        label += f", HDF5 dataset {name!r}"
    v = MODEL_UNITS[units][0](a.astype(np.float64))
    return v.astype(np.float32), spacing, origin, label
