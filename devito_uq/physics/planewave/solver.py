"""The compile-once plane-wave solver: a batch of models × ray parameters per call.

:class:`PlaneWaveSolver` holds the Devito objects and compiled operators of
:mod:`~devito_uq.physics.planewave.operators` for one (batch, ray-parameter count, depth
samples, layer width, time axis, order, dtype, segment), shared through
:func:`devito_uq.physics.solver.get_solver`. It takes the squared slowness on the physical
depth axis ``[batch, nz]``, extends it into the absorbing layers
(:func:`devito_uq.physics.padding.extend`) and forms ``A = m − p²`` per row; gradients come
back through the adjoint of both. What the adjoint needs from the forward — the saved
``∂²_t u`` of every step, or with ``segment > 0`` only checkpoints every ``segment`` steps
(:mod:`~devito_uq.physics.planewave.operators`) — is a
:class:`~devito_uq.physics.solver.Wavefield` owned by the token of the forward solve that
filled it; ``u`` and ``λ`` themselves only live in a few rolling levels. Arrays the calls
write are reached through plain numpy views, not Devito's ``.data`` (tens of µs per
access). This module imports Devito.
"""

from __future__ import annotations

import ctypes

import numpy as np
from devito import Buffer, Constant, Function, Grid, SpaceDimension, TimeFunction

from devito_uq.errors import InvalidArgumentError
from devito_uq.physics import padding
from devito_uq.physics.planewave import hugepages
from devito_uq.physics.planewave import operators as ops
from devito_uq.physics.solver import Solver, Wavefield, run_parallel, solver_threads
from devito_uq.validation import check_nonnegative_int

__all__ = ["PlaneWaveSolver", "SEGMENT"]

#: Default steps per recomputed segment of the checkpointed adjoint for new solvers
#: (read when a solver is made; ``0``: the full-``D`` adjoint). It stays 0: the
#: checkpointed forward + adjoint was measured 0.94–0.97× the full-``D`` one on 1
#: thread at the AVP size, a tie on 2 (``benchmarks/results/bench_planewave.md``). It
#: saves the memory of ``D`` (41 MB → 5.3 MB at the AVP size with S = 64, the best of
#: 32/64/128 measured).
SEGMENT = 0


class PlaneWaveSolver(Solver):
    """Compiled plane-wave operators for ``batch × npar`` rows of ``nz + 2·nbl`` samples.

    Shapes: models ``[batch, nz]`` (s²/km²), ray parameters squared ``p2 [npar]``
    (s²/km²), wavelet ``[nt]``, damping ``[nz + 2·nbl]`` (ms/m²), traces
    ``[batch, npar, nt]``. Source and receiver sit at the surface (the first
    physical sample, index ``nbl``). Inputs are assumed valid (the torch modules check).
    The registry keeps at most ``max_cached`` of them.

    ``segment`` (``S``: 0 or a multiple of ``BLOCK``; ``None``: :data:`SEGMENT`): ``0`` —
    the forward saves ``D`` of every step and the adjoint reads it; ``S > 0`` — the forward
    keeps only checkpoints every ``S`` steps and :meth:`jacobian_adjoint` recomputes the
    forward segment by segment (:mod:`~devito_uq.physics.planewave.operators`), the same
    discrete adjoint (equal to round-off). The full ``D`` is then allocated only if Born is
    used.
    """

    max_cached = 4

    @classmethod
    def cache_key(cls, batch, npar, nz, nbl, nt, dt, dz, space_order, dtype, segment=None) -> tuple:
        """Everything that changes generated code or buffer sizes."""
        key = (batch, npar, nz, nbl, nt, float(dt), float(dz), space_order)
        return (*key, np.dtype(dtype).name, _segment(segment))

    def __init__(self, batch, npar, nz, nbl, nt, dt, dz, space_order, dtype, segment=None) -> None:
        super().__init__()
        segment = _segment(segment)
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
        # u and λ: BLOCK + 2 rolling levels; the full-D path saves D = ∂²_t u, halo-free,
        # D[j] in slot j + BLOCK (the block write reaches back BLOCK − 1 steps).
        rolling = dict(grid=grid, time_order=2, space_order=so, save=Buffer(blk + 2))
        self.u = TimeFunction(name="u", **rolling)
        self.v = TimeFunction(name="v", **rolling)
        self.d2u: TimeFunction | None = None  # full D, allocated on first use (_full_d)
        self.segment = int(segment)
        if self.segment:
            # Segment s covers D[j], j = sS+1 … min((s+1)S, nt_run): the forward runs
            # t = sS+1 … from the checkpointed U[sS], U[sS+1]; the adjoint t = … sS+2.
            seg = self.segment
            self.n_seg = -(-self.nt_run // seg)
            self.ck = ops.checkpoint_functions(grid, seg, self.nt_run // seg + 1)
            # u of one segment, U[sS] … U[(s+1)S+1], in S + 2 modulo levels: the
            # recomputation writes it, the adjoint forms D from it (L2/L3 resident).
            self.useg = TimeFunction(
                name="us", grid=grid, time_order=2, space_order=so, save=Buffer(seg + 2)
            )
        #: Scheme coefficients ``(g, c)``, ``[rows, nz_ext]``
        #: (:mod:`~devito_uq.physics.planewave.operators`).
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
        if self.segment:
            self._np.update({f.name: _raw(f) for f in self.ck})
            self._np["ck0"][:], self._np["ck1"][:] = 0.0, 0.0  # C[0]: the zero initial levels
            self._plans: dict[int, list] = {}
        #: What the adjoint needs from the last forward (checkpoints, or the full ``D``
        #: when ``segment=0``) and the token of the solve that filled it.
        self.wavefield = Wavefield(self.ck if self.segment else self._full_d(), nt)
        #: Token of the last forward that also filled the full ``D`` (Born needs it).
        self._full_owner: object = None

    def _full_d(self) -> TimeFunction:
        """The full saved ``D`` ``[nt_buf, rows, nz_ext]`` (allocated on first use)."""
        if self.d2u is None:
            self.d2u = TimeFunction(
                name="d2u", grid=self.grid, time_order=1, space_order=0, save=self.nt_buf
            )
            hugepages.advise(_raw(self.d2u))  # 8 streams of 41 MB at the AVP size: fewer TLB misses
        return self.d2u

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

    def _forward(self, owner: object, full: bool = False) -> None:
        """The forward over all steps: traces, checkpoints and, if ``full`` (or
        ``segment=0``), the full ``D``."""
        self._np["u"][:2] = 0.0  # U[0] = U[1] = 0 (slots 0 and 1 of the rolling buffer)
        full = full or not self.segment
        d2u = self._full_d() if full else None
        ck = self.ck if self.segment else None
        build = lambda: ops.forward_operator(  # noqa: E731
            self.u, self.coef, self.q, d2u, self.rec, self.nbl, self.dz, self.dt, ck=ck
        )
        key = "fwd_full" if full else "fwd"
        self.run(key, build, {}, self.rows, split="b", time_m=1, time_M=self.nt_run)
        self.wavefield.owner = owner
        self._full_owner = owner if full else None

    def _adjoint_segments(self) -> None:
        """The checkpointed adjoint: per segment, last to first, restore ``U[sS]``,
        ``U[sS+1]`` into the ``S + 2``-level ``useg``, recompute the segment's ``u``
        (:func:`~.operators.forward_operator`) and run the adjoint over its steps
        imaging with it (:func:`~.operators.segment_adjoint_operator`). Rows are split
        over :func:`~devito_uq.physics.solver.solver_threads` threads as ``Solver.run``
        splits them, each thread running every segment of its rows (no synchronisation
        between segments; bit-identical for any thread count). Each kernel call goes
        through an argument list built once (≈ 2 µs a call)."""
        threads = max(1, min(solver_threads(), self.rows))
        plan = self._plans.get(threads)
        if plan is None:
            plan = self._plans[threads] = self._plan(threads)
        run_parallel(_run_plan, [(part,) for part in plan])

    def _plan(self, parts: int) -> list[list[tuple]]:
        """Per row part: per segment (last first), the restore copies and the two
        kernels' argument lists (built once; only time and row bounds differ)."""
        seg = self.segment

        def build_fwd():
            return ops.forward_operator(
                self.useg, self.coef, self.q, None, None, self.nbl, self.dz, self.dt,
                name="planewave_segment_forward",
            )  # fmt: skip

        def build_adj():
            return ops.segment_adjoint_operator(
                self.v, self.coef, self.res, self.grad, self.useg, self.nbl, self.dt
            )

        ops_ = [self.operator("seg_fwd", build_fwd), self.operator("seg_adj", build_adj)]
        bases = []
        for op in ops_:
            args = op.arguments(time_m=1, time_M=seg)
            names = [p.name for p in op.parameters]
            bases.append((op.cfunction, names, [args[n] for n in names]))
        u, c0, c1 = _raw(self.useg), self._np["ck0"], self._np["ck1"]
        h = self.space_order
        nze = self.nz_ext
        edges = [self.rows * k // parts for k in range(parts + 1)]
        plan = []
        for lo, hi in zip(edges, edges[1:]):
            lists = []
            for cfun, names, values in bases:
                timers = None
                if "timers" in names:  # each part its own profiler struct: no shared writes
                    i = names.index("timers")
                    timers = type(values[i]._obj)()
                    values = list(values)
                    values[i] = ctypes.byref(timers)
                lists.append((cfun, names, values, timers))  # timers: kept alive with the plan
            steps = []
            for s in reversed(range(self.n_seg)):
                t0, t1 = s * seg + 1, min((s + 1) * seg, self.nt_run)
                restore = (
                    (u[(t0 - 1) % len(u), h + lo : h + hi, h : h + nze], c0[s, lo:hi]),
                    (u[t0 % len(u), h + lo : h + hi, h : h + nze], c1[s, lo:hi]),
                )
                calls = []
                for (cfun, names, values, timers), (tm, tM) in zip(
                    lists, ((t0, t1), (t0 + 1, t1 + 1))
                ):
                    v = list(values)
                    for n, x in (("time_m", tm), ("time_M", tM), ("b_m", lo), ("b_M", hi - 1)):
                        v[names.index(n)] = x
                    calls.append((cfun, v, timers))
                steps.append((restore, calls))
            plan.append(steps)
        return plan

    # ------------------------------------------------------------- public API
    def forward(self, m, p2, wavelet, damping, owner: object = None) -> np.ndarray:
        """Traces ``[batch, npar, nt]`` for ``m [batch, nz]``; keeps the wavefield for ``owner``."""
        self._load(m, p2, wavelet, damping)
        self._forward(owner)
        return self._rec_t.reshape(self.batch, self.npar, self.nt).copy()

    def jacobian_adjoint(self, m, p2, wavelet, damping, residual, owner: object = None):
        """``J(m)ᵀ r``: ``∂⟨r, d⟩/∂m`` ``[batch, nz]`` for ``r`` ``[batch, npar, nt]``.

        Reuses the saved wavefield (or checkpoints) if ``owner`` still owns it, else
        recomputes it (a forward solve per row). The checkpointed adjoint's own
        recomputation of the forward is part of the adjoint: it counts one solve per
        row in ``n_solves``, as the full-``D`` adjoint does.
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
        if self.segment:
            # The forward recomputed inside is part of this adjoint solve: counted once
            # per row, as the adjoint (not as a forward).
            self._adjoint_segments()
            self.n_solves += self.rows
        else:
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
        if owner is None or self.wavefield.owner is not owner or self._full_owner is not owner:
            self._load(m, p2, wavelet, damping)
            self._forward(owner, full=True)
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


def _segment(segment) -> int:
    """``segment`` checked: 0 or a positive multiple of ``BLOCK`` (``None``: :data:`SEGMENT`)."""
    seg = check_nonnegative_int("segment", SEGMENT if segment is None else segment)
    if seg % ops.BLOCK:
        raise InvalidArgumentError(f"segment={seg} must be 0 or a multiple of {ops.BLOCK}")
    return seg


def _run_plan(steps: list) -> None:
    """Run one row part's segments (see :meth:`PlaneWaveSolver._plan`)."""
    copyto = np.copyto
    for restore, calls in steps:
        for dst, src in restore:
            copyto(dst, src)
        for cfun, values, _ in calls:
            cfun(*values)


def _raw(f) -> np.ndarray:
    """The whole allocated buffer of ``f`` (halo included) as a plain numpy array."""
    return f.data_with_halo.view(np.ndarray)
