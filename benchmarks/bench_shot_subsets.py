"""Benchmark of random shot subsets in the imaging app's VI (issue 21, item 2).

On the imaging default case (``devito-uq imaging``: 41 × 21 Marmousi at 30 m, 8 shots,
Born data, full-rank Laplace start, 200 VI iterations of batch 2), VI is run with
``vi_shots`` = 8 (all), 4 and 2 at the same number of iterations and at an equal PDE-solve
budget (4 shots × 400 and 2 shots × 800 iterations), all from one shared MAP/Laplace
start (``map.pt``; ``vi_shots`` and ``iterations`` do not enter it), in alternating order
in one process. A second all-shot run with another seed (its ``map.pt`` identity
re-labelled: the Laplace start is the same) gives the run-to-run noise of every metric.

Per run: VI wall time and PDE solves, the truth inside the 90 % band, the std ratio
(mean over pixels of std / std of the all-shot run, and the spread of that ratio), the
posterior mean's distance to the all-shot run's mean in units of its std, the image
relative L2 error against the truth.

Usage: ``python benchmarks/bench_shot_subsets.py [--quick] [--keep DIR]``; writes
``benchmarks/results/bench_shot_subsets.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from devito_uq.apps.imaging import ImagingConfig, InvertConfig  # noqa: E402
from devito_uq.apps.imaging.run import run_imaging, run_invert  # noqa: E402
from devito_uq.io import load_checkpoint, read_image, save_checkpoint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "bench_shot_subsets.md"
FILES = ("shots.sgy", "acquisition.json", "background.sgy", "true_model.sgy")


def variant_folder(base: Path, out: Path, seed: int) -> Path:
    """``out`` with links to the survey of ``base`` and its ``map.pt`` (for ``seed``)."""
    out.mkdir(parents=True)
    for name in FILES:
        os.symlink(base / name, out / name)
    cache = load_checkpoint(base / "map.pt")
    cache["identity"]["seed"] = seed  # the same Laplace start, re-labelled
    save_checkpoint(out / "map.pt", cache)
    return out


def images(out: Path) -> dict[str, np.ndarray]:
    return {k: read_image(out / f"posterior_{k}.sgy")[0] for k in ("mean", "std")}


def measure(root: Path, quick: bool, rank: int) -> dict:
    small = dict(width=600.0, depth=300.0, nreceivers=21, iterations=8, rank=40, n_samples=64)
    base_cfg = ImagingConfig.short(**(dict(small, map_iterations=5) if quick else {}))
    if rank:
        base_cfg.rank = rank
    base = root / "base"
    t0 = time.perf_counter()
    run_imaging(base_cfg, base, progress=False, figures=False)
    setup_s = time.perf_counter() - t0
    inv = base_cfg.invert_config().to_dict()
    its = inv["iterations"]
    nshots = base_cfg.nshots
    # (label, vi_shots, iterations, seed), in alternating order.
    runs = [
        ("all", 0, its, inv["seed"]),
        ("4 same its", 4, its, inv["seed"]),
        ("2 same its", 2, its, inv["seed"]),
        ("all, seed+1", 0, its, inv["seed"] + 1),
        ("4 same solves", 4, its * nshots // 4, inv["seed"]),
        ("2 same solves", 2, its * nshots // 2, inv["seed"]),
    ]
    results = {"setup_s": setup_s, "iterations": its, "nshots": nshots, "rank": inv["rank"]}
    results["unknowns"] = int(np.prod(read_image(base / "background.sgy")[0].shape))
    results["runs"] = {}
    for i, (label, k, n_it, seed) in enumerate(runs):
        out = variant_folder(base, root / f"run{i}", seed)
        cfg = InvertConfig(**dict(inv, vi_shots=k, iterations=n_it, seed=seed))
        summary = run_invert(cfg, out, resume=True, progress=False, figures=False)
        results["runs"][label] = {
            "vi_shots": k or nshots,
            "iterations": n_it,
            "seed": seed,
            "vi_s": summary["time_s"]["vi"],
            "vi_solves": summary["pde_solves"]["by_phase"]["vi"],
            "metrics": summary["metrics"],
            "final_loss": summary["vi"]["final_loss"],
            "images": images(out),
        }
        print(f"{label}: {summary['time_s']['vi']:.0f} s", file=sys.stderr)
    ref = results["runs"]["all"]["images"]
    for r in results["runs"].values():
        ratio = r["images"]["std"] / ref["std"]
        r["std_ratio_mean"] = float(ratio.mean())
        r["std_ratio_p10_p90"] = [float(q) for q in np.percentile(ratio, [10, 90])]
        r["mean_shift_in_std"] = float(
            np.sqrt((((r["images"]["mean"] - ref["mean"]) / ref["std"]) ** 2).mean())
        )
    return results


def report(results: dict, loads: list[float], wall: float, args) -> str:
    lines: list[str] = []
    p = lines.append
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    flags = (" --quick" if args.quick else "") + (f" --rank {args.rank}" if args.rank else "")
    p(
        f"## Laplace rank {results['rank']} of {results['unknowns']} unknowns — {machine}, "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}\n"
    )
    p(
        f"`python benchmarks/bench_shot_subsets.py{flags}`; wall "
        f"{wall / 60:.1f} min (simulation + MAP/Laplace {results['setup_s'] / 60:.1f} min); "
        f"load average (1 min) {loads[0]:.2f} at start, {loads[-1]:.2f} at end (the machine "
        "was shared with other jobs: times are indicative, ratios were taken in one process "
        "with the runs alternating).\n"
    )
    p(
        f"Imaging default case, {results['nshots']} shots, one shared Laplace start; the "
        "baseline is the all-shot run (`vi_shots = 0`). std ratio: std / baseline std per "
        "pixel (mean, and 10–90 % percentiles); mean shift: RMS over pixels of "
        "(mean − baseline mean) / baseline std. `all, seed+1` is the run-to-run noise.\n"
    )
    p(
        "| run | shots/it | its | VI s | VI time ratio | PDE solves | 90 % band | std ratio "
        "(p10–p90) | mean shift (std) | image rel. L2 | final loss |"
    )
    p("|---|---|---|---|---|---|---|---|---|---|---|")
    base_s = results["runs"]["all"]["vi_s"]
    for label, r in results["runs"].items():
        m = r["metrics"]
        lo, hi = r["std_ratio_p10_p90"]
        p(
            f"| {label} | {r['vi_shots']} | {r['iterations']} | {r['vi_s']:.0f} | "
            f"{r['vi_s'] / base_s:.2f} | {r['vi_solves']} | "
            f"{m['truth_inside_90pct_band']:.3f} | {r['std_ratio_mean']:.3f} "
            f"({lo:.2f}–{hi:.2f}) | {r['mean_shift_in_std']:.3f} | "
            f"{m['image_relative_l2']:.4f} | {r['final_loss']:.4g} |"
        )
    p("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run on a 21 × 11 window")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it")
    parser.add_argument("--rank", type=int, default=0, help="Laplace rank (0: the default's)")
    parser.add_argument("--no-write", action="store_true", help="do not write the md file")
    parser.add_argument("--append", action="store_true", help="append to the md file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    loads = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_shots_") as tmp:
        root = Path(args.keep or tmp)
        if args.keep and root.exists():
            shutil.rmtree(root)
        results = measure(root, args.quick, args.rank)
        loads.append(os.getloadavg()[0])
        plain = {k: v for k, v in results.items() if k != "runs"}
        plain["runs"] = {
            k: {kk: vv for kk, vv in v.items() if kk != "images"}
            for k, v in results["runs"].items()
        }
        (root / "results.json").write_text(json.dumps(plain, indent=1))
    text = report(results, loads, time.perf_counter() - t0, args)
    print(text)
    if not args.no_write:
        earlier = (
            RESULTS.read_text() if args.append and RESULTS.exists() else "# bench_shot_subsets\n\n"
        )
        RESULTS.write_text(earlier + text)


if __name__ == "__main__":
    main()
