"""Benchmark of the plane-wave (τ-p) kernel at the AVP size: former vs current.

One run, interleaved: each repeat times every case once, former then current, so both
see the same load. Sizes are the AVP experiment's (``AVPConfig.full()`` and
``build_problem``): 8 models × 7 ray parameters = 56 rows, 128 + 2·50 depths, 801
steps of 0.5 ms, space order 4, float32. Cases, per solver call:

* ``forward`` — traces ``[8, 7, 801]`` (keeps what the adjoint needs);
* ``forward+adjoint`` — the pair MALA and VI run every step (``jacobian_adjoint``
  reusing the forward's saved field);
* the same pair at batch 1 (7 rows).

The **former** kernel is rebuilt here as the named baseline (:class:`FormerSolver`,
the code of ``devito_uq/physics/planewave`` before issue 11): ``u`` saved with halos
for all steps (802 × 64 × 236 float32 = 48 MB), masks times series for source and
residual, traces gathered from the saved field, ``∂²_t u`` formed from three saved
planes in the adjoint. It also prints how far the two results are apart.

Usage: ``python benchmarks/bench_planewave.py [--repeats N]`` (1 thread unless
``OMP_NUM_THREADS`` says otherwise; results in ``benchmarks/results/bench_planewave.md``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from devito import Constant, Eq, Function, Grid, Operator, SpaceDimension, TimeFunction  # noqa: E402

from devito_uq.apps.avp import AVPConfig, build_problem  # noqa: E402
from devito_uq.physics import padding  # noqa: E402
from devito_uq.physics.solver import Solver, new_owner  # noqa: E402


class FormerSolver(Solver):
    """The plane-wave solver as it was before issue 11 (same interface, old kernel)."""

    def __init__(self, batch, npar, nz, nbl, nt, dt, dz, space_order, dtype) -> None:
        super().__init__()
        self.batch, self.npar, self.nz, self.nbl = batch, npar, nz, nbl
        self.rows, self.nz_ext = batch * npar, nz + 2 * nbl
        self.nt, self.dt, self.dz, self.dtype = nt, float(dt), float(dz), dtype
        rows, nze = self.rows, self.nz_ext
        bdim = SpaceDimension("b", spacing=Constant(name="hb", value=1.0, dtype=dtype))
        zdim = SpaceDimension("z", spacing=Constant(name="hz", value=dz, dtype=dtype))
        grid = Grid(
            shape=(rows, nze),
            extent=(float(rows - 1), dz * (nze - 1)),
            dimensions=(bdim, zdim),
            dtype=dtype,
        )
        so = space_order
        self.u = TimeFunction(name="u", grid=grid, time_order=2, space_order=so, save=nt + 1)
        self.v = TimeFunction(name="v", grid=grid, time_order=2, space_order=so)
        self.c = tuple(Function(name=f"c{i}", grid=grid, space_order=0) for i in (1, 2, 3))
        self.grad = Function(name="grad", grid=grid, space_order=0)
        zfun = dict(dimensions=(zdim,), shape=(nze,), dtype=dtype, space_order=0)
        self.smask, self.rmask = Function(name="smask", **zfun), Function(name="rmask", **zfun)
        self.smask.data[:], self.rmask.data[:] = 0.0, 0.0
        self.smask.data[nbl], self.rmask.data[nbl] = 1.0 / dz, 1.0
        time = grid.time_dim
        self.q = Function(name="q", dimensions=(time,), shape=(nt + 1,), dtype=dtype, space_order=0)
        self.res = Function(
            name="res", dimensions=(time, bdim), shape=(nt + 1, rows), dtype=dtype, space_order=0
        )
        self.owner = None

    def _load(self, m, p2, wavelet, damping):
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
        self.q.data[1:] = wavelet

    def _forward(self, owner):
        self.u.data[0:2] = 0.0
        c1, c2, c3 = self.c
        u = self.u

        def build():
            eq = Eq(u.forward, c1 * u - c2 * u.backward + c3 * (u.dz2 + self.smask * self.q))
            return Operator([eq], name="former_forward")

        self.run("fwd", build, {}, self.rows, time_m=1, time_M=self.nt - 1)
        self.owner = owner

    def forward(self, m, p2, wavelet, damping, owner=None):
        self._load(m, p2, wavelet, damping)
        self._forward(owner)
        out = np.array(self.u.data[1:, :, self.nbl].T)
        return out.reshape(self.batch, self.npar, self.nt)

    def jacobian_adjoint(self, m, p2, wavelet, damping, residual, owner=None):
        if owner is None or self.owner is not owner:
            self._load(m, p2, wavelet, damping)
            self._forward(owner)
        r = np.asarray(residual).reshape(self.rows, self.nt)
        self.res.data[0] = 0.0
        self.res.data[1:] = r.T
        self.v.data[:] = 0.0
        self.grad.data[:] = 0.0
        c1, c2, c3 = self.c
        u, v, dt = self.u, self.v, self.dt

        def build():
            adj = Eq(v.backward, c1 * v - c2 * v.forward + c3 * (v.dz2 + self.rmask * self.res))
            d2u = (u - 2 * u.backward + u.backward.backward) * (1.0 / dt**2)
            img = Eq(self.grad, self.grad - v.backward * d2u)
            return Operator([adj, img], name="former_adjoint")

        self.run("adj", build, {}, self.rows, time_m=2, time_M=self.nt)
        g = np.asarray(self.grad.data).reshape(self.batch, self.npar, self.nz_ext).sum(axis=1)
        return padding.extend_adjoint(g, self.nbl, axes=(-1,)).astype(self.dtype, copy=False)


def _cases(op, batch: int, seed: int) -> dict:
    """``{(solver name, case): callable}`` for ``batch`` models on both solvers."""
    from devito_uq.physics.planewave.solver import PlaneWaveSolver

    dtype = np.float32
    args = (batch, op.ray_parameters.numel(), op.nz, op.nbl, op.nt, op.dt, op.dz)
    args += (op.space_order, dtype)
    solvers = {"former": FormerSolver(*args), "current": PlaneWaveSolver(*args)}
    gen = np.random.default_rng(seed)
    m0 = op._m_bench.astype(np.float64)
    m = (m0[None] * (1 + 0.02 * gen.standard_normal((batch, op.nz)))).astype(dtype)
    r = gen.standard_normal((batch, op.ray_parameters.numel(), op.nt)).astype(dtype)
    inputs = op._inputs(dtype)
    out = {}
    results = {}
    for name, s in solvers.items():

        def fwd(s=s):
            return s.forward(m, *inputs, owner=new_owner())

        def pair(s=s):
            tok = new_owner()
            d = s.forward(m, *inputs, owner=tok)
            return d, s.jacobian_adjoint(m, *inputs, r, owner=tok)

        out[(name, f"forward, batch {batch}")] = fwd
        out[(name, f"forward+adjoint, batch {batch}")] = pair
        results[name] = pair()
    # Float64 former kernel as the reference both float32 kernels are measured against.
    ref = FormerSolver(*args[:-1], np.float64)
    tok = new_owner()
    d64 = ref.forward(m.astype(np.float64), *op._inputs(np.float64), owner=tok)
    g64 = ref.jacobian_adjoint(
        m.astype(np.float64), *op._inputs(np.float64), r.astype(np.float64), owner=tok
    )

    def rel(a, b):
        return float(np.abs(a - b).max() / np.abs(b).max())

    (d0, g0), (d1, g1) = results["former"], results["current"]
    print(
        f"batch {batch}, max |Δ| / max |float64|: traces former {rel(d0, d64):.1e}, "
        f"current {rel(d1, d64):.1e}, current−former {rel(d1, d0):.1e}; gradient former "
        f"{rel(g0, g64):.1e}, current {rel(g1, g64):.1e}, current−former {rel(g1, g0):.1e}"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--no-batch1", action="store_true", help="skip the batch-1 cases")
    ns = parser.parse_args()
    torch.set_num_threads(1)
    problem = build_problem(AVPConfig.full())
    op = problem.operator
    op._m_bench = problem.m_background.double().numpy()
    print(
        f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(f"load average before: {os.getloadavg()}")
    cases = _cases(op, 8, 0)
    if not ns.no_batch1:
        cases.update(_cases(op, 1, 1))
    times = {k: [] for k in cases}
    for _ in range(2):  # warm up (first touch of buffers, caches)
        for f in cases.values():
            f()
    for _ in range(ns.repeats):
        for k, f in cases.items():
            t0 = time.perf_counter()
            f()
            times[k].append(1e3 * (time.perf_counter() - t0))
    print(f"load average after: {os.getloadavg()}")
    print(f"\n{'case':28s} {'former ms':>17s} {'current ms':>17s} {'ratio':>13s}")
    print(f"{'':28s} {'fastest  median':>17s} {'fastest  median':>17s} {'fast  median':>13s}")
    for case in dict.fromkeys(c for _, c in cases):
        a, b = times[("former", case)], times[("current", case)]
        fa, ma, fb, mb = min(a), statistics.median(a), min(b), statistics.median(b)
        print(f"{case:28s} {fa:8.2f} {ma:8.2f} {fb:8.2f} {mb:8.2f} {fa / fb:6.2f} {ma / mb:6.2f}")


if __name__ == "__main__":
    main()
