r"""The plane-wave model: a depth axis with the τ-p scheme's stability limit.

:class:`PlaneWaveModel` is the :class:`~devito_uq.physics.model.Model` of the
plane-wave operators: one depth axis ``[nz]`` (the first sample at the surface),
absorbing layers above and below with the quadratic damping ramp of the original AVP
set-up, and :meth:`~PlaneWaveModel.critical_dt`, the CFL bound of the 1D recursion
whose wave speed is :math:`1/\sqrt{m - p^2}`. Imports neither torch's autograd
machinery nor Devito.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from devito_uq.physics import stencil
from devito_uq.physics.model import Model
from devito_uq.validation import check_nonnegative_scalar

__all__ = ["PlaneWaveModel"]


class PlaneWaveModel(Model):
    """Depth axis of the plane-wave (τ-p) operators with quadratic damping layers.

    Parameters
    ----------
    shape : tuple of int
        ``(nz,)`` depth samples.
    spacing : tuple of float
        ``(dz,)`` depth spacing in m.
    origin : tuple of float, optional
        Depth (m) of the first sample (the surface, source and receivers). Default 0.
    nbl : int
        Absorbing layer thickness in samples above and below the model.
    space_order : int
        Even order of the depth stencil (2 … 16).
    dtype : float32 or float64
        Default floating type (the operators compile per input dtype).
    damping : float
        Peak damping η (ms/m²) of the quadratic ramp in the layers.
    """

    dims = (1,)
    min_points = 2

    def __init__(
        self,
        shape: Sequence[int],
        spacing: Sequence[float],
        origin: Sequence[float] | None = None,
        nbl: int = 50,
        space_order: int = 4,
        dtype: Any = np.float32,
        damping: float = 0.1,
    ) -> None:
        super().__init__(shape, spacing, origin, nbl, space_order, dtype)
        self.peak_damping = check_nonnegative_scalar("damping", damping)

    def critical_dt(self, vmax: float) -> float:
        r"""Largest stable time step (ms) of the τ-p recursion.

        Parameters
        ----------
        vmax : float
            Largest speed of the 1D scheme (km/s), :math:`1/\sqrt{\min(m - p^2)}`
            over the model and the ray parameters.

        Returns
        -------
        float
            The one CFL rule (:func:`devito_uq.physics.stencil.critical_dt`) in 1D.
        """
        return stencil.critical_dt(vmax, self.spacing, self.space_order)

    def damping(self) -> np.ndarray:
        """Damping η (ms/m²) on the extended depth axis ``[nz + 2·nbl]``.

        Returns
        -------
        numpy.ndarray
            float64, zero inside the model, rising as the square of the normalised
            distance into each layer to ``damping`` at the outer edge (the SEG 2020
            AVP set-up).
        """
        nz, nbl = self.shape[0], self.nbl
        ramp = np.zeros(nz + 2 * nbl)
        if nbl:
            x = np.linspace(0.0, 1.0, nbl)
            ramp[:nbl] = x[::-1] ** 2
            ramp[nz + nbl :] = x**2
        return self.peak_damping * ramp
