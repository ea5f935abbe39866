"""Figures of posterior samples and training curves (matplotlib, Agg backend, PNG).

1-D models are drawn as depth profiles: depth on the vertical axis, increasing
downwards, the parameter on the horizontal axis, as geophysicists plot logs.
2-D models are drawn as images with depth down. Each function returns the
matplotlib ``Figure`` and writes a PNG when ``path`` is given.

This is the one place the package sets matplotlib up: figure code elsewhere (the
diagnostics' plots, the applications' figures) takes ``plt`` (``matplotlib.pyplot``
with the headless Agg backend selected) and :func:`save_figure` from here, importing
them inside its functions where matplotlib must stay unloaded until a figure is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: CI and clusters have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from devito_uq.errors import InvalidArgumentError, InvalidShapeError  # noqa: E402
from devito_uq.inference.summary import PosteriorSummary  # noqa: E402
from devito_uq.io._atomic import atomic_path  # noqa: E402

__all__ = ["plt", "save_figure", "plot_profiles", "plot_images", "plot_loss"]


def save_figure(fig, path: str | os.PathLike | None, dpi: int = 120):
    """Write ``fig`` atomically (folders created) and return it.

    The format follows the suffix of ``path`` (PNG without one). The figure is drawn into
    a temporary file beside ``path`` and moved over it, so a reader never sees half an
    image and a symbolic link planted at ``path`` is replaced, never written through.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    path : str or os.PathLike, optional
        Where to write it; ``None`` writes nothing.
    dpi : int
        Resolution of raster formats, dots per inch.

    Returns
    -------
    matplotlib.figure.Figure
        ``fig``.

    Raises
    ------
    InvalidArgumentError
        If matplotlib cannot write the format of the suffix.
    """
    if path is not None:
        fmt = os.path.splitext(os.fspath(path))[1][1:].lower() or "png"
        if fmt not in fig.canvas.get_supported_filetypes():
            raise InvalidArgumentError(
                f"path={os.fspath(path)!r}: matplotlib cannot write the format {fmt!r}"
            )
        with atomic_path(path) as tmp:
            # The temporary name ends in .tmp: the format must be given explicitly.
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)
    return fig


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def plot_profiles(
    summary: PosteriorSummary,
    depth: Sequence[float] | torch.Tensor | None = None,
    samples: torch.Tensor | None = None,
    truth: torch.Tensor | None = None,
    mass: float = 0.9,
    xlabel: str = "model",
    ylabel: str = "depth (m)",
    title: str | None = None,
    path: str | os.PathLike | None = None,
):
    """Posterior of a 1-D profile: samples, mean, credible band, and std.

    Parameters
    ----------
    summary : PosteriorSummary
        Summary of ``[n_depth]`` models.
    depth : sequence of float or torch.Tensor, optional
        ``[n_depth]`` depths (m; default: sample index).
    samples : torch.Tensor, optional
        ``[k, n_depth]`` samples drawn thin (the first 50).
    truth : torch.Tensor, optional
        ``[n_depth]`` true model.
    mass : float
        Credible mass of the shaded band (its quantiles must be in ``summary``).
    xlabel, ylabel, title : str
        Axis labels and figure title.
    path : str or os.PathLike, optional
        Where to write the figure (:func:`save_figure`).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InvalidShapeError
        If the models are not 1-D or ``depth`` does not match them.
    """
    if summary.mean.ndim != 1:
        raise InvalidShapeError(f"plot_profiles needs 1-D models, got {tuple(summary.mean.shape)}")
    n = summary.mean.shape[0]
    z = np.arange(n) if depth is None else _np(depth)
    if z.shape != (n,):
        raise InvalidShapeError(f"depth must have {n} values, got shape {z.shape}")
    lo, hi = summary.credible_interval(mass)
    fig, (ax, ax_std) = plt.subplots(
        1, 2, figsize=(7, 6), sharey=True, gridspec_kw={"width_ratios": [3, 1]}
    )
    if samples is not None:
        for s in _np(samples)[:50]:
            ax.plot(s, z, color="0.6", lw=0.5, alpha=0.5)
    ax.fill_betweenx(z, _np(lo), _np(hi), color="C0", alpha=0.3, label=f"{mass:.0%} interval")
    ax.plot(_np(summary.mean), z, color="C0", lw=2, label="posterior mean")
    if truth is not None:
        ax.plot(_np(truth), z, "k--", lw=1.5, label="true")
    ax.invert_yaxis()  # depth increases downwards
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize=8)
    ax_std.plot(_np(summary.std), z, color="C3")
    ax_std.set_xlabel("posterior std")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_images(
    summary: PosteriorSummary,
    samples: torch.Tensor | None = None,
    extent: Sequence[float] | None = None,
    cmap: str = "viridis",
    title: str | None = None,
    path: str | os.PathLike | None = None,
):
    """Posterior of a 2-D model ``[x, z]``: mean, std, 90% interval width, samples.

    Parameters
    ----------
    summary : PosteriorSummary
        Summary of ``[x, z]`` models (its 5 % and 95 % quantiles included).
    samples : torch.Tensor, optional
        ``[k, x, z]`` samples; the first 3 are drawn.
    extent : sequence of float, optional
        ``(x0, x1, z1, z0)`` in m, as for ``imshow`` (depth down).
    cmap : str
        Colour map of the mean and samples.
    title : str, optional
        Figure title.
    path : str or os.PathLike, optional
        Where to write the figure (:func:`save_figure`).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InvalidShapeError
        If the models are not 2-D.
    """
    if summary.mean.ndim != 2:
        raise InvalidShapeError(f"plot_images needs 2-D models, got {tuple(summary.mean.shape)}")
    lo, hi = summary.credible_interval(0.9)
    panels = [("mean", summary.mean, cmap), ("std", summary.std, "magma")]
    panels.append(("90% interval width", hi - lo, "magma"))
    if samples is not None:
        panels += [(f"sample {i}", s, cmap) for i, s in enumerate(samples[:3])]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, img, cm) in zip(axes[0], panels):
        # Models are [x, z]; imshow wants rows = depth.
        im = ax.imshow(_np(img).T, extent=extent, cmap=cm, aspect="auto")
        ax.set_title(name)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_loss(
    history: Mapping[str, Sequence[float]],
    terms: Sequence[str] = ("loss", "misfit", "prior", "neg_entropy"),
    title: str | None = None,
    path: str | os.PathLike | None = None,
):
    """Training curves from ``VariationalPosterior.history``, one panel per term.

    Parameters
    ----------
    history : mapping of str to sequence of float
        Per-iteration values; ``"iteration"`` gives the x axis when present.
    terms : sequence of str
        Keys of ``history`` to draw.
    title : str, optional
        Figure title.
    path : str or os.PathLike, optional
        Where to write the figure (:func:`save_figure`).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    InvalidArgumentError
        If ``history`` lacks one of ``terms``.
    """
    missing = [t for t in terms if t not in history]
    if missing:
        raise InvalidArgumentError(f"history lacks the terms {missing}")
    it = history.get("iteration") or list(range(1, len(history[terms[0]]) + 1))
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 3.0), squeeze=False)
    for ax, name in zip(axes[0], terms):
        ax.plot(it, history[name], lw=0.8)
        ax.set_title(name)
        ax.set_xlabel("iteration")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
