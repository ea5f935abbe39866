"""Ask Linux for transparent huge pages on a large, freshly allocated buffer.

A saved wavefield is streamed once per solve; with 4 KiB pages every few kilobytes of
it cost a TLB miss (the plane-wave adjoint reads eight such streams at once). Where
transparent huge pages are in ``madvise`` mode (the common default) the kernel only
backs a region with 2 MiB pages if asked, and only on pages not yet touched.
:func:`advise` asks for the 2 MiB-aligned interior of a buffer and returns those pages
to the kernel first (``MADV_DONTNEED``: they read back as zeros), so the next touch
faults huge pages in. A hint only: anywhere it is unsupported nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import numpy as np

__all__ = ["advise"]

_HUGE = 2 << 20
_MADV_DONTNEED, _MADV_HUGEPAGE = 4, 14
_LIBC: list = []


def _libc():
    if not _LIBC:
        name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
        _LIBC.append(ctypes.CDLL(name, use_errno=True) if name else None)
    return _LIBC[0]


def advise(buf: np.ndarray) -> bool:
    """Hint huge pages for ``buf``'s 2 MiB-aligned interior and zero it; True if applied.

    ``buf`` must own fresh memory whose contents may be discarded (the interior reads
    back as zeros; the ends outside the aligned part keep their values). Buffers
    smaller than 4 MiB are left alone.
    """
    libc = _libc()
    if libc is None or buf.nbytes < 2 * _HUGE or not buf.flags.c_contiguous:
        return False
    addr = buf.ctypes.data
    start = (addr + _HUGE - 1) // _HUGE * _HUGE
    length = (addr + buf.nbytes - start) // _HUGE * _HUGE
    ptr, size = ctypes.c_void_p(start), ctypes.c_size_t(length)
    if libc.madvise(ptr, size, _MADV_HUGEPAGE) != 0:
        return False
    return libc.madvise(ptr, size, _MADV_DONTNEED) == 0
