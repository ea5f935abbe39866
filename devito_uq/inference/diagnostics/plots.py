"""Figures of calibration diagnostics: rank histograms, coverage curves, UCE, image maps.

Importing this module loads matplotlib (Agg backend) through
:mod:`devito_uq.inference.plotting`, whose ``plt`` and ``save_figure`` every figure
here uses; :mod:`devito_uq.inference.diagnostics` does not import it, so the
diagnostics stay free of matplotlib. Each function returns the ``Figure`` and
writes it atomically when ``path`` is given (PNG unless the suffix says otherwise).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from devito_uq.errors import InvalidArgumentError
from devito_uq.inference.diagnostics.coverage import CoverageCurve, TARPResult
from devito_uq.inference.diagnostics.images import UCEResult
from devito_uq.inference.diagnostics.ranks import ImageMetrics
from devito_uq.inference.diagnostics.result import CalibrationResult
from devito_uq.inference.diagnostics.statistics import pit, rank_band
from devito_uq.inference.plotting import plt, save_figure
from devito_uq.io._atomic import atomic_path
from devito_uq.validation import check_in_range, check_int

__all__ = [
    "plot_rank_histograms",
    "plot_coverage",
    "plot_tarp",
    "plot_uce",
    "plot_image_metrics",
    "save_calibration_figures",
]


def plot_rank_histograms(
    result: CalibrationResult | Any,
    n_samples: int | None = None,
    names: Sequence[str] | None = None,
    bins: int | None = None,
    mass: float = 0.99,
    max_panels: int = 12,
    path: str | os.PathLike | None = None,
):
    """SBC rank histograms with the per-bin ``Binomial(N, 1/bins)`` band (Talts et al. 2018).

    Parameters
    ----------
    result : CalibrationResult or array_like of int
        A run (panels: its summaries, ``log_prob``, then the coordinates with the
        smallest adjusted p-values), or integer ranks ``[N, m]`` with ``n_samples``.
    n_samples : int, optional
        ``L``; needed with a rank array.
    names : sequence of str, optional
        ``[m]`` panel titles of a rank array; default the column numbers.
    bins : int, optional
        Histogram bins of the PIT values (default: about 20 truths per bin).
    mass : float
        Probability of the grey band of one bin's count under uniformity.
    max_panels : int
        At most this many histograms.
    path : str or os.PathLike, optional
        Where to write the figure.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InvalidArgumentError
        If ``n_samples`` is missing with a rank array.
    """
    max_panels = check_int("max_panels", max_panels, minimum=1)
    if isinstance(result, CalibrationResult):
        test = result.sbc(bins=bins)
        r, all_names = result.quantity_ranks()
        n_coords = r.shape[1] - len(result.summary_names) - int(all_names[-1] == "log_prob")
        order = list(range(n_coords, r.shape[1]))
        order += [int(i) for i in np.argsort(test.adjusted_pvalue[:n_coords], kind="stable")]
        order, n_samples, seed = order[:max_panels], result.n_samples, result.seed
        u = pit(r[:, order], n_samples, seed)
        labels = [f"{all_names[i]}  p={test.adjusted_pvalue[i]:.2g}" for i in order]
        bins = test.bins
    else:
        if n_samples is None:
            raise InvalidArgumentError("n_samples is needed with a rank array")
        r = np.asarray(result)
        r = r[:, None] if r.ndim == 1 else r.reshape(r.shape[0], -1)
        r = r[:, :max_panels]
        u = pit(r, n_samples)
        labels = (
            list(names)[: r.shape[1]] if names is not None else [str(i) for i in range(r.shape[1])]
        )
        bins = bins or int(np.clip(r.shape[0] // 20, 2, 50))
    n, m = u.shape
    lo, hi = rank_band(n, bins, mass)
    cols = min(4, m)
    rows = -(-m // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= m:
            ax.axis("off")
            continue
        ax.axhspan(lo, hi, color="0.85", label=f"{mass:.0%} band")
        ax.axhline(n / bins, color="0.5", lw=0.8)
        ax.hist(u[:, k], bins=bins, range=(0, 1), color="C0", alpha=0.8)
        ax.set_title(labels[k], fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_xlabel("normalised rank")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_coverage(
    curves: CoverageCurve | Sequence[CoverageCurve],
    labels: Sequence[str] | None = None,
    band: float = 0.95,
    title: str | None = None,
    path: str | os.PathLike | None = None,
):
    """Expected coverage against credibility level, with the diagonal and a binomial band.

    The band is ``α ± z·√(α(1 − α)/n)`` for the first curve's ``n`` values (too narrow
    for pooled, correlated coordinates). Labels carry the signed area (> 0
    under-confident, < 0 over-confident).

    Parameters
    ----------
    curves : CoverageCurve or sequence of CoverageCurve
        The curves to draw.
    labels : sequence of str, optional
        One per curve; default their ``kind``.
    band : float
        Probability of the binomial band, in ``(0, 1)``.
    title : str, optional
        Axes title.
    path : str or os.PathLike, optional
        Where to write the figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from scipy import stats  # lazy: scipy.stats costs ~1 s at import

    curves = [curves] if isinstance(curves, CoverageCurve) else list(curves)
    band = check_in_range("band", band, 0.0, 1.0, low_open=True, high_open=True)
    labels = list(labels) if labels is not None else [c.kind for c in curves]
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    a = np.linspace(0, 1, 201)
    half = stats.norm.ppf(0.5 + band / 2) * np.sqrt(a * (1 - a) / curves[0].n_values)
    ax.fill_between(a, a - half, a + half, color="0.85", label=f"{band:.0%} band")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    for c, lab in zip(curves, labels):
        ax.plot(c.levels, c.coverage, label=f"{lab} (area {c.area:+.3f})")
    ax.set_xlabel("credibility level α")
    ax.set_ylabel("expected coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.text(0.03, 0.92, "under-confident", fontsize=8, color="0.4")
    ax.text(0.55, 0.05, "over-confident", fontsize=8, color="0.4")
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 0.1))
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_tarp(tarp: TARPResult, path: str | os.PathLike | None = None):
    """TARP expected coverage with its ATC and KS statistic in the title.

    Parameters
    ----------
    tarp : TARPResult
        From :meth:`CalibrationResult.tarp` or
        :func:`~devito_uq.inference.diagnostics.coverage.tarp_test`.
    path : str or os.PathLike, optional
        Where to write the figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    return plot_coverage(
        tarp.curve,
        labels=["TARP"],
        title=f"TARP: ATC {tarp.atc:+.3f}, KS {tarp.ks_statistic:.3f}",
        path=path,
    )


def plot_uce(uce: UCEResult, units: str = "", path: str | os.PathLike | None = None):
    """Per-bin RMS error against RMS predicted std (calibrated: on the diagonal).

    Parameters
    ----------
    uce : UCEResult
        From :func:`.images.uncertainty_calibration_error`.
    units : str
        Model units for the axis labels, e.g. ``"km/s"``.
    path : str or os.PathLike, optional
        Where to write the figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = plt.subplots(figsize=(4.0, 4.0))
    ok = uce.counts > 0
    top = float(np.nanmax(np.concatenate([uce.rmse[ok], uce.rms_std[ok]]))) * 1.05
    ax.plot([0, top], [0, top], "k--", lw=0.8)
    ax.plot(uce.rms_std[ok], uce.rmse[ok], "o-")
    u = f" ({units})" if units else ""
    ax.set_xlabel(f"RMS predicted std{u}")
    ax.set_ylabel(f"RMS error{u}")
    ax.set_title(f"UCE {uce.uce:.3g}{u}, relative {uce.relative:.2%}", fontsize=9)
    return save_figure(fig, path)


def plot_image_metrics(
    metrics: ImageMetrics, level: float = 0.9, path: str | os.PathLike | None = None
):
    """Std, ``|error|``, z-score and the level-``level`` coverage map of one truth.

    1-D models are drawn as depth profiles, 2-D models as images (first axis down).

    Parameters
    ----------
    metrics : ImageMetrics
        From :func:`.ranks.image_metrics`.
    level : float
        Central credible level of the coverage map, in ``[0, 1]``.
    path : str or os.PathLike, optional
        Where to write the figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    cov = metrics.coverage_map(level)
    panels = [
        ("posterior std", metrics.std),
        ("|error|", np.abs(metrics.error)),
        (f"z (>2: {metrics.z_fraction:.1%})", np.minimum(metrics.z, 5.0)),
        (f"inside {level:.0%} interval ({cov.mean():.1%})", cov.astype(float)),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2))
    for ax, (title, img) in zip(axes, panels):
        if img.ndim == 1:
            ax.plot(img, np.arange(img.size))
            ax.invert_yaxis()
            ax.set_ylabel("depth index")
        else:
            im = ax.imshow(np.atleast_2d(img.reshape(img.shape[0], -1)), aspect="auto")
            fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def save_calibration_figures(
    result: CalibrationResult, out_dir: str | os.PathLike, prefix: str = "calibration"
) -> list[Path]:
    """Write a run's standard set of figures and its report.

    Parameters
    ----------
    result : CalibrationResult
        The run.
    out_dir : str or os.PathLike
        Folder (created if missing).
    prefix : str
        File-name prefix.

    Returns
    -------
    list of pathlib.Path
        ``{prefix}_report.json`` (:meth:`CalibrationResult.report`), ``_ranks.png``
        (rank histograms), ``_coverage.png`` (central, and HPD when available) and,
        with TARP ranks, ``_tarp.png``.
    """
    folder = Path(out_dir)
    paths = [folder / f"{prefix}_{name}" for name in ("report.json", "ranks.png", "coverage.png")]
    with atomic_path(paths[0]) as tmp:
        Path(tmp).write_text(json.dumps(result.report(), indent=1))
    plt.close(plot_rank_histograms(result, path=paths[1]))
    curves = [result.coverage("central")]
    if (result.log_prob_ranks >= 0).all():
        curves.append(result.coverage("hpd"))
    plt.close(plot_coverage(curves, path=paths[2]))
    if (result.tarp_ranks >= 0).all():
        paths.append(folder / f"{prefix}_tarp.png")
        plt.close(plot_tarp(result.tarp(), path=paths[-1]))
    return paths
