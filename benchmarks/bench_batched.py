"""Per-sample throughput of Born forward + adjoint: batched kernel vs one call per sample.

``BornModeling(batch_size=B)`` (B models per Devito kernel, background shared) against
``BornModeling(batch_size=1)`` (the baseline: one call per sample), on square grids
with a 20-point absorbing layer, 4th order, 1 shot, 0.5 s at 15 Hz, float32. The two
are alternated within each repeat so both see the same load. Prints and writes
``benchmarks/results/bench_batched.md``.

The work each path does bounds what batching can give on a CPU, where these stencils are
compute-bound: one call per sample propagates 3 wavefields per sample (the background
``u₀`` and the scattered ``δu`` forward, the adjoint ``v`` reading the pooled ``u₀``),
the batched kernel ``2 + 1/B`` (one ``u₀`` shared by the batch). The table reports that
work ratio, ``3 / (2 + 1/B)`` (at most 1.5×), beside the measured speed-up, and each path's
rate in padded-cell updates per second: equal rates mean the speed-up is the saved work.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LANGUAGE", "C")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from devito_uq.physics import AcousticModel, BornModeling, Survey  # noqa: E402

__all__ = ["main"]


def _step(op: BornModeling, dm: torch.Tensor) -> float:
    """Wall time (s) of one Born forward + adjoint for the batch ``dm``."""
    x = dm.clone().requires_grad_(True)
    t = time.perf_counter()
    op(x).sum().backward()
    return time.perf_counter() - t


def main() -> None:
    """Run the grid × batch table (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_batched.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    load0 = os.getloadavg()[0]
    rows = []
    for n in args.sizes:
        model = AcousticModel((n, n), (10.0, 10.0), nbl=20, space_order=4)
        survey = Survey.surface(model, nshots=1, nreceivers=n // 2, t1=500.0, f0_hz=15.0, vmax=2.5)
        m0 = np.full((n, n), 1 / 2.0**2, dtype=np.float32)
        ops = {k: BornModeling(model, survey, m0, batch_size=k) for k in args.batches}
        single = BornModeling(model, survey, m0, batch_size=1)
        for b in args.batches:
            dm = 0.01 * torch.randn(b, n, n)
            _step(single, dm), _step(ops[b], dm)  # compile, pool the background
            ts, tb = [], []
            for _ in range(args.reps):
                ts.append(_step(single, dm))
                tb.append(_step(ops[b], dm))
            s, k = statistics.median(ts) / b, statistics.median(tb) / b
            cells = (n + 2 * 20) ** 2 * survey.nt  # padded cell-steps of one wavefield
            waves = 2.0 + 1.0 / b  # wavefields per sample of the batched path (3 at B = 1)
            work, rate_s, rate_k = 3.0 / waves, 3.0 * cells / s / 1e9, waves * cells / k / 1e9
            rows.append((n, b, survey.nt, 1e3 * s, 1e3 * k, s / k, work, rate_s, rate_k))
            print(
                f"{n}² B={b:2d}: one call/sample {1e3 * s:7.2f} ms, "
                f"batched {1e3 * k:7.2f} ms, {s / k:4.2f}×",
                flush=True,
            )
    lines = [
        "# Born forward + adjoint per sample: batched kernel vs one call per sample",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (load "
        f"{load0:.1f} at start, {os.getloadavg()[0]:.1f} at end), "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, float32, so 4, nbl 20, 1 shot, "
        f"median of {args.reps} alternated repeats. Baseline: `BornModeling(batch_size=1)`. "
        "Work ratio: wavefields per sample, 3 / (2 + 1/B); rates in 10⁹ padded cell-updates "
        "per second.",
        "",
        "| grid | B | steps | one call/sample (ms/sample) | batched (ms/sample) | speed-up "
        "| work ratio | rate, one call | rate, batched |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {n}² | {b} | {nt} | {s:.2f} | {k:.2f} | {r:.2f}× | {w:.2f}× | {rs:.2f} | {rk:.2f} |"
        for n, b, nt, s, k, r, w, rs, rk in rows
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
