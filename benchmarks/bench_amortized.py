"""Amortized posterior vs per-survey VI on the Sleipner AVP survey (issue 13), side by side.

Needs a trained posterior: ``make amortize`` (or ``devito-uq amortize train``) writes
``outputs/amortize/amortized.pt``; pass another with ``--checkpoint``. In one process,
interleaved ``--repeats`` times, on the Sleipner survey of that configuration:

* amortized: 1,000 posterior samples (one pass of the flow, no PDE solve);
* correction: ``--iterations`` latent-correction iterations (batch 8) with the physics;
* per-survey VI: the same number of iterations of a fresh HINT flow (batch 8), the
  per-iteration cost that the full VI pays 2,000 (demo) to 32,768 (seed) times.

Prints the medians, the ratios, and what a full per-survey VI would cost at the measured
rate (2,000 and 32,768 iterations) against the amortized sample and the 200-iteration
correction. Writes ``benchmarks/results/bench_amortized.md``.

Usage: ``python benchmarks/bench_amortized.py [--checkpoint PATH] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import torch  # noqa: E402

from devito_uq.apps.amortize.run import load_amortized  # noqa: E402
from devito_uq.apps.avp.problem import make_flow  # noqa: E402
from devito_uq.inference import VariationalPosterior  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="outputs/amortize/amortized.pt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not os.path.exists(args.checkpoint):
        raise SystemExit(f"{args.checkpoint} not found: run `make amortize` first")
    posterior, config, setting = load_amortized(args.checkpoint)
    if config.problem != "avp":
        raise SystemExit(f"{args.checkpoint} is a {config.problem!r} posterior; this is AVP")
    survey = setting.sleipner()
    its = args.iterations
    times: dict[str, list[float]] = {"sample_1000": [], "correction": [], "vi": []}
    for r in range(args.repeats):
        t0 = time.perf_counter()
        posterior.sample(1000, survey.condition)
        times["sample_1000"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        posterior.correct(
            survey.target, survey.condition, its, batch_size=8, seed=r, progress=False
        )
        times["correction"].append(time.perf_counter() - t0)
        torch.manual_seed(r)
        flow = make_flow(setting.calibration.config.avp_config(), survey.truth.numel())
        vi = VariationalPosterior(flow, survey.target)
        t0 = time.perf_counter()
        vi.fit(its, batch_size=8, seed=r, progress=False)
        times["vi"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_it = {k: med[k] / its for k in ("correction", "vi")}
    rows = [
        ("1,000 amortized samples", med["sample_1000"], "one pass of the flow, 0 PDE solves"),
        ("correction, per iteration", per_it["correction"], "batch 8: 8 forward + adjoint"),
        ("per-survey VI, per iteration", per_it["vi"], "batch 8: 8 forward + adjoint"),
        ("correction, 200 iterations", 200 * per_it["correction"], "the study's default"),
        ("per-survey VI, 2,000 iterations", 2000 * per_it["vi"], "the demo's schedule"),
        ("per-survey VI, 32,768 iterations", 32768 * per_it["vi"], "the seed's schedule"),
    ]
    lines = [
        "# bench_amortized — Sleipner AVP survey, amortized vs per-survey VI",
        "",
        f"checkpoint `{args.checkpoint}`; {args.repeats} interleaved repeats of {its} "
        "iterations, medians; 1 torch thread, OMP_NUM_THREADS=1.",
        "",
        "| what | seconds | note |",
        "|---|---|---|",
        *[f"| {name} | {sec:.4g} | {note} |" for name, sec, note in rows],
        "",
        f"- per-survey VI (2,000 its) / 1,000 amortized samples: "
        f"{2000 * per_it['vi'] / med['sample_1000']:.0f}×",
        f"- per-survey VI (2,000 its) / correction (200 its): "
        f"{2000 * per_it['vi'] / (200 * per_it['correction']):.1f}×",
        f"- correction iteration / VI iteration: {per_it['correction'] / per_it['vi']:.2f}× "
        "(both dominated by the same batch of 8 plane-wave solves)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(__file__).parent / "results" / "bench_amortized.md"
    out.write_text(text)


if __name__ == "__main__":
    main()
