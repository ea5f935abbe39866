r"""Metrics of one image (numpy arrays, any shape; ``[nx, nz]`` for the imaging app).

Two kinds, both on plain numpy arrays in model units:

* quality against the truth: :func:`relative_l2`, :func:`ssim`, :func:`correlation`;
* uncertainty calibration of one image, from its error and predicted std:
  :func:`coverage` of an interval, :func:`uncertainty_calibration_error` (UCE) and
  :func:`z_fraction`, with :func:`expected_z_fraction` as the calibrated reference.

References
----------
- Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli (2004), Image quality
  assessment: from error visibility to structural similarity, IEEE TIP (SSIM).
- M.-H. Laves, S. Ihler, J. Fast, L. Kahrs, T. Ortmaier (2020), Well-calibrated
  regression uncertainty in medical imaging with deep learning, MIDL (UCE).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.validation import as_float_array, check_in_range, check_int

__all__ = [
    "relative_l2",
    "ssim",
    "coverage",
    "correlation",
    "UCEResult",
    "uncertainty_calibration_error",
    "z_fraction",
    "expected_z_fraction",
]


def relative_l2(estimate: np.ndarray, truth: np.ndarray) -> float:
    """``‖estimate − truth‖ / ‖truth‖`` (Frobenius norms, any equal shapes; unitless)."""
    e, t = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    return float(np.linalg.norm(e - t) / np.linalg.norm(t))


def ssim(image: np.ndarray, reference: np.ndarray, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004) of two images.

    Gaussian window of ``sigma`` pixels, ``K1 = 0.01``, ``K2 = 0.03``, dynamic range ``L``
    the reference's peak-to-peak. 1 for identical images; 0 for unrelated ones.

    Parameters
    ----------
    image, reference : numpy.ndarray
        Images of one shape (e.g. ``[nx, nz]``), same units.
    sigma : float
        Std of the Gaussian window, in pixels.

    Returns
    -------
    float
        Mean SSIM over the pixels, at most 1.
    """
    from scipy.ndimage import gaussian_filter  # lazy: scipy costs ~1 s at import

    x, y = np.asarray(image, np.float64), np.asarray(reference, np.float64)
    L = float(np.ptp(y)) or 1.0
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2

    def blur(a):
        return gaussian_filter(a, sigma, mode="reflect")

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def coverage(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of pixels whose true value lies in ``[lower, upper]`` (arrays of one shape)."""
    t = np.asarray(truth)
    return float(np.mean((t >= np.asarray(lower)) & (t <= np.asarray(upper))))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images (flattened; 0 when one is constant)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


@dataclass(frozen=True)
class UCEResult:
    """Uncertainty calibration error of one image.

    Pixels are binned by their predicted std; in each bin ``b`` the root-mean-square
    error ``rmse[b]`` is compared with the root-mean-square predicted std ``rms_std[b]``.

    Attributes
    ----------
    uce : float
        ``Σ_b (n_b / n) |rmse_b − rms_std_b|``, in the model's units.
    relative : float
        ``uce`` divided by the RMS predicted std of the whole image (unitless).
    signed : float
        (mean std² − mean error²) / (2 · RMS std) over all pixels, model units: the
        predicted minus the realised variance, linearised to a std difference (≈ RMS
        std − RMSE for small errors). > 0 under-confident, < 0 over-confident (as the
        coverage area). 0 in expectation for a calibrated posterior whatever the
        correlation between pixels (see :func:`uncertainty_calibration_error`).
    rmse, rms_std : numpy.ndarray
        ``[bins]`` per-bin RMS error and RMS predicted std (model units; NaN in an
        empty bin).
    counts : numpy.ndarray
        ``[bins]`` int, pixels per bin.
    edges : numpy.ndarray
        ``[bins + 1]`` std bin edges (model units).
    """

    uce: float
    relative: float
    signed: float
    rmse: np.ndarray
    rms_std: np.ndarray
    counts: np.ndarray
    edges: np.ndarray


def uncertainty_calibration_error(
    error, std, n_bins: int = 10, binning: str = "quantile", n_samples: int | None = None
) -> UCEResult:
    """UCE of one image: binned RMS error against RMS predicted std.

    Root-mean-squares are compared (not mean ``|error|`` with mean std) because for a
    calibrated Gaussian predictive :math:`E|e| = \\sqrt{2/\\pi}\\,\\sigma \\approx 0.8\\sigma`:
    the ``|error|``-vs-std plot of a perfect posterior sits 20 % below the diagonal.

    *Bias.* For a calibrated posterior :math:`E[e^2] = \\sigma^2` pixel by pixel, so
    the mean squared error is unbiased for the mean variance whatever the correlation
    between pixels, and ``signed`` (their difference over the RMS std) is 0 in
    expectation for an exact std; for a std estimated from ``L`` draws it keeps an
    :math:`O(1/(PL))` bias for ``P`` pixels (the RMS std in the denominator). It is
    taken over all pixels, not per bin: binning by a noisy std and dividing per bin
    biases it (regression to the mean). ``rmse_b`` itself is biased low by
    Jensen's inequality, :math:`E\\sqrt{x} < \\sqrt{E x}`, by about
    :math:`\\mathrm{Var}(\\mathrm{mse}_b) / (8\\sigma^3)`, which grows with the pixels'
    correlation (few effective pixels); the unsigned ``uce`` keeps that bias and its
    noise (it is > 0 for any finite image). With mean and std from ``L`` draws,
    :math:`E[e^2] = \\sigma^2 (1 + 1/L)`: pass ``n_samples`` to compare with that.

    Parameters
    ----------
    error : array_like
        ``[*shape]`` posterior mean − truth (model units, e.g. km/s).
    std : array_like
        ``[*shape]`` predicted posterior std (same units, >= 0).
    n_bins : int
        Number of std bins, at most the number of pixels.
    binning : str
        ``"quantile"`` (default: equal-count bins, so no bin is empty and each holds
        ``n/n_bins`` pixels) or ``"uniform"`` (equal-width bins over
        ``[min std, max std]``, empty ones skipped, as in Laves et al. 2020).
    n_samples : int, optional
        ``L >= 1`` draws behind the mean and std: predicted variances are scaled by
        ``1 + 1/L`` in ``signed``; ``None``: exact moments.

    Returns
    -------
    UCEResult

    Raises
    ------
    InvalidShapeError
        If ``error`` and ``std`` differ in size.
    InvalidArgumentError
        If ``std`` is negative, ``n_bins`` exceeds the pixels or ``binning`` is unknown.
    """
    e = as_float_array("error", error).ravel()
    s = as_float_array("std", std).ravel()
    if e.shape != s.shape:
        raise InvalidShapeError(f"error has {e.size} values and std {s.size}; they must match")
    n_bins = check_int("n_bins", n_bins, minimum=1)
    if e.size < n_bins:
        raise InvalidArgumentError(f"n_bins={n_bins} exceeds the {e.size} pixels")
    if s.min() < 0:
        raise InvalidArgumentError(f"std must be >= 0, got min {s.min()}")
    inflation = 1.0 if n_samples is None else 1.0 + 1.0 / check_int("n_samples", n_samples, 1)
    if binning == "quantile":
        order = np.argsort(s, kind="stable")
        groups = np.array_split(order, n_bins)
        edges = np.array([s[order[0]]] + [s[g[-1]] for g in groups])
    elif binning == "uniform":
        edges = np.linspace(s.min(), s.max(), n_bins + 1)
        which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, n_bins - 1)
        groups = [np.flatnonzero(which == b) for b in range(n_bins)]
    else:
        raise InvalidArgumentError(f"binning={binning!r} must be one of ('quantile', 'uniform')")
    counts = np.array([g.size for g in groups])
    mse = np.array([np.mean(e[g] ** 2) if g.size else np.nan for g in groups])
    ms = np.array([np.mean(s[g] ** 2) if g.size else np.nan for g in groups])
    rmse, rms = np.sqrt(mse), np.sqrt(ms)
    w = counts / counts.sum()
    ok = counts > 0
    uce = float(np.sum(w[ok] * np.abs(rmse[ok] - rms[ok])))
    scale = float(np.sqrt(np.mean(s**2)))
    gap = inflation * scale**2 - float(np.mean(e**2))
    signed = gap / (2.0 * np.sqrt(inflation) * scale) if scale > 0 else -np.sqrt(-gap)
    return UCEResult(
        uce=uce,
        relative=uce / scale if scale > 0 else float("inf"),
        signed=signed,
        rmse=rmse,
        rms_std=rms,
        counts=counts,
        edges=edges,
    )


def z_fraction(error, std, threshold: float = 2.0) -> float:
    """Fraction of pixels with ``z = |error| / std > threshold``.

    For a calibrated Gaussian posterior this is ``2Φ(−threshold)``: 4.55 % at 2
    (slightly more when mean and std come from few draws: :func:`expected_z_fraction`).
    Over-confident posteriors give more, under-confident ones fewer.

    Parameters
    ----------
    error, std : array_like
        ``[*shape]`` posterior mean − truth and posterior std (same units).
    threshold : float
        ``> 0``, in std units.

    Returns
    -------
    float
        The fraction, in ``[0, 1]``; a pixel with ``std = 0`` counts when its
        error is not 0.
    """
    e = as_float_array("error", error).ravel()
    s = as_float_array("std", std).ravel()
    if e.shape != s.shape:
        raise InvalidShapeError(f"error has {e.size} values and std {s.size}; they must match")
    check_in_range("threshold", threshold, 0.0, np.inf, low_open=True, high_open=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(e) / s
    return float(np.mean(z > threshold))


def expected_z_fraction(n_samples: int | None = None, threshold: float = 2.0) -> float:
    """Expected :func:`z_fraction` of a calibrated Gaussian posterior.

    With mean and std estimated from ``L`` draws, ``(mean − truth) / (std·√(1 + 1/L))``
    is Student-t with ``L − 1`` degrees of freedom (the truth is one more draw), so the
    fraction is ``2·T_{L−1}(−threshold/√(1 + 1/L))``: 4.93 % for ``L = 100``, 4.59 % for
    ``L = 1000``; ``2Φ(−threshold)`` = 4.55 % for ``n_samples=None`` (exact moments).

    Parameters
    ----------
    n_samples : int, optional
        ``L >= 2`` draws behind the mean and std; ``None``: exact moments.
    threshold : float
        ``> 0``, as in :func:`z_fraction`.

    Returns
    -------
    float
    """
    from scipy import stats  # lazy: scipy costs ~1 s at import

    check_in_range("threshold", threshold, 0.0, np.inf, low_open=True, high_open=True)
    if n_samples is None:
        return float(2.0 * stats.norm.sf(threshold))
    n = check_int("n_samples", n_samples, minimum=2)
    return float(2.0 * stats.t.sf(threshold / np.sqrt(1.0 + 1.0 / n), n - 1))
