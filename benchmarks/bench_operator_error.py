"""Issue 20, item 1: relative operator error of the curvature approximations against the number
of Gauss–Newton products, from PDE products alone (no dense Hessian), at 5k and 20k unknowns.

For a Marmousi-II window with Born data (the app's default prior), the prior-whitened
Gauss–Newton Hessian ``H̃ = Lᵀ JᵀMJ/σ² L`` is applied by PDE solves (one Born and one
adjoint solve per shot and vector, :func:`devito_uq.apps.imaging.curvature.gauss_newton_operator`,
at the background). Against ``H̃ z`` on ``--check`` held-out Gaussian vectors ``z``:

- the laterally stationary Hessian (``inference/lateral_curvature.py``, the app's
  ``coverage_check``: two node traces and 32 diagonal probes, ``2·nz + 36`` products —
  a cost set by the depth, not by ``N``);
- the app's randomized low-rank eigenpairs ``V Λ Vᵀ`` (rank ``k``, ``2(k + 10)``
  products), and the two combined (``V Λ Vᵀ + P Lᵀ Ĥ L P``, ``P = I − V Vᵀ``);

each as ``‖(Ĥ − H̃) z‖ / ‖H̃ z‖`` (mean and range over the vectors), with the products it
cost and their share of ``N`` (what full rank needs). Also the seconds per product on this
machine and the smallest computed eigenvalue (how far above 1 the spectrum still is at
rank ``k``: the directions a low-rank approximation leaves at the prior).

Windows: ``section`` (3 km × 1.5 km at 30 m, 101 × 51 = 5,151 unknowns, 16 shots × 101
receivers, 1 s: the issue's, whose dense exact ``H`` ``bench_lateral.py`` uses) and ``wide``
(6 km × 3 km, 201 × 101 = 20,301 unknowns, 16 shots × 201 receivers, 2 s). Runs under
``mpiexec -n R`` (shots dealt over ranks; products summed).

Usage: ``[mpiexec -n 2] python benchmarks/bench_operator_error.py --window wide [--ranks 100,200]``.
Writes ``benchmarks/results/bench_operator_error_<window>.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import torch  # noqa: E402

from devito_uq.apps.imaging import InvertConfig, SimulateConfig  # noqa: E402
from devito_uq.apps.imaging.curvature import gauss_newton_operator  # noqa: E402
from devito_uq.apps.imaging.problem import build_problem, make_prior  # noqa: E402
from devito_uq.apps.imaging.simulate import run_simulate  # noqa: E402
from devito_uq.inference import low_rank_eigh  # noqa: E402
from devito_uq.inference.lateral_curvature import lateral_stationary_hessian  # noqa: E402
from devito_uq.parallel import world  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
WINDOWS = {
    "section": dict(width=3000.0, depth=1500.0, nshots=16, nreceivers=101),
    "wide": dict(width=6000.0, depth=3000.0, nshots=16, nreceivers=201, t1=2000.0),
    "default": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", default="section", choices=sorted(WINDOWS))
    parser.add_argument("--cache", default="/tmp/devito_uq_bench_operator_error")
    parser.add_argument("--ranks", default="100,200", help="low-rank ranks k, comma-separated")
    parser.add_argument("--check", type=int, default=4, help="held-out Gaussian vectors")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    comm = world()
    rank0 = comm is None or comm.Get_rank() == 0
    size = 1 if comm is None else comm.Get_size()
    window = WINDOWS[args.window]
    out = Path(args.cache) / args.window
    t_start, load0 = time.perf_counter(), os.getloadavg()[0]
    if not (out / "shots.sgy").exists():
        if rank0:
            out.mkdir(parents=True, exist_ok=True)
        cfg = SimulateConfig(data="born", **window)
        run_simulate(cfg, out, progress=False, figures=False, comm=comm)
    config = InvertConfig(truth=str(out / "true_model.sgy"))
    problem = build_problem(config, out, comm=comm)
    sqrt = make_prior(config, problem).sqrt()
    nx, nz = shape = problem.shape
    n = nx * nz
    gn = gauss_newton_operator(problem, problem.m0)
    counted = [0]

    def whitened(v: torch.Tensor) -> torch.Tensor:  # Lᵀ H L v: one product per vector
        counted[0] += v.shape[0]
        return sqrt.rmatvec(gn(sqrt.matvec(v)))

    def plain(v: torch.Tensor) -> torch.Tensor:  # H v, for the lateral builder
        counted[0] += v.shape[0]
        return gn(v)

    lines: list[str] = []

    def say(line: str = "") -> None:
        if rank0:
            print(line, flush=True)
            lines.append(line)

    whitened(torch.zeros(1, nx, nz, dtype=torch.float64))  # builds the operators: not timed
    gen = torch.Generator().manual_seed(12345)
    z = torch.randn(args.check, nx, nz, generator=gen, dtype=torch.float64)
    t0 = time.perf_counter()
    hz = whitened(z)
    per_product = (time.perf_counter() - t0) / args.check

    def error(approx_z: torch.Tensor) -> tuple[float, float, float]:
        e = (approx_z - hz).flatten(1).norm(dim=1) / hz.flatten(1).norm(dim=1)
        return float(e.mean()), float(e.min()), float(e.max())

    rows = []
    counted[0] = 0
    t0 = time.perf_counter()
    lateral = lateral_stationary_hessian(plain, shape, probes=32, check=0)
    rows.append(
        (
            "laterally stationary (2 node traces, 32 probes)",
            counted[0],
            error(sqrt.rmatvec(lateral(sqrt.matvec(z)))),
            time.perf_counter() - t0,
        )
    )
    ks = sorted(int(k) for k in args.ranks.split(",") if k)
    smallest = {}
    for k in ks:
        counted[0] = 0
        t0 = time.perf_counter()
        lam, vec = low_rank_eigh(whitened, shape, k, 10, seed=0)
        spent = counted[0]
        seconds = time.perf_counter() - t0
        smallest[k] = float(lam[-1])

        def low(v: torch.Tensor, lam=lam, vec=vec) -> torch.Tensor:
            flat = v.flatten(1)
            return (((flat @ vec) * lam) @ vec.T).reshape(v.shape)

        def project(v: torch.Tensor, vec=vec) -> torch.Tensor:
            flat = v.flatten(1)
            return (flat - (flat @ vec) @ vec.T).reshape(v.shape)

        rows.append((f"randomized low-rank, rank {k}", spent, error(low(z)), seconds))
        hybrid = low(z) + project(sqrt.rmatvec(lateral(sqrt.matvec(project(z)))))
        rows.append(
            (
                f"rank {k} + laterally stationary beyond it",
                spent + lateral.products,
                error(hybrid),
                seconds + rows[0][3],
            )
        )
    wall = time.perf_counter() - t_start
    say(f"# Operator error of the curvature approximations: {args.window} window, {n:,} unknowns")
    say()
    say(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {size} MPI rank(s) of 1 thread "
        f"(load {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end); torch "
        f"{torch.__version__}. `{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`. Window "
        f"{nx} × {nz} at 30 m, {problem.nshots} shots, Born data at 20 dB, the app's default "
        f"prior; {args.check} held-out Gaussian vectors. One Gauss–Newton product (Born + "
        f"adjoint solves of every shot) took {per_product:.2f} s; wall {wall / 60:.1f} min."
    )
    say()
    say(
        "| approximation of H̃ | GN products | products / N | relative operator error "
        "(mean; min–max) | build s |"
    )
    say("|---|---:|---:|---|---:|")
    for name, spent, (mean, lo, hi), seconds in rows:
        say(
            f"| {name} | {spent:,} | {spent / n:.3f} | {mean:.3f} ({lo:.3f}–{hi:.3f}) "
            f"| {seconds:.0f} |"
        )
    say()
    say(
        "Smallest computed eigenvalue of H̃ (randomized): "
        + ", ".join(f"rank {k}: {v:.3g}" for k, v in smallest.items())
        + " — every direction beyond it that is still above 1 is left at the prior by a "
        "low-rank Laplace."
    )
    if rank0 and not args.no_write:
        (RESULTS / f"bench_operator_error_{args.window}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
