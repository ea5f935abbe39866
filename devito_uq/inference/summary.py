"""Posterior summaries shared by every sampler: mean, std, quantiles, credible intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.validation import check_in_range

__all__ = ["PosteriorSummary", "summarize", "effective_sample_size"]

DEFAULT_QUANTILES = (0.05, 0.5, 0.95)


@dataclass(frozen=True)
class PosteriorSummary:
    """Point-wise statistics of posterior samples.

    Attributes
    ----------
    mean : torch.Tensor
        ``[*model_shape]`` sample mean (model units).
    std : torch.Tensor
        ``[*model_shape]`` sample standard deviation (unbiased, n − 1; model units).
    quantile_levels : tuple of float
        The probabilities, e.g. ``(0.05, 0.5, 0.95)``.
    quantiles : torch.Tensor
        ``[len(quantile_levels), *model_shape]`` (model units).
    n_samples : int
        Number of samples the statistics come from.
    """

    mean: torch.Tensor
    std: torch.Tensor
    quantile_levels: tuple[float, ...]
    quantiles: torch.Tensor
    n_samples: int

    def quantile(self, level: float) -> torch.Tensor:
        """The point-wise quantile at ``level``.

        Parameters
        ----------
        level : float
            One of ``quantile_levels``.

        Returns
        -------
        torch.Tensor
            ``[*model_shape]``.

        Raises
        ------
        InvalidArgumentError
            If ``level`` was not computed.
        """
        for i, q in enumerate(self.quantile_levels):
            if abs(q - level) < 1e-9:
                return self.quantiles[i]
        raise InvalidArgumentError(
            f"quantile level {level} was not computed; available: {self.quantile_levels}"
        )

    def credible_interval(self, mass: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
        """Equal-tailed point-wise interval holding ``mass`` of the posterior.

        Parameters
        ----------
        mass : float
            In ``(0, 1)``; ``mass=0.9`` returns the 5% and 95% quantiles, and both
            levels must have been computed.

        Returns
        -------
        (lower, upper) : tuple of torch.Tensor
            ``[*model_shape]`` each.
        """
        mass = check_in_range("mass", mass, 0.0, 1.0, low_open=True, high_open=True)
        tail = (1.0 - mass) / 2.0
        return self.quantile(tail), self.quantile(1.0 - tail)


def summarize(
    samples: torch.Tensor, quantiles: Sequence[float] = DEFAULT_QUANTILES
) -> PosteriorSummary:
    """Point-wise mean, std and quantiles of samples.

    Parameters
    ----------
    samples : torch.Tensor
        ``[n, *model_shape]`` with ``n >= 2`` (integer samples are taken as float64).
    quantiles : sequence of float
        Levels in ``[0, 1]``.

    Returns
    -------
    PosteriorSummary

    Raises
    ------
    InvalidShapeError
        If ``samples`` is not a tensor with at least 2 samples.
    """
    if not isinstance(samples, torch.Tensor) or samples.ndim < 1 or samples.shape[0] < 2:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples)
        raise InvalidShapeError(f"samples must be a tensor [n >= 2, *model_shape], got {shape}")
    levels = tuple(check_in_range(f"quantiles[{i}]", q, 0.0, 1.0) for i, q in enumerate(quantiles))
    s = samples.detach()
    if not s.is_floating_point():
        s = s.double()
    qs = torch.quantile(s.flatten(1), torch.tensor(levels, dtype=s.dtype, device=s.device), dim=0)
    return PosteriorSummary(
        mean=s.mean(0),
        std=s.std(0),
        quantile_levels=levels,
        quantiles=qs.reshape(len(levels), *s.shape[1:]),
        n_samples=int(s.shape[0]),
    )


def effective_sample_size(chains: torch.Tensor) -> torch.Tensor:
    """Effective sample size of MCMC draws, per coordinate.

    The autocorrelation is
    averaged over chains (each chain centred on the pooled mean, so a chain stuck
    away from the others lowers the ESS) and summed with Geyer's initial positive
    sequence rule: pairs of lags are added while their sum stays positive.

    Parameters
    ----------
    chains : torch.Tensor
        ``[n_draws, n_chains, *model_shape]`` with ``n_draws >= 4``.

    Returns
    -------
    torch.Tensor
        ``[*model_shape]``: ``n_draws · n_chains / τ`` with τ the integrated
        autocorrelation time, in the dtype of ``chains``.

    Raises
    ------
    InvalidShapeError
        If ``chains`` has fewer than 2 axes or 4 draws.

    References
    ----------
    C. J. Geyer (1992), Practical Markov chain Monte Carlo, Statistical Science.
    """
    if chains.ndim < 2 or chains.shape[0] < 4:
        raise InvalidShapeError(
            f"chains must be [n_draws >= 4, n_chains, ...], got {tuple(chains.shape)}"
        )
    x = chains.detach().double().flatten(2)  # [T, C, P]
    t, c, _ = x.shape
    x = x - x.mean(dim=(0, 1), keepdim=True)
    # Autocovariance by FFT along the draw axis, zero-padded against wrap-around.
    f = torch.fft.rfft(x, n=2 * t, dim=0)
    acov = torch.fft.irfft(f * f.conj(), n=2 * t, dim=0)[:t] / t  # [T, C, P]
    acov = acov.mean(1)  # [T, P]
    rho = acov / acov[:1].clamp_min(1e-300)
    # Geyer: Γ_k = ρ_{2k} + ρ_{2k+1}; stop at the first non-positive pair.
    npairs = t // 2
    gamma = rho[: 2 * npairs].reshape(npairs, 2, -1).sum(1)  # [npairs, P]
    positive = torch.cumprod((gamma > 0).double(), dim=0)
    tau = -1.0 + 2.0 * (gamma * positive).sum(0)
    tau = tau.clamp_min(1.0 / (t * c))  # antithetic chains cannot beat n_draws·n_chains by much
    ess = (t * c) / tau
    return ess.clamp_max(t * c).reshape(chains.shape[2:]).to(chains.dtype)
