"""Image-quality and uncertainty metrics of the imaging summary (numpy, ``[nx, nz]`` images)."""

from __future__ import annotations

import numpy as np

__all__ = ["relative_l2", "ssim", "coverage", "correlation"]


def relative_l2(estimate: np.ndarray, truth: np.ndarray) -> float:
    """``‖estimate − truth‖ / ‖truth‖``."""
    e, t = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    return float(np.linalg.norm(e - t) / np.linalg.norm(t))


def ssim(image: np.ndarray, reference: np.ndarray, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004) of two images.

    Gaussian window of ``sigma`` pixels, ``K1 = 0.01``, ``K2 = 0.03``, dynamic range ``L``
    the reference's peak-to-peak. 1 for identical images; 0 for unrelated ones.
    """
    from scipy.ndimage import gaussian_filter

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
    """Fraction of pixels whose true value lies in ``[lower, upper]``."""
    t = np.asarray(truth)
    return float(np.mean((t >= np.asarray(lower)) & (t <= np.asarray(upper))))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images (flattened)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0
