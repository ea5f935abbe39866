"""One imaging VI iteration on the 101 × 51 Marmousi window: batched Born kernels against
one Devito call per sample, with the share of the iteration spent in the PDE solves.

The iteration is ``bench_imaging.py``'s split worker (the 3 km × 1.5 km window at 30 m,
the short schedule's 8 shots, 1.6 s records, the app's flow and batch of 2 samples; the
Laplace factor replaced by random orthonormal vectors of the same rank, which costs the
same per iteration), run in fresh processes that alternate between the baseline (the
Born operator's ``batch_size = 1``: one kernel call per sample, the pre-batching path)
and the default (``batch_size = 8``: the batch of 2 samples in one kernel of its own size
once it recurs, padded otherwise — ``physics/batching.plan``). Operators are built and
warmed before timing; medians over ``--reps`` iterations per process and ``--rounds``
process pairs. Writes ``benchmarks/results/bench_vi_batching.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "bench_vi_batching.md"
HERE = Path(__file__).resolve().parent


def run_json(cmd: list[str]) -> dict | list:
    """Run a benchmark child (one thread, Devito quiet); its last stdout line, as JSON."""
    env = dict(os.environ, OMP_NUM_THREADS="1", DEVITO_LOGGING="ERROR")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(out: Path, reps: int, physics_batch: int) -> dict:
    cmd = [sys.executable, str(HERE / "bench_imaging.py"), "--split-worker", str(out)]
    return run_json(cmd + ["--reps", str(reps), "--physics-batch", str(physics_batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=8, help="timed iterations per process")
    parser.add_argument("--rounds", type=int, default=2, help="baseline/default process pairs")
    args = parser.parse_args()
    load0 = os.getloadavg()[0]
    runs: dict[int, list[dict]] = {1: [], 0: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for batch in (1, 0) if r % 2 == 0 else (0, 1):
                res = worker(Path(tmp) / f"survey{batch}", args.reps, batch)
                runs[batch].append(res)
                print(json.dumps({k: res[k] for k in ("physics_batch", "total", "pde")}))

    def med(batch: int, key: str) -> float:
        return statistics.median(run[key] for run in runs[batch])

    one = runs[1][0]
    lines = [
        "# One imaging VI iteration: batched Born kernels vs one call per sample\n",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (load {load0:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end), 1 thread per process. Grid {one['grid']}, "
        f"{one['nshots']} shots, {one['nt_data']} data samples, {one['batch_size']} flow "
        f"samples per iteration, rank {one['rank']}; medians of {args.reps} iterations × "
        f"{args.rounds} alternated processes per variant.\n",
        "| path | s / iteration | PDE s / iteration | PDE share | flow s | other s |",
        "|---|---|---|---|---|---|",
    ]
    for batch, label in ((1, "one call per sample (baseline)"), (0, "batched kernels (default)")):
        total, pde = med(batch, "total"), med(batch, "pde")
        lines.append(
            f"| {label}, batch_size {runs[batch][0]['physics_batch']} | {total:.3f} | {pde:.3f} "
            f"| {100 * pde / total:.0f} % | {med(batch, 'flow'):.3f} | {med(batch, 'other'):.3f} |"
        )
    ratio = med(1, "total") / med(0, "total")
    pde_ratio = med(1, "pde") / med(0, "pde")
    lines.append(
        f"\nSpeed-up of the default over the baseline: {ratio:.2f}× per iteration, "
        f"{pde_ratio:.2f}× in the PDE solves."
    )
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
