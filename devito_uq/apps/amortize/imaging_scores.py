"""How the 2D amortized study scores a posterior (:mod:`.imaging_study`).

:func:`gaussian_posterior` is the reference every survey is scored against — the exact
posterior under the per-survey Gaussian prior, closed form from the assembled ``JᵀMJ`` —
and :func:`posterior_scores` the metrics of any posterior (its mean, std and 90 % band)
against the truth and the reference's std.
"""

from __future__ import annotations

import numpy as np
import torch

from devito_uq.inference.diagnostics import images as metrics

__all__ = ["gaussian_posterior", "gaussian_stats", "posterior_scores", "sample_stats"]


def gaussian_posterior(H, y, sigma, prior) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and std ``[nx, nz]`` of the exact posterior under the Gaussian ``prior`` (mean 0)
    for ``y = JᵀMd``: in whitened coordinates ``δm = L w``, ``A = I + LᵀHL/σ²``, mean
    ``L A⁻¹ Lᵀ y/σ²``, covariance ``L A⁻¹ Lᵀ``."""
    shape = tuple(y.shape[-2:])
    n = int(np.prod(shape))
    sqrt = prior.sqrt()
    L = sqrt.matvec(torch.eye(n, dtype=torch.float64).reshape(n, *shape)).reshape(n, n).T
    A = torch.eye(n, dtype=torch.float64) + L.T @ H @ L / sigma**2
    cov = L @ torch.linalg.solve(A, L.T)
    mean = cov @ y.reshape(-1).double() / sigma**2
    return mean.reshape(shape), cov.diagonal().clamp_min(0).sqrt().reshape(shape)


def gaussian_stats(H, y, sigma, prior) -> dict[str, np.ndarray]:
    """:func:`sample_stats` of the exact Gaussian-prior posterior (:func:`gaussian_posterior`):
    its 90 % band is mean ± 1.645 std."""
    mean, std = (t.numpy() for t in gaussian_posterior(H, y, sigma, prior))
    return {"mean": mean, "std": std, "lo": mean - 1.645 * std, "hi": mean + 1.645 * std}


def sample_stats(samples: torch.Tensor) -> dict[str, np.ndarray]:
    """Mean, std and the 5 % / 95 % quantiles (``lo``, ``hi``: the central 90 % band) of
    draws ``[n, nx, nz]``, as ``[nx, nz]`` arrays."""
    s = samples.double()
    q = torch.quantile(s, torch.tensor([0.05, 0.95], dtype=s.dtype), dim=0)
    return {
        "mean": s.mean(0).numpy(),
        "std": s.std(0).numpy(),
        "lo": q[0].numpy(),
        "hi": q[1].numpy(),
    }


def posterior_scores(
    stats: dict, truth: np.ndarray, m0: np.ndarray, refs: dict, water: np.ndarray
) -> dict[str, float]:
    """Metrics of one posterior against the truth ``δm`` and the reference std maps; the
    band's coverage also below the ``water`` ``[nx, nz]`` (bool), where δm = 0 is known and
    every posterior covers it."""

    def vel(dm):
        return 1.0 / np.sqrt(np.clip(m0 + dm, 1e-6, None))

    out = {
        "image_relative_l2": metrics.relative_l2(stats["mean"], truth),
        "image_ssim": metrics.ssim(stats["mean"], truth),
        "velocity_relative_l2": metrics.relative_l2(vel(stats["mean"]), vel(truth)),
        "velocity_ssim": metrics.ssim(vel(stats["mean"]), vel(truth)),
        "truth_inside_90pct_band": metrics.coverage(stats["lo"], stats["hi"], truth),
        "truth_inside_90pct_band_below_water": metrics.coverage(
            stats["lo"][~water], stats["hi"][~water], truth[~water]
        ),
        "mean_std": float(np.mean(stats["std"])),
    }
    for name, std in refs.items():
        out[f"std_correlation_with_{name}"] = metrics.correlation(stats["std"], std)
    return out
