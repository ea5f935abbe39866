r"""Batched acoustic operators: ``B`` models per Devito kernel call.

:class:`BatchedAcousticSolver` solves ``B`` models (or ``B`` Born perturbations of one
background) of one shot in one compiled kernel: the padded grid gets a leading batch
axis ``b`` (a :class:`~devito.Grid` of dimension ``dim + 1`` that shares the physical
dimensions and the time dimension of the unbatched :class:`~.solver.AcousticSolver`),
the Laplacian acts on the physical axes only, and every row of the batch computes
exactly what it computes alone (round-off aside: the compiler may vectorise the batched
loops differently). Compiled once per ``(geometry, dtype, B)``.

* Born ``J(m₀) δm`` (:meth:`~BatchedAcousticSolver.jacobian`): the background ``u₀`` is
  shared by the batch, so one kernel runs ``1 + B`` wavefields instead of ``2B``.
* Born adjoint ``J(m₀)ᵀ δd`` (:meth:`~BatchedAcousticSolver.jacobian_adjoint`): ``B``
  adjoint wavefields read one saved background wavefield (the unbatched solver's pool).
* Nonlinear ``F(m)`` and its gradient (:meth:`~BatchedAcousticSolver.forward`,
  :meth:`~BatchedAcousticSolver.gradient`): ``B`` models, ``B`` saved wavefields (the
  batched pool, bounded by ``max_wavefield_bytes``; callers split larger batches).

Sources are the unbatched solver's (one shot, shared by the batch); receivers are one
``SparseTimeFunction`` on the batched grid with ``B × nrec`` points whose batch
coordinate is the row index (an exact grid line: the interpolation weight of row
``b + 1`` is zero; the model's halo along ``b`` is 1, not 0, so that zero weight never
multiplies ``1/0``). Shapes: models ``[B, nx, nz]`` (s²/km²), receiver data
``[B, time, receiver]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from devito import Dimension, Function, Grid, SparseTimeFunction, TimeFunction
from devito.types import SpaceDimension
from devito.types.dimension import Spacing
from devito.types.sparse import SparseSubFunction

from devito_uq.errors import InvalidArgumentError
from devito_uq.physics import padding
from devito_uq.physics.acoustic import operators as ops
from devito_uq.physics.acoustic.model import AcousticModel
from devito_uq.physics.acoustic.solver import AcousticSolver
from devito_uq.physics.solver import Solver, Wavefield, get_solver
from devito_uq.physics.survey import Shot
from devito_uq.validation import check_allocation, check_dtype

__all__ = ["BatchedAcousticSolver"]


class BatchedAcousticSolver(Solver):
    """Compiled acoustic operators for ``batch`` models of one geometry and dtype.

    Use ``get_solver(BatchedAcousticSolver, model, dtype, batch)``. Inputs are on the
    physical grid and valid (the torch modules check them).

    Parameters
    ----------
    model : AcousticModel
        Geometry, absorbing layer and space order.
    dtype : float32 or float64
        Operator precision.
    batch : int
        Models per kernel call ``B`` (at least 2; the torch modules call the unbatched
        solver for single models).
    max_wavefield_bytes : int
        Memory of the pool of batched saved wavefields (``B`` wavefields each).
    """

    @classmethod
    def cache_key(cls, model: AcousticModel, dtype: Any = None, batch: int = 1, **_: Any) -> tuple:
        """Everything that changes generated code: geometry, dtype and batch size."""
        dt = check_dtype("dtype", model.dtype if dtype is None else dtype)
        return (model.key, np.dtype(dt).name, int(batch))

    def __init__(
        self,
        model: AcousticModel,
        dtype: Any = None,
        batch: int = 1,
        max_wavefield_bytes: int = 2**30,
    ) -> None:
        if int(batch) < 2:
            raise InvalidArgumentError(f"a batched solver needs batch >= 2; got {batch}")
        super().__init__(max_wavefield_bytes)
        #: The unbatched solver: its grid's dimensions, damping, background ``m`` and pool.
        self.base = get_solver(AcousticSolver, model, dtype)
        self.model, self.dtype, self.batch = model, self.base.dtype, int(batch)
        check_allocation(
            f"a batched acoustic solver (batch {self.batch}) for the padded grid "
            f"{list(model.padded_shape)}",
            self.batch * model.solver_nbytes(self.dtype),
        )
        g = self.base.grid
        bdim = SpaceDimension(name="b", spacing=Spacing(name="h_b", is_const=True))
        shape = (self.batch, *g.shape)
        extent = (float(self.batch - 1), *g.extent)  # rows one unit apart
        self.grid = gb = Grid(
            shape=shape,
            extent=extent,
            origin=(0.0, *g.origin),
            dimensions=(bdim, *g.dimensions),
            time_dimension=g.time_dim,
            dtype=self.dtype,
        )
        self._spacing = {**g.spacing_map, **gb.spacing_map}
        half = model.space_order // 2
        self._so = (model.space_order, ((1, 1), *[(half, half)] * model.dim))
        one = (1, tuple([(1, 1)] * (model.dim + 1)))
        self.m = Function(name="mb", grid=gb, space_order=one)
        self.m.data_with_halo[:] = 1  # the b-halo is read with weight 0 by sparse ops
        self.dm = Function(name="dmb", grid=gb, space_order=one)
        self.grad = Function(name="gradb", grid=gb, space_order=one)
        tf = lambda name: TimeFunction(name=name, grid=gb, time_order=2, space_order=self._so)  # noqa: E731
        self.u, self.du, self.v = tf("ub"), tf("dub"), tf("vb")
        self._rec: dict[tuple, Any] = {}

    # ---------------------------------------------------------------- plumbing
    def _receivers(self, coords: np.ndarray, nt: int) -> SparseTimeFunction:
        """Cached receivers on the batched grid: ``B × nrec`` points, row ``b`` first."""
        coords = np.atleast_2d(coords)
        n = self.batch * coords.shape[0]
        key = (coords.shape[0], nt)
        rec = self._rec.get(key)
        if rec is None:
            p = Dimension(name="p_recb")
            xyz = SparseSubFunction(
                name="recb_coords",
                dtype=self.dtype,
                dimensions=(p, Dimension(name="db")),
                shape=(n, self.model.dim + 1),
                space_order=0,
                parent=None,
            )
            rec = SparseTimeFunction(
                name="recb",
                grid=self.grid,
                npoint=n,
                nt=nt + 1,
                dimensions=(self.grid.time_dim, p),
                shape=(nt + 1, n),
                coordinates=xyz,
            )
            self._rec[key] = rec
        rows = np.repeat(np.arange(self.batch, dtype=float), coords.shape[0])
        rec.coordinates.data[:] = np.column_stack([rows, np.tile(coords, (self.batch, 1))])
        return rec

    def _pad(self, x: np.ndarray) -> np.ndarray:
        return padding.extend(np.asarray(x), self.model.nbl, axes=range(1, self.model.dim + 1))

    def _data(self, rec: Any, nt: int) -> np.ndarray:
        """Receiver traces ``[B, nt, nrec]`` from the ``[nt+1, B·nrec]`` sparse buffer."""
        d = np.asarray(rec.data[:nt]).reshape(nt, self.batch, -1)
        return np.array(d.transpose(1, 0, 2), dtype=self.dtype)

    def _set_data(self, rec: Any, data: np.ndarray) -> None:
        nt = data.shape[1]
        rec.data[nt:] = 0
        rec.data[:nt] = np.asarray(data).transpose(1, 0, 2).reshape(nt, -1)

    def _run(self, key: tuple, build, objs: dict, nt: int, dt: float, solves: int) -> None:
        self.run(key, build, objs, solves, dt=dt, time_m=1, time_M=nt - 1)

    # ------------------------------------------------------------- wavefields
    def wavefield_nbytes(self, nt: int, factor: int = 1) -> int:
        """Bytes of one batched saved wavefield (``B`` wavefields of ``nt + 1`` steps)."""
        npts = int(np.prod([n + self.model.space_order for n in self.model.padded_shape]))
        return (nt + 1) * (self.batch + 2) * npts * np.dtype(self.dtype).itemsize

    def _new_buffer(self, nt: int, factor: int) -> Wavefield:
        check_allocation(
            f"a batched saved wavefield ({self.batch} models × {nt} time steps on the "
            f"padded grid {list(self.model.padded_shape)})",
            self.wavefield_nbytes(nt, factor),
        )
        fn = TimeFunction(
            name="ubsave", grid=self.grid, time_order=2, space_order=self._so, save=nt + 1
        )
        return Wavefield(fn, nt, 1, None, fn.data.nbytes)

    # ------------------------------------------------------------- operators
    def jacobian(self, m0: np.ndarray, dm: np.ndarray, shot: Shot, dt: float) -> np.ndarray:
        """Born data ``J(m₀) δm`` of ``dm`` ``[B, nx, nz]`` → ``[B, time, receiver]``."""
        base, nt = self.base, shot.wavelet.shape[0]
        src = base._sparse_fn("src", shot.src_position, nt)
        src.data[:nt, 0] = shot.wavelet
        rec = self._receivers(shot.rec_positions, nt)
        rec.data[:] = 0
        base._set_model(m0)
        self.dm.data[:] = self._pad(dm)
        base.u.data[:] = 0
        self.du.data[:] = 0
        g, sp = base.grid, self._spacing
        self._run(
            ("born",),
            lambda: ops.born_operator(
                g, base.m, base.damp, self.dm, base.u, self.du, src, rec, subs=sp
            ),
            {"src": src, "recb": rec},
            nt,
            dt,
            solves=1 + self.batch,
        )
        return self._data(rec, nt)

    def jacobian_adjoint(
        self, m0: np.ndarray, shot: Shot, dt: float, data: np.ndarray, wavefield: Wavefield
    ) -> np.ndarray:
        """``J(m₀)ᵀ δd``: ``data`` ``[B, time, receiver]`` → ``[B, nx, nz]``.

        ``wavefield`` is the unbatched solver's saved background wavefield of ``m0``
        for this shot (full storage).
        """
        nt = data.shape[1]
        self.base._set_model(m0)
        rec = self._receivers(shot.rec_positions, nt)
        self._set_data(rec, data)
        self.v.data[:] = 0
        self.grad.data[:] = 0
        base, fn, sp = self.base, wavefield.function, self._spacing
        self._run(
            ("bornT", fn.name),
            lambda: ops.gradient_operator(
                base.grid, base.m, base.damp, self.grad, fn, self.v, rec, subs=sp
            ),
            {"recb": rec, fn.name: fn},
            nt,
            dt,
            solves=self.batch,
        )
        return self._fold(self.grad)

    def forward(
        self, m: np.ndarray, shot: Shot, dt: float, wavefield: Wavefield | None = None
    ) -> np.ndarray:
        """Nonlinear data of ``m`` ``[B, nx, nz]`` → ``[B, time, receiver]``.

        With ``wavefield`` (from this solver's :meth:`acquire_wavefield`) the ``B``
        forward wavefields are stored for :meth:`gradient`.
        """
        base, nt = self.base, shot.wavelet.shape[0]
        src = base._sparse_fn("src", shot.src_position, nt)
        src.data[:nt, 0] = shot.wavelet
        rec = self._receivers(shot.rec_positions, nt)
        rec.data[:] = 0
        self.m.data[:] = self._pad(m)
        objs = {"src": src, "recb": rec}
        if wavefield is None:
            u, key = self.u, ("fwd",)
        else:
            u, key = wavefield.function, ("fwd", "save")
            objs[u.name] = u
        u.data[:2] = 0
        damp, sp = base.damp, self._spacing
        self._run(
            key,
            lambda: ops.forward_operator(base.grid, self.m, damp, u, src, rec, subs=sp),
            objs,
            nt,
            dt,
            solves=self.batch,
        )
        return self._data(rec, nt)

    def gradient(
        self, m: np.ndarray, shot: Shot, dt: float, data: np.ndarray, wavefield: Wavefield
    ) -> np.ndarray:
        """``J(m)ᵀ δd`` for ``B`` models with their saved ``wavefield`` → ``[B, nx, nz]``."""
        nt = data.shape[1]
        self.m.data[:] = self._pad(m)
        rec = self._receivers(shot.rec_positions, nt)
        self._set_data(rec, data)
        self.v.data[:] = 0
        self.grad.data[:] = 0
        fn, damp, sp = wavefield.function, self.base.damp, self._spacing
        self._run(
            ("grad",),
            lambda: ops.gradient_operator(
                self.base.grid, self.m, damp, self.grad, fn, self.v, rec, subs=sp
            ),
            {"recb": rec, fn.name: fn},
            nt,
            dt,
            solves=self.batch,
        )
        return self._fold(self.grad)

    def _fold(self, grad: Function) -> np.ndarray:
        g = np.asarray(grad.data, dtype=self.dtype)
        return padding.extend_adjoint(g, self.model.nbl, axes=range(1, self.model.dim + 1))
