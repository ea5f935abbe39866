"""Benchmark of the Sleipner AVP experiment's VI step and of batched plane-wave solves.

Prints, from one run on this machine:

1. the time of one VI iteration (HINT flow, batch 8, 7 ray parameters, 801 steps)
   split into physics (time inside the Devito kernels: forward + adjoint), flow
   (the same flow's sample / log-density / backward / Adam step, timed alone) and
   overhead (the rest: torch glue, likelihood, prior, parameterization), with the
   extrapolated time of the original 32,768-iteration schedule;
2. 1D PDE solves per second (one solve = one model × one ray parameter, forward or
   adjoint) when a batch of 8 models × 7 ray parameters is one kernel call, against
   the baseline of one solve per kernel call.

Usage: ``python benchmarks/bench_avp.py [--iterations N]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import torch  # noqa: E402

from devito_uq.apps.avp import AVPConfig, build_problem, make_flow  # noqa: E402
from devito_uq.inference import VariationalPosterior  # noqa: E402
from devito_uq.physics import PlaneWaveModeling  # noqa: E402
from devito_uq.physics.planewave.solver import PlaneWaveSolver  # noqa: E402


class _KernelTimer:
    """Accumulates wall time spent inside the compiled kernels (forward, adjoint)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._orig = (PlaneWaveSolver.forward, PlaneWaveSolver.jacobian_adjoint)

    def __enter__(self):
        fwd, grad = self._orig
        timer = self

        def timed(fn):
            def wrapper(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    timer.seconds += time.perf_counter() - t0

            return wrapper

        PlaneWaveSolver.forward = timed(fwd)
        PlaneWaveSolver.jacobian_adjoint = timed(grad)
        return self

    def __exit__(self, *exc):
        PlaneWaveSolver.forward, PlaneWaveSolver.jacobian_adjoint = self._orig


def bench_vi_step(iterations: int) -> dict[str, float]:
    cfg = AVPConfig.short()
    problem = build_problem(cfg)
    flow = make_flow(cfg, problem.m_true.numel())
    vi = VariationalPosterior(flow, problem.likelihood, problem.prior, problem.parameterization)
    opt = torch.optim.Adam(flow.parameters(), lr=cfg.lr)

    def vi_step():
        opt.zero_grad(set_to_none=True)
        vi.loss_terms(cfg.batch_size)["loss"].backward()
        opt.step()

    def flow_step():
        opt.zero_grad(set_to_none=True)
        x, log_q = flow.rsample_and_log_prob(cfg.batch_size)
        (x.pow(2).sum(1) + log_q).mean().backward()
        opt.step()

    for _ in range(5):  # compile, ActNorm initialization, allocator warm-up
        vi_step()
        flow_step()
    # The machine is shared: interleave the two loops so both see the same load, and
    # take medians of per-iteration times.
    totals, physics, flows = [], [], []
    with _KernelTimer() as kt:
        for _ in range(iterations):
            k0, t0 = kt.seconds, time.perf_counter()
            vi_step()
            totals.append(time.perf_counter() - t0)
            physics.append(kt.seconds - k0)
            t0 = time.perf_counter()
            flow_step()
            flows.append(time.perf_counter() - t0)
    total = statistics.median(totals)
    physics = statistics.median(physics)
    flow_t = statistics.median(flows)
    return {"total": total, "physics": physics, "flow": flow_t}


def bench_solves(repeats: int) -> dict[str, float]:
    cfg = AVPConfig.short()
    problem = build_problem(cfg)
    op = problem.operator
    m = problem.m_background.float()
    batch = m.repeat(8, 1) * (1 + 0.01 * torch.randn(8, 128))

    def fwd_adj(operator, x):
        x = x.clone().requires_grad_(True)
        operator(x).sum().backward()

    fwd_adj(op, batch)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fwd_adj(op, batch)
    batched = (time.perf_counter() - t0) / repeats
    batched_rate = 8 * 7 * 2 / batched

    singles = [
        PlaneWaveModeling([p], nz=128, dz=op.dz, t1=cfg.t1, dt=cfg.dt)
        for p in problem.ray_parameters
    ]
    for s in singles:
        fwd_adj(s, batch[0])
    t0 = time.perf_counter()
    n_rep = max(1, repeats // 4)
    for _ in range(n_rep):
        for i in range(8):
            for s in singles:
                fwd_adj(s, batch[i])
    single = (time.perf_counter() - t0) / n_rep
    single_rate = 8 * 7 * 2 / single
    return {
        "batched_call": batched,
        "batched_rate": batched_rate,
        "single_loop": single,
        "single_rate": single_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    threads = os.environ["OMP_NUM_THREADS"]
    print(f"# bench_avp — {machine}, OMP_NUM_THREADS={threads}, torch threads {threads}\n")

    r = bench_vi_step(args.iterations)
    overhead = r["total"] - r["physics"] - r["flow"]
    print("## One VI iteration (HINT 5 steps × 64 hidden, batch 8, 7 p × 801 steps, float32)\n")
    print("| part | ms / iteration | share |")
    print("|---|---:|---:|")
    for name, v in (("physics (Devito fwd + adjoint)", r["physics"]), ("flow", r["flow"])):
        print(f"| {name} | {1e3 * v:.1f} | {v / r['total']:.0%} |")
    print(f"| overhead | {1e3 * overhead:.1f} | {overhead / r['total']:.0%} |")
    print(f"| **total** | **{1e3 * r['total']:.1f}** | 100% |")
    full = 32768 * r["total"] / 60
    print(f"\n32,768 iterations (original schedule): {full:.1f} min (target < 30 min).\n")

    s = bench_solves(max(10, args.iterations // 2))
    print("## 1D PDE solves per second (forward + adjoint, 8 models × 7 ray parameters)\n")
    print("| kernel calls | ms for 112 solves | solves / s | speed-up |")
    print("|---|---:|---:|---:|")
    print(
        f"| one solve per call (baseline) | {1e3 * s['single_loop']:.1f} | "
        f"{s['single_rate']:.0f} | 1.0× |"
    )
    print(
        f"| one batched call (56 rows) | {1e3 * s['batched_call']:.1f} | "
        f"{s['batched_rate']:.0f} | {s['batched_rate'] / s['single_rate']:.1f}× |"
    )


if __name__ == "__main__":
    main()
