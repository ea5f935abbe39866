"""VI (HINT flow) vs MALA vs SGLD on a linear-Gaussian problem with a known posterior.

For each method, in one run on the same problem (n = 32, 8 shots × 4 data, singular
values 0.1…8 relative to noise/prior, so posterior stds differ from the conditional
ones by up to 3×):

* posterior-std error versus likelihood-gradient evaluations (a VI iteration with
  batch B costs B; an MCMC step with C chains costs C; SGLD on 4 of 8 shots costs
  C/2). Std error = mean over coordinates of |std − σ|/σ (max also printed);
* evaluations after which the std error stays ≤ 10 % (burn-in included; MCMC
  estimates use all draws after burn-in, VI estimates 4000 fresh samples);
* cost of 1000 further independent samples after training / burn-in: VI draws
  them directly (no likelihood); MCMC needs 1000 effective samples, i.e.
  1000 · τ draws with τ the integrated autocorrelation time of the slowest
  coordinate (Geyer's estimate over the chains).

Baseline: MALA. The forward operator here is a tiny matrix, so wall times measure
the samplers' own overhead; the "at 0.2 s/grad" column projects the cost when one
likelihood gradient is a 2-D Devito solve (0.17–0.21 s, ../shared/MEASURED.md).

    python benchmarks/bench_inference.py            # ~1-2 min on 2 cores
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import torch

from devito_uq.flows import HINT, Flow
from devito_uq.inference import (
    MALA,
    SGLD,
    VariationalPosterior,
    linear_gaussian_problem,
)

GRAD_SECONDS = 0.2  # one 2-D acoustic gradient on this machine (MEASURED.md)


def std_errors(samples: torch.Tensor, sd: torch.Tensor) -> tuple[float, float]:
    e = (samples.double().std(0) - sd).abs() / sd
    return float(e.mean()), float(e.max())


def first_below(curve, column, level=0.10):
    """Evaluations after which the error stays ≤ level (column 1: mean, 2: max)."""
    for i, point in enumerate(curve):
        if all(q[column] <= level for q in curve[i:]):
            return point[0]
    return None


def run_vi(p, args):
    torch.manual_seed(0)
    flow = Flow(HINT(32, steps=2, hidden=32, memory_frugal=False), (32,))
    vi = VariationalPosterior(flow, p.likelihood(), p.prior)
    curve, eval_time = [], [0.0]

    def evaluate(iteration, terms):
        if iteration % args.vi_every == 0:
            t0 = time.perf_counter()
            s = vi.sample(args.eval_samples)
            curve.append((iteration * args.batch, *std_errors(s, p.posterior_std)))
            eval_time[0] += time.perf_counter() - t0

    t0 = time.perf_counter()
    vi.fit(
        args.vi_iterations,
        batch_size=args.batch,
        lr=3e-3,
        lr_schedule="cosine",
        clip_grad=100.0,
        progress=False,
        callback=evaluate,
    )
    t_train = time.perf_counter() - t0 - eval_time[0]
    t0 = time.perf_counter()
    vi.sample(1000)
    t_1000 = time.perf_counter() - t0
    return {"curve": curve, "train_s": t_train, "evals_1000": 0.0, "time_1000": t_1000}


def run_mcmc(p, sampler, args, fraction):
    chains = args.chains
    t0 = time.perf_counter()
    r = sampler.run(
        args.mcmc_steps,
        n_chains=chains,
        x0=torch.zeros(1, 32),
        burn_in=args.burn_in,
        seed=0,
        progress=False,
    )
    wall = time.perf_counter() - t0
    per_step = wall / (args.burn_in + args.mcmc_steps)
    cost = chains * fraction  # gradient evaluations per step
    curve = []
    for t in range(args.mcmc_every, args.mcmc_steps + 1, args.mcmc_every):
        flat = r.samples[:t].reshape(-1, 32)
        curve.append((cost * (args.burn_in + t), *std_errors(flat, p.posterior_std)))
    ess = float(r.effective_sample_size().min())  # slowest coordinate
    draws = r.samples.shape[0] * r.samples.shape[1]
    tau = draws / ess
    steps_1000 = math.ceil(1000 * tau / chains)
    return {
        "curve": curve,
        "train_s": per_step * args.burn_in,
        "evals_1000": steps_1000 * cost,
        "time_1000": steps_1000 * per_step,
        "tau": tau,
        "acceptance": r.acceptance_rate,
        "step": r.step_size,
        "bias": std_errors(r.flat(), p.posterior_std),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32, help="VI batch size")
    ap.add_argument("--vi-iterations", type=int, default=600)
    ap.add_argument("--vi-every", type=int, default=10)
    ap.add_argument("--chains", type=int, default=32)
    ap.add_argument("--burn-in", type=int, default=200)
    ap.add_argument("--mcmc-steps", type=int, default=6000)
    ap.add_argument("--mcmc-every", type=int, default=10)
    ap.add_argument("--eval-samples", type=int, default=4000)
    args = ap.parse_args()
    torch.set_num_threads(1)

    p = linear_gaussian_problem(n=32, singular_values=(0.1, 8.0), seed=0)
    results = {
        "VI (HINT)": run_vi(p, args),
        "MALA": run_mcmc(p, MALA(p.likelihood(), p.prior, step_size=1e-2), args, 1.0),
        "SGLD (4/8 shots)": run_mcmc(
            p, SGLD(p.likelihood(shot_batch=4, seed=0), p.prior, step_size=3e-3), args, 0.5
        ),
    }

    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, 1 thread"
    )
    print(
        f"problem: n=32, 32 data, posterior std {float(p.posterior_std.min()):.2f}…"
        f"{float(p.posterior_std.max()):.2f}; VI batch {args.batch}, MCMC {args.chains} chains, "
        f"burn-in {args.burn_in}\n"
    )
    print("std error (mean |std−σ|/σ over coordinates) vs likelihood-gradient evaluations")
    for name, r in results.items():
        pts = r["curve"]
        idx = sorted({0, len(pts) // 16, len(pts) // 8, len(pts) // 4, len(pts) // 2, len(pts) - 1})
        line = ", ".join(f"{pts[i][0]:.0f}: {pts[i][1]:.3f}" for i in idx)
        print(f"  {name:17s} {line}")
    print()
    base = results["MALA"]
    hdr = (
        "| method | grads to ≤10% std err (mean / max over coords) | vs MALA (mean) | "
        "final err mean / max | grads per 1000 indep. samples | time per 1000 indep. "
        f"samples | at {GRAD_SECONDS} s/grad |"
    )
    print(hdr)
    print("|" + "---|" * 7)
    b10 = first_below(base["curve"], 1)
    for name, r in results.items():
        n10, m10 = first_below(r["curve"], 1), first_below(r["curve"], 2)
        ratio = f"{n10 / b10:.2f}×" if n10 and b10 else "–"
        final = r["curve"][-1]
        proj = r["evals_1000"] * GRAD_SECONDS + r["time_1000"]
        reach = " / ".join(f"{v:.0f}" if v is not None else "not reached" for v in (n10, m10))
        print(
            f"| {name} | {reach} | {ratio} | {final[1]:.3f} / {final[2]:.3f} | "
            f"{r['evals_1000']:.0f} | {r['time_1000']:.3f} s | {proj:.1f} s |"
        )
    print()
    for name in ("MALA", "SGLD (4/8 shots)"):
        r = results[name]
        acc = f", acceptance {r['acceptance']:.2f}" if r["acceptance"] is not None else ""
        print(
            f"{name}: step {r['step']:.3g}{acc}, τ(slowest coordinate) = {r['tau']:.1f} "
            f"draws; std error of all kept draws mean {r['bias'][0]:.3f} / max "
            f"{r['bias'][1]:.3f}"
        )
    print(
        f"VI training wall time {results['VI (HINT)']['train_s']:.1f} s "
        f"({args.vi_iterations} iterations, evaluation sampling excluded)"
    )


if __name__ == "__main__":
    main()
