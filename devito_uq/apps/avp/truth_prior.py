"""The calibration's truth prior: the smoothness prior's precision, truncated by rejection.

Kept apart from :mod:`devito_uq.apps.avp.calibration` (which re-exports both names).
"""

from __future__ import annotations

import torch

from devito_uq.errors import InvalidArgumentError
from devito_uq.inference import GaussianPrior

__all__ = ["TruncatedGaussianPrior", "smoothness_precision"]


def smoothness_precision(n: int, dz: float, sigma_p: float, sigma_0: float) -> torch.Tensor:
    """``[n, n]`` float64 precision ``DᵀD/σ_p² + I/σ₀²`` of :class:`SmoothnessPrior`
    with ``sigma=σ_p``, ``spacing=dz``, ``sigma_norm=σ₀`` (``D``: forward difference / dz)."""
    eye = torch.eye(n, dtype=torch.float64)
    d = (eye[1:] - eye[:-1]) / dz
    return d.T @ d / sigma_p**2 + eye / sigma_0**2


class TruncatedGaussianPrior:
    """``N(mean, precision⁻¹)`` restricted to ``m > lower`` everywhere, by rejection.

    Draws use torch's global generator (seeded per truth by the calibration), so a
    truth depends only on its seed. ``std`` is the untruncated marginal std ``[n]``.
    """

    def __init__(self, mean: torch.Tensor, precision: torch.Tensor, lower: float) -> None:
        self.gaussian = GaussianPrior(mean.double(), precision=precision)
        self.lower = float(lower)
        if not bool((mean > self.lower).all()):
            raise InvalidArgumentError(f"the prior mean must lie above lower={lower}")
        self.std = torch.linalg.inv(precision).diagonal().sqrt()
        self.drawn = 0  # Gaussian draws made, for the acceptance rate
        self.accepted = 0

    def sample(self, n: int, max_rounds: int = 1000) -> torch.Tensor:
        """``[n, *shape]`` float64 draws above ``lower``."""
        out: list[torch.Tensor] = []
        for _ in range(max_rounds):
            x = self.gaussian.sample(max(n, 4))
            keep = x[(x > self.lower).flatten(1).all(1)]
            self.drawn += x.shape[0]
            self.accepted += keep.shape[0]
            out.append(keep)
            if sum(len(o) for o in out) >= n:
                return torch.cat(out)[:n]
        raise InvalidArgumentError(
            f"fewer than {n} prior draws above lower={self.lower} in {max_rounds} rounds: "
            "the bound is too tight for this prior"
        )
