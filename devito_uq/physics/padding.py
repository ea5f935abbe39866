"""The one extension of a model into the absorbing layer, and its exact adjoint.

Both physics solve on a grid that adds ``nbl`` cells on both sides of some axes
(all axes for the acoustic solver, depth only for the plane-wave solver). The
squared slowness is extended by edge replication, ``E``; the gradient with respect
to the physical-grid model is ``Eᵀ`` of the padded-grid gradient, which folds the
layer's values back onto the edge cells. Both work on numpy arrays with leading
batch axes left alone (``axes`` picks the padded ones).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["extend", "extend_adjoint"]


def _axes(ndim: int, axes: Sequence[int] | None) -> list[int]:
    return list(range(ndim)) if axes is None else [a % ndim for a in axes]


def extend(m: np.ndarray, nbl: int, axes: Sequence[int] | None = None) -> np.ndarray:
    """``E m``: repeat the edge values of ``m`` ``nbl`` times outward along ``axes``.

    Shape ``[..., n, ...]`` → ``[..., n + 2·nbl, ...]`` on each axis in ``axes``
    (default: every axis).
    """
    pad = [(0, 0)] * m.ndim
    for a in _axes(m.ndim, axes):
        pad[a] = (nbl, nbl)
    return np.pad(m, pad, mode="edge")


def extend_adjoint(g: np.ndarray, nbl: int, axes: Sequence[int] | None = None) -> np.ndarray:
    """``Eᵀ g``: sum each layer onto its edge cell and crop, along ``axes``.

    Shape ``[..., n + 2·nbl, ...]`` → ``[..., n, ...]``; a new array.
    """
    out = np.array(g, copy=True)
    if nbl == 0:
        return out
    for a in _axes(out.ndim, axes):
        n = out.shape[a]
        lo = [slice(None)] * out.ndim
        hi = [slice(None)] * out.ndim
        lo[a], hi[a] = slice(0, nbl + 1), slice(n - nbl - 1, n)
        first = [slice(None)] * out.ndim
        last = [slice(None)] * out.ndim
        first[a], last[a] = slice(nbl, nbl + 1), slice(n - nbl - 1, n - nbl)
        s_lo = out[tuple(lo)].sum(axis=a, keepdims=True)
        s_hi = out[tuple(hi)].sum(axis=a, keepdims=True)
        out[tuple(first)] = s_lo
        out[tuple(last)] = s_hi
        keep = [slice(None)] * out.ndim
        keep[a] = slice(nbl, n - nbl)
        out = out[tuple(keep)]
    return out
