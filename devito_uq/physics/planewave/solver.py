"""The compile-once plane-wave solver: a batch of models × ray parameters per call.

:class:`PlaneWaveSolver` holds the Devito objects and compiled operators of
:mod:`.operators` for one (batch, ray-parameter count, depth samples, layer width,
time axis, order, dtype), shared through :func:`devito_uq.physics.solver.get_solver`.
It takes the squared slowness on the physical depth axis ``[batch, nz]``, extends it
into the absorbing layers (:func:`devito_uq.physics.padding.extend`) and forms
``A = m − p²`` per row; gradients come back through the adjoint of both. The one
saved wavefield buffer is a :class:`~devito_uq.physics.solver.Wavefield` owned by
the token of the forward solve that filled it. This module imports Devito.
"""

from __future__ import annotations

import numpy as np
from devito import Constant, Function, Grid, SpaceDimension, TimeFunction

from devito_uq.physics import padding
from devito_uq.physics.planewave import operators as ops
from devito_uq.physics.solver import Solver, Wavefield

__all__ = ["PlaneWaveSolver"]


class PlaneWaveSolver(Solver):
    """Compiled plane-wave operators for ``batch × npar`` rows of ``nz + 2·nbl`` samples.

    Shapes: models ``[batch, nz]`` (s²/km²), ray parameters squared ``p2 [npar]``
    (s²/km²), wavelet ``[nt]``, damping ``[nz + 2·nbl]`` (ms/m²), traces
    ``[batch, npar, nt]``. Source and receiver sit at the surface (the first
    physical sample, index ``nbl``). Inputs are assumed valid (the torch modules check).
    The registry keeps at most ``max_cached`` of them (each holds a full wavefield).
    """

    max_cached = 4

    @classmethod
    def cache_key(cls, batch, npar, nz, nbl, nt, dt, dz, space_order, dtype) -> tuple:
        """Everything that changes generated code or buffer sizes."""
        return (batch, npar, nz, nbl, nt, float(dt), float(dz), space_order, np.dtype(dtype).name)

    def __init__(self, batch, npar, nz, nbl, nt, dt, dz, space_order, dtype) -> None:
        super().__init__()
        self.batch, self.npar, self.nz, self.nbl = batch, npar, nz, nbl
        self.rows, self.nz_ext = batch * npar, nz + 2 * nbl
        self.nt, self.dt, self.dz, self.dtype = nt, float(dt), float(dz), dtype
        self.space_order = space_order
        rows, nze = self.rows, self.nz_ext
        bdim = SpaceDimension("b", spacing=Constant(name="hb", value=1.0, dtype=dtype))
        zdim = SpaceDimension("z", spacing=Constant(name="hz", value=dz, dtype=dtype))
        # Grid derives a spacing extent/(shape-1) that the explicit dimensions override;
        # with a single row that is a harmless 0-division warning.
        with np.errstate(divide="ignore", invalid="ignore"):
            grid = Grid(
                shape=(rows, nze),
                extent=(float(rows - 1), dz * (nze - 1)),
                dimensions=(bdim, zdim),
                dtype=dtype,
            )
        self.grid = grid
        so = space_order
        self.u = TimeFunction(name="u", grid=grid, time_order=2, space_order=so, save=nt + 1)
        self.v = TimeFunction(name="v", grid=grid, time_order=2, space_order=so)
        self.c = tuple(Function(name=f"c{i}", grid=grid, space_order=0) for i in (1, 2, 3))
        self.grad = Function(name="grad", grid=grid, space_order=0)
        self.smask = Function(
            name="smask", dimensions=(zdim,), shape=(nze,), dtype=dtype, space_order=0
        )
        self.rmask = Function(
            name="rmask", dimensions=(zdim,), shape=(nze,), dtype=dtype, space_order=0
        )
        self.smask.data[:] = 0.0
        self.smask.data[nbl] = 1.0 / dz  # δ(z − z_s) on the grid
        self.rmask.data[:] = 0.0
        self.rmask.data[nbl] = 1.0  # adjoint of reading u at z_s
        time = grid.time_dim
        self.q = Function(name="q", dimensions=(time,), shape=(nt + 1,), dtype=dtype, space_order=0)
        self.res = Function(
            name="res", dimensions=(time, bdim), shape=(nt + 1, rows), dtype=dtype, space_order=0
        )
        self.du: TimeFunction | None = None  # Born buffers, allocated on first use
        self.da: Function | None = None
        #: The saved forward wavefield ``u`` and the token of the solve that filled it.
        self.wavefield = Wavefield(self.u, nt)

    # ---------------------------------------------------------------- plumbing
    def _load(self, m: np.ndarray, p2: np.ndarray, wavelet: np.ndarray, damping: np.ndarray):
        """Set ``c1, c2, c3`` from ``A = E m − p²`` and the damping; load the wavelet."""
        dt = self.dt
        m_ext = padding.extend(np.asarray(m, dtype=np.float64), self.nbl, axes=(-1,))
        a = (m_ext[:, None, :] - np.asarray(p2, dtype=np.float64)[None, :, None]).reshape(
            self.rows, self.nz_ext
        )
        eta = np.asarray(damping, dtype=np.float64)[None, :] / (2.0 * dt)
        bb = a / dt**2 + eta
        c1, c2, c3 = self.c
        c1.data[:] = 2.0 * a / dt**2 / bb
        c2.data[:] = (a / dt**2 - eta) / bb
        c3.data[:] = 1.0 / bb
        self.q.data[0] = 0.0
        self.q.data[1:] = wavelet  # iteration `time` injects q^{time-1}

    def _traces(self, field: TimeFunction) -> np.ndarray:
        out = np.array(field.data[1:, :, self.nbl].T)  # [rows, nt]
        return out.reshape(self.batch, self.npar, self.nt)

    def _fold(self, grad_a: np.ndarray) -> np.ndarray:
        """``∂/∂m`` from ``∂/∂A`` ``[rows, nz_ext]``: sum over p, then ``Eᵀ``."""
        g = grad_a.reshape(self.batch, self.npar, self.nz_ext).sum(axis=1)
        return padding.extend_adjoint(g, self.nbl, axes=(-1,)).astype(self.dtype, copy=False)

    def _forward(self, owner: object) -> None:
        self.u.data[0:2] = 0.0
        build = lambda: ops.forward_operator(self.u, self.c, self.smask, self.q)  # noqa: E731
        self.run("fwd", build, {}, self.rows, time_m=1, time_M=self.nt - 1)
        self.wavefield.owner = owner

    # ------------------------------------------------------------- public API
    def forward(self, m, p2, wavelet, damping, owner: object = None) -> np.ndarray:
        """Traces ``[batch, npar, nt]`` for ``m [batch, nz]``; keeps the wavefield for ``owner``."""
        self._load(m, p2, wavelet, damping)
        self._forward(owner)
        return self._traces(self.u)

    def jacobian_adjoint(self, m, p2, wavelet, damping, residual, owner: object = None):
        """``J(m)ᵀ r``: ``∂⟨r, d⟩/∂m`` ``[batch, nz]`` for ``r`` ``[batch, npar, nt]``.

        Reuses the saved wavefield if ``owner`` still owns it, else recomputes it.
        """
        if owner is None or self.wavefield.owner is not owner:
            self._load(m, p2, wavelet, damping)
            self._forward(owner)
        # else: every solve that loads other coefficients also takes the wavefield, so
        # while ``owner`` holds it the loaded coefficients are still ``owner``'s.
        r = np.asarray(residual).reshape(self.rows, self.nt)
        self.res.data[0] = 0.0
        self.res.data[1:] = r.T  # iteration `time` injects r^{time-1}
        self.v.data[:] = 0.0
        self.grad.data[:] = 0.0
        build = lambda: ops.gradient_operator(  # noqa: E731
            self.u, self.v, self.c, self.rmask, self.res, self.grad, self.dt
        )
        self.run("adj", build, {}, self.rows, time_m=2, time_M=self.nt)
        return self._fold(np.asarray(self.grad.data))

    def jacobian(self, m, dm, p2, wavelet, damping, owner: object = None) -> np.ndarray:
        """Born traces ``J(m) δm`` ``[batch, npar, nt]`` for ``δm`` ``[batch, nz]``.

        ``δA = E δm`` for every ray parameter. Reuses ``owner``'s saved background
        wavefield (and coefficients) when it still holds it.
        """
        if owner is None or self.wavefield.owner is not owner:
            self._load(m, p2, wavelet, damping)
            self._forward(owner)
        if self.du is None:
            so = self.space_order
            self.du = TimeFunction(
                name="du", grid=self.grid, time_order=2, space_order=so, save=self.nt + 1
            )
            self.da = Function(name="da", grid=self.grid, space_order=0)
        dm_ext = padding.extend(np.asarray(dm, dtype=np.float64), self.nbl, axes=(-1,))
        self.da.data[:] = np.repeat(dm_ext[:, None, :], self.npar, axis=1).reshape(self.rows, -1)
        self.du.data[0:2] = 0.0
        build = lambda: ops.born_operator(self.u, self.du, self.c, self.da, self.dt)  # noqa: E731
        self.run("born", build, {}, self.rows, time_m=1, time_M=self.nt - 1)
        return self._traces(self.du)
