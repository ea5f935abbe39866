"""Amortized 2D imaging posterior against per-survey VI on the held-out Marmousi window
(issue 24, item 4), the Gaussian-residual design beside the former one, side by side.

In one process, on one training set (``examples/amortize_marmousi.toml``: 41 × 21 at 30 m,
8 shots, Born data at 20 dB, 10,000 + 1,000 crop pairs; the normal operator ``JᵀMJ``
assembled once and shared), two amortized posteriors are trained and studied by
``devito-uq amortize all``:

* ``former``: ``residual = false`` — the flow models ``δm/prior_std`` given the summary of
  the damped least-squares image (the design of the README before issue 24);
* ``residual``: ``residual = true`` (the default) — the flow models the residual around
  the survey's exact Gaussian-prior posterior, whitened by its covariance, both computed
  from the survey's own ``JᵀMJ`` and σ.

Each study compares, on the held-out window, the amortized posterior (uncorrected and
after the 200-iteration latent correction) with the per-survey VI (``devito-uq invert``)
and the exact Gaussian-prior posterior (the closed form per-survey VI converges to) — on
the survey of ``devito-uq simulate`` and on ``heldout_draws`` noise draws of it — on the
shifted surveys (half the shots, half of each shot's traces dead, twice the noise)
and over 200 truths of the training prior. Targets (issue 24): image relative L2 ≤ 1.2×
the per-survey VI's, std correlation with the exact posterior ≥ 0.9, 90 % band 85–95 %
after correction.

Writes ``benchmarks/results/bench_amortized_2d.md`` and keeps both runs' outputs under
``--out`` (``former/``, ``residual/``: ``summary.json``, figures).

Usage: ``python benchmarks/bench_amortized_2d.py [--out outputs/bench_amortized_2d]
[--iterations N]`` (≈ 20 min on the 2-core VM).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import torch  # noqa: E402

from devito_uq.apps.amortize.config import AmortizeConfig  # noqa: E402
from devito_uq.apps.amortize.run import run_all  # noqa: E402
from devito_uq.cli import load_config_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SURVEYS = ("heldout", "half_shots", "dead_traces", "double_noise")
ROWS = ("amortized", "corrected", "amortized_adapted", "corrected_adapted")


def _config(args, residual: bool, dataset: str) -> AmortizeConfig:
    keys = load_config_file(str(ROOT / "examples" / "amortize_marmousi.toml"), AmortizeConfig)
    config = AmortizeConfig(**keys)
    changes = {"residual": residual, "dataset": dataset}
    if args.iterations:
        changes["iterations"] = args.iterations
    return dataclasses.replace(config, **changes)


def _row(name: str, e: dict, vi_l2: float | None) -> str:
    ratio = "" if vi_l2 is None else f" ({e['image_relative_l2'] / vi_l2:.2f}×)"
    return (
        f"| {name} | {e['image_relative_l2']:.3f}{ratio} | {e['image_ssim']:.3f} | "
        f"{100 * e['truth_inside_90pct_band']:.1f} % "
        f"({100 * e['truth_inside_90pct_band_below_water']:.1f} %) | "
        f"{e.get('std_correlation_with_exact_gaussian', float('nan')):.3f} | "
        f"{e['mean_std']:.4f} |"
    )


def _table(label: str, summary: dict) -> list[str]:
    surveys = summary["surveys"]
    lines = [f"### {label}", ""]
    for survey in SURVEYS:
        if survey not in surveys:
            continue
        e = surveys[survey]
        vi_l2 = e["vi"]["image_relative_l2"] if "vi" in e else None
        own = e.get("own_normal_operator", {})
        head = f"**{survey}**" + (
            f" (own JᵀMJ: {own['pde_solves']:,} solves, {own['seconds']:.0f} s)"
            if own.get("pde_solves")
            else ""
        )
        lines += [
            head,
            "",
            "| posterior | image rel. L2 (× VI) | SSIM | truth in 90 % band (below the "
            "water) | std corr. "
            "with exact | mean std |",
            "|---|---|---|---|---|---|",
        ]
        for row in ("exact_gaussian", "vi", *ROWS, "amortized_training_geometry"):
            if row in e:
                lines.append(_row(row, e[row], vi_l2))
        lines.append("")
    draws = summary.get("heldout_draws")
    if draws:
        lines += [
            f"**heldout, {draws['draws']} noise draws** (mean ± standard error over draws)",
            "",
            "| posterior | image rel. L2 | truth in 90 % band | below the water | std corr. with "
            "exact |",
            "|---|---|---|---|---|",
        ]
        for row, d in draws.items():
            if row == "draws":
                continue
            pct = {k: 100.0 if "band" in k else 1.0 for k in d}  # bands in percent
            cells = [
                f"{pct[k] * d[k]['mean']:.3g} ± {pct[k] * d[k]['se']:.2g}"
                for k in (
                    "image_relative_l2",
                    "truth_inside_90pct_band",
                    "truth_inside_90pct_band_below_water",
                    "std_correlation_with_exact_gaussian",
                )
            ]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    cal = summary.get("calibration")
    if cal:
        cov = cal["coverage_central"]
        at = cal["coverage_curve"]["coverage"][9]
        lines += [
            f"Calibration on {cal['n_truths']} training-prior truths: central coverage area "
            f"{cov['text']}; 90 % intervals hold {100 * at:.1f} %; TARP {cal['tarp']['text']}; "
            f"rms std / rmse {cal['metrics']['rms_std'] / cal['metrics']['rmse']:.2f}.",
            "",
        ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench_amortized_2d")
    parser.add_argument("--iterations", type=int, default=0, help="training iterations")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = os.path.join(os.path.abspath(args.out), "dataset")
    results, seconds = {}, {}
    for label, residual in (("former", False), ("residual", True)):
        t0 = time.perf_counter()
        out = os.path.join(args.out, label)
        results[label] = run_all(_config(args, residual, dataset), out, resume=True)
        seconds[label] = time.perf_counter() - t0
    lines = [
        "# bench_amortized_2d — amortized 2D imaging vs per-survey VI, held-out Marmousi window",
        "",
        f"`python benchmarks/bench_amortized_2d.py` ({time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} cores, one torch thread): both designs "
        "trained on one training set in one process (`examples/amortize_marmousi.toml`; "
        f"{results['residual']['config']['iterations']} iterations); wall time "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())
        + " (the first includes the training set and the JᵀMJ assembly).",
        "",
    ]
    for label, summary in results.items():
        lines += _table(label, summary)
    path = ROOT / "benchmarks" / "results" / "bench_amortized_2d.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines))
    print(json.dumps(seconds))


if __name__ == "__main__":
    main()
