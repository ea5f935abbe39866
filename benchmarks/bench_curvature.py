"""Benchmark of issue 20 items 1–2: product-convolution curvature and the RTO reference.

Prints, and writes to ``benchmarks/results/bench_curvature.md``:

1. **Imaging default case** (Marmousi 1.2 km × 0.6 km at 30 m, 41 × 21 = 861 unknowns, 8
   shots, Born data at 20 dB, the default correlated Gaussian prior), built through the app
   (``run_simulate``, ``build_problem``, ``make_prior``, ``gauss_newton_operator``). ``J``
   is assembled column by column (Born, float64, cached), which gives the exact
   Gauss–Newton Hessian ``H = JᵀMJ/σ²`` and the exact posterior. Then

   a. the relative operator error ``‖(H̃ − H̃_a) v‖/‖H̃ v‖`` of the prior-whitened
      ``H̃ = Lᵀ H L`` on random ``v ~ N(0, I)`` against the number of Gauss–Newton products,
      for the product convolution (:mod:`devito_uq.inference.curvature`) and, at the same
      products, the randomized low-rank eigendecomposition the app uses today;
   b. PCG iterations (= Gauss–Newton products per draw) of the RTO solves
      ``(I + H̃) w = rhs`` to ``rtol`` with no preconditioner, the low-rank one and the
      product-convolution ones (the exact ``H`` as the operator: the same iterations a PDE
      run spends);
   c. RTO (:mod:`devito_uq.inference.rto`) against the dense exact posterior: mean and
      pointwise std, with the Monte Carlo standard error (the exact ``H`` as the operator,
      so many draws are affordable);
   d. the same through the PDE Gauss–Newton products (a few draws and the mean): wall time,
      iterations, the mean against the exact one.

2. **A larger window** (2.1 km × 0.9 km, 71 × 31 = 2,201 unknowns, 8 shots): operator error
   against products on random probes (exact products by PDE), and PCG through the PDE
   products with and without the product-convolution preconditioner.

Usage: ``python benchmarks/bench_curvature.py [--quick] [--cache DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
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
from devito_uq.inference.curvature import (  # noqa: E402
    WhitenedPrecision,
    product_convolution,
    relative_operator_error,
)
from devito_uq.inference.rto import (  # noqa: E402
    conjugate_gradient,
    monte_carlo_std_error,
    randomize_then_optimize,
)
from devito_uq.physics import BornModeling  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_curvature.md"
#: (step, comb) of the product convolutions: comb[0]·comb[1] products, radius (comb·step−1)//2
BUDGETS = ((4, 2), (3, 3), (2, 4), (3, 4), (2, 5), (2, 6), (1, 8), (3, 7), (2, 10))
LINES: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def batched(mat: torch.Tensor, shape):
    def apply(v: torch.Tensor) -> torch.Tensor:
        return (v.reshape(v.shape[0], -1).double() @ mat).reshape(v.shape[0], *shape)

    return apply


def dense_sqrt(sqrt, shape) -> torch.Tensor:
    n = shape[0] * shape[1]
    return sqrt.matvec(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, n).T


def low_rank_inverse(lam: torch.Tensor, vec: torch.Tensor, shape):
    """``(I + V Λ Vᵀ)⁻¹ = I − V diag(λ/(1+λ)) Vᵀ`` on ``[k, *shape]``."""

    def apply(w: torch.Tensor) -> torch.Tensor:
        flat = w.reshape(w.shape[0], -1)
        return (flat - ((flat @ vec) * (lam / (1 + lam))) @ vec.T).reshape(w.shape)

    return apply


def survey(root: Path, **kw) -> tuple:
    """Simulate (Born data) and build the problem, prior and GN operator through the app."""
    out = root / ("_".join(f"{k}{v:g}" for k, v in sorted(kw.items())) or "default")
    if not (out / "shots.sgy").exists():
        out.mkdir(parents=True, exist_ok=True)
        run_simulate(SimulateConfig(data="born", **kw), out, progress=False, figures=False)
    config = InvertConfig()
    problem = build_problem(config, out)
    prior = make_prior(config, problem)
    return out, problem, prior, gauss_newton_operator(problem, problem.m0, chunk=16)


def exact_hessian(out: Path, problem) -> tuple[torch.Tensor, torch.Tensor]:
    """``H = JᵀMJ/σ²`` ``[N, N]`` and ``g = JᵀMd/σ²`` ``[N]``, ``J`` column by column
    (float64 Born; cached in ``out``)."""
    cache = out / "exact_hessian.pt"
    if cache.exists():
        saved = torch.load(cache)
        return saved["H"], saved["g"]
    nx, nz = problem.shape
    n = nx * nz
    J = BornModeling(problem.model, problem.survey, problem.m0.double())
    mask = torch.from_numpy(problem.survey.mask())[:, None, :].double()
    eye = torch.eye(n, dtype=torch.float64)
    with torch.no_grad():
        jt = torch.cat(
            [
                (J(eye[k : k + 32].reshape(-1, nx, nz)) * mask).flatten(1).float()
                for k in range(0, n, 32)
            ]
        )  # [N, data]
    s2 = problem.sigma**2
    h = (jt.double() @ jt.double().T) / s2
    g = jt.double() @ problem.likelihood.local.data.double().flatten() / s2
    torch.save({"H": h, "g": g}, cache)
    return h, g


def probes(n: int, shape, seed: int) -> torch.Tensor:
    return torch.randn(
        n, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def section_default(root: Path, quick: bool) -> None:
    t0 = time.perf_counter()
    out, problem, prior, gn = survey(root)
    shape, n = problem.shape, problem.m0.numel()
    sqrt = prior.sqrt()
    h, g = exact_hessian(out, problem)
    say(
        f"## 1. Imaging default case: {shape[0]} × {shape[1]} = {n} unknowns, "
        f"{problem.nshots} shots, Born data (J assembled in {time.perf_counter() - t0:.0f} s "
        "or cached)\n"
    )
    eye = torch.eye(n, dtype=torch.float64)
    lmat = dense_sqrt(sqrt, shape)
    ht = lmat.T @ h @ lmat  # exact whitened Hessian
    lam_all, vec_all = torch.linalg.eigh(ht)
    say(
        f"Eigenvalues of H̃ above 1: {int((lam_all > 1).sum())} of {n}, "
        f"largest {float(lam_all[-1]):.3g}; cond(I + H̃) = {float(1 + lam_all[-1]):.3g}."
    )
    exact = batched(h, shape)
    exact_w = batched(ht, shape)
    v = probes(16, shape, 1)
    hv, htv = exact(v), exact_w(v)

    say("\n### a. Operator error against Gauss–Newton products (16 random probes, mean)\n")
    say(
        "| approximation | GN products | radius (cells) | ‖(H̃−H̃a)v‖/‖H̃v‖ | ‖(H−Ha)v‖/‖Hv‖ "
        "| build s |"
    )
    say("|---|---|---|---|---|---|")
    pcs, errors = {}, {}
    for step, comb in BUDGETS if not quick else BUDGETS[:3]:
        t = time.perf_counter()
        pc = product_convolution(exact, shape, step=step, comb=comb)
        dt = time.perf_counter() - t
        pcs[(step, comb)] = pc
        e_w = relative_operator_error(lambda x, pc=pc: sqrt.rmatvec(pc(sqrt.matvec(x))), v, htv)
        e = relative_operator_error(pc, v, hv)
        errors[(step, comb)] = float(e_w.mean())
        say(
            f"| PSF step {step} comb {comb} | {pc.products} | {pc.radius[0]} | "
            f"{float(e_w.mean()):.3f} | {float(e.mean()):.3f} | {dt:.2f} |"
        )
    for products in (16, 36, 64, 128):
        rank = products // 2 - 4
        lam, vec = low_rank_eigh(exact_w, shape, rank, 4, seed=0)
        lr = batched(vec @ torch.diag(lam) @ vec.T, shape)
        e_w = relative_operator_error(lr, v, htv).mean()
        say(f"| low-rank H̃ (rank {rank}, 2 passes) | {products} | – | {float(e_w):.3f} | – | – |")
    key = min(pcs, key=lambda c: errors[c])  # the most accurate for the hybrid and PCG
    htpc = lmat.T @ pcs[key].dense() @ lmat
    mu, w = torch.linalg.eigh(ht - htpc)
    order = mu.abs().argsort(descending=True)
    hybrids = {}
    for k in (50, 200):
        idx = order[:k]
        hybrids[k] = htpc + w[:, idx] @ torch.diag(mu[idx]) @ w[:, idx].T
        e_w = relative_operator_error(batched(hybrids[k], shape), v, htv).mean()
        say(
            f"| PSF step {key[0]} comb {key[1]} + exact rank-{k} residual (oracle) | "
            f"{pcs[key].products} + ≥{2 * k} | {pcs[key].radius[0]} | {float(e_w):.3f} | – | – |"
        )

    cap = 1000 if quick else 3000
    say(
        f"\n### b. PCG iterations of the RTO solves (I + H̃) w = rhs, rtol 1e-6, 8 RTO "
        f"right-hand sides, at most {cap}\n"
    )
    say("Iterations = Gauss–Newton products per draw (the exact H as the operator).\n")
    say("| preconditioner | GN products to build | iterations mean (min–max) | converged |")
    say("|---|---|---|---|")
    lam_h, q_h = torch.linalg.eigh(h)
    root_h = q_h * lam_h.clamp_min(0).sqrt()  # H = root_h root_hᵀ

    def noise(k, gen):  # N(0, H): the law of Jᵀη/σ
        z = torch.randn(k, n, generator=gen, dtype=torch.float64)
        return (z @ root_h.T).reshape(k, *shape)

    gen = torch.Generator().manual_seed(2)
    rhs = probes(8, shape, 3) + sqrt.rmatvec(g.reshape(1, *shape) + noise(8, gen))
    precision = batched(eye + ht, shape)

    def spectral_inverse(mat):
        m, q = torch.linalg.eigh(eye + mat)
        return batched(q @ torch.diag(1 / m.clamp_min(1.0)) @ q.T, shape)

    options = {"none": (None, "0")}
    for r in (100, 400):
        vr, lr = vec_all[:, -r:], lam_all[-r:]
        options[f"exact top-{r} eigenpairs (oracle)"] = (
            low_rank_inverse(lr, vr, shape),
            f"≥{2 * r}",
        )
    for r in (100, 400):
        lam, vec = low_rank_eigh(exact_w, shape, r, 10, seed=0)
        options[f"randomized top-{r} (low_rank_eigh)"] = (
            low_rank_inverse(lam, vec, shape),
            str(2 * (r + 10)),
        )
    options[f"PSF step {key[0]} comb {key[1]}"] = (
        WhitenedPrecision(pcs[key], sqrt, shape, method="dense"),
        str(pcs[key].products),
    )
    for k, mat in hybrids.items():
        options[f"PSF + exact rank-{k} residual (oracle)"] = (
            spectral_inverse(mat),
            f"{pcs[key].products} + ≥{2 * k}",
        )
    for name, (pre, cost) in options.items():
        res = conjugate_gradient(precision, rhs, pre, rtol=1e-6, maxiter=cap)
        it = res.iterations.double()
        say(
            f"| {name} | {cost} | {it.mean():.0f} ({int(it.min())}–{int(it.max())}) | "
            f"{int(res.converged.sum())}/8 |"
        )

    nsamp = 4000 if quick else 20000
    say(f"\n### c. RTO against the dense exact posterior ({nsamp} draws)\n")
    cov_w = torch.linalg.inv(eye + ht)
    cov = lmat @ cov_w @ lmat.T
    mean = (cov @ g).reshape(shape)
    std = cov.diagonal().sqrt().reshape(shape)
    direct = batched(cov_w, shape)  # exact (I + H̃)⁻¹: CG then ends after one iteration
    t = time.perf_counter()
    draws = []
    for b in range(0, nsamp, 5000):
        res = randomize_then_optimize(
            exact,
            sqrt,
            g.reshape(shape),
            noise,
            min(5000, nsamp - b),
            preconditioner=direct,
            rtol=1e-8,
            seed=b,
        )
        draws.append(res.samples)
    s = torch.cat(draws)
    se_mean, se_std = monte_carlo_std_error(s)
    rel_mean = float((s.mean(0) - mean).norm() / mean.norm())
    rel_std = ((s.std(0) - std) / std).abs()
    say(
        "Each draw solved to rtol 1e-8 with the exact inverse as the preconditioner (a direct "
        f"solve; the sampler's perturbations are what is checked), {time.perf_counter() - t:.0f} s."
    )
    say(
        f"- mean: relative L2 error {rel_mean:.4f}; Monte Carlo standard error of the mean "
        f"(relative L2) {float(se_mean.norm() / mean.norm()):.4f}; the unperturbed solve: "
        f"{float((res.mean - mean).norm() / mean.norm()):.1e}"
    )
    say(
        f"- pointwise std: |relative error| median {float(rel_std.median()):.4f}, mean "
        f"{float(rel_std.mean()):.4f}, 99th percentile {float(rel_std.quantile(0.99)):.4f}, "
        f"max {float(rel_std.max()):.4f}; relative MC standard error of a std "
        f"{float((se_std / std).mean()):.4f}"
    )
    say(
        f"- posterior std / prior std (0.03): mean {float(std.mean()) / 0.03:.3f}, min "
        f"{float(std.min()) / 0.03:.4f}"
    )
    say(
        "\n### d. RTO draws through PCG and through the PDE Gauss–Newton products "
        "(preconditioner: exact top-400 eigenpairs, oracle)\n"
    )
    pre = options["exact top-400 eigenpairs (oracle)"][0]
    # float64 Born products through the app's operator (the float32 default limits accuracy)
    gn64 = gauss_newton_operator(
        dataclasses.replace(
            problem,
            m0=problem.m0.double(),
            operator=BornModeling(problem.model, problem.survey, problem.m0.double()),
        ),
        problem.m0.double(),
    )
    runs = (
        ("dense H", exact, 1e-6),
        ("dense H", exact, 1e-8),
        ("PDE GN products (float32)", gn, 1e-5),
        ("PDE GN products (float64)", gn64, 1e-8),
    )
    for name, op, rtol in runs:
        if quick and op is not exact:
            continue
        k = 8 if op is exact else 1
        ref = randomize_then_optimize(  # the same draws by direct solves
            exact, sqrt, g.reshape(shape), noise, k, preconditioner=direct, rtol=1e-10, seed=7
        )
        t = time.perf_counter()
        res = randomize_then_optimize(
            op,
            sqrt,
            g.reshape(shape),
            noise,
            k,
            preconditioner=pre,
            rtol=rtol,
            maxiter=2000,
            seed=7,
        )
        err = (res.samples - ref.samples).flatten(1).norm(dim=1) / ref.samples.flatten(1).norm(
            dim=1
        )
        say(
            f"- {name}, rtol {rtol:g}: iterations {res.iterations.tolist()}, {res.products} "
            f"products, {time.perf_counter() - t:.0f} s; draws vs direct solves: relative "
            f"L2 ≤ {float(err.max()):.1e}; mean vs exact "
            f"{float((res.mean - mean).norm() / mean.norm()):.1e}"
        )


def section_window(root: Path, quick: bool) -> None:
    kw = dict(width=2100.0, depth=900.0, nreceivers=71)
    t0 = time.perf_counter()
    out, problem, prior, gn = survey(root, **kw)
    shape, n = problem.shape, problem.m0.numel()
    sqrt = prior.sqrt()
    say(f"\n## 2. Larger window: {shape[0]} × {shape[1]} = {n} unknowns, {problem.nshots} shots\n")
    k = 4 if quick else 8
    v = probes(k, shape, 1)
    t = time.perf_counter()
    htv = sqrt.rmatvec(gn(sqrt.matvec(v)))
    per = (time.perf_counter() - t) / k
    say(f"One GN product: {per:.2f} s (batches of 16, this load); setup {t - t0:.0f} s.\n")
    say(f"| approximation | GN products | radius | ‖(H̃−H̃a)v‖/‖H̃v‖ ({k} probes, mean) | build s |")
    say("|---|---|---|---|---|")
    for step, comb in ((3, 3), (2, 4), (3, 4), (3, 7)) if not quick else ((3, 3),):
        t = time.perf_counter()
        pc = product_convolution(gn, shape, step=step, comb=comb)
        dt = time.perf_counter() - t
        e = relative_operator_error(lambda x, pc=pc: sqrt.rmatvec(pc(sqrt.matvec(x))), v, htv)
        say(
            f"| PSF step {step} comb {comb} | {pc.products} | {pc.radius[0]} | "
            f"{float(e.mean()):.3f} | {dt:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer budgets and draws")
    parser.add_argument("--cache", default="/tmp/devito_uq_bench_curvature", help="surveys and J")
    parser.add_argument("--sections", default="1,2")
    args = parser.parse_args()
    root = Path(args.cache)
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load0, t0 = os.getloadavg(), time.perf_counter()
    say("# Product-convolution curvature and the RTO reference (issue 20, items 1–2)\n")
    say(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared "
        f"with other sessions; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"load average at start {load0[0]:.1f}.\n"
    )
    if "1" in args.sections:
        section_default(root, args.quick)
    if "2" in args.sections:
        section_window(root, args.quick)
    say(f"\nTotal {time.perf_counter() - t0:.0f} s; load average at end {os.getloadavg()[0]:.1f}.")
    if not args.quick:
        RESULTS.write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
