"""``devito-uq summarize`` and ``devito-uq info``: the two commands that solve nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from devito_uq.apps.imaging.config import InfoConfig, SummarizeConfig
from devito_uq.apps.imaging.outputs import write_outputs
from devito_uq.apps.imaging.posterior import load_posterior
from devito_uq.errors import InvalidArgumentError
from devito_uq.io import format_segy_info, segy_info
from devito_uq.io._atomic import atomic_path
from devito_uq.io._files import check_input_file

__all__ = ["run_summarize", "run_info"]


def run_summarize(
    config: SummarizeConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
) -> dict[str, Any]:
    """``devito-uq summarize``: redraw a saved posterior, no PDE solve.

    Draws ``n_samples`` from ``out/posterior.pt`` (or the given file) and rewrites the
    images, figures and a ``summary_samples.json``.

    Parameters
    ----------
    config : SummarizeConfig
        ``posterior`` (relative to ``out``), ``n_samples``, ``seed``.
    out : str or os.PathLike
        The output folder.
    resume, progress : bool
        Accepted for the CLI's uniform signature.
    figures : bool
        Write the PNG figures.

    Returns
    -------
    dict
        The summary of :func:`~devito_uq.apps.imaging.outputs.write_outputs` and the
        ``posterior`` path.

    Raises
    ------
    InvalidArgumentError
        A missing posterior file.
    CheckpointError
        A file that is not an imaging posterior.
    """
    config.validate()
    path = Path(config.posterior).expanduser()
    path = path if path.is_absolute() else Path(out) / path
    check_input_file(path, "posterior", InvalidArgumentError)
    post = load_posterior(path)
    os.makedirs(out, exist_ok=True)
    summary = write_outputs(os.fspath(out), post, config.n_samples, config.seed, figures)
    summary["posterior"] = str(path)
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
    """``devito-uq info``: print what the SEG-Y file holds.

    Parameters
    ----------
    config : InfoConfig
        ``segy`` (the file), ``convention`` (``"auto"``: the preset that fits), ``datum``
        and ``line_tolerance``.
    out : str or os.PathLike
        Unused (the command writes nothing).
    resume, progress, figures : bool
        Accepted for the CLI's uniform signature.

    Returns
    -------
    dict
        Shots, traces, axes and header conventions (:func:`devito_uq.io.segy_info`).
    """
    config.validate()
    info = segy_info(config.segy, **config.shot_headers())
    print(format_segy_info(info))
    return info
