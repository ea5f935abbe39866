"""A VI iteration with and without the thread policy (``devito_uq.threads.configure_threads``).

Workload: ``VariationalPosterior.fit`` on a 40-dimensional linear-Gaussian problem
(``linear_gaussian_problem(n=40)``), ``HINT(40, steps=4, hidden=64)``, batch 64; the time of
one iteration is the median over the iterations after 3 warm-up iterations, in a fresh
process per run (thread settings are per process and torch's inter-op count can be set
only once). Modes:

- ``default``: nothing set, ``OMP_NUM_THREADS`` unset (torch uses one thread per core);
- ``policy``: ``configure_threads()`` first thing in the process;

Scenarios:

- ``alone``: one process on the machine's cores;
- ``2 ranks``: two processes at once, each told by its launcher that two ranks share the node
  (``PMI_LOCAL_SIZE=2``, as Intel MPI and Slurm's PMI export it). torch 2.13 itself already
  divides its default thread count by ``MPI_LOCALNRANKS`` (MPICH) and
  ``OMPI_COMM_WORLD_LOCAL_SIZE`` (Open MPI), not by ``PMI_LOCAL_SIZE``, and Devito's
  OpenMP by none of them;
- ``2 busy``: one process next to two competing busy processes (single-threaded Python
  loops that end by themselves after ``--busy-seconds`` and are stopped by this script).

Modes alternate within each scenario (``--rounds`` times) so both see the same load; each
worker stops after ``--iterations`` iterations or ``--budget`` seconds, whichever comes
first. Usage: ``python benchmarks/bench_threads.py [--rounds 2] [--iterations 20]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

__all__ = ["main"]

MODES = ("default", "policy")
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "MPI_LOCALNRANKS",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "PMI_LOCAL_SIZE",
    "MV2_COMM_WORLD_LOCAL_SIZE",
)


class _OutOfTime(Exception):
    pass


def worker(mode: str, iterations: int, budget: float) -> dict:
    """One run in this (fresh) process: ms per VI iteration and the threads it used."""
    policy = None
    if mode == "policy":
        from devito_uq.threads import configure_threads

        policy = configure_threads()
    import torch

    from devito_uq.flows import HINT, Flow
    from devito_uq.inference import VariationalPosterior
    from devito_uq.inference.problems import linear_gaussian_problem

    torch.manual_seed(0)
    p = linear_gaussian_problem(n=40, seed=0)
    vi = VariationalPosterior(Flow(HINT(40, steps=4, hidden=64), (40,)), p.likelihood(), p.prior)
    times: list[float] = []
    last = [time.perf_counter()]
    start = last[0]

    def tick(iteration, terms):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now
        if now - start > budget:
            raise _OutOfTime  # stop a run that the load made very slow

    try:
        vi.fit(iterations + 3, batch_size=64, lr=1e-3, progress=False, callback=tick)
    except _OutOfTime:
        pass
    steady = times[3:] or times
    return {
        "ms": 1e3 * statistics.median(steady),
        "iterations": len(steady),
        "torch_threads": torch.get_num_threads(),
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "policy": None if policy is None else policy.source,
    }


def _start_worker(mode: str, args, extra_env: dict) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARS}
    env.update(extra_env)
    cmd = [sys.executable, __file__, "--worker", mode, "--iterations", str(args.iterations)]
    cmd += ["--budget", str(args.budget)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode:
        raise RuntimeError(f"worker failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def _busy(seconds: float) -> subprocess.Popen:
    code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def _fastest(runs: list[dict], group: int) -> dict:
    rounds = [max(runs[i : i + group], key=lambda r: r["ms"]) for i in range(0, len(runs), group)]
    return min(rounds, key=lambda r: r["ms"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds per worker at most")
    ap.add_argument("--busy-seconds", type=float, default=300.0)
    ap.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.iterations, args.budget)))
        return

    load0 = os.getloadavg()
    res: dict[tuple[str, str], list[dict]] = {}
    for scenario in ("alone", "2 ranks", "2 busy"):
        busy = [_busy(args.busy_seconds) for _ in range(2)] if scenario == "2 busy" else []
        try:
            for _ in range(args.rounds):
                for mode in MODES:
                    if scenario == "2 ranks":
                        env = {"PMI_LOCAL_SIZE": "2"}
                        procs = [_start_worker(mode, args, env) for _ in range(2)]
                        runs = [_result(p) for p in procs]
                    else:
                        runs = [_result(_start_worker(mode, args, {}))]
                    res.setdefault((scenario, mode), []).extend(runs)
                    for r in runs:
                        print(
                            f"  {scenario:8s} {mode:8s}: {r['ms']:8.1f} ms/iteration, torch "
                            f"threads {r['torch_threads']}, OMP_NUM_THREADS {r['omp']}",
                            flush=True,
                        )
        finally:
            for proc in busy:  # only the processes this script started
                proc.terminate()
                proc.wait(timeout=30)
    load1 = os.getloadavg()

    print()
    print(
        f"VI iteration (linear-Gaussian n=40, HINT 4x64, batch 64); {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores; load average {load0[0]:.1f} at start, "
        f"{load1[0]:.1f} at end; median ms per iteration, fastest run of {args.rounds} rounds"
    )
    print()
    print(
        "| scenario | default ms | default threads | policy ms | policy threads | default/policy |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for scenario in ("alone", "2 ranks", "2 busy"):
        # the fastest round; for two ranks, the slower rank of a round (it sets the pace)
        d, p = (_fastest(res[scenario, m], 2 if scenario == "2 ranks" else 1) for m in MODES)
        print(
            f"| {scenario} | {d['ms']:.1f} | {d['torch_threads']} | {p['ms']:.1f} | "
            f"{p['torch_threads']} | {d['ms'] / p['ms']:.2f}x |"
        )


if __name__ == "__main__":
    main()
