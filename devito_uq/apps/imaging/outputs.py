"""What an imaging run leaves behind, and what ``devito-uq summarize`` rewrites.

:func:`write_outputs` draws ``n`` samples of an
:class:`~devito_uq.apps.imaging.posterior.ImagingPosterior` and writes, in the output folder:

* ``posterior_mean.sgy``, ``posterior_std.sgy``, ``posterior_q05/q50/q95.sgy`` — SEG-Y images
  (:func:`devito_uq.io.write_image`: x in ``CDP_X``, depth in the sample axis), in the
  unknown's unit: the image ``δm`` (s²/km²) for ``born``, the velocity (km/s) for ``fwi``;
  for ``born`` also ``velocity_mean.sgy`` = ``1/√(m0 + E δm)``; each file's text header
  states its quantity and unit (:data:`QUANTITIES`);
* PNG figures (:mod:`devito_uq.apps.imaging.figures`), ``posterior_samples.pt`` and the
  metrics of ``summary.json`` (with a truth: relative L2, SSIM, 90 % band coverage; always:
  the correlation of the std with the illumination ``diag(JᵀJ)/σ²``).
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from typing import Any

import numpy as np
import torch

from devito_uq.apps.imaging.posterior import ImagingPosterior
from devito_uq.errors import DevitoUQWarning, InvalidArgumentError
from devito_uq.inference import summarize
from devito_uq.inference.diagnostics import images as metrics
from devito_uq.io import write_image
from devito_uq.io._atomic import atomic_path
from devito_uq.io.checkpoint import save_checkpoint
from devito_uq.parallel import rank_and_size

__all__ = [
    "RUN_FILES",
    "QUANTITIES",
    "bounded_velocity",
    "check_run_kind",
    "UNKNOWNS",
    "summary_metrics",
    "write_history",
    "write_outputs",
    "write_summary",
]

#: The unknown of each problem, as the SEG-Y text headers state it (ASCII).
UNKNOWNS = {"born": "image dm (squared slowness), s2/km2", "fwi": "velocity, km/s"}
#: What each image file holds: ``name -> (statistic, ...)``, completed by the unknown.
QUANTITIES = {
    "posterior_mean": "posterior mean of",
    "posterior_std": "posterior std of",
    "posterior_q05": "posterior 5% quantile of",
    "posterior_q50": "posterior median of",
    "posterior_q95": "posterior 95% quantile of",
}
#: What an invert run writes into its folder (never its inputs: shots, models,
#: acquisition.json); ``run.json`` records the kind of run (born, fwi or amortized).
RUN_FILES = (
    "run.json",
    "summary.json",
    "summary_samples.json",
    "history.csv",
    "map.pt",
    "vi_checkpoint.pt",
    "correct_checkpoint.pt",
    "posterior.pt",
    "posterior_samples.pt",
    *(f"{name}.sgy" for name in (*QUANTITIES, "velocity_mean")),
    *(f"{name}.png" for name in ("posterior", "illumination", "truth")),
)


def _previous_kind(out: str) -> str | None:
    """The kind of run that wrote ``out``: ``run.json``, else ``summary.json``'s config."""
    for name in ("run.json", "summary.json"):
        try:
            with open(os.path.join(out, name)) as fh:
                data = json.load(fh)
            if name == "run.json":
                return str(data["kind"])
            return (
                "amortized" if data["config"].get("amortized") else str(data["config"]["problem"])
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return None


def check_run_kind(out: str, kind: str, overwrite: bool, writer: bool = True) -> None:
    """Refuse to mix two kinds of run in one folder, or clear the other one's files.

    Called before any solve. ``out`` holding :data:`RUN_FILES` of another kind (``born``,
    ``fwi``, ``amortized``; from ``run.json``, or ``summary.json`` of older runs) is refused
    naming the files, unless ``overwrite``: then they are removed (by the writer). Files
    whose kind neither says (e.g. a ``map.pt`` copied in to reuse) are kept. The writer
    then records ``kind`` in ``run.json``.

    Parameters
    ----------
    out : str
        The output folder.
    kind : str
        This run's kind.
    overwrite : bool
        Remove another kind's files instead of refusing.
    writer : bool
        Whether this process removes and writes (rank 0 under MPI).

    Raises
    ------
    InvalidArgumentError
        Another kind's files are in ``out`` and ``overwrite`` is false.
    """
    present = [n for n in RUN_FILES if os.path.lexists(os.path.join(out, n))]
    previous = _previous_kind(out) if present else None
    if previous is not None and previous != kind:
        if not overwrite:
            shown = ", ".join(present[:8]) + (", ..." if len(present) > 8 else "")
            raise InvalidArgumentError(
                f"out={out!r} holds the outputs of {'an' if previous[:1] in 'aeiou' else 'a'} "
                f"{previous} run ({shown}); this {kind} "
                "run would mix with them: give another --out, or "
                "--overwrite to remove those files first"
            )
        for name in present if writer else ():
            path = os.path.join(out, name)
            if os.path.islink(path) or not os.path.isdir(path):
                os.remove(path)
    if writer:
        os.makedirs(out, exist_ok=True)
        with atomic_path(os.path.join(out, "run.json")) as tmp, open(tmp, "w") as fh:
            json.dump({"kind": kind}, fh)


def write_history(out: str, history: dict[str, list[float]]) -> None:
    """Write ``history.csv``: one row per VI iteration (loss, its terms, learning rate).

    Parameters
    ----------
    out : str
        The output folder.
    history : dict of str to list of float
        Column name → one value per iteration (empty columns are left out).
    """
    keys = [k for k, v in history.items() if len(v)]
    with atomic_path(os.path.join(out, "history.csv")) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        w.writerows(zip(*(history[k] for k in keys)))


def write_summary(out: str, summary: dict[str, Any]) -> None:
    """Write ``summary.json`` (atomically).

    Parameters
    ----------
    out : str
        The output folder.
    summary : dict
        JSON-serializable.
    """
    with atomic_path(os.path.join(out, "summary.json")) as tmp, open(tmp, "w") as fh:
        json.dump(summary, fh, indent=2)


def _velocity(m: torch.Tensor) -> np.ndarray:
    return m.double().clamp_min(1e-6).rsqrt().numpy()


def bounded_velocity(
    m: torch.Tensor, bounds: tuple[float, float] | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The velocity of the squared slowness ``m``, clipped to ``bounds``, and what was clipped.

    A Born mean ``m0 + E δm`` may leave the physical range (``≤ 0`` where the image is
    stronger than the background): such pixels are never written as a velocity.

    Parameters
    ----------
    m : torch.Tensor
        ``[nx, nz]`` squared slowness, s²/km².
    bounds : tuple of float or None
        ``(vmin, vmax)``, km/s (``None``: ``(0.1, 100)``, beyond any rock).

    Returns
    -------
    v : numpy.ndarray
        ``[nx, nz]`` float64 velocity inside the bounds, km/s.
    report : dict
        ``pixels`` outside the bounds (clipped), their ``fraction``, ``non_positive`` (the
        pixels with ``m ≤ 0``) and ``bounds_km_s``.
    """
    vmin, vmax = bounds if bounds is not None else (0.1, 100.0)
    m = m.double()
    lo, hi = 1.0 / vmax**2, 1.0 / vmin**2
    outside = (m < lo) | (m > hi)
    report = {
        "pixels": int(outside.sum()),
        "fraction": float(outside.double().mean()),
        "non_positive": int((m <= 0).sum()),
        "bounds_km_s": [float(vmin), float(vmax)],
    }
    return m.clamp(lo, hi).rsqrt().numpy(), report


def summary_metrics(
    post: ImagingPosterior,
    mean: np.ndarray,
    std: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    velocity_bounds: tuple[float, float] | None = None,
    water: np.ndarray | None = None,
) -> dict[str, Any]:
    """The metrics of ``summary.json``, from the posterior's statistics.

    Always the mean std and the correlation of the std with the illumination; with a
    truth, also the 90 % band coverage, relative L2 and SSIM of the velocity (and of the
    image for born) against the truth, beside those of the start.

    Parameters
    ----------
    post : ImagingPosterior
        Its illumination, truth, background and kind.
    mean, std, lo, hi : numpy.ndarray
        ``[nx, nz]`` mean, std, 5 % and 95 % quantiles in the output unit
        (:meth:`ImagingPosterior.to_output_unit`).
    velocity_bounds : tuple of float or None
        ``(vmin, vmax)`` km/s: (born) the mean velocity is clipped to them
        (:func:`bounded_velocity`).
    water : numpy.ndarray or None
        ``[nx, nz]`` bool, the water held fixed: the coverage and relative L2 are then over
        the pixels below the water bottom (SSIM over the whole image, the water being equal
        in both), and ``truth_inside_90pct_band_per_depth`` lists the coverage of each depth
        row there (``None`` for a row of water only).

    Returns
    -------
    dict
    """
    illum = post.illumination.double().numpy()
    keep = np.ones(illum.shape, bool) if water is None else ~np.asarray(water, bool)
    res: dict[str, Any] = {
        "mean_std": float(std[keep].mean()),
        "std_vs_illumination_correlation": metrics.correlation(std[keep], illum[keep]),
        "log_std_vs_log_illumination_correlation": metrics.correlation(
            np.log(std[keep]), np.log(illum[keep])
        ),
    }
    if post.truth is None:
        return res
    truth = post.to_output_unit(post.truth).double().numpy()
    m0 = post.m0.double()
    v_true = _velocity(m0 + post.truth) if post.kind == "born" else truth
    v0 = _velocity(m0)
    born_mean = m0 + torch.from_numpy(mean)
    v_mean = bounded_velocity(born_mean, velocity_bounds)[0] if post.kind == "born" else mean
    inside = (truth >= lo) & (truth <= hi)
    res.update(
        truth_inside_90pct_band=float(inside[keep].mean()),
        velocity_relative_l2={
            "start": metrics.relative_l2(v0[keep], v_true[keep]),
            "posterior_mean": metrics.relative_l2(v_mean[keep], v_true[keep]),
        },
        velocity_ssim={
            "start": metrics.ssim(v0, v_true),
            "posterior_mean": metrics.ssim(v_mean, v_true),
        },
    )
    if water is not None:
        res["metrics_over"] = f"{int(keep.sum())} pixels below the water bottom"
        res["truth_inside_90pct_band_per_depth"] = [
            float(inside[:, k][keep[:, k]].mean()) if keep[:, k].any() else None
            for k in range(truth.shape[1])
        ]
    if post.kind == "born":
        res["image_relative_l2"] = metrics.relative_l2(mean[keep], truth[keep])
        res["image_ssim"] = metrics.ssim(mean, truth)
    return res


def write_outputs(
    out: str,
    post: ImagingPosterior,
    n_samples: int = 256,
    seed: int = 0,
    figures: bool = True,
    comm: Any = None,
    velocity_bounds: tuple[float, float] | None = None,
    water: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Draw ``n_samples``, write the images, samples and figures (rank 0).

    Parameters
    ----------
    out : str
        The output folder.
    post : ImagingPosterior
        The posterior to draw from.
    n_samples : int
        Number of samples.
    seed : int
        Seed of the draw.
    figures : bool
        Write the PNG figures.
    comm : mpi4py communicator or None
        Only rank 0 writes.
    velocity_bounds : tuple of float or None
        ``(vmin, vmax)`` km/s of ``velocity_mean.sgy`` (born): pixels outside are clipped,
        counted in ``velocity_mean_clipped`` and named in one warning line.
    water : torch.Tensor or None
        ``[nx, nz]`` bool, the water held fixed: every sample holds the background there
        (born: ``δm = 0``), and the metrics leave it out (:func:`summary_metrics`).

    Returns
    -------
    dict
        ``unknown``, ``n_samples``, ``metrics`` (:func:`summary_metrics`), for born
        ``velocity_mean_clipped``; on rank 0 also ``files`` and ``figures``.
    """

    samples = post.to_output_unit(post.sample(n_samples, seed))
    if water is not None:  # the known water: the background, exactly
        held = torch.zeros_like(post.m0) if post.kind == "born" else post.m0
        samples[:, water] = post.to_output_unit(held)[water].to(samples.dtype)
    s = summarize(samples.double(), quantiles=(0.05, 0.5, 0.95))
    mean, std = s.mean.numpy(), s.std.numpy()
    q = s.quantiles.numpy()
    summary = {
        "unknown": "image δm, s²/km²" if post.kind == "born" else "velocity, km/s",
        "n_samples": n_samples,
        # how far the written mean and std are from the flow's own, from the draws alone
        "monte_carlo": {
            "mean_relative_se": float(
                s.std.norm() / (n_samples**0.5 * s.mean.norm().clamp_min(1e-300))
            ),
            "std_relative_se": (2 * (n_samples - 1)) ** -0.5,
        },
        "metrics": summary_metrics(
            post,
            mean,
            std,
            q[0],
            q[2],
            velocity_bounds,
            None if water is None else water.numpy(),
        ),
    }
    v_mean = None
    if post.kind == "born":
        v_mean, clipped = bounded_velocity(post.m0.double() + s.mean, velocity_bounds)
        summary["velocity_mean_clipped"] = clipped
    if rank_and_size(comm)[0] != 0:
        return summary
    if v_mean is not None and clipped["pixels"]:
        warnings.warn(
            f"velocity_mean.sgy: {clipped['pixels']} of {v_mean.size} pixels "
            f"({100 * clipped['fraction']:.1f} %) of m0 + mean dm leave [vmin, vmax] = "
            f"{clipped['bounds_km_s']} km/s ({clipped['non_positive']} non-positive) and are "
            "clipped to them: the Born image is larger than the background allows there",
            DevitoUQWarning,
            stacklevel=2,
        )
    images = {
        "posterior_mean": mean,
        "posterior_std": std,
        "posterior_q05": q[0],
        "posterior_q50": q[1],
        "posterior_q95": q[2],
    }
    if v_mean is not None:
        images["velocity_mean"] = v_mean
    for name, img in images.items():
        quantity = (
            f"{QUANTITIES[name]} {UNKNOWNS[post.kind]}"
            if name in QUANTITIES
            else "velocity 1/sqrt(m0 + mean dm) in [vmin, vmax], km/s"
        )
        write_image(os.path.join(out, f"{name}.sgy"), img, post.spacing, post.origin, quantity)
    save_checkpoint(os.path.join(out, "posterior_samples.pt"), {"samples": samples})
    summary["files"] = sorted(f"{n}.sgy" for n in images)
    if figures:
        from devito_uq.apps.imaging.figures import write_figures  # lazy: matplotlib

        summary["figures"] = write_figures(out, post, samples, mean, std, q[0], q[2])
    return summary
