"""Shots over MPI ranks: one likelihood gradient over 4 shots, 1 rank vs 2 ranks.

Problem (issue 2): 201×201 grid, 10 m, 8th order, nbl 40, 1 s, 10 Hz Ricker,
201 receivers, float32, 4 shots; gradient of the Gaussian likelihood
``GaussianLikelihood(F, d, comm=...)`` at a smoothed start model, data from a
layered 1.5–2.5 km/s model. Each configuration runs as ``mpiexec -n N`` workers
with ``OMP_NUM_THREADS=1`` (one thread per rank); a worker times ``--reps``
evaluations after a warm-up (compile, first allocations), between barriers, and
the 1- and 2-rank runs alternate for ``--rounds`` rounds.
The driver prints the time per gradient, the speed-up against 1 rank (the
baseline) and the relative difference of the gradients.

    .venv/bin/python benchmarks/bench_parallel.py [--reps 5]
"""

from __future__ import annotations

import os

os.environ.setdefault("DEVITO_LANGUAGE", "C")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

__all__ = ["main"]

SHAPE, SPACING, NBL, SO, T1, F0, NREC, NSHOTS = (
    (201, 201),
    (10.0, 10.0),
    40,
    8,
    1000.0,
    10.0,
    201,
    4,
)


def worker(out: str, reps: int) -> None:
    """One MPI rank: time ``reps`` likelihood gradients; rank 0 saves times and gradient."""
    import torch
    from scipy.ndimage import gaussian_filter

    from devito_uq.inference import GaussianLikelihood
    from devito_uq.parallel import world
    from devito_uq.physics import AcousticModel, AcousticModeling, Survey

    torch.set_num_threads(1)
    comm = world()
    model = AcousticModel(SHAPE, SPACING, nbl=NBL, space_order=SO, dtype=np.float32)
    v = np.full(SHAPE, 1.5, dtype=np.float32)
    for k, vel in enumerate([1.9, 2.2, 2.5]):
        v[:, (k + 1) * SHAPE[1] // 4 :] = vel
    survey = Survey.surface(model, NSHOTS, NREC, t1=T1, f0_hz=F0, vmax=float(v.max()))
    F = AcousticModeling(model, survey)
    with torch.no_grad():  # the data: computed once, outside the timing
        d = F(torch.from_numpy(1.0 / v**2))
    lik = GaussianLikelihood(F, d, sigma=1.0, comm=comm)
    m0 = torch.from_numpy(1.0 / gaussian_filter(v, 10) ** 2)[None]

    def gradient():
        m = m0.clone().requires_grad_(True)
        value = lik(m)
        value.sum().backward()
        return value.detach(), m.grad

    gradient()  # warm-up: operator build, compile, first wavefield allocations
    times = []
    for _ in range(reps):
        comm.Barrier()
        t = time.perf_counter()
        value, grad = gradient()
        comm.Barrier()  # every rank has its gradient: the slowest rank counts
        times.append(time.perf_counter() - t)
    if comm.Get_rank() == 0:
        np.savez(out, times=times, value=value.numpy(), grad=grad.numpy(), nt=survey.nt)


def run(nranks: int, reps: int, folder: Path) -> dict:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    out = folder / f"ranks{nranks}.npz"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(mpiexec), "-n", str(nranks), sys.executable, __file__, "--worker", str(out)]
    subprocess.run(cmd + ["--reps", str(reps)], check=True, env=env, timeout=600)
    return dict(np.load(out, allow_pickle=False))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed gradients per configuration")
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternate 1- and 2-rank runs this many times"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.reps)
        return
    # Alternate the configurations so that load from other jobs on a shared machine
    # falls on both alike; times of all rounds are pooled.
    res: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for n in (1, 2):
                r = run(n, args.reps, Path(tmp))
                times = list(res.get(n, {}).get("times", [])) + list(r["times"])
                res[n] = {**r, "times": times}
    base, base_min = statistics.median(res[1]["times"]), min(res[1]["times"])
    g1 = res[1]["grad"]
    print(
        f"{SHAPE[0]}x{SHAPE[1]} grid, order {SO}, nbl {NBL}, {T1:.0f} ms ({int(res[1]['nt'])} "
        f"steps), {F0:.0f} Hz, {NREC} receivers, {NSHOTS} shots, float32; "
        f"OMP_NUM_THREADS=1 per rank; median of {args.rounds}x{args.reps} "
        "(alternating rounds, each after a warm-up)\n"
    )
    print(
        "| ranks | gradient (s), median | fastest | speed-up (median) | speed-up (fastest) "
        "| grad rel. diff vs 1 rank |"
    )
    print("|---|---|---|---|---|---|")
    for n, r in res.items():
        med = statistics.median(r["times"])
        diff = float(np.abs(r["grad"] - g1).max() / np.abs(g1).max())
        fast = min(r["times"])
        print(
            f"| {n} | {med:.3f} | {fast:.3f} | {base / med:.2f} | {base_min / fast:.2f} "
            f"| {diff:.1e} |"
        )
    vdiff = abs(float(res[2]["value"][0]) - float(res[1]["value"][0])) / abs(
        float(res[1]["value"][0])
    )
    print(f"\nlikelihood value rel. diff (2 ranks vs 1): {vdiff:.1e}")


if __name__ == "__main__":
    main()
