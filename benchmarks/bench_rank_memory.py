"""Memory per MPI rank of batched imaging VI iterations, against the wavefield budget.

Issue 21's last benchmark: does a batched VI iteration of the imaging app stay within its
saved-wavefield budget on every rank of ``mpiexec -n 2``? The problem is the 3 km × 1.5 km
Marmousi window at 30 m (101 × 51, the short schedule's 8 shots, 1.6 s records; the same
as ``bench_imaging.py``'s split worker), Born data, the app's flow and Laplace rank (the
factor replaced by random orthonormal vectors: the same memory and cost per iteration),
VI's default random shot subsets. Each case is a fresh ``mpiexec`` run; every rank reports

- its resident memory after the imports, after ``build_problem`` (its shots read, no
  solve yet), and its peak (``VmHWM``) after a warm-up and ``--iterations`` VI steps;
- the bytes its pool of saved background wavefields holds at the end, the budget
  (``BornModeling.max_wavefield_bytes``), and the bytes one shot's saved wavefield needs.

Cases: ``mpiexec -n 1`` and ``-n 2`` at the default budget (1 GiB), VI batches of 2 (the
app's default) and 8 (one batched kernel per shot), and ``-n 2`` with a budget smaller
than the shots of a rank need (the pool then holds what fits and the Born adjoint
recomputes the rest). Writes ``benchmarks/results/bench_rank_memory.md``.

Usage: ``python benchmarks/bench_rank_memory.py [--iterations 4]`` (about 5 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vi_batching import run_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_rank_memory.md"
HERE = Path(__file__).resolve()
MIB = 2**20


def _status_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status``, MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux ≥ 4.0: ``clear_refs`` 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _config():
    from devito_uq.apps.imaging import ImagingConfig

    return ImagingConfig.short(
        x_start=4500.0, width=3000.0, depth=1500.0, nreceivers=101, t1=1600.0
    )


def worker(out: Path, vi_batch: int, budget: int, iterations: int) -> None:
    """One rank: build the problem, run VI steps, print this rank's memory as JSON."""
    import torch
    from mpi4py import MPI

    from devito_uq.apps.imaging.posterior import make_flow
    from devito_uq.apps.imaging.problem import build_problem, make_prior
    from devito_uq.inference import LaplaceParameterization, VariationalPosterior
    from devito_uq.physics.solver import cached_solvers

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    rss_import = _status_mib("VmRSS")
    inv = _config().invert_config()
    inv.batch_size = vi_batch
    problem = build_problem(inv, out, comm if comm.Get_size() > 1 else None)
    operator = problem.operator
    operator.max_wavefield_bytes = budget
    rss_setup = _status_mib("VmRSS")
    prior = make_prior(inv, problem)
    n = problem.m0.numel()
    gen = torch.Generator().manual_seed(0)
    vec, _ = torch.linalg.qr(torch.randn(n, inv.rank, generator=gen))
    g = LaplaceParameterization(
        torch.zeros_like(problem.m0), prior.sqrt(), torch.logspace(3, -1, inv.rank), vec
    )
    torch.manual_seed(inv.seed)
    flow = make_flow(inv, problem.shape)
    vi = VariationalPosterior(flow, problem.likelihood, prior, g)
    opt = torch.optim.Adam(list(flow.parameters()), lr=inv.lr)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        vi.loss_terms(vi_batch)["loss"].backward()
        opt.step()

    step()  # compiles the kernels (Devito's symbolic build is its own peak) and fills the pool
    peak_warm = _status_mib("VmHWM")
    rss_warm = _status_mib("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    for _ in range(iterations):
        step()
    seconds = time.perf_counter() - t0
    # The saved background wavefields every solver of this rank holds (one per shot seen).
    buffers = [b.nbytes for s in cached_solvers() for b in s._pool.values()]
    row = {
        "rank": comm.Get_rank(),
        "ranks": comm.Get_size(),
        "shots": len(problem.shots),
        "vi_batch": vi_batch,
        "budget_mib": budget / MIB,
        "rss_import_mib": rss_import,
        "rss_setup_mib": rss_setup,
        "peak_warm_mib": peak_warm,
        "rss_warm_mib": rss_warm,
        "peak_steps_mib": _status_mib("VmHWM") if reset else float("nan"),
        "pool_mib": sum(buffers) / MIB,
        "buffers": len(buffers),
        "shot_wavefield_mib": max(buffers, default=0) / MIB,
        "seconds_per_iteration": seconds / iterations,
        "physics_batch": int(operator.batch_size),
    }
    rows = comm.gather(row, root=0)
    if comm.Get_rank() == 0:
        print(json.dumps(rows), flush=True)


def run_case(out: Path, ranks: int, vi_batch: int, budget: int, iterations: int) -> list[dict]:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    cmd = [str(mpiexec), "-n", str(ranks), sys.executable, str(HERE), "--worker", str(out)]
    cmd += ["--vi-batch", str(vi_batch), "--budget", str(budget), "--iterations", str(iterations)]
    return run_json(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--vi-batch", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=2**30, help=argparse.SUPPRESS)
    parser.add_argument("--iterations", type=int, default=4, help="VI steps after the warm-up")
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.vi_batch, args.budget, args.iterations)
        return
    from devito_uq.apps.imaging.simulate import run_simulate

    load0, t0 = os.getloadavg()[0], time.perf_counter()
    small = 60 * MIB  # one shot's saved wavefield (39 MiB) fits, two do not
    cases = [(1, 8, 2**30), (2, 2, 2**30), (2, 8, 2**30), (2, 8, small)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "survey"
        run_simulate(_config().simulate_config(), out, progress=False, figures=False)
        for ranks, batch, budget in cases:
            rows = run_case(out, ranks, batch, budget, args.iterations)
            print(json.dumps(rows), flush=True)
            results.extend(rows)
    lines = [
        "# Memory per MPI rank of batched imaging VI iterations\n",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (load {load0:.1f} at start), "
        f"one thread per rank. Problem: the 101 × 51 Marmousi window at 30 m, 8 shots, 1.6 s "
        f"Born records, the app's flow and shot subsets (4 of 8 per VI step); {args.iterations} "
        "VI steps after a warm-up. MiB throughout; 'pool' is the saved background wavefields "
        "the rank holds at the end (one per shot it solved while they fit the budget).\n",
        "| ranks | rank | its shots | VI batch | budget | after import | after setup "
        "| after warm-up | peak of the VI steps | pool (wavefields) | one shot's wavefield "
        "| s / VI step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['ranks']} | {r['rank']} | {r['shots']} | {r['vi_batch']} "
            f"| {r['budget_mib']:.0f} | {r['rss_import_mib']:.0f} | {r['rss_setup_mib']:.0f} "
            f"| {r['rss_warm_mib']:.0f} | {r['peak_steps_mib']:.0f} "
            f"| {r['pool_mib']:.0f} ({r['buffers']}) | {r['shot_wavefield_mib']:.1f} "
            f"| {r['seconds_per_iteration']:.2f} |"
        )
    lines.append(
        f"\nTotal {time.perf_counter() - t0:.0f} s; load average at end {os.getloadavg()[0]:.1f}."
    )
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
