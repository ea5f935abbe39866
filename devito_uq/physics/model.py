"""The physics-neutral model grid and the unit conversions between velocity and slowness.

A :class:`Model` holds only the *geometry* of a model (shape, spacing, origin,
absorbing-layer width, space order, dtype). The physical parameter itself (the squared
slowness) is an input of the operators, so that one compiled operator serves every
model a flow samples. The stability limit belongs to the physics: each physics
specializes :class:`Model` with its :meth:`Model.critical_dt`
(:class:`~devito_uq.physics.acoustic.model.AcousticModel`,
:class:`~devito_uq.physics.planewave.model.PlaneWaveModel`), as Devito's
``examples/seismic`` specialize ``GenericModel``. A new physics subclasses
:class:`Model` and :class:`~devito_uq.physics.solver.Solver`; ``Survey`` accepts any
:class:`Model`.

Units (Devito's): distances in m, time in ms, velocity in km/s, squared
slowness :math:`m = 1/v^2` in s²/km².
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.physics import padding, stencil
from devito_uq.validation import (
    check_dtype,
    check_finite_positive,
    check_int_tuple,
    check_nonnegative_int,
    check_tuple,
)

__all__ = ["Model", "check_model", "squared_slowness", "velocity"]


def squared_slowness(v: Any) -> Any:
    """Squared slowness :math:`m = 1/v^2` (s²/km²) from velocity (km/s).

    Parameters
    ----------
    v : numpy.ndarray or torch.Tensor
        Velocity in km/s, any shape (a tensor stays differentiable).

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``1/v²``, the shape and type of ``v``.

    Raises
    ------
    InvalidModelError
        On non-positive, NaN or infinite values (naming the first bad index).
    """
    check_finite_positive("velocity", v)
    return 1.0 / v**2


def velocity(m: Any) -> Any:
    """Velocity :math:`v = 1/\\sqrt{m}` (km/s) from squared slowness (s²/km²).

    Parameters
    ----------
    m : numpy.ndarray or torch.Tensor
        Squared slowness in s²/km², any shape.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        ``1/sqrt(m)``, the shape and type of ``m``.

    Raises
    ------
    InvalidModelError
        On non-positive, NaN or infinite values.
    """
    check_finite_positive("squared slowness", m)
    if isinstance(m, torch.Tensor):
        return 1.0 / torch.sqrt(m)
    return 1.0 / np.sqrt(m)


class Model(abc.ABC):
    """Geometry of a model grid with an absorbing (damping) layer, for any physics.

    Parameters
    ----------
    shape : tuple of int
        Physical grid size, one entry per dimension (``dims`` of the subclass say how
        many), without the absorbing layer.
    spacing : tuple of float
        Grid spacing in m, one per dimension.
    origin : tuple of float, optional
        Coordinates (m) of the first physical grid point. Default zeros.
    nbl : int
        Width of the absorbing layer in grid points, added on both sides of every axis.
    space_order : int
        Even spatial finite-difference order (2 … 16).
    dtype : float32 or float64
        Default floating type of the operators (an operator is compiled per dtype).

    Notes
    -----
    Subclasses (one per physics) set :attr:`dims` and :attr:`min_points` and define
    :meth:`critical_dt`, the stability limit of their scheme; they may replace the
    absorbing profile :meth:`damping`. The parameter given on the physical grid is
    extended into the absorbing layer by edge replication (:meth:`pad`); the gradient
    with respect to the physical grid is the adjoint of that extension
    (:meth:`pad_adjoint`, which folds the layer's gradient into the edge cells), so
    gradients are exact for the physical-grid parameters.
    """

    #: Numbers of dimensions this kind of model supports.
    dims: tuple[int, ...] = (1, 2, 3)
    #: Fewest physical grid points per dimension.
    min_points: int = 2

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
        shape_t = check_int_tuple("shape", shape, self.dims, minimum=self.min_points)
        self.shape = shape_t
        self.dim = len(shape_t)
        self.spacing = check_tuple("spacing", spacing, self.dim, positive=True)
        self.origin = check_tuple(
            "origin", (0.0,) * self.dim if origin is None else origin, self.dim
        )
        self.nbl = check_nonnegative_int("nbl", nbl)
        self.space_order = stencil.check_space_order(space_order)
        self.dtype = check_dtype("dtype", dtype)

    # ---------------------------------------------------------------- stability
    @abc.abstractmethod
    def critical_dt(self, vmax: float) -> float:
        """Largest stable time step (ms) of the physics' scheme on this grid.

        Parameters
        ----------
        vmax : float
            Largest wave speed of the scheme (km/s); what that speed is in terms of
            the model parameters is the physics' to say.

        Returns
        -------
        float
            The time step in ms.
        """

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

    def grid_coordinates(self) -> list[np.ndarray]:
        """1D coordinate vectors (m) of the physical grid, one ``[n_d]`` per dimension."""
        return [o + h * np.arange(n) for o, h, n in zip(self.origin, self.spacing, self.shape)]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, spacing={self.spacing}, "
            f"origin={self.origin}, nbl={self.nbl}, space_order={self.space_order}, "
            f"dtype={np.dtype(self.dtype).name})"
        )

    # ---------------------------------------------------------- absorbing layer
    def damping(self) -> np.ndarray:
        """Damping coefficient on the padded grid (0 inside the physical domain).

        Returns
        -------
        numpy.ndarray
            ``[*padded_shape]`` float64. The profile of Devito's ``initialize_damp``:
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
        """Extend a physical-grid array into the absorbing layer (:func:`padding.extend`).

        Parameters
        ----------
        m : numpy.ndarray
            ``[*shape]`` values on the physical grid.

        Returns
        -------
        numpy.ndarray
            ``[*padded_shape]``, edge values repeated into the layer.

        Raises
        ------
        InvalidShapeError
            If ``m`` is not ``[*shape]``.
        """
        if tuple(m.shape) != self.shape:
            raise InvalidShapeError(
                f"model array has shape {list(m.shape)}; expected {list(self.shape)}"
            )
        return padding.extend(m, self.nbl)

    def pad_adjoint(self, g: np.ndarray) -> np.ndarray:
        """Adjoint of :meth:`pad`: ``[*padded_shape]`` → ``[*shape]``, the layer's values
        folded into the physical edge cells."""
        return padding.extend_adjoint(g, self.nbl)


def check_model(model: Any, kind: type = Model, error: type = InvalidArgumentError) -> None:
    """The one type check of a model argument: ``model`` must be a ``kind``.

    Parameters
    ----------
    model : object
        The value given.
    kind : type
        :class:`Model` (any physics: surveys, geometry checks) or the subclass an
        operator needs (e.g. ``AcousticModel``, whose stability limit it applies).
    error : type
        The :class:`~devito_uq.errors.DevitoUQError` subclass to raise.

    Raises
    ------
    ~devito_uq.errors.DevitoUQError
        Of class ``error``: ``model must be a <kind>; got <type of model>``.
    """
    if not isinstance(model, kind):
        article = "an" if kind.__name__[0] in "AEIOU" else "a"
        raise error(f"model must be {article} {kind.__name__}; got {type(model).__name__}")
