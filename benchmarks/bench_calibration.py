"""Memory and time of the calibration statistics for one truth of a large image.

Compares, side by side in fresh subprocesses (peak RSS above the post-import
baseline), the ways to get one truth's SBC ranks, mean and std from ``L`` draws of
a ``P``-pixel posterior:

* ``naive``: ``x = posterior.sample(L)`` then whole-array torch statistics
  (``(x < truth).sum(0)``, ``x.double().mean/std``, 5 %/95 % quantiles), as one
  would write it directly;
* ``one_call``: :func:`truth_statistics` with ``sample_chunk=None`` (one
  ``sample(L)`` call, statistics streamed over row chunks);
* ``streamed``: :func:`truth_statistics` with ``sample_chunk=100`` (only 100 draws
  held at a time).

Keeping every truth's draws, ``[N, L, P]`` float32, is reported as arithmetic.
Also times the test configuration (linear-Gaussian, 16 coordinates, N=1000, L=100).

    .venv/bin/python benchmarks/bench_calibration.py [--pixels 10000] [--samples 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(1)
from devito_uq.inference.diagnostics.ranks import truth_statistics
mode, P, L = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

class Pixels:  # independent Gaussian pixels, fresh draws per call (a flow's contract)
    def __init__(self, P):
        self.mean, self.std = torch.zeros(P), torch.ones(P)
    def sample(self, n):
        return self.mean + self.std * torch.randn(n, P)

post, truth = Pixels(P), torch.randn(P)
truth_statistics(torch.zeros(8), torch.randn(2, 8), 2)  # warm the code paths at a tiny size
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if mode == "naive":
    x = post.sample(L)
    ranks = (x < truth).sum(0)
    xd = x.double()
    mean, std = xd.mean(0), xd.std(0)
    q = torch.quantile(x, torch.tensor([0.05, 0.95]), dim=0)
else:
    st = truth_statistics(truth, post, L, sample_chunk=None if mode == "one_call" else 100)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mode": mode, "peak_mib": (peak - base) / 1024, "seconds": dt}))
"""


def child(mode: str, pixels: int, samples: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(pixels), str(samples)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_configuration() -> dict:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    import torch

    torch.set_num_threads(1)
    from test_calibration import Setup

    setup = Setup()
    t0 = time.perf_counter()
    res = setup.run(1000, seed=0)
    total = time.perf_counter() - t0
    return {"n_truths": 1000, "total_s": total, "per_truth_ms": 1e3 * res.metrics["seconds"].mean()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pixels", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"one truth, {args.pixels} pixels x {args.samples} draws (float32), 1 thread")
    rows = {}
    for mode in ("naive", "one_call", "streamed"):
        runs = [child(mode, args.pixels, args.samples) for _ in range(args.repeats)]
        rows[mode] = (min(r["peak_mib"] for r in runs), min(r["seconds"] for r in runs))
    for mode, (mib, s) in rows.items():
        ratio = rows["naive"][0] / max(mib, 1e-9)
        print(f"  {mode:9s} peak +{mib:7.1f} MiB ({ratio:5.1f}x less than naive)  {s:6.2f} s")
    draws = args.pixels * args.samples * 4 / 2**20
    print(f"  keeping all draws of N=500 truths: {500 * draws / 1024:.1f} GiB ([N, L, P] float32)")
    cfg = test_configuration()
    print(
        f"test configuration (16 coords, L=100): {cfg['n_truths']} truths in "
        f"{cfg['total_s']:.2f} s, {cfg['per_truth_ms']:.2f} ms per truth"
    )


if __name__ == "__main__":
    main()
