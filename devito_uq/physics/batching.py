"""How a batch of models is cut into kernel calls (physics-neutral).

A batched kernel solves ``K`` models per Devito call (one extra axis in the generated
code). Building one costs about 1 s of lowering per operator kind and process (more on a
cold JIT cache), so a process keeps ONE kernel size ``K`` per kind: a batch is cut into
chunks of ``K``, and the last, shorter chunk is either padded up to ``K`` (the extra rows
are discarded) or solved one model per call. Only a size that keeps coming back (a VI
batch smaller than ``K``, iteration after iteration) gets a kernel of its own, once its
one-call-per-model solves would have repaid the build.

The thresholds, measured with Born forward + adjoint (``BornModeling``), float32, order 8,
20-point layer, 1 thread, on a shared 2-core VM (ms per call of ``n`` models; first call of
a new kernel size, born + bornT built, ≈ 1.9 s):

=========  ===  =======  ==============  =======================
grid        n   singles  own kernel (n)  ``K = 8`` padded to 8
=========  ===  =======  ==============  =======================
21 × 11     2    11.8      10.4            27.3
21 × 11     4    22.5      16.2            27.3
21 × 11     5    28.3      19.2            27.9
21 × 11     6    32.7      22.5            27.4
41 × 21     2    19.0      16.9            44.7
41 × 21     4    32.9      24.5            43.3
41 × 21     5    38.9      28.6            43.4
41 × 21     6    47.2      33.5            42.8
=========  ===  =======  ==============  =======================

Padding pays from ``n ≈ 0.7 K`` (the batched kernel's time per row over the single
call's, 0.70 at these sizes and 0.82 at 256²): :data:`PAD_FRACTION`. A kernel of its own
for ``n = 2`` saves 12 % per call (1.4 ms at 21 × 11, 2.1 ms at 41 × 21): its ≈ 1.9 s
build is repaid after ≈ 2,700 and ≈ 1,800 single-shot solves, i.e. after 2.3 and
2.4·10⁹ cell-steps (padded cells × time steps, per model and shot). The threshold
:data:`OWN_KERNEL_WORK` counts work, so that larger grids switch sooner; it is set above
break-even (3·10⁹) so that the default imaging VI (41 × 21, 200 iterations of 2 models ×
4 shots: 2.1·10⁹) never builds a kernel it cannot repay. On the 101 × 51 window (1.6 s,
434 steps) the own kernel saves 14 % of the PDE time at 2 models (128 → 110 ms per shot)
and 19 % at 4 (248 → 201 ms): its build is repaid within ≈ 30–50 VI iterations of 4
shots; the switch comes after ≈ 70 (of 2 models) or ≈ 35 (of 4).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

__all__ = ["PAD_FRACTION", "OWN_KERNEL_WORK", "chunk_size", "plan", "pad_rows"]

#: A last chunk of ``r`` models is padded up to the kernel size ``K`` when ``r ≥ 0.75 K``
#: (at ``K = 8``: 6 or 7 models); a shorter one is solved one model per call.
PAD_FRACTION = 0.75

#: Work (cell-steps: padded grid cells × time steps, summed over the models) solved one
#: model per call at one chunk size ``r ≥ 2`` (per process and kind) after which ``r``
#: gets a batched kernel of its own.
OWN_KERNEL_WORK = 3 * 10**9


def plan(
    n: int, size: int, seen: Counter | None = None, kind: object = None, work: int = 1
) -> list[tuple]:
    """``range(n)`` cut into kernel calls: ``(rows, kernel)`` pairs.

    Parameters
    ----------
    n : int
        Number of models in the batch.
    size : int
        The kernel size ``K`` (:func:`chunk_size`); 1 = one call per model.
    seen : Counter, optional
        Per process and kind: work solved one model per call so far, by chunk size (the
        solver's ``small_chunks``). Updated here; with enough of it a recurring short
        chunk gets its own kernel (:data:`OWN_KERNEL_WORK`).
    kind : hashable, optional
        The operator kind ``seen`` is counted under.
    work : int
        Cell-steps of one model's solve (padded cells × time steps).

    Returns
    -------
    list of (slice, int)
        Consecutive slices covering ``range(n)``, each with the kernel that solves it:
        ``K`` (the slice is padded up to ``K`` when shorter), the slice's own length
        (a recurring short chunk), or 1 (one call per model).
    """
    size = max(1, int(size))
    if size == 1:
        return [(slice(b, b + 1), 1) for b in range(n)]
    full = n - n % size
    out = [(slice(a, a + size), size) for a in range(0, full, size)]
    r = n - full
    if r == 0:
        return out
    if r >= PAD_FRACTION * size:
        return out + [(slice(full, n), size)]
    if r >= 2 and seen is not None and seen[(kind, r)] >= OWN_KERNEL_WORK:
        return out + [(slice(full, n), r)]
    if seen is not None and r >= 2:
        seen[(kind, r)] += r * work
    return out + [(slice(b, b + 1), 1) for b in range(full, n)]


def chunk_size(requested: int, wavefield_nbytes: int | None, budget: int) -> int:
    """The kernel size ``K``: models per batched kernel call.

    Parameters
    ----------
    requested : int
        The module's ``batch_size``.
    wavefield_nbytes : int or None
        Bytes of one saved wavefield when the call saves wavefields for a gradient,
        ``None`` otherwise.
    budget : int
        ``max_wavefield_bytes``: bytes the saved wavefields of one call may take.

    Returns
    -------
    int
        ``requested``, reduced so that a saving call fits into ``budget`` (a batched
        buffer of ``K`` models holds ``K + 2`` wavefields: the batch axis' halo). It
        does not depend on the batch, so that every batch uses the same kernel.
    """
    size = int(requested)
    if wavefield_nbytes is not None and size > 1:
        size = min(size, max(1, budget // wavefield_nbytes - 2))
    return size


def pad_rows(x: np.ndarray, rows: int, repeat: bool) -> np.ndarray:
    """``x`` ``[r, ...]`` grown to ``[rows, ...]`` for a kernel of ``rows`` models.

    The extra rows are copies of the last one (``repeat``: models, which must stay
    physical) or zeros (perturbations, residuals); their outputs are discarded.
    """
    r = x.shape[0]
    if r == rows:
        return x
    if repeat:
        fill = np.repeat(x[-1:], rows - r, axis=0)
    else:
        fill = np.zeros((rows - r, *x.shape[1:]), dtype=x.dtype)
    return np.concatenate([x, fill])
