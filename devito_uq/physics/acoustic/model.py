"""The acoustic model: the neutral grid with the acoustic stability limit.

:class:`AcousticModel` is the :class:`~devito_uq.physics.model.Model` of the acoustic
operators (2D or 3D): its :meth:`~AcousticModel.critical_dt` is the CFL bound of the
leapfrog / ``space_order`` Laplacian scheme (:func:`devito_uq.physics.stencil.critical_dt`)
and :meth:`~AcousticModel.solver_nbytes` the memory an acoustic solver takes. Imports
neither torch's autograd machinery nor Devito.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from devito_uq.physics import stencil
from devito_uq.physics.model import Model

__all__ = ["AcousticModel"]

# Padded-grid arrays an AcousticSolver allocates: m, damp, dm, grad (1 level each) and
# u, du, v (3 time levels each), plus the float64 damping profile built once.
_SOLVER_ARRAYS = 13


class AcousticModel(Model):
    """Geometry of a 2D (or 3D) acoustic model with a damping absorbing layer.

    Parameters
    ----------
    shape : tuple of int
        Physical grid size ``(nx, nz)`` (or ``(nx, ny, nz)``), without the absorbing layer.
    spacing, origin, nbl, space_order, dtype
        As :class:`~devito_uq.physics.model.Model`: spacing in m, origin in m (default
        zeros), damping-layer width in grid points on every side (default 40), even
        space order 2 … 16 (default 8), default operator dtype (float32).

    Notes
    -----
    See :class:`~devito_uq.physics.model.Model` for the geometry, the damping profile
    (Devito's) and the padding with its adjoint.
    """

    dims = (2, 3)
    min_points = 3

    def critical_dt(self, vmax: float) -> float:
        """Largest stable time step (ms) for a model whose largest velocity is ``vmax``.

        Parameters
        ----------
        vmax : float
            Largest velocity of the model (km/s).

        Returns
        -------
        float
            The von Neumann bound (ms) of the scheme the operators apply
            (:func:`devito_uq.physics.stencil.critical_dt`); 6.9 % above Devito's
            ``Model.critical_dt`` at order 8, whose coefficient is conservative.
        """
        return stencil.critical_dt(vmax, self.spacing, self.space_order)

    def solver_nbytes(self, dtype: Any = None) -> int:
        """Bytes an acoustic solver allocates for this geometry (before saved wavefields).

        Parameters
        ----------
        dtype : float32 or float64, optional
            The solver's dtype (default: the model's).
        """
        itemsize = np.dtype(self.dtype if dtype is None else dtype).itemsize
        halo = self.space_order  # space_order // 2 on each side
        npts = int(np.prod([n + halo for n in self.padded_shape], dtype=np.float64))
        return npts * (_SOLVER_ARRAYS * itemsize + 8)
