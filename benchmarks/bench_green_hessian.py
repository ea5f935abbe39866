"""Issue 20: the exact Gauss–Newton Hessian from receiver Green's functions, and the imaging
app's default path on the 5,151-unknown Marmousi window against the dense exact posterior.

Prints, and writes to ``benchmarks/results/bench_green_hessian[_default].md``:

1. **Assembly, side by side in one run.** ``H = JᵀMJ/σ²`` by
   :func:`devito_uq.physics.acoustic.green.born_gram` (shots + receiver positions wave
   solves, Fourier convolutions, Gram products) against the Gauss–Newton product route:
   ``--products`` products timed as the app's eigensolver runs them (chunks of 16, float32
   solves, after a warm-up), scaled to ``N`` (full rank, the exact assembly the app used to
   need) and to ``2(1000 + 10)`` (the former default, rank 1,000, truncated). Agreement with
   the independent column-by-column ``H`` (``bench_section.py``'s cache, 5,151 Born solves per
   shot) when it is cached, else on ``--columns`` unit columns computed by products.
2. **The app at its defaults** (``run_invert``; ``hessian = "auto"``) on the window's files:
   its posterior (the VI samples the user gets, and its Laplace start without sampling)
   against the exact posterior from the column-assembled ``H``: relative L2 of the mean,
   pointwise std (median ratio, mean |relative error|), truth inside the 90 % band, and what
   it spent (wave solves per phase, seconds per phase).

Usage: ``python benchmarks/bench_green_hessian.py [--window section|default] [--cache DIR]``
(the section window: about 20 min on the 2-core VM once its data are simulated; the
column-assembled reference, when not cached, is replaced by the column check).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("DEVITO_LOGGING", "ERROR")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_section import WINDOWS, Z90, Reference, dense_sqrt, survey  # noqa: E402

from devito_uq.apps.imaging import InvertConfig  # noqa: E402
from devito_uq.apps.imaging.curvature import gauss_newton_operator  # noqa: E402
from devito_uq.apps.imaging.run import run_invert  # noqa: E402
from devito_uq.io import load_checkpoint  # noqa: E402
from devito_uq.physics.acoustic.green import born_gram, born_gram_cost  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LINES: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def product_rate(problem, count: int) -> float:
    """Seconds per Gauss–Newton product, as the app's eigensolver spends them."""
    gn = gauss_newton_operator(problem, problem.m0)
    gn(torch.ones(1, *problem.shape, dtype=torch.float64))  # compile, allocate
    v = torch.randn(count, *problem.shape, dtype=torch.float64)
    t0 = time.perf_counter()
    gn(v)
    return (time.perf_counter() - t0) / count


def column_check(problem, h: torch.Tensor, count: int) -> float:
    """Largest relative error of ``count`` columns of ``h`` against products ``H e_j``."""
    gn = gauss_newton_operator(problem, problem.m0, dtype=torch.float64)
    n = h.shape[0]
    cols = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:count]
    e = torch.zeros(count, n, dtype=torch.float64)
    e[torch.arange(count), cols] = 1.0
    got = gn(e.reshape(count, *problem.shape)).reshape(count, n)
    return float(((got - h[:, cols].T).norm(dim=1) / got.norm(dim=1)).max())


def scores(ref: Reference, mean: torch.Tensor, std: torch.Tensor) -> str:
    err = float((mean - ref.mean).norm() / ref.mean.norm())
    med, mae = ref.std_errors(std)
    inside = float(((ref.truth - mean).abs() <= Z90 * std).double().mean())
    return f"{100 * err:.2f} % | {med:.3f} | {100 * mae:.1f} % | {100 * inside:.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", default="section", choices=sorted(WINDOWS))
    parser.add_argument("--cache", default="")
    parser.add_argument("--products", type=int, default=32)
    parser.add_argument("--columns", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = args.cache or (
        "/tmp/devito_uq_bench_section"
        if args.window == "section"
        else "/tmp/devito_uq_bench_curvature"
    )
    load0 = os.getloadavg()[0]
    out, problem, prior = survey(Path(cache), WINDOWS[args.window])
    n = problem.m0.numel()
    nx, nz = problem.shape
    cost = born_gram_cost(problem.model, problem.survey)
    say(f"# The exact Gauss–Newton Hessian from Green's functions: {n:,} unknowns\n")
    say(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads "
        f"(load {load0:.1f} at start); torch {torch.__version__}. Window {nx} × {nz}, "
        f"{problem.nshots} shots × {problem.survey.nreceivers[0]} receivers, "
        f"{problem.survey.nt_data} samples at {problem.survey.data_axis.dt:g} ms, Born data."
    )

    say("\n## 1. Assembling H, side by side\n")
    per = product_rate(problem, args.products)
    t0 = time.perf_counter()
    h = born_gram(problem.model, problem.survey, problem.m0) / problem.sigma**2
    t_green = time.perf_counter() - t0
    per_shot = 2 * problem.nshots
    say("| route | wave solves | seconds | × Green's |")
    say("|---|---|---|---|")
    say(f"| Green's functions (exact) | {cost['wave_solves']} | {t_green:.0f} | 1 |")
    rows = [(f"products, full rank ({n:,})", n)]
    if 2020 < n:  # the former default: rank 1,000, two randomized passes of 1,010
        rows.append(("products, rank 1,000 (truncated)", 2020))
    for label, k in rows:
        say(f"| {label} | {k * per_shot:,} | {k * per:.0f} | {k * per / t_green:.1f} |")
    say(
        f"\nProducts timed: {args.products} at {per:.3f} s each (chunks of 16, float32); the "
        f"product rows are that rate × their count. Green's route: {cost['rows']:,} data rows, "
        f"{cost['gram_flops']:.2e} flops of Gram products."
    )
    column_h = out / "exact_hessian.pt"
    if column_h.exists():
        hx = torch.load(column_h)["H"]
        v = torch.randn(n, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        rel = float((h - hx).norm() / hx.norm())
        relv = float(((h - hx) @ v).norm() / (hx @ v).norm())
        say(
            f"Against the column-by-column H (cached, {n} Born solves per shot): relative "
            f"error {rel:.1e} (Frobenius), {relv:.1e} on 8 random vectors."
        )
    else:
        hx = h
        worst = column_check(problem, h, args.columns)
        say(
            f"No column-assembled H cached: {args.columns} random columns against float64 "
            f"products, largest relative error {worst:.1e}; the reference below is this H."
        )

    say("\n## 2. The app at its defaults against the exact posterior\n")
    lmat = dense_sqrt(prior.sqrt(), problem.shape)
    g = torch.load(out / "gradient.pt") if (out / "gradient.pt").exists() else None
    if g is None:
        x = torch.zeros(1, *problem.shape, dtype=problem.m0.dtype, requires_grad=True)
        (grad,) = torch.autograd.grad(problem.likelihood(x, full=True).sum(), x)
        g = -grad.double().flatten()  # JᵀMd/σ²
        torch.save(g, out / "gradient.pt")
    ref = Reference(hx, lmat, g, problem.truth.double().flatten())
    del h
    app = out / "app_default"
    config = InvertConfig(
        shots=str(out / "shots.sgy"),
        background=str(out / "background.sgy"),
        truth=str(out / "true_model.sgy"),
        overwrite=True,
    )
    t0 = time.perf_counter()
    summary = run_invert(config, app, progress=False, figures=False)
    t_app = time.perf_counter() - t0
    samples = load_checkpoint(app / "posterior_samples.pt")["samples"].double().flatten(1)
    base = load_checkpoint(app / "map.pt")
    lam = base["eigenvalues"].double()
    vec = base["eigenvectors"].double().reshape(n, lam.numel())  # [N, r] columns
    lv = lmat @ vec
    lap_std = ((lv**2) / (1 + lam)).sum(1).sqrt()
    map_mean = base["map"].double().flatten()
    say(
        "| posterior | mean rel. L2 | std median ratio | mean \\|rel. err.\\| of std "
        "| truth in 90 % band |"
    )
    say("|---|---|---|---|---|")
    say(f"| exact (dense) | 0 | 1 | 0 | {100 * ref.band(ref.mean, ref.std):.1f} % |")
    say(f"| app: Laplace start (MAP, eigenpairs) | {scores(ref, map_mean, lap_std)} |")
    say(
        f"| app: VI, {samples.shape[0]} samples (what the user gets) "
        f"| {scores(ref, samples.mean(0), samples.std(0))} |"
    )
    solves = summary["pde_solves"]["by_phase"]
    spent = sum(solves.get(k, 0) for k in ("illumination", "laplace", "map", "coverage"))
    times = summary["time_s"]
    hess = summary["laplace"]["hessian"]
    say(
        f"\nRoute: {hess['route']}. Wave solves before VI: {spent:,} "
        f"({spent / (per_shot * n):.2%} of the {per_shot * n:,} a full-rank assembly by "
        f"products needs; laplace {solves.get('laplace', 0)}, illumination "
        f"{solves.get('illumination', 0)}, map {solves.get('map', 0)}); VI {solves.get('vi', 0):,}."
        f" Seconds: laplace {times['laplace']:.0f} (estimated before: "
        f"{hess.get('estimated_s', float('nan')):.0f}), map {times['map']:.0f}, "
        f"vi {times['vi']:.0f}, total {t_app:.0f}. The app's own band: "
        f"{100 * summary['metrics']['truth_inside_90pct_band']:.1f} %."
    )
    name = "bench_green_hessian" + ("" if args.window == "section" else "_default")
    say(f"\nLoad average at end {os.getloadavg()[0]:.1f}.")
    (RESULTS / f"{name}.md").write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
