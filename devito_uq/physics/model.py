"""Acoustic model geometry: grid, absorbing layer, units and the stable time step.

An :class:`AcousticModel` holds only the *geometry* of a model (shape, spacing,
origin, absorbing-layer width, space order, dtype). The squared slowness itself
is an input of the operators, so that one compiled operator serves every model
a flow samples.

Units (Devito's): distances in m, time in ms, velocity in km/s, squared
slowness :math:`m = 1/v^2` in s²/km².
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from devito_uq.errors import InvalidShapeError
from devito_uq.physics import padding, stencil
from devito_uq.validation import (
    check_dtype,
    check_finite_positive,
    check_int_tuple,
    check_nonnegative_int,
    check_tuple,
)

# Padded-grid arrays an AcousticSolver allocates: m, damp, dm, grad (1 level each) and
# u, du, v (3 time levels each), plus the float64 damping profile built once.
_SOLVER_ARRAYS = 13


__all__ = ["AcousticModel", "squared_slowness", "velocity"]


def squared_slowness(v: Any) -> Any:
    """Squared slowness :math:`m = 1/v^2` (s²/km²) from velocity ``v`` (km/s).

    Works on numpy arrays and torch tensors (differentiably); raises
    :class:`~devito_uq.errors.InvalidModelError` on non-positive, NaN or infinite values.
    """
    check_finite_positive("velocity", v)
    return 1.0 / v**2


def velocity(m: Any) -> Any:
    """Velocity :math:`v = 1/\\sqrt{m}` (km/s) from squared slowness ``m`` (s²/km²)."""
    check_finite_positive("squared slowness", m)
    if isinstance(m, torch.Tensor):
        return 1.0 / torch.sqrt(m)
    return 1.0 / np.sqrt(m)


class AcousticModel:
    """Geometry of a 2D (or 3D) acoustic model with a damping absorbing layer.

    Parameters
    ----------
    shape : tuple of int
        Physical grid size ``(nx, nz)`` (or ``(nx, ny, nz)``), without the absorbing layer.
    spacing : tuple of float
        Grid spacing in m, one per dimension.
    origin : tuple of float
        Coordinates (m) of the first physical grid point. Default zeros.
    nbl : int
        Width of the absorbing (damping) layer in grid points, added on every side.
    space_order : int
        Even spatial finite-difference order (2 … 16).
    dtype : float32 or float64
        Default floating type of the operators (an operator is compiled per dtype).

    Notes
    -----
    The squared slowness given on the physical grid ``[nx, nz]`` is extended into
    the absorbing layer by edge replication (:meth:`pad`); the gradient with
    respect to the physical grid is the adjoint of that extension
    (:meth:`pad_adjoint`, which folds the layer's gradient into the edge cells), so
    gradients are exact for the physical-grid parameters.
    """

    def __init__(
        self,
        shape: Sequence[int],
        spacing: Sequence[float],
        origin: Sequence[float] | None = None,
        nbl: int = 40,
        space_order: int = 8,
        dtype: Any = np.float32,
    ) -> None:
        # Integers only: a float shape such as (41.7, 41) is refused, never truncated.
        shape_t = check_int_tuple("shape", shape, (2, 3), minimum=3)
        self.shape = shape_t
        self.dim = len(shape_t)
        self.spacing = check_tuple("spacing", spacing, self.dim, positive=True)
        self.origin = check_tuple(
            "origin", (0.0,) * self.dim if origin is None else origin, self.dim
        )
        self.nbl = check_nonnegative_int("nbl", nbl)
        self.space_order = stencil.check_space_order(space_order)
        self.dtype = check_dtype("dtype", dtype)

    # ------------------------------------------------------------------ geometry
    @property
    def padded_shape(self) -> tuple[int, ...]:
        """Grid size including the absorbing layer on every side."""
        return tuple(s + 2 * self.nbl for s in self.shape)

    @property
    def extent(self) -> tuple[float, ...]:
        """Physical extent (m) of the model: ``spacing * (shape - 1)``."""
        return tuple(h * (n - 1) for h, n in zip(self.spacing, self.shape))

    @property
    def domain_min(self) -> tuple[float, ...]:
        """Smallest physical coordinate (m) per dimension (the origin)."""
        return self.origin

    @property
    def domain_max(self) -> tuple[float, ...]:
        """Largest physical coordinate (m) per dimension."""
        return tuple(o + e for o, e in zip(self.origin, self.extent))

    @property
    def padded_origin(self) -> tuple[float, ...]:
        """Coordinates (m) of the first grid point of the padded grid."""
        return tuple(o - self.nbl * h for o, h in zip(self.origin, self.spacing))

    @property
    def key(self) -> tuple:
        """Hashable description of everything that changes generated code."""
        return (self.shape, self.spacing, self.origin, self.nbl, self.space_order)

    def solver_nbytes(self, dtype: Any = None) -> int:
        """Bytes an acoustic solver allocates for this geometry (before saved wavefields)."""
        itemsize = np.dtype(self.dtype if dtype is None else dtype).itemsize
        halo = self.space_order  # space_order // 2 on each side
        npts = int(np.prod([n + halo for n in self.padded_shape], dtype=np.float64))
        return npts * (_SOLVER_ARRAYS * itemsize + 8)

    def grid_coordinates(self) -> list[np.ndarray]:
        """1D coordinate vectors (m) of the physical grid, one per dimension."""
        return [o + h * np.arange(n) for o, h, n in zip(self.origin, self.spacing, self.shape)]

    def __repr__(self) -> str:
        return (
            f"AcousticModel(shape={self.shape}, spacing={self.spacing}, origin={self.origin}, "
            f"nbl={self.nbl}, space_order={self.space_order}, dtype={np.dtype(self.dtype).name})"
        )

    # ---------------------------------------------------------------- stability
    def critical_dt(self, vmax: float) -> float:
        """Largest stable time step (ms) for a model whose largest velocity is ``vmax`` (km/s).

        The von Neumann bound of the scheme the operators apply
        (:func:`devito_uq.physics.stencil.critical_dt`); 6.9 % above Devito's
        ``Model.critical_dt`` at order 8, whose coefficient is conservative.
        """
        return stencil.critical_dt(vmax, self.spacing, self.space_order)

    # ---------------------------------------------------------- absorbing layer
    def damping(self) -> np.ndarray:
        """Damping coefficient on the padded grid (0 inside the physical domain).

        The same profile as Devito's ``initialize_damp``:
        ``1.5 ln(1000)/nbl · (p − sin(2πp)/(2π)) / h`` with ``p`` the normalised
        distance into the layer, summed over dimensions.
        """
        damp = np.zeros(self.padded_shape, dtype=np.float64)
        nbl = self.nbl
        if nbl == 0:
            return damp
        coeff = 1.5 * np.log(1.0 / 0.001) / nbl
        k = np.arange(nbl)
        pos = np.abs((nbl - k + 1) / float(nbl))
        for d, h in enumerate(self.spacing):
            val = coeff * (pos - np.sin(2 * np.pi * pos) / (2 * np.pi)) / h
            prof = np.zeros(self.padded_shape[d])
            prof[:nbl] += val
            prof[-nbl:] += val[::-1]
            shape = [1] * self.dim
            shape[d] = -1
            damp += prof.reshape(shape)
        return damp

    # ----------------------------------------------------------------- padding
    def pad(self, m: np.ndarray) -> np.ndarray:
        """Extend a physical-grid array into the absorbing layer (:func:`padding.extend`)."""
        if tuple(m.shape) != self.shape:
            raise InvalidShapeError(
                f"model array has shape {list(m.shape)}; expected {list(self.shape)}"
            )
        return padding.extend(m, self.nbl)

    def pad_adjoint(self, g: np.ndarray) -> np.ndarray:
        """Adjoint of :meth:`pad`: fold the layer's values into the physical edge cells."""
        return padding.extend_adjoint(g, self.nbl)
