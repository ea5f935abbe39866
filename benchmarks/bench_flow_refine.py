"""Benchmark: refining a trained AVP flow by MCMC in its latent — MALA against pCN.

One Sleipner-like AVP posterior (a truth drawn from the calibration's prior, seed
``--truth-seed``; the calibration setting of ``devito-uq calibrate``), VI at
``make demo``'s schedule (2,000 steps of batch 8, the target tempered over the first
1,500), then, side by side in this one run and from the same trained flow:

* **MALA** in the flow's latent (``refine_with_mcmc``'s default, the demo's 8 chains ×
  3,000 steps after 200), one misfit + gradient per chain and step;
* **pCN** in the same latent (forward solves only), the same chains and the same number
  of misfit evaluations — the baseline a gradient-free user would reach for;
* a **long MALA reference in the prior's latent** (the app's own MALA: 8 chains ×
  ``--reference-steps`` steps from the background), against which each posterior's
  std is compared.

Printed and written to ``benchmarks/results/bench_flow_refine.md``: seconds, acceptance,
step, split-R̂ and ESS (max/min over the 128 depths, and medians), the std ratio to the
reference (median and 10–90 %), and the 90 % band's share of depths holding the truth.

Usage: ``python benchmarks/bench_flow_refine.py [--truth-seed 123] [--reference-steps 20000]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from devito_uq.apps.avp.calibration import build_setting  # noqa: E402
from devito_uq.apps.avp.calibration_config import AVPCalibrationConfig  # noqa: E402
from devito_uq.inference import MALA, refine_with_mcmc, split_rhat  # noqa: E402
from devito_uq.inference import effective_sample_size as ess  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_flow_refine.md"


def band90(draws: torch.Tensor, truth: torch.Tensor) -> float:
    lo, hi = torch.quantile(draws, torch.tensor([0.05, 0.95], dtype=draws.dtype), 0)
    return float(((truth >= lo) & (truth <= hi)).double().mean())


def row(name: str, chains: torch.Tensor | None, flat: torch.Tensor, ref_std, truth, extra):
    """One table row: diagnostics of ``chains`` ``[draws, chains, 128]`` (None: i.i.d.)."""
    ratio = flat.std(0) / ref_std
    q = torch.quantile(ratio, torch.tensor([0.1, 0.5, 0.9], dtype=ratio.dtype)).tolist()
    if chains is None:
        diag = "— | — | — | —"
    else:
        r, e = split_rhat(chains), ess(chains)
        diag = f"{float(r.max()):.3f} | {float(r.median()):.3f} | {float(e.min()):.0f} | "
        diag += f"{float(e.median()):.0f}"
    return (
        f"| {name} | {extra} | {diag} | {q[1]:.3f} ({q[0]:.3f}–{q[2]:.3f}) | "
        f"{band90(flat, truth):.1%} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truth-seed", type=int, default=123)
    ap.add_argument("--chains", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--burn-in", type=int, default=200)
    ap.add_argument("--reference-steps", type=int, default=20000)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    cfg = AVPCalibrationConfig(
        vi_iterations=2000, vi_temper_iterations=1500, lr_final=0.25, methods="refined"
    )
    setting = build_setting(cfg)
    torch.manual_seed(args.truth_seed)
    truth = setting.truth_prior.sample(1)[0]
    data = setting.simulate(truth)
    t0 = time.perf_counter()
    vi = setting.vi(data).vi
    t_vi = time.perf_counter() - t0
    truth = truth.double()

    runs = {}
    for sampler in ("mala", "pcn"):
        res = refine_with_mcmc(
            vi, args.steps, n_chains=args.chains, burn_in=args.burn_in, sampler=sampler, seed=1
        )
        runs[sampler] = res
    t0 = time.perf_counter()
    ref = MALA(setting.target(data), step_size=cfg.mala_step_size).run(
        args.reference_steps,
        n_chains=8,
        burn_in=args.reference_steps // 5,
        thin=10,
        seed=2,
        progress=False,
    )
    t_ref = time.perf_counter() - t0
    ref_chains = ref.samples.double()
    ref_std = ref.flat().double().std(0)

    head = (
        "| posterior | seconds; acceptance; step | R̂ max | R̂ median | ESS min | ESS median "
        "| std / reference std, median (10–90 %) | truth in 90 % band |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    flow_draws = vi.sample(4000).double()
    lines.append(row("VI (flow alone)", None, flow_draws, ref_std, truth, f"{t_vi:.0f} s (VI)"))
    for sampler, label in (("mala", "MALA"), ("pcn", "pCN")):
        res = runs[sampler]
        c = res.chains
        extra = f"{res.seconds:.0f} s; {c.acceptance_rate:.2f}; {c.step_size:.3g}"
        lines.append(
            row(
                f"VI + {label} in the flow latent, {args.chains} × {args.steps} "
                f"({c.gradient_evaluations:.0f} misfits)",
                c.samples.double(),
                res.flat().double(),
                ref_std,
                truth,
                extra,
            )
        )
    lines.append(
        row(
            f"reference: MALA in the prior latent, 8 × {args.reference_steps} (thin 10)",
            ref_chains,
            ref.flat().double(),
            ref_std,
            truth,
            f"{t_ref:.0f} s; {ref.acceptance_rate:.2f}; {ref.step_size:.3g}",
        )
    )
    load = os.getloadavg()
    text = (
        "# Refining a trained AVP flow: MALA vs pCN in the flow's latent\n\n"
        f"`python benchmarks/bench_flow_refine.py --truth-seed {args.truth_seed} "
        f"--reference-steps {args.reference_steps}`; {platform.node()} "
        f"({os.cpu_count()} CPUs, one thread), load {load[0]:.1f} at the end, "
        f"{time.strftime('%Y-%m-%d')}. One prior truth of the AVP calibration setting, VI at "
        "`make demo`'s schedule; the two refinements start from the same flow and spend the "
        "same number of misfit evaluations (pCN's are forward solves only, MALA's forward + "
        "adjoint). Ratios are against the long MALA reference in the prior's latent.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
