"""Scenario helpers shared by the applications: the shipped Marmousi-II model, windows cut
out of a velocity model, background smoothing and the water layer.

Below every application (:mod:`devito_uq.apps.imaging` simulates its surveys with them,
:mod:`devito_uq.apps.amortize` draws its training sections from them); a plain module, not
an application package, so the CLI registers no command here. Velocities in km/s, lengths
in m, arrays ``[nx, nz]`` (x first, depth second).
"""

from __future__ import annotations

from importlib import resources

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from devito_uq.errors import InvalidArgumentError

__all__ = [
    "MARMOUSI_SHAPE",
    "MARMOUSI_SPACING",
    "antialiased_slowness",
    "load_marmousi",
    "resample_window",
    "smooth_background",
    "water_mask",
]

#: Grid ``(nx, nz)`` and spacing (m, both axes) of the shipped Marmousi-II velocity.
MARMOUSI_SHAPE, MARMOUSI_SPACING = (1601, 401), 7.5


def load_marmousi() -> np.ndarray:
    """The shipped Marmousi-II P velocity.

    Martin, Wiley and Marfurt (2006), Allied Geophysics Laboratory, University of Houston;
    see ``devito_uq/data/marmousi/README.md`` for the provenance and terms.

    Returns
    -------
    numpy.ndarray
        ``[1601, 401]`` (x, z) float32 velocity, km/s, at 7.5 m.
    """
    path = resources.files("devito_uq") / "data" / "marmousi" / "vp_marmousi_bi"
    with resources.as_file(path) as p:
        return np.fromfile(p, "<f4").reshape(MARMOUSI_SHAPE)


def antialiased_slowness(
    v: np.ndarray, spacing_in: tuple[float, float], spacing: float
) -> np.ndarray:
    """The slowness of ``v`` low-passed for resampling to ``spacing``.

    A Gaussian of σ ≈ half the new spacing (``0.5·spacing/h − 0.5`` input cells per axis,
    none where that is not positive), edges extended.

    Parameters
    ----------
    v : numpy.ndarray
        ``[nx, nz]`` velocity, km/s.
    spacing_in : tuple of float
        ``(dx, dz)`` of ``v``, m.
    spacing : float
        The spacing it will be resampled to, m.

    Returns
    -------
    numpy.ndarray
        ``[nx, nz]`` float64 slowness, s/km.
    """
    s = 1.0 / np.asarray(v, np.float64)
    sig = [max(0.0, 0.5 * spacing / h - 0.5) for h in spacing_in]
    if max(sig) > 0:
        s = gaussian_filter(s, sig, mode="nearest")
    return s


def resample_window(
    v: np.ndarray,
    spacing_in: tuple[float, float],
    origin_in: tuple[float, float],
    x_start: float,
    width: float,
    depth: float,
    spacing: float,
) -> tuple[np.ndarray, tuple[float, float]]:
    """Cut ``[x_start, x_start + width] × [z0, z0 + depth]`` out of ``v`` and resample it.

    Anti-alias filter of the slowness (:func:`antialiased_slowness`), then linear
    interpolation at ``spacing``.

    Parameters
    ----------
    v : numpy.ndarray
        ``[nx, nz]`` velocity, km/s.
    spacing_in, origin_in : tuple of float
        ``(dx, dz)`` and ``(x0, z0)`` of ``v``, m.
    x_start, width, depth : float
        The window, m; ``width``/``depth`` 0 mean the whole extent.
    spacing : float
        The new grid spacing, m.

    Returns
    -------
    v : numpy.ndarray
        ``[nx', nz']`` float32 velocity, km/s.
    origin : tuple of float
        ``(x_start, z0)``, m.

    Raises
    ------
    InvalidArgumentError
        The window leaves the model or holds fewer than 8×8 points.
    """
    (dx, dz), (x0, z0) = spacing_in, origin_in
    x_end_in, z_end_in = x0 + dx * (v.shape[0] - 1), z0 + dz * (v.shape[1] - 1)
    width = width or (x_end_in - x_start)
    depth = depth or (z_end_in - z0)
    if x_start < x0 - 1e-6 or x_start + width > x_end_in + 1e-6 or z0 + depth > z_end_in + 1e-6:
        raise InvalidArgumentError(
            f"window x_start={x_start} m, width={width} m, depth={depth} m leaves the model "
            f"(x {x0:g}..{x_end_in:g} m, z {z0:g}..{z_end_in:g} m)"
        )
    nx, nz = int(np.floor(width / spacing + 1e-9)) + 1, int(np.floor(depth / spacing + 1e-9)) + 1
    if min(nx, nz) < 8:
        raise InvalidArgumentError(
            f"the window holds {nx}×{nz} points at spacing={spacing} m; at least 8×8 are needed"
        )
    s = antialiased_slowness(v, (dx, dz), spacing)
    xi = (x_start + spacing * np.arange(nx) - x0) / dx
    zi = (spacing * np.arange(nz)) / dz
    X, Z = np.meshgrid(xi, zi, indexing="ij")
    out = map_coordinates(s, [X, Z], order=1, mode="nearest")
    return (1.0 / out).astype(np.float32), (float(x_start), float(z0))


def water_mask(v: np.ndarray, tolerance: float = 1e-3, vmax_water: float = 1.55) -> np.ndarray:
    """The rows of each column from the top down to the water bottom.

    Water is the leading run of samples equal (within ``tolerance``) to the top sample,
    when that is at most ``vmax_water`` (a land model has none).

    Parameters
    ----------
    v : numpy.ndarray
        ``[nx, nz]`` velocity, km/s.
    tolerance, vmax_water : float
        km/s.

    Returns
    -------
    numpy.ndarray
        ``[nx, nz]`` bool, True in the water.
    """
    v = np.asarray(v)
    top = v[:, :1]
    same = (np.abs(v - top) <= tolerance) & (top <= vmax_water)
    return np.cumprod(same, axis=1).astype(bool)


def smooth_background(
    v: np.ndarray, spacing: float, length: float, keep_water: bool = True
) -> np.ndarray:
    """Background velocity: the slowness of ``v`` smoothed by a Gaussian of ``length``.

    With ``keep_water`` the water layer (:func:`water_mask`) stays exact, as it is known
    in practice, and the sediments are smoothed without mixing water into them (the
    water is first filled with the sediment velocity beneath it): the background then
    carries the water bottom and the direct wave exactly.

    Parameters
    ----------
    v : numpy.ndarray
        ``[nx, nz]`` velocity, km/s.
    spacing, length : float
        Grid spacing and the Gaussian's σ, m.
    keep_water : bool
        Keep the water layer exact.

    Returns
    -------
    numpy.ndarray
        ``[nx, nz]`` float32 velocity, km/s.
    """
    v = np.asarray(v, np.float64)
    water = water_mask(v) if keep_water else np.zeros(v.shape, bool)
    filled = v.copy()
    for ix in np.flatnonzero(water.any(1)):
        nw = int(water[ix].sum())
        if nw < v.shape[1]:
            filled[ix, :nw] = v[ix, nw]
    s = gaussian_filter(1.0 / filled, length / spacing, mode="nearest")
    out = 1.0 / s
    out[water] = v[water]
    return out.astype(np.float32)
