"""FWI at ≥ 2,000 unknowns: the imaging app's posterior against a preconditioned MCMC reference.

Issue 20, item 4 (third benchmark): "FWI on a ≥ 2,000-unknown window: VI against the
preconditioned MCMC reference (std ratio, band, ESS)". One run on this machine:

1. ``devito-uq imaging --problem fwi --data nonlinear`` on a Marmousi-II window (default
   1.89 km × 0.93 km at 30 m: 64 × 32 = 2,048 unknowns, 8 shots of 64 receivers, 1.2 s,
   20 dB), every other setting the app's default (rank 1,000 randomized Laplace at the MAP,
   200 VI iterations on 4 shots of 8 per iteration).
2. The reference: :class:`~devito_uq.inference.PCN` on the same posterior (all shots, the
   same prior and bounds) in the app's own Laplace latent ``m = g(MAP + A x)`` — the chain
   is exact whatever the latent; the curvature only makes it efficient. Chains start from
   Laplace draws; β adapts during burn-in to 25 % acceptance. Reported: ESS (Geyer, of
   velocity, over pixels), split-R̂, acceptance, forward solves.
3. Optionally MALA in the same latent for the same number of PDE solves (a MALA step is a
   misfit and its gradient: 2 solves per shot against pCN's 1), to compare ESS per solve.
4. Against the reference, in velocity (km/s): the app's VI (``--vi-draws`` flow draws) and
   its Laplace start alone (draws of ``g(MAP + A x)``, ``x ~ N(0, I)``): pointwise std ratio
   (median, mean |error|), mean difference in reference stds, truth inside the 90 % band,
   relative L2 of the mean against the truth; the reference's own Monte Carlo error.

Writes ``benchmarks/results/bench_fwi_reference.md`` (``--no-write``: print only).
Usage: ``python benchmarks/bench_fwi_reference.py [--chains 16 --steps 2000 ...]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import torch  # noqa: E402

from devito_uq.apps.imaging import ImagingConfig  # noqa: E402
from devito_uq.inference import split_rhat  # noqa: E402
from devito_uq.io import load_checkpoint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_fwi_reference.md"


def band90(draws: torch.Tensor, truth: torch.Tensor) -> float:
    """Share of pixels whose truth lies inside the central 90 % band of ``draws`` ``[n, ...]``."""
    lo, hi = torch.quantile(draws.flatten(1), torch.tensor([0.05, 0.95], dtype=draws.dtype), 0)
    return float(((truth.flatten() >= lo) & (truth.flatten() <= hi)).double().mean())


def rel_l2(a: torch.Tensor, truth: torch.Tensor) -> float:
    return float((a - truth).norm() / truth.norm())


def chains(sampler, args, steps: int, burn_in: int, x0, seed: int):
    """Run ``sampler``; its result, seconds, velocity chains ``[draws, chains, nx, nz]``
    (km/s) and their ESS per pixel."""
    from devito_uq.inference import effective_sample_size

    t0 = time.perf_counter()
    res = sampler.run(
        steps, n_chains=args.chains, x0=x0, burn_in=burn_in, seed=seed, progress=args.progress
    )
    v = res.samples.double().rsqrt()
    return res, time.perf_counter() - t0, v, effective_sample_size(v)


def compare(draws: torch.Tensor, ref: torch.Tensor, truth: torch.Tensor) -> dict:
    """Statistics of ``draws`` ``[n, nx, nz]`` against reference draws, in velocity."""
    sd, sd_ref = draws.std(0), ref.std(0)
    ratio = sd / sd_ref
    return {
        "std_ratio_median": float(ratio.median()),
        "std_abs_rel_err_mean": float((ratio - 1).abs().mean()),
        "mean_shift_in_ref_std_median": float(
            ((draws.mean(0) - ref.mean(0)).abs() / sd_ref).median()
        ),
        "band90": band90(draws, truth),
        "mean_rel_l2_vs_truth": rel_l2(draws.mean(0), truth),
        "draws": int(draws.shape[0]),
    }


def run(args) -> dict:
    from devito_uq.apps.imaging.posterior import laplace_parameterization, load_posterior
    from devito_uq.apps.imaging.problem import build_problem, make_prior
    from devito_uq.apps.imaging.run import run_imaging
    from devito_uq.inference import MALA, PCN, PosteriorTarget

    root = Path(args.out)
    ranks = [int(r) for r in args.ranks.split(",")]
    runs, draws = {}, {}
    gen = torch.Generator().manual_seed(7)
    for rank in ranks:
        out = root / f"rank{rank}"
        config = ImagingConfig.short(
            problem="fwi",
            data="nonlinear",
            width=args.width,
            depth=args.depth,
            nreceivers=args.nreceivers,
            t1=args.t1,
            rank=rank,
            overwrite=True,
        )
        t0 = time.perf_counter()
        if args.reuse and (out / "summary.json").exists():
            summary = json.loads((out / "summary.json").read_text())
            t_app = float(summary["time_s"]["total"])
        else:
            summary = run_imaging(config, out, progress=args.progress, figures=False)
            t_app = time.perf_counter() - t0
        inv = config.invert_config()
        problem = build_problem(inv, out)
        prior = make_prior(inv, problem, out)
        base = load_checkpoint(out / "map.pt")
        g = laplace_parameterization(base["map"], base, problem.bounds)
        nx, nz = problem.m0.shape
        with torch.no_grad():
            x_lap = torch.randn(args.vi_draws, nx, nz, generator=gen, dtype=base["map"].dtype)
            laplace_v = g(x_lap)[0].double().rsqrt()
        post = load_posterior(out / "posterior.pt")
        vi_v = post.to_output_unit(post.sample(args.vi_draws, seed=11)).double()
        lap = summary["laplace"]
        runs[rank] = {
            "app_s": t_app,
            "time_s": summary["time_s"],
            "pde_solves": summary.get("pde_solves"),
            "laplace": {
                k: lap.get(k)
                for k in ("rank", "eigenvalues_above_1", "smallest_computed_eigenvalue", "warning")
            },
            "app_band90": summary["metrics"]["truth_inside_90pct_band"],
            "map": summary.get("map"),
            "map_rel_l2_vs_truth": rel_l2(
                base["map"].double().rsqrt(), torch.from_numpy(problem.v_true).double()
            ),
        }
        draws[rank] = (vi_v, laplace_v)
    # The reference runs in the last (highest-rank) run's latent: the best preconditioner.
    target = PosteriorTarget(problem.likelihood, prior, g)
    truth = torch.from_numpy(problem.v_true).double()
    with torch.no_grad():
        x0 = g(torch.randn(args.chains, nx, nz, generator=gen, dtype=base["map"].dtype))[0]
    res, t_pcn, chains_v, ess = chains(
        PCN(target, step_size=args.beta), args, args.steps, args.burn_in, x0, seed=3
    )
    rhat = split_rhat(chains_v)
    ref = chains_v.flatten(0, 1)
    nshots = problem.nshots
    for rank, (vi_v, laplace_v) in draws.items():
        runs[rank]["vi"] = compare(vi_v, ref, truth)
        runs[rank]["laplace_start"] = compare(laplace_v, ref, truth)
    result = {
        "grid": [nx, nz],
        "unknowns": nx * nz,
        "nshots": nshots,
        "config": {
            k: getattr(config, k)
            for k in (
                "x_start",
                "width",
                "depth",
                "spacing",
                "nreceivers",
                "t1",
                "f0",
                "snr_db",
                "iterations",
                "vi_shots",
                "prior_std",
                "correlation_length",
            )
        },
        "runs": runs,
        "reference_rank": ranks[-1],
        "pcn": {
            "chains": args.chains,
            "burn_in": args.burn_in,
            "steps": args.steps,
            "beta": res.step_size,
            "acceptance": res.acceptance_rate,
            "seconds": t_pcn,
            "forward_solves": res.gradient_evaluations * nshots,
            "ess_min": float(ess.min()),
            "ess_median": float(ess.median()),
            "rhat_max": float(rhat.max()),
            "rhat_median": float(rhat.median()),
            "std_mc_rel_err_median": float((0.5 / ess).sqrt().median()),
            "mean_rel_l2_vs_truth": rel_l2(ref.mean(0), truth),
            "band90": band90(ref, truth),
        },
        "map_rel_l2_vs_truth": rel_l2(base["map"].double().rsqrt(), truth),
        "background_rel_l2_vs_truth": rel_l2(problem.m0.double().rsqrt(), truth),
    }
    if args.mala_steps:
        mala = MALA(target, step_size=0.2)
        mres, t_mala, mv, mess = chains(mala, args, args.mala_steps, args.mala_burn_in, x0, 4)
        result["mala"] = {
            "chains": args.chains,
            "burn_in": args.mala_burn_in,
            "steps": args.mala_steps,
            "step": mres.step_size,
            "acceptance": mres.acceptance_rate,
            "seconds": t_mala,
            "solves": 2 * mres.gradient_evaluations * nshots,
            "ess_min": float(mess.min()),
            "ess_median": float(mess.median()),
            "rhat_max": float(split_rhat(mv).max()),
            "vs_pcn": compare(mv.flatten(0, 1), ref, truth),
        }
    return result


def report(r: dict, args, wall: float) -> str:
    c, p = r["config"], r["pcn"]
    nx, nz = r["grid"]
    lines = [
        f"# bench_fwi_reference — {platform.machine()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, torch threads "
        f"{torch.get_num_threads()}",
        "",
        f"`python benchmarks/bench_fwi_reference.py {' '.join(sys.argv[1:])}`; wall "
        f"{wall / 60:.1f} min; load average (1 min) at end {os.getloadavg()[0]:.2f}.",
        "",
        f"Marmousi-II window x = {c['x_start']:.0f} m, {c['width']:.0f} m × {c['depth']:.0f} m "
        f"at {c['spacing']:.0f} m: **{nx} × {nz} = {r['unknowns']:,} unknowns**, {r['nshots']} "
        f"shots of {c['nreceivers']} receivers, {c['t1']:.0f} ms, f0 {c['f0']} Hz, nonlinear "
        f"data at {c['snr_db']} dB; prior std {c['prior_std']}, correlation "
        f"{c['correlation_length']} m. App: `devito-uq imaging --problem fwi` with its defaults "
        f"({c['iterations']} VI iterations on {c['vi_shots']} shots each) at the Laplace ranks "
        "below. Velocity rel. L2 vs truth: background "
        f"{100 * r['background_rel_l2_vs_truth']:.2f} %, MAP (rank {r['reference_rank']} run) "
        f"{100 * r['map_rel_l2_vs_truth']:.2f} %.",
        "",
        f"Reference: pCN in the rank-{r['reference_rank']} run's Laplace latent, {p['chains']} "
        f"chains × {p['steps']} steps after {p['burn_in']} burn-in, from Laplace draws; β "
        f"{p['beta']:.3f}, acceptance {p['acceptance']:.2f}, {p['forward_solves']:,.0f} forward "
        f"solves, {p['seconds'] / 60:.1f} min. ESS of velocity over pixels: min "
        f"{p['ess_min']:.0f}, median {p['ess_median']:.0f} (of {p['chains'] * p['steps']:,} "
        f"draws); split-R̂ max {p['rhat_max']:.3f}, median {p['rhat_median']:.3f}; its pointwise "
        f"std carries a Monte Carlo error of {100 * p['std_mc_rel_err_median']:.1f} % (median, "
        "1/√(2·ESS)).",
        "",
        "| posterior | app min | std ratio (median) | mean \\|std error\\| "
        "| mean shift (median, ref. stds) | truth in 90 % band | mean rel. L2 vs truth |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, s: dict, minutes: str = "") -> str:
        return (
            f"| {name} | {minutes} | {s['std_ratio_median']:.2f} | "
            f"{100 * s['std_abs_rel_err_mean']:.1f} % | {s['mean_shift_in_ref_std_median']:.2f} "
            f"| {100 * s['band90']:.1f} % | {100 * s['mean_rel_l2_vs_truth']:.2f} % |"
        )

    for rank, run in r["runs"].items():
        label = f"rank {rank}" + (" (full: exact GN)" if int(rank) >= r["unknowns"] else "")
        lines.append(row(f"app VI, {label}", run["vi"], f"{run['app_s'] / 60:.1f}"))
        lines.append(row(f"its Laplace start alone, {label}", run["laplace_start"]))
    if "mala" in r:
        lines.append(row("MALA, same latent and solves as pCN", r["mala"]["vs_pcn"]))
    lines.append(
        f"| pCN reference | {p['seconds'] / 60:.1f} | 1 | — | — | {100 * p['band90']:.1f} % | "
        f"{100 * p['mean_rel_l2_vs_truth']:.2f} % |"
    )
    lines.append("")
    for rank, run in r["runs"].items():
        lap = run["laplace"]
        lines.append(
            f"- rank {rank}: eigenvalues > 1 captured {lap['eigenvalues_above_1']}, smallest "
            f"computed {lap['smallest_computed_eigenvalue']:.3g}; app time by phase (s) "
            + ", ".join(f"{k} {v:.0f}" for k, v in run["time_s"].items())
            + (f"; the app warned: {lap['warning']}" if lap.get("warning") else "")
            + (
                f"; MAP: {run['map']['iterations']} L-BFGS iterations, converged "
                f"{run['map']['converged']}, objective {run['map']['objective']:.1f} nats"
                if run.get("map")
                else ""
            )
        )
    if "mala" in r:
        m = r["mala"]
        lines += [
            "",
            f"MALA in the same latent: {m['chains']} chains × {m['steps']} steps after "
            f"{m['burn_in']} burn-in, step {m['step']:.3g}, acceptance {m['acceptance']:.2f}, "
            f"{m['solves']:,.0f} solves, {m['seconds'] / 60:.1f} min; ESS min "
            f"{m['ess_min']:.0f}, median {m['ess_median']:.0f}; split-R̂ max {m['rhat_max']:.3f}. "
            "ESS per 1,000 solves (median): pCN "
            f"{1000 * p['ess_median'] / p['forward_solves']:.2f}, MALA "
            f"{1000 * m['ess_median'] / m['solves']:.2f}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/devito_uq_bench_fwi_reference")
    parser.add_argument("--reuse", action="store_true", help="reuse the app run in --out")
    parser.add_argument("--width", type=float, default=1890.0)
    parser.add_argument("--depth", type=float, default=930.0)
    parser.add_argument("--nreceivers", type=int, default=64)
    parser.add_argument("--t1", type=float, default=1200.0)
    parser.add_argument(
        "--ranks",
        default="1000,2048",
        help="Laplace ranks of the app runs, comma-separated (reference: the last one's latent)",
    )
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--burn-in", type=int, default=300)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--mala-steps", type=int, default=0)
    parser.add_argument("--mala-burn-in", type=int, default=150)
    parser.add_argument("--vi-draws", type=int, default=2000)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    result = run(args)
    text = report(result, args, time.perf_counter() - t0)
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=1, default=str))
    if not args.no_write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
