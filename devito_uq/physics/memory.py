"""Memory guard: refuse an allocation that cannot fit before making it.

A 100000×100000 model or a ``t1`` of years used to run for seconds and die inside
numpy's or Devito's allocator (``MemoryError``, or the kernel's OOM killer). Every
physics allocation that scales with the user's input (solver grids, saved
wavefields, time axes) first calls :func:`check_allocation`, which compares the
bytes needed with the memory available *now*: ``MemAvailable`` of
``/proc/meminfo`` (Linux: free memory plus reclaimable caches), else
``os.sysconf('SC_AVPHYS_PAGES') · SC_PAGE_SIZE``. When neither is readable the check
passes (it never refuses what it cannot measure).
"""

from __future__ import annotations

import os

from devito_uq.errors import InvalidArgumentError

__all__ = ["InsufficientMemoryError", "available_bytes", "check_allocation", "format_bytes"]


class InsufficientMemoryError(InvalidArgumentError, MemoryError):
    """An input asks for more memory than the machine has available (nothing allocated)."""


def available_bytes() -> int | None:
    """Bytes of memory available for new allocations now, or ``None`` if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
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
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024.0
    return f"{n:.1f} PiB"  # pragma: no cover - loop always returns


def check_allocation(what: str, nbytes: int, available: int | None = None) -> None:
    """Raise :class:`InsufficientMemoryError` if ``nbytes`` exceed the available memory.

    ``what`` names the allocation and the input that sizes it (it goes into the
    message); ``available`` overrides the measured value (tests).
    """
    avail = available_bytes() if available is None else int(available)
    if avail is not None and nbytes > avail:
        raise InsufficientMemoryError(
            f"{what} needs {format_bytes(nbytes)} ({nbytes} bytes) but only "
            f"{format_bytes(avail)} are available; reduce the size"
        )
