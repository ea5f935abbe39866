"""When to stop the Born MAP's CG: a residual tolerance against an estimated model error.

On the whitened Born system ``(I + H̃) w = Lᵀg`` (``cond ≈ 10⁷``) a small relative residual
is not a small error: the right-hand side is dominated by the well-determined directions
and the error hides in the others. Side by side on the same exact ``H`` (cached by
``bench_section.py``; ``--window default`` runs the imaging default case, 41 × 21, from
``bench_curvature.py``'s cache), for CG preconditioned by the top-``k`` exact eigenpairs of
``H̃`` as the app does with its Laplace factor (``apps/imaging/curvature.born_map``):

- the former rule, ``‖r‖ ≤ 1e-5 ‖b‖`` (``MAP_RTOL`` until this benchmark);
- the estimate rule (``conjugate_gradient(etol=…, error_map=L, error_scale=‖L‖₂)``, delay
  20): Hestenes–Stiefel's A-norm error of the iterate 20 steps back times ``‖L‖₂``, relative
  to ``‖L w‖``, at 1 % (the app's ``MAP_ETOL``) and 5 %.

Reported: Gauss–Newton products (CG iterations; products of the exact dense ``H`` stand in
for the PDE ones), the true relative L2 error of the mean ``L w`` against the dense
solve, and the estimate at the stop. Writes ``benchmarks/results/bench_cg_stopping.md``
(``bench_cg_stopping_default.md`` for the default case). About 5 min on one core.
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

from devito_uq.inference.rto import conjugate_gradient, operator_norm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_cg_stopping.md"
CACHES = {"section": "/tmp/devito_uq_bench_section", "default": "/tmp/devito_uq_bench_curvature"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", default="section", choices=sorted(WINDOWS))
    parser.add_argument("--cache", default=None, help="bench_section/bench_curvature cache")
    parser.add_argument("--ranks", type=int, nargs="+", default=[100, 200, 400, 1000])
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    out, problem, prior = survey(Path(args.cache or CACHES[args.window]), WINDOWS[args.window])
    shape = problem.shape
    h = exact_hessian(out, problem)
    lmat = dense_sqrt(prior.sqrt(), shape)
    ref = Reference(h, lmat, torch.load(out / "gradient.pt"), problem.truth.double().flatten())
    n = h.shape[0]
    lam, vec = ref.lam.flip(0), ref.vec.flip(1)  # descending
    scale = operator_norm(prior.sqrt().matvec, prior.sqrt().rmatvec, shape)

    def precision(w):
        return w + w @ ref.ht

    def error(x) -> float:
        return float((lmat @ x[0] - ref.mean).norm() / ref.mean.norm())

    lines = [
        "# When to stop the Born MAP's CG: residual tolerance vs estimated model error\n",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (load {load0:.1f} at start), "
        f"torch {torch.__version__}, one thread. Window {shape[0]} × {shape[1]} = {n:,} "
        f"unknowns, {problem.nshots} shots; {int((ref.lam > 1).sum()):,} whitened eigenvalues "
        f"above 1, cond(I + H̃) = {float((1 + ref.lam.max()) / (1 + ref.lam.min())):.2g}; "
        f"‖L‖₂ = {scale:.4g}. Preconditioner: the top-k exact eigenpairs of H̃. 'error': "
        "relative L2 error of the mean L w against the dense solve; 'estimate': the stopping "
        "rule's own estimate at the stop.\n",
        "| k | residual 1e-5: products | error | estimate ≤ 5 %: products | error (estimate) "
        "| estimate ≤ 1 % (app): products | error (estimate) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in [r for r in args.ranks if r < n]:
        v, shrink = vec[:, :k], lam[:k] / (1 + lam[:k])

        def precondition(r, v=v, shrink=shrink):
            return r - ((r @ v) * shrink) @ v.T

        row = [str(k)]
        old = conjugate_gradient(precision, ref.b[None], precondition, rtol=1e-5, maxiter=n)
        row += [str(int(old.iterations[0])), f"{100 * error(old.x):.2f} %"]
        for etol in (0.05, 0.01):
            new = conjugate_gradient(
                precision,
                ref.b[None],
                precondition,
                rtol=1e-12,
                maxiter=n,
                etol=etol,
                error_map=lambda w: w @ lmat.T,
                error_scale=scale,
            )
            row += [
                str(int(new.iterations[0])),
                f"{100 * error(new.x):.2f} % ({100 * float(new.errors[0]):.2f} %)",
            ]
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
    lines.append(
        f"\nTotal {time.perf_counter() - t0:.0f} s; load average at end {os.getloadavg()[0]:.1f}."
    )
    path = RESULTS if args.window == "section" else RESULTS.with_name(RESULTS.stem + "_default.md")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
