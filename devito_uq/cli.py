"""The ``devito-uq`` command.

``devito-uq demo --out outputs/demo`` runs the Sleipner AVP uncertainty experiment
with the short schedule (``make demo``, a few minutes on 2 cores);
``devito-uq avp --full`` runs the original 32,768-iteration schedule.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def _add_avp_options(sub: argparse.ArgumentParser, default_out: str) -> None:
    sub.add_argument("--out", default=default_out, help="output folder (default: %(default)s)")
    sub.add_argument("--seed", type=int, default=None, help="noise, flow and chain seed (1)")
    sub.add_argument("--iterations", type=int, default=None, help="VI iterations")
    sub.add_argument("--batch-size", type=int, default=None, help="flow samples per VI step")
    sub.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    sub.add_argument("--mala-steps", type=int, default=None, help="MALA steps kept per chain")
    sub.add_argument("--mala-burn-in", type=int, default=None, help="MALA burn-in steps")
    sub.add_argument("--mala-chains", type=int, default=None, help="parallel MALA chains")
    sub.add_argument("--mala-thin", type=int, default=None, help="keep every n-th MALA draw")
    sub.add_argument("--snr-db", type=float, default=None, help="data SNR in dB (0)")
    sub.add_argument(
        "--prior-strength",
        type=float,
        default=None,
        help="σ_p² / ‖D m_true‖² of the smoothness prior (1e-2; the original used 1e-3)",
    )
    sub.add_argument(
        "--resume",
        action="store_true",
        help="continue VI from OUT/vi_checkpoint.pt and reuse the stored MAP/MALA",
    )
    sub.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    sub.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``devito-uq`` (sub-commands ``demo`` and ``avp``)."""
    parser = argparse.ArgumentParser(
        prog="devito-uq",
        description="Uncertainty quantification with Devito operators and normalizing flows.",
    )
    subs = parser.add_subparsers(dest="command", required=True)
    demo = subs.add_parser(
        "demo", help="Sleipner AVP experiment, short schedule (make demo, < 5 min on 2 cores)"
    )
    _add_avp_options(demo, "outputs/demo")
    avp = subs.add_parser("avp", help="Sleipner AVP experiment (short schedule unless --full)")
    _add_avp_options(avp, "outputs/avp")
    avp.add_argument(
        "--full",
        action="store_true",
        help="original schedule: 32,768 VI iterations, 20,000-step MALA reference",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # One OpenMP thread was fastest for these small kernels (../shared/MEASURED.md);
    # set before Devito is imported, users may override.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("DEVITO_LOGGING", "ERROR")
    from devito_uq.avp import AVPConfig, run_avp
    from devito_uq.errors import DevitoUQError

    overrides = {
        k: v
        for k, v in {
            "seed": args.seed,
            "iterations": args.iterations,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "mala_steps": args.mala_steps,
            "mala_burn_in": args.mala_burn_in,
            "mala_chains": args.mala_chains,
            "mala_thin": args.mala_thin,
            "snr_db": args.snr_db,
            "prior_strength": args.prior_strength,
        }.items()
        if v is not None
    }
    full = args.command == "avp" and args.full
    config = AVPConfig.full(**overrides) if full else AVPConfig.short(**overrides)
    try:
        summary = run_avp(
            config,
            args.out,
            resume=args.resume,
            progress=not args.quiet,
            figures=not args.no_figures,
        )
    except DevitoUQError as exc:
        print(f"devito-uq: error: {exc}", file=sys.stderr)
        return 2
    keys = (
        "relative_error",
        "truth_inside_90pct_interval",
        "vi_std_vs_mala_std_mean_relative_difference",
        "wall_time_s",
        "targets",
    )
    print(json.dumps({k: summary[k] for k in keys}, indent=2))
    print(f"figures and summary.json written to {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
