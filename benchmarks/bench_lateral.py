"""Issue 20: the laterally stationary Hessian (``inference/lateral_curvature.py``) against the
exact Born posterior of the 5,151-unknown Marmousi window.

Same window, data, prior and cached exact ``H`` as ``bench_section.py`` (run that first, or
point ``--cache`` at its cache; ``--window default`` runs the imaging default case, 41 × 21,
as a held-out check). Variants: one node trace at 30 %, 50 % or 70 % of the line; the
default pair (30 % and 70 %, harmonic mean of their symbols) with 0 / 32 / 64 diagonal
probes; and the pair with the app's randomized low-rank eigenpairs of ``H̃`` (rank k, 2(k+10)
products) deflated in: ``VΛVᵀ + (I − VVᵀ) Lᵀ Ĥ L (I − VVᵀ)``. Each is built from products
of the exact ``H`` (they stand in for PDE products; counted one per vector as the app
spends them), then:

- its relative operator error on 4 held-out Gaussian vectors (``check_error``) and the
  share of its symbol clipped to make it PSD;
- the Gaussian posterior ``N(·, L (I + Lᵀ Ĥ L)⁻¹ Lᵀ)`` (dense eigendecomposition,
  :class:`devito_uq.inference.curvature.WhitenedPrecision`): pointwise std against the exact
  one (median ratio, mean |relative error|, and the mean over informed pixels, whose exact
  std is below 0.9 × the prior's) and the truth inside its 90 % band around the exact mean;
- the Born MAP: CG on the exact ``(I + H̃) w = Lᵀ g`` preconditioned by ``(I + Lᵀ Ĥ L)⁻¹``,
  products to rtol 1e-5 and the error of the mean; the band around that MAP;
- the total against full rank (``N`` products).

Usage: ``python benchmarks/bench_lateral.py [--cache DIR]`` (about 5 min on one core once
``H`` is cached).
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_section import WINDOWS, Reference, dense_sqrt, exact_hessian, survey  # noqa: E402

from devito_uq.inference import low_rank_eigh  # noqa: E402
from devito_uq.inference.curvature import WhitenedPrecision  # noqa: E402
from devito_uq.inference.lateral_curvature import lateral_stationary_hessian  # noqa: E402
from devito_uq.inference.rto import conjugate_gradient  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_lateral.md"
LINES: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default="/tmp/devito_uq_bench_section")
    parser.add_argument("--window", default="section", choices=sorted(WINDOWS))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)  # quality and products only: no timing
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    out, problem, prior = survey(Path(args.cache), WINDOWS[args.window])
    shape = problem.shape
    nx, nz = shape
    h = exact_hessian(out, problem)
    lmat = dense_sqrt(prior.sqrt(), shape)
    g = torch.load(out / "gradient.pt")
    ref = Reference(h, lmat, g, problem.truth.double().flatten())
    n = nx * nz
    informed = ref.std < 0.9 * (lmat**2).sum(1).sqrt()

    def apply(v):  # exact H on [k, nx, nz]: the stand-in for k Gauss–Newton products
        return (v.reshape(v.shape[0], -1).double() @ h).reshape(v.shape)

    say(f"# The laterally stationary Hessian against the exact {n:,}-unknown posterior\n")
    say(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (load {load0:.1f} at start); "
        f"torch {torch.__version__}. Window {nx} × {nz} = {n} unknowns, "
        f"{problem.nshots} shots; exact band {ref.band(ref.mean, ref.std):.3f}; informed "
        f"pixels {int(informed.sum())}."
    )
    say(
        "\n| node traces | probes | GN products (build) | held-out op. error | clipped "
        "| std median ratio | mean \\|rel. err.\\| (informed) | band (exact mean) "
        "| MAP: PCG products, mean error | band (MAP) | products / N (with the MAP) |"
    )
    say("|---|---|---|---|---|---|---|---|---|---|---|")

    def row(label, probes, approx, extra=0, low=None):
        wp = WhitenedPrecision(approx, prior.sqrt(), shape, method="dense")
        if low is not None:  # deflate the low-rank eigenpairs in: rebuild the dense P
            lam, vec = low
            vec = vec.reshape(vec.shape[0], -1).double()
            vec = vec.T if vec.shape[0] != n else vec
            p = (wp.eigenvectors * wp.eigenvalues) @ wp.eigenvectors.T - torch.eye(n).double()
            proj = torch.eye(n, dtype=torch.float64) - vec @ vec.T
            p = torch.eye(n).double() + (vec * lam.double()) @ vec.T + proj @ p @ proj
            mu, q = torch.linalg.eigh(0.5 * (p + p.T))
            wp.eigenvalues, wp.eigenvectors = mu.clamp_min(1.0), q
        lq = prior.sqrt().matvec(wp.eigenvectors.T.reshape(n, nx, nz)).reshape(n, n)
        std = ((lq**2) / wp.eigenvalues[:, None]).sum(0).sqrt()
        rel = std / ref.std

        def precondition(r, wp=wp):
            return wp.solve(r.reshape(-1, nx, nz)).reshape(r.shape)

        res = conjugate_gradient(
            lambda w: w + w @ ref.ht, ref.b[None], precondition, rtol=1e-5, maxiter=3 * n
        )
        mean = lmat @ res.x[0]
        err = float((mean - ref.mean).norm() / ref.mean.norm())
        its = int(res.iterations[0])
        mae, mae_informed = float((rel - 1).abs().mean()), float((rel - 1)[informed].abs().mean())
        built = approx.products + extra
        say(
            f"| {label} | {probes} | {built} | {approx.check_error:.3f} | {approx.clipped:.3f} "
            f"| {float(rel.median()):.3f} | {mae:.3f} ({mae_informed:.3f}) "
            f"| {ref.band(ref.mean, std):.3f} | {its}, {100 * err:.2f} % | "
            f"{ref.band(mean, std):.3f} | {built / n:.3f} ({(built + its) / n:.3f}) |"
        )

    def whitened(v):
        return (v.reshape(v.shape[0], -1).double() @ ref.ht).reshape(v.shape)

    pair = [round(0.3 * (nx - 1)), round(0.7 * (nx - 1))]
    for frac in (0.3, 0.5, 0.7):
        node = round(frac * (nx - 1))
        approx = lateral_stationary_hessian(apply, shape, nodes=[node], probes=32)
        row(f"{node} ({frac:.0%})", 32, approx)
    for probes in (0, 32, 64):
        approx = lateral_stationary_hessian(apply, shape, nodes=pair, probes=probes)
        row(f"{pair[0]}, {pair[1]} (default)", probes, approx)
    approx = lateral_stationary_hessian(apply, shape, nodes=pair, probes=32)
    for k in (100, 200, 400):
        k = min(k, n // 4)
        low = low_rank_eigh(whitened, shape, k, 10, seed=0)
        row(f"{pair[0]}, {pair[1]} + rank {k}", 32, approx, 2 * (k + 10), low)
    say(f"\nTotal {time.perf_counter() - t0:.0f} s; load average at end {os.getloadavg()[0]:.1f}.")
    path = RESULTS if args.window == "section" else RESULTS.with_name("bench_lateral_default.md")
    path.write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
