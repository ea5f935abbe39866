"""Benchmark of the Sleipner AVP experiment: VI iteration, MALA step, batched solves.

Prints, from one run on this machine (the two flow settings interleaved so that both
see the same load; medians of per-iteration times):

1. the time of one VI iteration (the loop body of ``VariationalPosterior.fit``: sample,
   likelihood, prior, backward, gradient norm, Adam; batch 8, 7 ray parameters, 801
   steps) split into physics (inside the plane-wave solver: forward + adjoint), flow
   (the same flow's sample / log-density / backward / Adam step, timed alone) and
   other (the rest: torch glue, likelihood, prior, parameterization), for

   * **before** — the former app setting: HINT ``leaf_size=32``, plain autograd, and
     Adam's per-parameter loop (torch's CPU default);
   * **after** — :func:`devito_uq.apps.avp.make_flow` (one full-width coupling per
     step, ``memory_frugal="auto"``) and the fused Adam ``fit`` now uses;

2. the time of one MALA step of 8 chains (``MALA.run``, the full run's reference:
   22,001 value-and-gradient evaluations), and the full schedule extrapolated from
   both: 32,768 VI iterations + 22,000 MALA steps;
3. 1D PDE solves per second (one solve = one model × one ray parameter, forward or
   adjoint) when a batch of 8 models × 7 ray parameters is one kernel call, against
   the baseline of one solve per kernel call;
4. whole ``run_avp`` runs at 1/N of the full schedule (``--schedule-scale N``, the same
   VI : MALA balance; MAP's 100 L-BFGS iterations and the set-up are not scaled), side by
   side: serial on one thread (the baseline: the run before MAP + MALA moved to a second
   process), serial with the plane-wave rows split over two threads, and the default —
   MAP + MALA in a second process beside VI, then VI's solves on both threads.

Usage: ``python benchmarks/bench_avp.py [--iterations N] [--schedule-scale N]``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import torch  # noqa: E402

from devito_uq.apps.avp import AVPConfig, build_problem, make_flow, run_avp  # noqa: E402
from devito_uq.flows import HINT, Flow  # noqa: E402
from devito_uq.inference import MALA, VariationalPosterior  # noqa: E402
from devito_uq.physics import PlaneWaveModeling  # noqa: E402
from devito_uq.physics.planewave.solver import PlaneWaveSolver  # noqa: E402
from devito_uq.threads import set_solver_threads  # noqa: E402

#: The full schedule's sizes (AVPConfig.full()).
_FULL = AVPConfig.full()
_FULL_VI = _FULL.iterations
_FULL_MALA = _FULL.mala_burn_in + _FULL.mala_steps


class _KernelTimer:
    """Accumulates wall time spent inside the plane-wave solver (forward, adjoint)."""

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


def _variants(cfg: AVPConfig, n: int) -> dict[str, tuple[Flow, bool]]:
    """``name -> (flow, fused Adam)``, the same seed for both flows."""
    torch.manual_seed(cfg.seed)
    before = HINT(
        n, steps=cfg.flow_steps, hidden=cfg.flow_hidden, leaf_size=32, memory_frugal=False
    )
    before = Flow(before, (n,)).float()
    torch.manual_seed(cfg.seed)
    return {
        "before (leaf 32, plain, Adam loop)": (before, False),
        "after": (make_flow(cfg, n), True),
    }


def bench_vi_step(iterations: int) -> dict[str, dict[str, float]]:
    cfg = AVPConfig.short()
    problem = build_problem(cfg)
    steps = {}
    for name, (flow, fused) in _variants(cfg, problem.m_true.numel()).items():
        vi = VariationalPosterior(flow, problem.target)
        params = list(flow.parameters())
        opt = torch.optim.Adam(params, lr=cfg.lr, fused=fused)

        def vi_step(vi=vi, opt=opt, params=params):
            # The body of VariationalPosterior.fit's loop.
            opt.zero_grad(set_to_none=True)
            terms = vi.loss_terms(cfg.batch_size)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, math.inf)
            opt.step()
            return {k: float(v.detach()) for k, v in terms.items()}

        def flow_step(flow=flow, opt=opt):
            opt.zero_grad(set_to_none=True)
            x, log_q = flow.rsample_and_log_prob(cfg.batch_size)
            (x.pow(2).sum(1) + log_q).mean().backward()
            opt.step()

        for _ in range(5):  # compile, ActNorm initialization, allocator warm-up
            vi_step()
            flow_step()
        steps[name] = (vi_step, flow_step)
    times = {name: {"total": [], "physics": [], "flow": []} for name in steps}
    with _KernelTimer() as kt:
        for _ in range(iterations):
            for name, (vi_step, flow_step) in steps.items():
                k0, t0 = kt.seconds, time.perf_counter()
                vi_step()
                times[name]["total"].append(time.perf_counter() - t0)
                times[name]["physics"].append(kt.seconds - k0)
                t0 = time.perf_counter()
                flow_step()
                times[name]["flow"].append(time.perf_counter() - t0)
    return {
        name: {part: statistics.median(v) for part, v in parts.items()}
        for name, parts in times.items()
    }


def bench_mala_step(steps: int) -> dict[str, float]:
    """Seconds per MALA step of 8 chains, and of it inside the solver."""
    cfg = AVPConfig.short()
    problem = build_problem(cfg)
    sampler = MALA(problem.target, step_size=cfg.mala_step_size)
    x0 = problem.m_background.float()
    sampler.run(5, n_chains=cfg.mala_chains, x0=x0, burn_in=0, thin=1, progress=False)
    with _KernelTimer() as kt:
        t0 = time.perf_counter()
        sampler.run(steps, n_chains=cfg.mala_chains, x0=x0, burn_in=0, thin=1, progress=False)
        total = time.perf_counter() - t0
    return {"total": total / (steps + 1), "physics": kt.seconds / (steps + 1)}


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


#: Whole-run set-ups compared by :func:`bench_schedule`: (name, concurrent, solver threads).
#: torch keeps one thread in all three (its OpenMP workers spin after each operation and
#: would take the core the second solver thread needs; the flow gains nothing from two).
_SCHEDULE_MODES = (
    ("serial, 1 thread (baseline: the former run)", "no", 1),
    ("serial, plane-wave rows on 2 threads", "no", 2),
    ("MAP + MALA beside VI, then VI's rows on 2 threads (default)", "yes", 1),
)


def bench_schedule(scale: int, repeats: int) -> dict[str, list[float]]:
    """Wall seconds of ``run_avp`` on the full schedule divided by ``scale`` (VI iterations,
    MALA burn-in and steps: the same VI : MALA balance) for each of :data:`_SCHEDULE_MODES`
    (torch and solver threads as ``configure_threads`` sets them on an idle 2-core
    machine), alternated ``repeats`` times; figures off, fresh output folders."""
    cfg = dict(
        iterations=_FULL.iterations // scale,
        lr_decay_every=max(1, _FULL.lr_decay_every // scale),
        mala_steps=_FULL.mala_steps // scale,
        mala_burn_in=_FULL.mala_burn_in // scale,
        checkpoint_every=_FULL.iterations // scale,
        refine_steps=0,  # after VI and MALA in either mode: not what this compares
    )
    walls: dict[str, list[float]] = {name: [] for name, _, _ in _SCHEDULE_MODES}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for k, (name, mode, threads) in enumerate(_SCHEDULE_MODES):
                out = os.path.join(tmp, f"{k}_{r}")
                torch.set_num_threads(1)
                set_solver_threads(threads)  # the concurrent run hands VI both when MALA ends
                t0 = time.perf_counter()
                run_avp(AVPConfig.full(concurrent=mode, **cfg), out, progress=False, figures=False)
                walls[name].append(time.perf_counter() - t0)
    torch.set_num_threads(1)
    set_solver_threads(None)
    return walls


def _ms(v: float) -> str:
    return f"{1e3 * v:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--mala-steps", type=int, default=100)
    parser.add_argument(
        "--schedule-scale",
        type=int,
        default=32,
        help="time whole runs at 1/N of the full schedule, serial vs concurrent (0: skip)",
    )
    parser.add_argument("--schedule-repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    threads = os.environ["OMP_NUM_THREADS"]
    print(f"# bench_avp — {machine}, OMP_NUM_THREADS={threads}, torch threads {threads}\n")
    load0 = os.getloadavg()[0]

    r = bench_vi_step(args.iterations)
    print("## One VI iteration (HINT 5 steps × 64 hidden, batch 8, 7 p × 801 steps, float32)\n")
    names = list(r)
    print("| part, ms / iteration | " + " | ".join(names) + " | after / before |")
    print("|---|" + "---:|" * (len(names) + 1))
    rows = {}
    for name, v in r.items():
        rows[name] = {
            "physics (solver: fwd + adjoint)": v["physics"],
            "flow (step alone)": v["flow"],
            "other": v["total"] - v["physics"] - v["flow"],
            "**total**": v["total"],
        }
    b, a = names
    for part in rows[b]:
        vb, va = rows[b][part], rows[a][part]
        print(f"| {part} | {_ms(vb)} | {_ms(va)} | {va / vb:.2f}× |")

    m = bench_mala_step(args.mala_steps)
    print(
        f"\nOne MALA step, 8 chains (`MALA.run`): {_ms(m['total'])} ms "
        f"(solver {_ms(m['physics'])} ms); unchanged by the flow settings.\n"
    )
    print(
        "| full schedule, extrapolated at this load | VI (32,768 its) | MALA (22,000 steps) | sum |"
    )
    print("|---|---:|---:|---:|")
    mala_min = _FULL_MALA * m["total"] / 60
    for name in names:
        vi_min = _FULL_VI * r[name]["total"] / 60
        print(f"| {name} | {vi_min:.1f} min | {mala_min:.1f} min | {vi_min + mala_min:.1f} min |")

    s = bench_solves(max(10, args.iterations // 2))
    print("\n## 1D PDE solves per second (forward + adjoint, 8 models × 7 ray parameters)\n")
    print("| kernel calls | ms for 112 solves | solves / s | speed-up |")
    print("|---|---:|---:|---:|")
    print(
        f"| one solve per call (baseline) | {_ms(s['single_loop'])} | "
        f"{s['single_rate']:.0f} | 1.0× |"
    )
    print(
        f"| one batched call (56 rows) | {_ms(s['batched_call'])} | "
        f"{s['batched_rate']:.0f} | {s['batched_rate'] / s['single_rate']:.1f}× |"
    )
    if args.schedule_scale:
        k = args.schedule_scale
        w = bench_schedule(k, args.schedule_repeats)
        print(f"\n## Whole run, 1/{k} of the full schedule (`run_avp`, figures off)\n")
        print(
            f"{_FULL_VI // k} VI iterations + {_FULL_MALA // k} MALA steps; wall seconds, "
            f"fastest of {args.schedule_repeats} alternated runs; all runs: "
            + "; ".join(f"{[round(v, 1) for v in t]}" for t in w.values())
            + "\n"
        )
        print("| set-up | wall s | vs baseline | full schedule at this rate |")
        print("|---|---:|---:|---:|")
        base = min(next(iter(w.values())))
        for name, t in w.items():
            print(f"| {name} | {min(t):.1f} | {base / min(t):.2f}× | {min(t) * k / 60:.1f} min |")
    print(f"\nload average (1 min) at start {load0:.1f}, at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
