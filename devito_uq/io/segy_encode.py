"""How devito_uq writes SEG-Y: numbers into header integers (scalars, whole units), the
textual header, and the atomic writer shared by :mod:`devito_uq.io.segy_write` (shots) and
:mod:`devito_uq.io.segy_image` (images). The header convention is
:mod:`devito_uq.io.segy`'s docstring.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import segyio

from devito_uq.errors import InvalidShapeError, SegyError
from devito_uq.io._atomic import atomic_path
from devito_uq.io.segy import _BYTE_ORDER_AT, _EXT_INTERVAL_AT, _REVISION_AT

_INT32_MAX = 2**31 - 1
#: SEG-Y rev 2.0: the big-endian byte-order word and the major/minor revision bytes.
_REV2_WORDS = ((_BYTE_ORDER_AT, b"\x01\x02\x03\x04"), (_REVISION_AT, b"\x02\x00"))


def _as_numpy(name: str, x: Any) -> np.ndarray:
    """A float64 numpy copy of an array or (CPU/CUDA) torch tensor."""
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().to("cpu").double().numpy()
    try:
        return np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidShapeError(f"{name} must be a numeric array, got {type(x).__name__}") from exc


def _scalar_for(values: np.ndarray, what: str, path: Path) -> int:
    """SEG-Y scalar (1, -10, … -10000) storing ``values`` exactly as int32, else the finest fit."""
    vmax = float(np.max(np.abs(values))) if values.size else 0.0
    if vmax > _INT32_MAX:
        raise SegyError(
            f"{what} of {vmax:.6g} m exceeds the 32-bit range of SEG-Y headers; cannot write {path}"
        )
    best = 1
    for k in range(5):
        s = 10**k
        if vmax * s > _INT32_MAX:
            break
        best = -s if k else 1
        scaled = values * s
        if np.all(np.abs(scaled - np.round(scaled)) <= 1e-6):
            return best
    return best  # not exact at 0.1 mm: rounded to the finest scale that fits


def _apply_scalar(raw: np.ndarray, scalar: np.ndarray) -> np.ndarray:
    s = np.asarray(scalar, dtype=np.float64)
    s = np.where(s == 0, 1.0, s)
    return np.where(s > 0, raw * s, raw / np.abs(s))


def _scaled(values: np.ndarray, scalar: int) -> np.ndarray:
    factor = 1.0 / scalar if scalar > 0 else float(-scalar)
    return np.round(np.asarray(values, dtype=np.float64) * factor).astype(np.int64)


def _whole(value: float, factor: float, what: str, lo: int, hi: int, path: Path) -> int:
    """``value·factor`` as an integer in ``[lo, hi]``, or :class:`SegyError`."""
    x = float(value) * factor
    n = round(x)
    if not np.isfinite(x) or abs(x - n) > 1e-6 * max(1.0, abs(x)) or not lo <= n <= hi:
        raise SegyError(f"{what}={value!r} cannot be stored in SEG-Y ({path}): {_WHOLE_HINT[what]}")
    return int(n)


_WHOLE_HINT = {
    "dt": "the sample interval is a whole number of µs in 1…32767 (a signed 16-bit header "
    "field); use e.g. dt = floor(1000·dt)/1000 ms",
    "t0": "the delay is a whole number of ms in -32768…32767",
}


def _atomic_segy(
    path: Path,
    nsamples: int,
    ntraces: int,
    fill: Callable[[Any], None],
    extended_interval: float | None = None,
) -> Path:
    """Create a float32 SEG-Y at a temporary name, let ``fill`` write it, move it to ``path``.

    ``extended_interval`` (SEG-Y rev 2: IEEE double at binary bytes 3273-3280, the unit of
    the 16-bit interval, which it overrides) marks the file rev 2.0, big-endian word included.
    """
    with atomic_path(path) as tmp:
        spec = segyio.spec()
        spec.format = 5  # 4-byte IEEE float
        spec.samples = np.arange(nsamples, dtype=np.float64)
        spec.tracecount = ntraces
        with segyio.create(tmp, spec) as f:
            fill(f)
        if extended_interval is not None:
            with open(tmp, "r+b") as fh:
                for at, raw in _REV2_WORDS:
                    fh.seek(at)
                    fh.write(raw)
                fh.seek(_EXT_INTERVAL_AT)
                fh.write(struct.pack(">d", extended_interval))
    return path


def _text_header(lines: Sequence[str]) -> bytes:
    return segyio.tools.create_text_header({i + 1: s for i, s in enumerate(lines[:40])})
