"""How a batch of models is cut into kernel calls (physics-neutral).

A batched kernel solves several models per Devito call (one extra axis in the generated
code); a batch larger than the kernel's size, or than the memory budget allows for the
saved wavefields of a gradient, is solved in consecutive chunks.
"""

from __future__ import annotations

__all__ = ["chunk_size", "chunks"]


def chunks(n: int, size: int) -> list[slice]:
    """``range(n)`` cut into consecutive slices of ``size`` models.

    A last single model joins the chunk before it: a batched kernel solves at least two
    models, and one call of ``size + 1`` is cheaper than a second compile for one.

    Parameters
    ----------
    n : int
        Number of models in the batch.
    size : int
        Models per kernel call (≥ 1).

    Returns
    -------
    list of slice
        Consecutive slices covering ``range(n)``.
    """
    out = [slice(a, min(a + size, n)) for a in range(0, n, max(1, size))]
    if len(out) > 1 and out[-1].stop - out[-1].start == 1:
        out[-2:] = [slice(out[-2].start, n)]
    return out


def chunk_size(requested: int, n: int, wavefield_nbytes: int | None, budget: int) -> int:
    """Models per kernel call for a batch of ``n``.

    Parameters
    ----------
    requested : int
        The module's ``batch_size``.
    n : int
        Number of models in the batch.
    wavefield_nbytes : int or None
        Bytes of one saved wavefield when the call saves wavefields for a gradient,
        ``None`` otherwise.
    budget : int
        ``max_wavefield_bytes``: bytes the saved wavefields of one call may take.

    Returns
    -------
    int
        ``min(requested, n)``, reduced so that a saving call fits into ``budget``: a
        batched buffer of B models holds B + 2 wavefields (the batch axis' halo), and a
        chunk may take one model more (:func:`chunks`).
    """
    size = min(requested, n)
    if wavefield_nbytes is not None and size > 1:
        size = min(size, max(1, budget // wavefield_nbytes - 3))
    return size
