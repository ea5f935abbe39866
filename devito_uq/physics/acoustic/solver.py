r"""The compile-once acoustic solver: Devito objects, wavefield pool, shot-by-shot solves.

:class:`AcousticSolver` compiles each operator of
:mod:`~devito_uq.physics.acoustic.operators` once (per model geometry and dtype, see
:func:`devito_uq.physics.solver.get_solver`; the save mode picks the operator) and applies
it shot by shot: the per-shot source/receiver coordinates and traces are written in place
into cached ``SparseTimeFunction`` objects (one per point count), and the compiled function
is called through the shared cached argument list
(:meth:`devito_uq.physics.solver.Solver.run`). No Devito object is created per call, so
Devito's symbol cache does not grow; saved-wavefield buffers are pooled
(``max_wavefield_bytes``) and owned by token. This module imports Devito; the torch layer
(:mod:`~devito_uq.physics.acoustic.modeling`) imports it on the first solve.

Memory-saving gradient: with ``factor = k > 1`` only every k-th time step of the
forward wavefield is stored and the imaging condition is evaluated on those steps
(scaled by k). Storage drops by k; the gradient becomes an approximation. Measured
(``benchmarks/results/bench_acoustic.md``, 201×201, 10 Hz, dt 2.08 ms): relative
error 1.4e-4 / 2.9e-4 / 1.8e-4 / 6.5e-2 for k = 2 / 3 / 4 / 6 (buffer 162 → 81 /
54 / 40 / 27 MB); on the tests' 15 Hz problem 2.3e-3 at k = 2 and 0.5 at k = 4.
Keep ``k · dt · f_peak`` below about 0.08. Use full storage for Taylor tests and
exact adjoints.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from devito import ConditionalDimension, Function, Grid, SparseTimeFunction, TimeFunction

from devito_uq.physics import revolve
from devito_uq.physics.acoustic import operators as ops
from devito_uq.physics.acoustic.model import AcousticModel
from devito_uq.physics.solver import Solver, Wavefield
from devito_uq.physics.survey import Shot
from devito_uq.validation import check_allocation, check_dtype

__all__ = ["AcousticSolver"]


class AcousticSolver(Solver):
    """Compiled acoustic operators for one model geometry and one dtype.

    Use ``get_solver(AcousticSolver, model, dtype)`` for the shared instance. Every
    method takes the squared slowness on the *physical* grid ``[nx, nz]`` (s²/km²)
    and one :class:`~devito_uq.physics.survey.Shot`, extends the model into the
    absorbing layer (:mod:`devito_uq.physics.padding`) and returns arrays on the
    physical grid / at the receivers. Input validation is the caller's job (the
    torch modules do it); these methods assume valid input.

    Shapes: receiver data ``[time, receiver]``; source-side data ``[time]``;
    gradients ``[nx, nz]``.
    """

    @classmethod
    def cache_key(cls, model: AcousticModel, dtype: Any = None, **_: Any) -> tuple:
        """Everything that changes generated code: geometry, layer, order, dtype."""
        dt = check_dtype("dtype", model.dtype if dtype is None else dtype)
        return (model.key, np.dtype(dt).name)

    def __init__(self, model: AcousticModel, dtype: Any = None, max_wavefield_bytes: int = 2**30):
        super().__init__(max_wavefield_bytes)
        self.model = model
        self.dtype = check_dtype("dtype", model.dtype if dtype is None else dtype)
        so = model.space_order
        padded = model.padded_shape
        check_allocation(
            f"an acoustic solver for the padded grid {list(padded)} ({self.dtype.__name__})",
            model.solver_nbytes(self.dtype),
        )
        extent = tuple(h * (n - 1) for h, n in zip(model.spacing, padded))
        self.grid = Grid(shape=padded, extent=extent, origin=model.padded_origin, dtype=self.dtype)
        g = self.grid
        self.m = Function(name="m", grid=g)
        self._m_phys: np.ndarray | None = None  # physical-grid copy of what self.m holds
        self.damp = Function(name="damp", grid=g)
        self.damp.data[:] = model.damping()
        self.dm = Function(name="dm", grid=g)
        self.grad = Function(name="grad", grid=g)
        self.u = TimeFunction(name="u", grid=g, time_order=2, space_order=so)
        self.du = TimeFunction(name="du", grid=g, time_order=2, space_order=so)
        self.v = TimeFunction(name="v", grid=g, time_order=2, space_order=so)
        self._sparse: dict[tuple, Any] = {}
        self._tsub: dict[int, Any] = {}

    # ---------------------------------------------------------------- plumbing
    def _sparse_fn(self, name: str, coords: np.ndarray, nt: int) -> SparseTimeFunction:
        """Cached sparse function for ``name``/point count/nt, coordinates set in place."""
        coords = np.atleast_2d(coords)
        key = (name, coords.shape[0], nt)
        sp = self._sparse.get(key)
        if sp is None:
            # One spare sample: Devito needs every time-indexed argument to share one
            # time size, and the full saved wavefield has nt + 1 steps (u[t+1] at t = nt-1).
            sp = SparseTimeFunction(name=name, grid=self.grid, npoint=coords.shape[0], nt=nt + 1)
            self._sparse[key] = sp
        sp.coordinates.data[:] = coords
        return sp

    def _set_model(self, m: np.ndarray, target: Any = None) -> None:
        m = np.asarray(m)
        if target is None:
            # The gradient right after its forward solve sees the same m: comparing the
            # physical grid is cheaper than padding and copying it in again.
            if self._m_phys is not None and np.array_equal(self._m_phys, m):
                return
            self._m_phys = np.array(m, dtype=self.dtype)
            target = self.m
        target.data[:] = self.model.pad(m)

    def _tsub_dim(self, factor: int) -> Any:
        if factor not in self._tsub:
            self._tsub[factor] = ConditionalDimension(
                name=f"tsub{factor}", parent=self.grid.time_dim, factor=factor
            )
        return self._tsub[factor]

    def _run(self, key: tuple, build, objs: dict, nt: int, dt: float, solves: int = 1) -> None:
        # Every operator loops over t = 1 … nt-1 (u[0] = u[1] = 0: the medium is at rest
        # at t0), so forward, adjoint, Born and gradient are exact discrete adjoints and
        # the saved and unsaved forward give identical data.
        self.run(key, build, objs, solves, dt=dt, time_m=1, time_M=nt - 1)

    # ------------------------------------------------------------- wavefields
    def wavefield_nbytes(self, nt: int, factor: int = 1) -> int:
        """Bytes of a saved forward wavefield for ``nt`` samples and subsampling ``factor``."""
        nsave = nt + 1 if factor == 1 else -(-(nt + 1) // factor)
        halo = self.model.space_order  # halo of space_order//2 each side
        npts = int(np.prod([n + halo for n in self.model.padded_shape]))
        return nsave * npts * np.dtype(self.dtype).itemsize

    def _new_buffer(self, nt: int, factor: int) -> Wavefield:
        so = self.model.space_order
        check_allocation(
            f"a saved wavefield of {nt} time steps on the padded grid "
            f"{list(self.model.padded_shape)} (subsample {factor})",
            self.wavefield_nbytes(nt, factor),
        )
        if factor == 1:
            fn = TimeFunction(name="u", grid=self.grid, time_order=2, space_order=so, save=nt + 1)
        else:
            fn = TimeFunction(
                name="usave",
                grid=self.grid,
                time_order=0,
                space_order=so,
                save=-(-(nt + 1) // factor),
                time_dim=self._tsub_dim(factor),
            )
        return Wavefield(fn, nt, factor, None, fn.data.nbytes)

    # ------------------------------------------------------------- public API
    def forward(
        self,
        m: np.ndarray,
        shot: Shot,
        dt: float,
        wavefield: Wavefield | None = None,
        wavelet: np.ndarray | None = None,
    ) -> np.ndarray:
        """Nonlinear modeling ``F(m)`` for one shot → receiver data ``[time, receiver]``.

        With ``wavefield`` (from :meth:`acquire_wavefield`) the forward wavefield is
        stored into it for a later :meth:`jacobian_adjoint`. ``wavelet`` overrides
        the shot's wavelet (``[time]``; used by the source-side dot test).
        """
        w = shot.wavelet if wavelet is None else wavelet
        nt = w.shape[0]
        src = self._sparse_fn("src", shot.src_position, nt)
        rec = self._sparse_fn("rec", shot.rec_positions, nt)
        src.data[:nt, 0] = w
        # rec[0] is never written by the loop (t starts at 1): clear stale values.
        rec.data[:] = 0
        self._set_model(m)
        g, objs = self.grid, {"src": src, "rec": rec}
        if wavefield is None:
            self.u.data[:] = 0
            key = ("fwd",)
            build = lambda: ops.forward_operator(g, self.m, self.damp, self.u, src, rec)  # noqa: E731
        else:
            # Steps 0 and 1 are never written by the time loop; the rest is overwritten.
            wavefield.function.data[:2] = 0
            objs[wavefield.function.name] = fn = wavefield.function
            key = ("fwd", wavefield.factor)
            if wavefield.factor == 1:
                build = lambda: ops.forward_operator(g, self.m, self.damp, fn, src, rec)  # noqa: E731
            else:
                self.u.data[:] = 0
                build = lambda: ops.forward_operator(  # noqa: E731
                    g, self.m, self.damp, self.u, src, rec, fn
                )
        self._run(key, build, objs, nt, dt)
        return np.array(rec.data[:nt], dtype=self.dtype)

    def adjoint(self, m: np.ndarray, shot: Shot, dt: float, data: np.ndarray) -> np.ndarray:
        """Adjoint of :meth:`forward` w.r.t. the wavelet.

        Receiver ``data`` ``[time, receiver]`` → ``[time]`` at the source position.
        """
        nt = data.shape[0]
        rec = self._sparse_fn("rec", shot.rec_positions, nt)
        srca = self._sparse_fn("srca", shot.src_position, nt)
        rec.data[:nt] = data
        srca.data[:] = 0
        self._set_model(m)
        self.v.data[:] = 0
        g = self.grid
        self._run(
            ("adj",),
            lambda: ops.adjoint_operator(g, self.m, self.damp, self.v, rec, srca),
            {"rec": rec, "srca": srca},
            nt,
            dt,
        )
        return np.array(srca.data[:nt, 0], dtype=self.dtype)

    def jacobian(self, m0: np.ndarray, dm: np.ndarray, shot: Shot, dt: float) -> np.ndarray:
        """Born modeling ``J(m₀) δm`` for one shot → ``[time, receiver]``."""
        nt = shot.wavelet.shape[0]
        src = self._sparse_fn("src", shot.src_position, nt)
        rec = self._sparse_fn("rec", shot.rec_positions, nt)
        src.data[:nt, 0] = shot.wavelet
        rec.data[:] = 0
        self._set_model(m0)
        self._set_model(dm, self.dm)
        self.u.data[:] = 0
        self.du.data[:] = 0
        g = self.grid
        self._run(
            ("born",),
            lambda: ops.born_operator(g, self.m, self.damp, self.dm, self.u, self.du, src, rec),
            {"src": src, "rec": rec},
            nt,
            dt,
            solves=2,  # background and scattered wavefields in one time loop
        )
        return np.array(rec.data[:nt], dtype=self.dtype)

    def jacobian_adjoint(
        self,
        m0: np.ndarray,
        shot: Shot,
        dt: float,
        data: np.ndarray,
        wavefield: Wavefield | None = None,
        factor: int = 1,
    ) -> np.ndarray:
        """``J(m₀)ᵀ δd`` for one shot: ``data`` ``[time, receiver]`` → ``[nx, nz]``.

        Uses the saved forward ``wavefield`` when given (it must hold this model and
        shot); otherwise recomputes it into a pooled buffer with subsampling
        ``factor``; at full storage (``factor == 1``) a wavefield larger than
        ``max_wavefield_bytes`` is not stored at all: the gradient is then computed by
        :meth:`jacobian_adjoint_checkpointed` with as many snapshots as fit (exact).
        The result is the gradient w.r.t. the physical-grid squared slowness (the
        absorbing layer folded back by :meth:`AcousticModel.pad_adjoint`).
        """
        nt = data.shape[0]
        if (
            wavefield is None
            and factor == 1
            and self.wavefield_nbytes(nt) > self.max_wavefield_bytes
        ):
            return self.jacobian_adjoint_checkpointed(m0, shot, dt, data, self.checkpoint_snaps())
        if wavefield is None:
            wavefield = self.acquire_wavefield(nt, factor)
            self.forward(m0, shot, dt, wavefield=wavefield)
            wavefield.owner = None
        else:
            self._set_model(m0)
        rec = self._sparse_fn("rec", shot.rec_positions, nt)
        rec.data[:nt] = data
        self.v.data[:] = 0
        self.grad.data[:] = 0
        k = wavefield.factor
        g = self.grid
        fn = wavefield.function
        self._run(
            ("grad", k),
            lambda: ops.gradient_operator(
                g, self.m, self.damp, self.grad, fn, self.v, rec, factor=k
            ),
            {"rec": rec, fn.name: fn},
            nt,
            dt,
        )
        return self.model.pad_adjoint(np.asarray(self.grad.data, dtype=self.dtype))

    # ------------------------------------------------------------- checkpointing
    def state_nbytes(self) -> int:
        """Bytes of one checkpoint: the two time levels ``u[k+1], u[k]`` (halo included)."""
        return 2 * self.u.data_with_halo[0].nbytes

    def checkpoint_snaps(self) -> int:
        """Snapshots that fit into ``max_wavefield_bytes`` (at least one)."""
        return max(1, self.max_wavefield_bytes // self.state_nbytes())

    def jacobian_adjoint_checkpointed(
        self, m0: np.ndarray, shot: Shot, dt: float, data: np.ndarray, snaps: int
    ) -> np.ndarray:
        """``J(m₀)ᵀ δd`` as :meth:`jacobian_adjoint`, the forward wavefield recomputed from
        ``snaps`` stored states by an optimal revolve schedule (:mod:`..revolve`).

        Forward steps ``1 … nt-1`` and the adjoint steps ``nt-1 … 1`` are those of the
        full-storage gradient, one C call per schedule action, so the result equals
        it to round-off. ``last_checkpointing`` records ``(steps, snaps, forward steps
        run)``.
        """
        nt = data.shape[0]
        steps = nt - 1
        actions = revolve.schedule(steps, snaps)
        src = self._sparse_fn("src", shot.src_position, nt)
        src.data[:nt, 0] = shot.wavelet
        recf = self._sparse_fn("recf", shot.rec_positions, nt)
        rec = self._sparse_fn("rec", shot.rec_positions, nt)
        rec.data[:nt] = data
        rec.data[nt:] = 0
        self._set_model(m0)
        self.u.data[:] = 0
        self.v.data[:] = 0
        self.grad.data[:] = 0
        g, u, v = self.grid, self.u, self.v
        ud = u.data_with_halo.view(np.ndarray)
        shots = np.empty((min(snaps, steps), 2, *ud.shape[1:]), dtype=ud.dtype)
        fwd = lambda: ops.forward_operator(g, self.m, self.damp, u, src, recf)  # noqa: E731
        adj = lambda: ops.gradient_operator(g, self.m, self.damp, self.grad, u, v, rec)  # noqa: E731
        bounds = {"dt": dt, "time_m": 1, "time_M": nt - 1}
        fobjs, aobjs = {"src": src, "recf": recf}, {"rec": rec}
        for act in actions:
            if act[0] == "advance":
                self.run_steps(("fwd", "recf"), fwd, fobjs, act[1] + 1, act[2], **bounds)
            elif act[0] == "reverse":
                self.run_steps(("grad", "rolling"), adj, aobjs, act[1], act[1], **bounds)
            else:  # x_k = (u[k+1], u[k]) in rolling slots (k+1) % 3 and k % 3
                k, snap = act[2], shots[act[1]]
                for j, row in enumerate(((k + 1) % 3, k % 3)):
                    if act[0] == "takeshot":
                        snap[j] = ud[row]
                    else:
                        ud[row] = snap[j]
        run = revolve.forward_steps(actions)
        self.n_solves += 1 + run / max(steps, 1)
        self.last_checkpointing = (steps, snaps, run)
        return self.model.pad_adjoint(np.asarray(self.grad.data, dtype=self.dtype))
