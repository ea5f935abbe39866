"""Benchmark of the plane-wave (τ-p) kernel at the AVP size: full-``D`` vs checkpointed adjoint.

One run, interleaved: each repeat times every case once on every solver, so all see
the same load. Sizes are the AVP experiment's (``AVPConfig.full()`` and
``build_problem``): 8 models × 7 ray parameters = 56 rows, 128 + 2·50 depths, 801
steps of 0.5 ms, space order 4, float32. Solvers (``PlaneWaveSolver(segment=S)``):

* ``previous`` — the kernel before this session (:class:`PreviousSolver`: the source
  term redone over a one-sample subdomain), the baseline of every ratio;
* ``current`` (``S = 0``, the default) — the forward saves ``D = ∂²_t u`` of every
  step (41 MB), the adjoint reads it back; the source added by a scalar statement;
* ``ckpt S`` — the forward keeps two ``u`` levels every ``S`` steps, the adjoint
  recomputes ``u`` segment by segment into an ``S + 2``-level buffer and images with it.

Cases, per solver call: ``forward`` (traces ``[8, 7, 801]``) and ``forward+adjoint``
(the pair MALA and VI run every step: ``jacobian_adjoint`` reusing the forward's
checkpoints or ``D``), each with the rows split over 1 and 2 threads
(:func:`devito_uq.threads.set_solver_threads`). It also prints how far each float32
result is from the float64 full-``D`` solver.

Usage: ``python benchmarks/bench_planewave.py [--repeats N] [--segments 32,64]
[--threads 1,2]`` (results in ``benchmarks/results/bench_planewave.md``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import contextlib  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from devito import Eq, SubDomain  # noqa: E402

from devito_uq.apps.avp import AVPConfig, build_problem  # noqa: E402
from devito_uq.physics.planewave import operators as ops  # noqa: E402
from devito_uq.physics.planewave.solver import PlaneWaveSolver  # noqa: E402
from devito_uq.physics.solver import new_owner  # noqa: E402
from devito_uq.threads import set_solver_threads  # noqa: E402


class _Depth(SubDomain):
    """All rows at the one depth index ``iz`` (the previous kernel's source point)."""

    name = "surface"

    def __init__(self, iz: int, grid) -> None:
        self.iz = iz
        super().__init__(grid=grid)

    def define(self, dimensions):
        b, z = dimensions
        return {b: b, z: ("middle", self.iz, self.grid.shape[1] - self.iz - 1)}


def _previous_step(w, new, old, coef, src, iz):
    """The previous ``operators._step``: the sweep, then the source depth redone with
    the injected term over a one-sample subdomain."""
    g, c = coef
    rhs = 2 * w - old + g * (old - w)
    return [
        Eq(new, rhs + c * w.dz2),
        Eq(new, rhs + c * (w.dz2 + src), subdomain=_Depth(iz, w.grid)),
    ]


class PreviousSolver(PlaneWaveSolver):
    """``PlaneWaveSolver(segment=0)`` with the previous source statement (baseline)."""

    def operator(self, key, build, objs=None):
        with contextlib.ExitStack() as stack:
            step, ops._step = ops._step, _previous_step
            stack.callback(setattr, ops, "_step", step)
            return super().operator(key, build, objs)


def _solvers(op, segments: list[int], batch: int, seed: int):
    """``({name: solver}, pair inputs)`` for ``batch`` models; prints the accuracy."""
    dtype = np.float32
    args = (batch, op.ray_parameters.numel(), op.nz, op.nbl, op.nt, op.dt, op.dz)
    args += (op.space_order,)
    solvers = {
        "previous": PreviousSolver(*args, dtype, segment=0),
        "current": PlaneWaveSolver(*args, dtype, segment=0),
    }
    solvers.update({f"ckpt {s}": PlaneWaveSolver(*args, dtype, segment=s) for s in segments})
    gen = np.random.default_rng(seed)
    m0 = op._m_bench.astype(np.float64)
    m = (m0[None] * (1 + 0.02 * gen.standard_normal((batch, op.nz)))).astype(dtype)
    r = gen.standard_normal((batch, op.ray_parameters.numel(), op.nt)).astype(dtype)
    ref = PlaneWaveSolver(*args, np.float64, segment=0)
    tok = new_owner()
    inputs64 = op._inputs(np.float64)
    d64 = ref.forward(m.astype(np.float64), *inputs64, owner=tok)
    g64 = ref.jacobian_adjoint(m.astype(np.float64), *inputs64, r.astype(np.float64), owner=tok)
    inputs = op._inputs(dtype)
    for name, s in solvers.items():
        tok = new_owner()
        d = s.forward(m, *inputs, owner=tok)
        g = s.jacobian_adjoint(m, *inputs, r, owner=tok)
        print(
            f"{name:10s} max |Δ| / max |float64|: traces "
            f"{np.abs(d - d64).max() / np.abs(d64).max():.1e}, gradient "
            f"{np.abs(g - g64).max() / np.abs(g64).max():.1e}"
        )
    return solvers, (m, inputs, r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--segments", default="32,64,128", help="checkpointed S values")
    parser.add_argument("--threads", default="1,2", help="row-split thread counts")
    ns = parser.parse_args()
    torch.set_num_threads(1)
    segments = [int(s) for s in ns.segments.split(",") if s]
    thread_counts = [int(t) for t in ns.threads.split(",")]
    problem = build_problem(AVPConfig.full())
    op = problem.operator
    op._m_bench = problem.m_background.double().numpy()
    print(
        f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(f"load average before: {os.getloadavg()}")
    solvers, (m, inputs, r) = _solvers(op, segments, 8, 0)

    def fwd(s):
        s.forward(m, *inputs, owner=new_owner())

    def pair(s):
        tok = new_owner()
        s.forward(m, *inputs, owner=tok)
        s.jacobian_adjoint(m, *inputs, r, owner=tok)

    kinds = (("forward", fwd), ("pair", pair))
    cases = [(th, c, f, n, s) for th in thread_counts for c, f in kinds for n, s in solvers.items()]
    times: dict = {(th, c, n): [] for th, c, _, n, _ in cases}
    before = set_solver_threads(1)
    try:
        for rep in range(ns.repeats + 2):  # 2 warm-ups (first touch, plans, thread pools)
            for th, c, f, n, s in cases:
                set_solver_threads(th)
                t0 = time.perf_counter()
                f(s)
                if rep >= 2:
                    times[(th, c, n)].append(1e3 * (time.perf_counter() - t0))
    finally:
        set_solver_threads(before)
    print(f"load average after: {os.getloadavg()}")
    print(f"\n{'threads case solver':34s} {'fastest':>8s} {'median':>8s} {'vs previous':>16s}")
    for th, c, _, n, _ in cases:
        a, b = times[(th, c, "previous")], times[(th, c, n)]
        fa, ma, fb, mb = min(a), statistics.median(a), min(b), statistics.median(b)
        label = f"{th} {c} {n}"
        print(f"{label:34s} {fb:8.2f} {mb:8.2f} {fa / fb:7.2f}× {ma / mb:6.2f}×")


if __name__ == "__main__":
    main()
