"""The compile-once plane-wave solver: a batch of models × ray parameters per call.

:class:`PlaneWaveSolver` holds the Devito objects and compiled operators of
:mod:`.operators` for one (batch, ray-parameter count, depth samples, layer width,
time axis, order, dtype), shared through :func:`devito_uq.physics.solver.get_solver`.
It takes the squared slowness on the physical depth axis ``[batch, nz]``, extends it
into the absorbing layers (:func:`devito_uq.physics.padding.extend`) and forms
``A = m − p²`` per row; gradients come back through the adjoint of both. The one
saved buffer, ``∂²_t u`` of every step (:mod:`.operators`), is a
:class:`~devito_uq.physics.solver.Wavefield` owned by the token of the forward solve
that filled it; ``u`` and ``λ`` themselves only live in a few rolling levels. Arrays
the calls write are reached through plain numpy views, not Devito's ``.data``
(tens of µs per access). This module imports Devito.
"""

from __future__ import annotations

import numpy as np
from devito import Buffer, Constant, Function, Grid, SpaceDimension, TimeFunction

from devito_uq.physics import padding
from devito_uq.physics.planewave import hugepages
from devito_uq.physics.planewave import operators as ops
from devito_uq.physics.solver import Solver, Wavefield

__all__ = ["PlaneWaveSolver"]


class PlaneWaveSolver(Solver):
    """Compiled plane-wave operators for ``batch × npar`` rows of ``nz + 2·nbl`` samples.

    Shapes: models ``[batch, nz]`` (s²/km²), ray parameters squared ``p2 [npar]``
    (s²/km²), wavelet ``[nt]``, damping ``[nz + 2·nbl]`` (ms/m²), traces
    ``[batch, npar, nt]``. Source and receiver sit at the surface (the first
    physical sample, index ``nbl``). Inputs are assumed valid (the torch modules check).
    The registry keeps at most ``max_cached`` of them (each holds a saved field of all steps).
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
        so, blk = space_order, ops.BLOCK
        # Steps run: nt − 1 rounded up to whole blocks (the extra ones only feed D slots
        # that the adjoint multiplies by its zero final levels). Every time-indexed
        # buffer has the same length nt_buf (Devito wants one time size per operator),
        # long enough for the largest index the adjoint's block read names (Devito checks
        # bounds without the block condition): slot nt_run + 2·BLOCK − 1.
        self.nt_run = blk * -(-(nt - 1) // blk)
        self.nt_buf = self.nt_run + 2 * blk
        # u and λ: BLOCK + 2 rolling levels; the forward saves only D = ∂²_t u, halo-free,
        # D[j] in slot j + BLOCK (the block write reaches back BLOCK − 1 steps).
        rolling = dict(grid=grid, time_order=2, space_order=so, save=Buffer(blk + 2))
        self.u = TimeFunction(name="u", **rolling)
        self.v = TimeFunction(name="v", **rolling)
        self.d2u = TimeFunction(
            name="d2u", grid=grid, time_order=1, space_order=0, save=self.nt_buf
        )
        hugepages.advise(_raw(self.d2u))  # 8 streams of 41 MB at the AVP size: fewer TLB misses
        #: Scheme coefficients ``(g, c)`` (:mod:`.operators`), ``[rows, nz_ext]``.
        self.coef = tuple(Function(name=n, grid=grid, space_order=0) for n in ("g", "c"))
        self.grad = Function(name="grad", grid=grid, space_order=0)
        time = grid.time_dim
        self.q = Function(
            name="q", dimensions=(time,), shape=(self.nt_buf,), dtype=dtype, space_order=0
        )
        tb = dict(dimensions=(time, bdim), shape=(self.nt_buf, rows), dtype=dtype, space_order=0)
        self.res = Function(name="res", **tb)
        self.rec = Function(name="rec", **tb)  # forward traces, rec[j] = U[j] at z_s
        self.du: TimeFunction | None = None  # Born buffers, allocated on first use
        self.da: Function | None = None
        self.drec: Function | None = None
        # Plain numpy views of the buffers written per call: Devito's ``.data`` indexing
        # costs tens of µs a call. Buffers are allocated once, so the views stay valid.
        self._np = {f.name: _raw(f) for f in (self.u, self.v, self.grad, self.q, self.res)}
        self._np.update({f.name: _raw(f) for f in (*self.coef, self.rec)})
        for name in ("q", "res", "rec"):  # slots the calls never write stay zero
            self._np[name][:] = 0.0
        self._rec_t = self._np["rec"][1 : nt + 1].T  # [rows, nt] view, U[1] = 0 included
        #: The saved ``D = ∂²_t u`` of the last forward and the token of the solve that filled it.
        self.wavefield = Wavefield(self.d2u, nt)

    # ---------------------------------------------------------------- plumbing
    def _load(self, m: np.ndarray, p2: np.ndarray, wavelet: np.ndarray, damping: np.ndarray):
        """Set ``g = (η/Δt)/B`` and ``c = 1/B`` (``B = A/Δt² + η/(2Δt)``, ``A = E m − p²``)
        and the wavelet. Formed in float64 and rounded once to the solver's dtype."""
        m_ext = padding.extend(np.asarray(m, dtype=np.float64), self.nbl, axes=(-1,))
        a = np.subtract(m_ext[:, None, :], np.asarray(p2, dtype=np.float64)[None, :, None])
        a = a.reshape(self.rows, self.nz_ext)
        eta = np.asarray(damping, dtype=np.float64) / self.dt  # η/Δt [nz_ext]
        a *= 1.0 / self.dt**2
        a += 0.5 * eta  # B
        np.divide(1.0, a, out=a)  # 1/B
        self._np["c"][:] = a
        np.multiply(a, eta, out=self._np["g"], casting="same_kind")
        self._np["q"][1 : self.nt + 1] = wavelet  # iteration `time` injects q^{time-1}

    def _fold(self, grad_a: np.ndarray) -> np.ndarray:
        """``∂/∂m`` from ``∂/∂A`` ``[rows, nz_ext]``: sum over p, then ``Eᵀ``."""
        g = grad_a.reshape(self.batch, self.npar, self.nz_ext).sum(axis=1)
        return padding.extend_adjoint(g, self.nbl, axes=(-1,)).astype(self.dtype, copy=False)

    def _forward(self, owner: object) -> None:
        self._np["u"][:2] = 0.0  # U[0] = U[1] = 0 (slots 0 and 1 of the rolling buffer)
        build = lambda: ops.forward_operator(  # noqa: E731
            self.u, self.coef, self.q, self.d2u, self.rec, self.nbl, self.dz, self.dt
        )
        self.run("fwd", build, {}, self.rows, split="b", time_m=1, time_M=self.nt_run)
        self.wavefield.owner = owner

    # ------------------------------------------------------------- public API
    def forward(self, m, p2, wavelet, damping, owner: object = None) -> np.ndarray:
        """Traces ``[batch, npar, nt]`` for ``m [batch, nz]``; keeps the wavefield for ``owner``."""
        self._load(m, p2, wavelet, damping)
        self._forward(owner)
        return self._rec_t.reshape(self.batch, self.npar, self.nt).copy()

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
        self._np["res"][1 : self.nt + 1] = r.T  # iteration `time` injects r^{time-1}
        self._np["v"].fill(0.0)  # V[j] = 0 for j > nt − 1
        self._np["grad"].fill(0.0)
        build = lambda: ops.gradient_operator(  # noqa: E731
            self.v, self.coef, self.res, self.grad, self.d2u, self.nbl
        )
        self.run("adj", build, {}, self.rows, split="b", time_m=2, time_M=self.nt_run + 1)
        return self._fold(self._np["grad"])

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
            self.du = TimeFunction(name="du", grid=self.grid, time_order=2, space_order=so)
            self.da = Function(name="da", grid=self.grid, space_order=0)
            self.drec = Function(
                name="drec",
                dimensions=self.rec.dimensions,
                shape=self.rec.shape,
                dtype=self.dtype,
                space_order=0,
            )
            self._np.update({f.name: _raw(f) for f in (self.du, self.da, self.drec)})
            self._np["drec"][:] = 0.0
        dm_ext = padding.extend(np.asarray(dm, dtype=np.float64), self.nbl, axes=(-1,))
        da = self._np["da"].reshape(self.batch, self.npar, self.nz_ext)
        da[:] = dm_ext[:, None, :]
        self._np["du"].fill(0.0)
        build = lambda: ops.born_operator(  # noqa: E731
            self.du, self.coef, self.da, self.d2u, self.drec, self.nbl
        )
        self.run("born", build, {}, self.rows, split="b", time_m=1, time_M=self.nt - 1)
        out = self._np["drec"][1 : self.nt + 1].T
        return out.reshape(self.batch, self.npar, self.nt).copy()


def _raw(f) -> np.ndarray:
    """The whole allocated buffer of ``f`` (halo included) as a plain numpy array."""
    return f.data_with_halo.view(np.ndarray)
