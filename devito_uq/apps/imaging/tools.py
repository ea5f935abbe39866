"""``devito-uq summarize`` and ``devito-uq info``: the two commands that solve nothing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from devito_uq.apps.imaging.config import InfoConfig, SummarizeConfig

__all__ = ["run_summarize", "run_info"]


def run_summarize(
    config: SummarizeConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
) -> dict[str, Any]:
    """Draw ``n_samples`` from ``out/posterior.pt`` (or the given file) and rewrite the
    images, figures and a ``summary_samples.json``; no PDE solve."""
    from devito_uq.apps.imaging.outputs import load_posterior, write_outputs
    from devito_uq.errors import InvalidArgumentError
    from devito_uq.io._atomic import atomic_path
    from devito_uq.io._files import check_input_file

    config.validate()
    path = Path(config.posterior).expanduser()
    path = path if path.is_absolute() else Path(out) / path
    check_input_file(path, "posterior", InvalidArgumentError)
    post = load_posterior(path)
    os.makedirs(out, exist_ok=True)
    summary = write_outputs(os.fspath(out), post, config.n_samples, config.seed, figures)
    summary["posterior"] = str(path)
    import json

    with atomic_path(os.path.join(out, "summary_samples.json")) as tmp, open(tmp, "w") as fh:
        json.dump(summary, fh, indent=2)
    return summary


def run_info(
    config: InfoConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
) -> dict[str, Any]:
    """Print what the SEG-Y file holds (shots, traces, axes, header conventions)."""
    from devito_uq.io import format_segy_info, segy_info

    config.validate()
    info = segy_info(config.segy, convention=config.convention or None)
    print(format_segy_info(info))
    return info
