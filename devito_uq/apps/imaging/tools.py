"""``devito-uq summarize`` and ``devito-uq info``: the two commands that solve nothing."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from devito_uq.apps.imaging.config import InfoConfig, InvertConfig, SummarizeConfig
from devito_uq.apps.imaging.noise import MIN_WINDOW_SAMPLES, pre_arrival_sigma, ricker_onset
from devito_uq.apps.imaging.outputs import write_outputs
from devito_uq.apps.imaging.posterior import load_posterior
from devito_uq.apps.scenarios import water_mask
from devito_uq.errors import DevitoUQError, InvalidArgumentError
from devito_uq.io import format_segy_info, read_shots, segy_info
from devito_uq.io._atomic import atomic_path
from devito_uq.io._files import check_input_file, read_input_json

__all__ = ["noise_estimate", "run_summarize", "run_info"]


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
    bounds, fixed_water = _run_settings(path.parent / "summary.json")
    water = torch.from_numpy(water_mask(post.m0.double().rsqrt().numpy())) if fixed_water else None
    summary = write_outputs(
        os.fspath(out),
        post,
        config.n_samples,
        config.seed,
        figures,
        velocity_bounds=bounds,
        water=water,
    )
    summary["posterior"] = str(path)
    with atomic_path(os.path.join(out, "summary_samples.json")) as tmp, open(tmp, "w") as fh:
        json.dump(summary, fh, indent=2)
    return summary


def _run_settings(path: Path) -> tuple[tuple[float, float], bool]:
    """``((vmin, vmax), fixed_water)`` of the run whose ``summary.json`` is ``path`` (else
    the defaults)."""
    try:
        run = read_input_json(path, "summary.json", InvalidArgumentError)["config"]
        return (float(run["vmin"]), float(run["vmax"])), bool(run.get("fixed_water", False))
    except (InvalidArgumentError, KeyError, TypeError, ValueError):
        return (InvertConfig.vmin, InvertConfig.vmax), InvertConfig.fixed_water


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
    estimate = noise_estimate(config, info["shots"], info["samples_per_trace"])
    info["noise_sigma_estimate"] = estimate
    if "sigma" in estimate:
        print(
            f"  noise sigma {estimate['sigma']:.4g} ({estimate['samples']} samples before "
            f"onset + offset/vmax, vmax={config.vmax:g} km/s, f0={config.f0:g} Hz, "
            f"{len(estimate['shots'])} shots; invert: sigma = 'auto')"
        )
    else:
        print(f"  noise sigma not estimated: {estimate['reason']}")
    return info


def noise_estimate(config: InfoConfig, nshots: int, ns: int, most: int = 8) -> dict[str, Any]:
    """``sigma = "auto"``'s estimate from up to ``most`` shots spread over the file.

    Parameters
    ----------
    config : InfoConfig
        The file, its header fields, ``f0`` (the wavelet's onset) and ``vmax``.
    nshots, ns : int
        The shots in the file and its samples per trace.
    most : int
        Shots read (evenly spread).

    Returns
    -------
    dict
        :func:`~devito_uq.apps.imaging.noise.pre_arrival_sigma`'s result and the ``shots``
        read, or ``reason`` (why there is none: too few samples, or a file the estimate
        cannot read).
    """
    shots = sorted({int(k) for k in np.linspace(0, nshots - 1, min(most, nshots))})
    try:
        with warnings.catch_warnings():  # the header summary above already warned
            warnings.simplefilter("ignore")
            # The geometry and samples only: the wavelet's onset is the Ricker's of f0.
            survey, data = read_shots(
                config.segy, wavelet=np.zeros(ns), shots=shots, **config.shot_headers()
            )
    except DevitoUQError as exc:
        return {"reason": " ".join(str(exc).split()), "shots": shots}
    onset = ricker_onset(config.f0)
    est = {**pre_arrival_sigma(survey, data, config.vmax, onset_ms=onset), "shots": shots}
    if est["samples"] < MIN_WINDOW_SAMPLES:
        reason = f"{est['samples']} samples before the first arrivals, fewer than "
        return {"reason": reason + f"{MIN_WINDOW_SAMPLES}", "shots": shots}
    return est
