"""Issue 20 at section size: the exact Born posterior of a 5,151-unknown window, and what the
imaging app's curvature, MAP and approximations give against it.

Prints, and writes to ``benchmarks/results/bench_section.md``:

1. **The exact reference.** The Marmousi 3 km × 1.5 km window at 30 m (101 × 51 = 5,151
   unknowns; x 5.4–8.4 km), 16 shots × 101 receivers, 1 s, Born data at 20 dB, the app's
   default prior. ``H = JᵀMJ/σ²`` is assembled from Born columns of ``J`` (one Born solve
   per column and shot, float64 background, float32 data; shot groups cached in ``--cache``
   so a killed run resumes), then the exact posterior by one dense eigendecomposition of the
   whitened ``H̃ = LᵀHL``: its spectrum, and the truth inside its 90 % band.
2. **The app's low-rank Laplace against it**, emulated with the dense ``H̃`` (the same
   ``low_rank_eigh`` on the same products): posterior std (median ratio, mean
   |relative error|) and the truth inside the 90 % band, for the residual choices
   ``prior`` and ``tail``, at ranks 250, 500 and 1,000 (the default).
3. **The Born MAP**: CG on ``(I + H̃) w = b`` preconditioned by those eigenpairs
   (:func:`devito_uq.apps.imaging.curvature.born_map`), products to ``rtol`` and the error
   against the exact mean — and, for comparison, the same solve stopped after 40 products
   (the former default of 40 L-BFGS steps in the truncated latent).
4. **A local (frame-diagonal) approximation** of ``H̃`` from random probes — windowed
   Fourier symbols estimated by cross-spectra of ``H̃ z`` and ``z``
   (:class:`devito_uq.inference.curvature.LocalSymbol`) — alone and on top of the low-rank
   part: posterior std against the exact one, and PCG iterations of ``(I + H̃) x = r``
   preconditioned by it.

Gauss–Newton products are counted as the app spends them (one per vector); products of
the dense ``H̃`` stand in for PDE ones in 2–4 (they are the same operator to float32).

Usage: ``python benchmarks/bench_section.py [--cache DIR] [--quick]`` (first run: about
45 min on one core of the 2-core VM to assemble ``H``; later runs read the cache).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import torch  # noqa: E402

from devito_uq.apps.imaging import InvertConfig, SimulateConfig  # noqa: E402
from devito_uq.apps.imaging.problem import build_problem, make_prior  # noqa: E402
from devito_uq.apps.imaging.simulate import run_simulate  # noqa: E402
from devito_uq.inference import low_rank_eigh  # noqa: E402
from devito_uq.inference.laplace import residual_shrink  # noqa: E402
from devito_uq.inference.local_symbol import local_symbol  # noqa: E402
from devito_uq.inference.rto import conjugate_gradient  # noqa: E402
from devito_uq.physics import BornModeling  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_section.md"
#: ``section``: the issue's window; ``default``: the imaging default case (41 × 21, a quick check)
WINDOWS = {"section": dict(width=3000.0, depth=1500.0, nshots=16, nreceivers=101), "default": {}}
CG_CAP = 5000  # iterations: a preconditioner that needs more is no use here
Z90 = 1.6448536269514722  # the 95 % quantile of N(0, 1): a central 90 % band
LINES: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def survey(root: Path, window: dict) -> tuple[Path, object, object]:
    """Simulate the window (Born data) once and build the app's problem and prior."""
    out = root / ("_".join(f"{k}{v:g}" for k, v in sorted(window.items())) or "default")
    if not (out / "shots.sgy").exists():
        out.mkdir(parents=True, exist_ok=True)
        run_simulate(SimulateConfig(data="born", **window), out, progress=False, figures=False)
    config = InvertConfig(truth=str(out / "true_model.sgy"))
    problem = build_problem(config, out)
    return out, problem, make_prior(config, problem)


def exact_hessian(out: Path, problem, group: int = 4, cols: int = 32) -> torch.Tensor:
    """``H = JᵀMJ/σ²`` ``[N, N]`` float64 from Born columns, ``group`` shots at a time
    (each group's ``J_gᵀJ_g`` is cached: a killed run resumes at the next group)."""
    whole = out / "exact_hessian.pt"  # every group done: {"H": JᵀMJ/σ², ...}
    if whole.exists():
        return torch.load(whole)["H"]
    nx, nz = problem.shape
    n = nx * nz
    J = BornModeling(problem.model, problem.survey, problem.m0.double())
    mask = torch.from_numpy(problem.survey.mask())[:, None, :].double()
    h = torch.zeros(n, n, dtype=torch.float64)
    for s0 in range(0, problem.nshots, group):
        shots = list(range(s0, min(problem.nshots, s0 + group)))
        part = out / f"hessian_shots{shots[0]}-{shots[-1]}.pt"
        if not part.exists():
            t0 = time.perf_counter()
            blocks = []
            for k in range(0, n, cols):
                e = torch.zeros(min(cols, n - k), n, dtype=torch.float64)
                e[torch.arange(e.shape[0]), torch.arange(k, k + e.shape[0])] = 1.0
                with torch.no_grad():
                    d = J(e.reshape(-1, nx, nz), shots=shots) * mask[shots]
                blocks.append(d.flatten(1).float())
            jt = torch.cat(blocks).double()
            torch.save(jt @ jt.T, part)
            print(f"  shots {shots}: {time.perf_counter() - t0:.0f} s", flush=True)
        h += torch.load(part)
    h /= problem.sigma**2
    torch.save({"H": h}, whole)
    return h


def dense_sqrt(sqrt, shape) -> torch.Tensor:
    n = shape[0] * shape[1]
    return sqrt.matvec(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, n).T


class Reference:
    """The exact posterior from the dense whitened Hessian."""

    def __init__(self, h: torch.Tensor, lmat: torch.Tensor, g: torch.Tensor, truth):
        self.lmat = lmat
        self.ht = lmat.T @ h @ lmat
        self.ht = 0.5 * (self.ht + self.ht.T)
        self.lam, self.vec = torch.linalg.eigh(self.ht)
        lv = lmat @ self.vec
        self.std = ((lv**2) / (1 + self.lam)).sum(1).sqrt()
        self.b = lmat.T @ g  # whitened right-hand side of the MAP
        self.mean = lmat @ (self.vec @ ((self.vec.T @ self.b) / (1 + self.lam)))
        self.truth = truth

    def band(self, mean: torch.Tensor, std: torch.Tensor) -> float:
        return float(((self.truth - mean).abs() <= Z90 * std).double().mean())

    def std_errors(self, std: torch.Tensor) -> tuple[float, float]:
        rel = std / self.std
        return float(rel.median()), float((rel - 1).abs().mean())

    def products(self, v: torch.Tensor) -> torch.Tensor:
        return (v.reshape(v.shape[0], -1) @ self.ht).reshape(v.shape)


def laplace_std(ref: Reference, lam, vec, residual: float) -> torch.Tensor:
    """Pointwise std of ``L (V diag(1/(1+λ)) Vᵀ + r² (I − VVᵀ)) Lᵀ``."""
    lv = ref.lmat @ vec
    prior_var = (ref.lmat**2).sum(1)
    var = ((lv**2) / (1 + lam)).sum(1) + residual**2 * (prior_var - (lv**2).sum(1))
    return var.clamp_min(0).sqrt()


def cg_map(ref: Reference, lam, vec, rtol: float, maxiter: int):
    shrink = lam / (1 + lam)

    def precondition(r):
        return r - ((r @ vec) * shrink) @ vec.T

    res = conjugate_gradient(
        lambda w: w + w @ ref.ht, ref.b[None], precondition, rtol=rtol, maxiter=maxiter
    )
    mean = ref.lmat @ res.x[0]
    return int(res.iterations[0]), float((mean - ref.mean).norm() / ref.mean.norm())


def section_laplace(ref: Reference, shape, ranks) -> dict:
    n = ref.lam.numel()
    say("\n## 2–3. The app's low-rank Laplace and its MAP against the exact posterior\n")
    say(
        "| rank | GN products (eigensolve) | λ_rank (exact) | residual | std median ratio "
        "| mean \\|rel. err.\\| of std | truth in 90 % band (exact mean) |"
    )
    say("|---|---|---|---|---|---|---|")
    pairs = {}
    for k in ranks:
        lam, vec = low_rank_eigh(ref.products, shape, k, 10, seed=0)
        pairs[k] = (lam, vec)
        for name, res in (("prior", 1.0), ("tail", float(residual_shrink(lam, n)))):
            std = laplace_std(ref, lam, vec, res)
            med, mae = ref.std_errors(std)
            say(
                f"| {k} | {2 * (k + 10)} | {float(lam[-1]):.3g} ({float(ref.lam[-k]):.3g}) "
                f"| {name} ({res:.2f}) | {med:.3f} | {mae:.3f} | {ref.band(ref.mean, std):.3f} |"
            )
    say("\nThe Born MAP from those eigenpairs (CG products; error against the exact mean):\n")
    say("| rank | 40 products (≈ the former 40 L-BFGS steps) | rtol 1e-3 | rtol 1e-5 |")
    say("|---|---|---|---|")
    for k, (lam, vec) in pairs.items():
        cells = []
        for rtol, maxiter in ((1e-12, 40), (1e-3, 4 * n), (1e-5, 4 * n)):
            its, err = cg_map(ref, lam, vec, rtol, maxiter)
            cells.append(f"{its}: {100 * err:.2f} %")
        say(f"| {k} | " + " | ".join(cells) + " |")
    return pairs


def section_local(ref: Reference, shape, pairs, quick: bool) -> None:
    n = ref.lam.numel()
    eye = torch.eye(n, dtype=torch.float64)
    say("\n## 4. A local (frame-diagonal) symbol of H̃ from random probes\n")
    say(
        "| approximation | GN products | std median ratio | mean \\|rel. err.\\| of std "
        "| band (exact mean) | PCG iterations, rtol 1e-6 (4 rhs, mean; cap 5,000) |"
    )
    say("|---|---|---|---|---|---|")
    rhs = torch.randn(4, n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(0)

    def row(name, products, approx: torch.Tensor):
        approx = 0.5 * (approx + approx.T)
        w, u = torch.linalg.eigh(eye + approx)
        lu = ref.lmat @ u
        std = ((lu**2) / w.clamp_min(1e-12)).sum(1).sqrt()
        med, mae = ref.std_errors(std)
        inv = (u / w) @ u.T
        res = conjugate_gradient(
            lambda x: x + x @ ref.ht, rhs, lambda r: r @ inv, rtol=1e-6, maxiter=CG_CAP
        )
        its = float(res.iterations.double().mean())
        say(
            f"| {name} | {products} | {med:.3f} | {mae:.3f} | {ref.band(ref.mean, std):.3f} "
            f"| {its:.0f}{'' if bool(res.converged.all()) else ' (not all converged)'} |"
        )

    none = conjugate_gradient(lambda x: x + x @ ref.ht, rhs, rtol=1e-6, maxiter=CG_CAP)
    say(f"| none (CG on I + H̃) | 0 | – | – | – | {float(none.iterations.double().mean()):.0f} |")
    for k, (lam, vec) in pairs.items():
        row(f"low rank {k} alone", 2 * (k + 10), (vec * lam) @ vec.T)
    for hop in (8, 12) if not quick else (8,):
        for probes in (8, 32):
            z = torch.randn(probes, *shape, dtype=torch.float64, generator=gen)
            sym = local_symbol(z, ref.products(z), hop=hop)
            row(f"local symbol, windows {2 * hop} cells, {probes} probes", probes, sym.dense())
    k = min(pairs)
    lam, vec = pairs[k]
    low = (vec * lam) @ vec.T
    proj = eye - vec @ vec.T
    z = torch.randn(32, n, dtype=torch.float64, generator=gen) @ proj
    y = ref.products(z.reshape(-1, *shape)).reshape(32, n) - (z @ low)
    sym = local_symbol(z.reshape(-1, *shape), y.reshape(-1, *shape), hop=8)
    row(
        f"low rank {k} + local symbol of the rest (32 probes)",
        2 * (k + 10) + 32,
        low + proj @ sym.dense() @ proj,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default="/tmp/devito_uq_bench_section")
    parser.add_argument("--quick", action="store_true", help="fewer ranks and symbols")
    parser.add_argument("--window", default="section", choices=sorted(WINDOWS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    out, problem, prior = survey(Path(args.cache), WINDOWS[args.window])
    shape = problem.shape
    h = exact_hessian(out, problem)
    t_h = time.perf_counter() - t0
    lmat = dense_sqrt(prior.sqrt(), shape)
    g = torch.load(out / "gradient.pt") if (out / "gradient.pt").exists() else None
    if g is None:
        x = torch.zeros(1, *shape, dtype=problem.m0.dtype, requires_grad=True)
        (grad,) = torch.autograd.grad(problem.likelihood(x, full=True).sum(), x)
        g = -grad.double().flatten()  # JᵀMd/σ²
        torch.save(g, out / "gradient.pt")
    ref = Reference(h, lmat, g, problem.truth.double().flatten())
    n = ref.lam.numel()
    say(
        "# Issue 20 at section size: the exact Born posterior of 5,151 unknowns and the app "
        "against it\n"
    )
    say(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs: load "
        f"{load0:.1f} at start); torch {torch.__version__}, 1 thread."
    )
    say("\n## 1. The exact reference\n")
    say(
        f"Window {shape[0]} × {shape[1]} = {n} unknowns, {problem.nshots} shots, σ = "
        f"{problem.sigma:.4g}. H assembled (or read from the cache) in {t_h:.0f} s."
    )
    above = [int((ref.lam > t).sum()) for t in (1, 10, 100)]
    say(
        f"Eigenvalues of H̃ above 1 / 10 / 100: {above[0]} / {above[1]} / {above[2]} of {n}; "
        f"largest {float(ref.lam[-1]):.3g}. Posterior std / prior std: mean "
        f"{float((ref.std / (lmat**2).sum(1).sqrt()).mean()):.3f}. Truth inside the exact "
        f"90 % band: {ref.band(ref.mean, ref.std):.3f}."
    )
    ranks = (250, 1000) if args.quick else (250, 500, 1000)
    ranks = tuple(k for k in ranks if k < n) or (n // 4,)
    pairs = section_laplace(ref, shape, ranks)
    section_local(ref, shape, pairs, args.quick)
    say(f"\nTotal {time.perf_counter() - t0:.0f} s; load average at end {os.getloadavg()[0]:.1f}.")
    if not args.quick and args.window == "section":
        RESULTS.write_text("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
