"""Two source trees side by side: did a change make the applications slower?

A refactor (issue 19 moved most of ``devito_uq/apps`` and the training loops) must not
change what a user waits for. This script runs the same small end-to-end jobs through the
``devito-uq`` command from two checkouts — a *baseline* (by default a git revision, checked
out into a temporary worktree) and a *candidate* (by default this working tree) — in
alternation, so that both see the same machine load, and prints the ratio
``baseline / candidate`` of each measured time (> 1: the candidate is faster).

Jobs (each a fresh process, ``OMP_NUM_THREADS=1``, one thread):

* ``cli-start`` — ``devito-uq avp --help``: what every command pays before it starts;
* ``avp`` — the Sleipner AVP app at a small schedule (MAP, MALA, VI serial, one thread):
  VI seconds per iteration, MAP + MALA time, wall time (from ``summary.json``);
* ``imaging`` — simulate + invert on a 600 m × 300 m Marmousi window (21 × 11 at 30 m, 4
  shots), Laplace rank 60, 60 VI iterations: VI seconds per iteration, the Laplace phase,
  total (from ``summary.json``).

Usage::

    python benchmarks/bench_revisions.py --baseline-rev 6569104 [--rounds 3] [--jobs avp,imaging]
    python benchmarks/bench_revisions.py --baseline /path/to/old/checkout

Medians over rounds are reported; the first round also pays Devito's JIT compile for a
tree whose generated code is new, so rounds ≥ 3 are recommended. On a shared machine the
wall times stay noisy even alternated; ``--calls`` adds one run of each job per tree
under cProfile and reports the number of Python function calls, which no load changes
(a refactor that adds per-iteration work shows up there first).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: job name → (command-line arguments after ``devito-uq``, metrics read from summary.json)
JOBS: dict[str, tuple[list[str], dict[str, tuple[str, ...]]]] = {
    "cli-start": (["avp", "--help"], {}),
    "avp": (
        [
            "avp",
            "--iterations=300",
            "--map-iterations=20",
            "--mala-steps=300",
            "--mala-burn-in=100",
            "--n-samples=64",
            "--concurrent=no",
        ],
        {
            "vi s/iteration": ("vi", "seconds_per_iteration"),
            "setup s": ("time_s", "setup"),
            "wall s": ("wall_time_s",),
        },
    ),
    "imaging": (
        [
            "imaging",
            "--width=600",
            "--depth=300",
            "--nshots=4",
            "--nreceivers=21",
            "--rank=60",
            "--probes=8",
            "--iterations=60",
            "--n-samples=32",
            "--map-iterations=30",
        ],
        {
            "vi s/iteration": ("vi", "seconds_per_iteration"),
            "total s": ("time_s", "total"),
        },
    ),
}


def _worktree(rev: str, where: Path) -> Path:
    path = where / f"baseline-{rev}"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev], check=True
    )
    return path


def _lookup(summary: dict, keys: tuple[str, ...]) -> float | None:
    node = summary
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node) if isinstance(node, (int, float)) else None


def run_job(tree: Path, job: str, scratch: Path, calls: bool = False) -> dict[str, float]:
    """One job from ``tree`` in a fresh process; its wall time and summary metrics (with
    ``calls``: under cProfile, the number of Python function calls instead)."""
    args, metrics = JOBS[job]
    out = scratch / f"{job}-{tree.name}-{time.monotonic_ns()}"
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1", DEVITO_LOGGING="ERROR")
    profile = out.with_suffix(".prof")
    python = [sys.executable, "-m", "cProfile", "-o", str(profile)] if calls else [sys.executable]
    cmd = [*python, "-m", "devito_uq.cli", *args]
    if job != "cli-start":
        cmd += ["--out", str(out), "--no-figures", "--quiet", "--threads=1"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{job} from {tree} failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    if calls:
        return {"python calls": float(pstats.Stats(str(profile)).total_calls)}
    found = {"process s": elapsed}
    if metrics:
        summary = json.loads((out / "summary.json").read_text())
        for label, keys in metrics.items():
            value = _lookup(summary, keys)
            if value is not None:
                found[label] = value
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, help="checkout of the baseline tree")
    parser.add_argument("--baseline-rev", help="git revision checked out as the baseline")
    parser.add_argument(
        "--candidate", type=Path, default=ROOT, help="candidate tree (default: this one)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", action="store_true", help="also count Python calls per job")
    parser.add_argument("--jobs", default=",".join(JOBS), help="comma-separated: " + ",".join(JOBS))
    args = parser.parse_args(argv)
    jobs = [j for j in args.jobs.split(",") if j]
    unknown = [j for j in jobs if j not in JOBS]
    if unknown or (args.baseline is None) == (args.baseline_rev is None):
        parser.error(f"give --baseline or --baseline-rev; unknown jobs: {unknown}")

    with tempfile.TemporaryDirectory(prefix="bench-revisions-") as tmp:
        scratch = Path(tmp)
        baseline = args.baseline or _worktree(args.baseline_rev, scratch)
        trees = {"baseline": baseline.resolve(), "candidate": args.candidate.resolve()}
        results: dict[str, dict[str, dict[str, list[float]]]] = {}
        try:
            for r in range(args.rounds):
                order = list(trees) if r % 2 == 0 else list(trees)[::-1]
                for job in jobs:
                    for name in order:
                        found = run_job(trees[name], job, scratch)
                        for label, value in found.items():
                            results.setdefault(job, {}).setdefault(label, {}).setdefault(
                                name, []
                            ).append(value)
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
            for job in jobs if args.calls else ():
                for name in trees:
                    found = run_job(trees[name], job, scratch, calls=True)
                    results[job].setdefault("python calls", {})[name] = [found["python calls"]]
        finally:
            if args.baseline is None:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)],
                    check=False,
                )

    cpu = platform.processor() or platform.machine()
    print(f"# bench_revisions — {cpu}, {os.cpu_count()} cores")
    print(f"baseline: {args.baseline_rev or args.baseline}; candidate: {args.candidate}")
    print(f"medians of {args.rounds} alternated rounds; ratio = baseline / candidate (> 1: faster)")
    print()
    print("| job | metric | baseline | candidate | ratio |")
    print("|---|---|---:|---:|---:|")
    for job, labels in results.items():
        for label, by_tree in labels.items():
            b = statistics.median(by_tree["baseline"])
            c = statistics.median(by_tree["candidate"])
            print(f"| {job} | {label} | {b:.6g} | {c:.6g} | {b / c:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
