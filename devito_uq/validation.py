"""Argument validation shared by every layer of devito_uq.

Each helper checks one property of one argument and either returns the value in
its canonical Python type or raises a :class:`~devito_uq.errors.DevitoUQError`
subclass whose message names the argument and the offending value — before any
Devito compile, PDE solve or large allocation. Messages read
``"<name>=<value> must be <rule>"`` so that a user can grep for the argument.

Scalars are accepted in every numeric form a user may hold — Python ``int`` /
``float``, numpy scalars (``np.float32(0.5)``), 0-d arrays and 0-d torch tensors —
but never ``bool`` (``True`` is an int in Python, and never what was meant).
Integers must be integral: ``3.7`` is refused for a count or a grid size rather
than truncated.

This module imports numpy and torch only; it is safe to import from physics,
flows, inference, io, parallel and the applications alike.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from devito_uq.errors import (
    InsufficientMemoryError,
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidModelError,
    InvalidShapeError,
)

__all__ = [
    "check_dtype",
    "check_scalar",
    "check_positive_scalar",
    "check_nonnegative_scalar",
    "check_in_range",
    "check_int",
    "check_positive_int",
    "check_nonnegative_int",
    "check_choice",
    "check_bool",
    "check_shape",
    "check_tuple",
    "check_int_tuple",
    "check_finite",
    "check_finite_positive",
    "as_float_array",
    "first_bad_index",
    "available_memory",
    "check_allocation",
    "format_bytes",
    "MAX_COUNT",
    "check_count",
    "check_grid",
    "check_device",
]

_TORCH_TO_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


# --------------------------------------------------------------------------- dtypes
def check_dtype(name: str, dtype: Any) -> type:
    """``dtype`` as ``np.float32`` or ``np.float64``; :class:`InvalidDtypeError` otherwise.

    Accepts numpy dtypes and type objects, strings (``"float32"``) and torch dtypes.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in _TORCH_TO_NUMPY:
            raise InvalidDtypeError(
                f"{name}={dtype} is not supported; use torch.float32 or torch.float64"
            )
        return _TORCH_TO_NUMPY[dtype]
    try:
        npd = np.dtype(dtype)
    except TypeError as exc:
        raise InvalidDtypeError(f"{name}={dtype!r} is not a dtype; use float32 or float64") from exc
    if npd == np.float32:
        return np.float32
    if npd == np.float64:
        return np.float64
    raise InvalidDtypeError(f"{name}={npd} is not supported; use float32 or float64")


# --------------------------------------------------------------------------- scalars
def _as_number(name: str, value: Any) -> float | int:
    """A Python number from a Python/numpy scalar or a 0-d array/tensor (never bool)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dim() != 0:
            raise InvalidArgumentError(
                f"{name} must be a number; got a tensor of shape {list(value.shape)}"
            )
        if value.dtype == torch.bool:
            raise InvalidArgumentError(f"{name}={value.item()!r} must be a number, not a bool")
        value = value.item()
    elif isinstance(value, np.ndarray):
        if value.ndim != 0:
            raise InvalidArgumentError(
                f"{name} must be a number; got an array of shape {list(value.shape)}"
            )
        value = value[()]
    if isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(f"{name}={value!r} must be a number, not a bool")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise InvalidArgumentError(f"{name}={value!r} is not a number")


def check_scalar(name: str, value: Any) -> float:
    """``value`` as a finite float."""
    v = float(_as_number(name, value))
    if not math.isfinite(v):
        raise InvalidArgumentError(f"{name}={v!r} must be finite")
    return v


def check_positive_scalar(name: str, value: Any) -> float:
    """``value`` as a float, finite and > 0."""
    v = float(_as_number(name, value))
    if not math.isfinite(v) or v <= 0:
        raise InvalidArgumentError(f"{name}={v!r} must be finite and positive")
    return v


def check_nonnegative_scalar(name: str, value: Any) -> float:
    """``value`` as a float, finite and >= 0."""
    v = float(_as_number(name, value))
    if not math.isfinite(v) or v < 0:
        raise InvalidArgumentError(f"{name}={v!r} must be finite and non-negative")
    return v


def check_in_range(
    name: str,
    value: Any,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float inside ``[low, high]`` (``(`` / ``)`` where open)."""
    v = float(_as_number(name, value))
    ok = math.isfinite(v) or (not math.isfinite(low) or not math.isfinite(high))
    ok = ok and not math.isnan(v)
    ok = ok and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lb, rb = ("(" if low_open else "["), (")" if high_open else "]")
        raise InvalidArgumentError(f"{name}={v!r} must lie in {lb}{low:g}, {high:g}{rb}")
    return v


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` (integral: ``3.0`` is refused too), within the bounds given."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (numbers.Integral, np.integer, torch.Tensor, np.ndarray)
    ):
        raise InvalidArgumentError(f"{name}={value!r} must be an integer")
    v = _as_number(name, value)
    if not isinstance(v, int):
        raise InvalidArgumentError(f"{name}={value!r} must be an integer")
    if minimum is not None and v < minimum:
        raise InvalidArgumentError(f"{name}={v!r} must be an integer >= {minimum}")
    if maximum is not None and v > maximum:
        raise InvalidArgumentError(f"{name}={v!r} must be an integer <= {maximum}")
    return v


def check_positive_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` >= 1."""
    return check_int(name, value, minimum=1)


def check_nonnegative_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` >= 0."""
    return check_int(name, value, minimum=0)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if isinstance(value, (bool, np.bool_)) and not any(isinstance(c, bool) for c in choices):
        raise InvalidArgumentError(f"{name}={value!r} must be one of {choices}")
    try:
        ok = value in choices
    except TypeError:
        ok = False
    if not ok:
        raise InvalidArgumentError(f"{name}={value!r} must be one of {choices}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool`` (no truthiness: ``"no"`` is not ``False``)."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(f"{name}={value!r} must be True or False")
    return bool(value)


# --------------------------------------------------------------------------- shapes
def check_shape(name: str, shape: Sequence[int], expected: Sequence[int | None]) -> None:
    """:class:`InvalidShapeError` unless ``shape`` matches ``expected`` (``None``: any size)."""
    shape = tuple(int(s) for s in shape)
    ok = len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))
    if not ok:
        want = "[" + ", ".join("*" if e is None else str(e) for e in expected) + "]"
        raise InvalidShapeError(f"{name} has shape {list(shape)}; expected {want}")


def check_tuple(name: str, value: Any, length: int, positive: bool = False) -> tuple[float, ...]:
    """``value`` as a tuple of ``length`` finite floats (optionally all > 0)."""
    if isinstance(value, (str, bytes)) or not isinstance(
        value, (Sequence, np.ndarray, torch.Tensor)
    ):
        raise InvalidArgumentError(f"{name}={value!r} must be a sequence of {length} numbers")
    out = tuple(check_scalar(f"{name}[{i}]", v) for i, v in enumerate(value))
    if len(out) != length:
        raise InvalidArgumentError(f"{name}={value!r} must have {length} entries")
    if positive and any(v <= 0 for v in out):
        raise InvalidArgumentError(f"{name}={value!r} must be positive")
    return out


def check_int_tuple(
    name: str, value: Any, lengths: Sequence[int] | int, minimum: int | None = None
) -> tuple[int, ...]:
    """``value`` as a tuple of integers (each >= ``minimum``) whose length is in ``lengths``."""
    lengths = (lengths,) if isinstance(lengths, int) else tuple(lengths)
    if isinstance(value, (str, bytes)) or not isinstance(
        value, (Sequence, np.ndarray, torch.Tensor, torch.Size)
    ):
        raise InvalidArgumentError(f"{name}={value!r} must be a sequence of integers")
    out = tuple(check_int(f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(value))
    if len(out) not in lengths:
        want = " or ".join(str(n) for n in lengths)
        raise InvalidArgumentError(f"{name}={value!r} must have {want} entries")
    return out


# --------------------------------------------------------------------------- arrays
def _host(array: Any) -> Any:
    if isinstance(array, torch.Tensor) and array.device.type == "cpu":
        # numpy on a CPU view: torch's multi-threaded reductions spin-wait on a busy
        # 2-core machine (130 ms measured for a 201x201 check versus 0.1 ms here).
        return array.detach().numpy()
    if isinstance(array, torch.Tensor):
        return array.detach()
    return np.asarray(array)


def first_bad_index(bad: Any) -> tuple[int, ...]:
    """Index of the first ``True`` in a boolean array or tensor."""
    if isinstance(bad, torch.Tensor):
        return tuple(int(i) for i in torch.nonzero(bad)[0])
    return tuple(int(i) for i in np.argwhere(bad)[0])


def check_finite(name: str, array: Any, error: type = InvalidArgumentError) -> None:
    """Raise ``error`` unless every entry is finite; names the first NaN/inf and its index."""
    arr = _host(array)
    if isinstance(arr, torch.Tensor):
        bad = ~torch.isfinite(arr)
        if bool(bad.any()):
            idx = first_bad_index(bad)
            raise error(f"{name} contains {arr[idx].item()} at index {idx}; expected finite values")
        return
    if arr.size == 0 or np.isfinite(arr.sum()):
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = first_bad_index(bad)
        raise error(f"{name} contains {arr[idx]} at index {idx}; expected finite values")


def check_finite_positive(name: str, array: Any) -> None:
    """:class:`InvalidModelError` unless every entry is finite and > 0 (first offender named)."""
    arr = _host(array)
    if isinstance(arr, torch.Tensor):
        bad = ~(torch.isfinite(arr) & (arr > 0))
        if bool(bad.any()):
            idx = first_bad_index(bad)
            raise InvalidModelError(
                f"{name} must be finite and positive everywhere; got {arr[idx].item()} "
                f"at index {idx}"
            )
        return
    if arr.size == 0:
        return
    # Fast path, two reductions: NaN makes min() NaN, and ±inf shows in min or max.
    if arr.min() > 0 and np.isfinite(arr.max()):
        return
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        idx = first_bad_index(bad)
        raise InvalidModelError(
            f"{name} must be finite and positive everywhere; got {arr[idx]} at index {idx}"
        )


def as_float_array(name: str, value: Any, ndim: int | None = None) -> np.ndarray:
    """``value`` as a finite float64 numpy array, optionally of ``ndim`` dimensions."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{name} is not a numeric array: {value!r}") from exc
    if ndim is not None and arr.ndim != ndim:
        raise InvalidShapeError(f"{name} has shape {list(arr.shape)}; expected {ndim} dimensions")
    check_finite(name, arr)
    return arr


# --------------------------------------------------------------------------- memory
def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes that can still be allocated on ``device`` now (``None`` if unknown).

    CPU: ``MemAvailable`` of ``/proc/meminfo`` (free memory plus reclaimable caches),
    else free physical pages; CUDA: the free memory the driver reports.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the field is in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human-readable string (``'1.5 GiB'``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} PiB"


def check_allocation(
    what: str,
    nbytes: int,
    device: torch.device | str = "cpu",
    available: int | None = None,
    minimum: int = 0,
) -> None:
    """:class:`InsufficientMemoryError` if ``nbytes`` exceed the memory available on ``device``.

    Called before every allocation that scales with user input (solver grids, saved
    wavefields, time axes, flow samples): a 100000×100000 model is refused at once,
    naming ``what`` and the size, instead of dying minutes later in an allocator or
    the OOM killer. ``available`` overrides the measured value (tests); requests below
    ``minimum`` bytes are not checked (no system call on a training loop's every step).
    It never refuses what it cannot measure.
    """
    if nbytes < minimum:
        return
    avail = available_memory(device) if available is None else int(available)
    if avail is not None and nbytes > avail:
        raise InsufficientMemoryError(
            f"{what} needs {format_bytes(nbytes)} ({nbytes} bytes) but only "
            f"{format_bytes(avail)} are available on {torch.device(device)}; reduce the size"
        )


# --------------------------------------------------------------------------- sizes
#: Largest value of any count a user sets (shots, receivers, angles, truths, samples,
#: shards, channels, batch): a guard against typos far above every real run, applied
#: before the memory checks so that no product of counts can overflow or mislead.
MAX_COUNT = 10**7


def check_device(name: str, value: Any) -> torch.device:
    """The device of ``value`` (a tensor, a ``torch.device`` or its name) if it is the CPU
    or CUDA; :class:`InvalidArgumentError` naming it otherwise (``meta``, ``mps``, …)."""
    try:
        device = value.device if isinstance(value, torch.Tensor) else torch.device(value)
    except (TypeError, RuntimeError):
        raise InvalidArgumentError(f"{name}={value!r} is not a torch device") from None
    if device.type not in ("cpu", "cuda"):
        raise InvalidArgumentError(
            f"{name} is on the {device.type!r} device; devito_uq computes on 'cpu' or 'cuda'"
        )
    return device


def check_count(name: str, value: Any, minimum: int = 1, maximum: int = MAX_COUNT) -> int:
    """``value`` as an ``int`` in ``[minimum, maximum]``: a size the user typed.

    The message of a value above ``maximum`` names both, so that ``nshots=1000000000``
    is refused at once instead of reaching an allocation minutes later.
    """
    v = check_int(name, value, minimum=minimum)
    if v > maximum:
        raise InvalidArgumentError(
            f"{name}={v} must be an integer <= {maximum} (a size this large is a typo or "
            "needs a machine far beyond this one)"
        )
    return v


def check_grid(
    extent: Sequence[float],
    spacing: float,
    *,
    fields: int = 3,
    itemsize: int = 4,
    pad: int = 0,
    available: int | None = None,
) -> tuple[int, ...]:
    """Grid points per axis of a box ``extent`` (m) sampled every ``spacing`` (m), checked.

    The grid (``pad`` extra points at each end of every axis, e.g. an absorbing boundary)
    holding ``fields`` arrays of ``itemsize`` bytes must fit in memory, else
    :class:`InsufficientMemoryError` names the extent, spacing, grid and bytes before any
    array exists. ``available`` overrides the measured memory (tests). Returns the points
    per axis, boundary included.
    """
    spacing = check_positive_scalar("spacing", spacing)
    extent = check_tuple("extent", extent, len(extent))
    pad = check_nonnegative_int("pad", pad)
    shape = tuple(int(math.floor(e / spacing + 1e-9)) + 1 + 2 * pad for e in extent)
    points = math.prod(shape)
    nbytes = points * int(fields) * int(itemsize)
    grid = " x ".join(str(n) for n in shape)
    what = (
        f"a grid of {grid} points (extent {list(extent)} m at spacing={spacing:g} m, "
        f"{fields} arrays)"
    )
    if points > MAX_COUNT**2:  # far beyond any machine: refuse without asking the OS
        raise InsufficientMemoryError(f"{what} needs {format_bytes(nbytes)}; reduce the size")
    check_allocation(what, nbytes, available=available)
    return shape
