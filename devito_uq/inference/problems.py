r"""Inverse problems with a known posterior, to validate samplers.

* :func:`linear_gaussian_problem` builds :math:`d = A m + \varepsilon`,
  :math:`\varepsilon \sim N(0, \sigma^2 I)`, prior :math:`N(\mu_0, \tau^2 I)`, whose
  posterior is Gaussian with

.. math::
    \Sigma = (A^\top A / \sigma^2 + I/\tau^2)^{-1}, \qquad
    \mu = \Sigma (A^\top d / \sigma^2 + \mu_0 / \tau^2).

* :class:`RingMixture` is the seed talk's 2-D toy: an equal-weight mixture of 20
  Gaussians (variance 0.025, std 0.158) centred on the unit circle at 15°·k,
  k = 0…19 — taken literally, so the centres span 0°…285° and leave a 75° gap;
  neighbours are 0.26 apart (1.65 std), so the modes overlap into one bumpy arc.
  Its density is normalized, so ``E_q[log q + negative_log]`` is KL(q‖p) exactly
  (:func:`ring_kl_estimate`); :func:`ring_mode_fractions` tells whether a sampler
  visits every mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference.likelihood import GaussianLikelihood
from devito_uq.inference.priors import GaussianPrior, Prior
from devito_uq.validation import (
    check_int,
    check_positive_int,
    check_positive_scalar,
    check_tuple,
)

__all__ = [
    "MatrixOperator",
    "LinearGaussianProblem",
    "linear_gaussian_problem",
    "RingMixture",
    "ring_centres",
    "ring_mode_fractions",
    "ring_modes_covered",
    "ring_kl_estimate",
]


class MatrixOperator(nn.Module):
    """``F(m) = A m`` with the rows of ``A`` grouped into shots.

    ``F(m)`` maps ``[batch, n]`` to ``[batch, n_shots, rows_per_shot]``, or to
    ``[batch, len(shots), rows_per_shot]`` with ``shots=``, like a seismic operator
    restricted to some shots.

    Parameters
    ----------
    matrix : torch.Tensor
        ``A``, ``[n_shots · rows_per_shot, n]``.
    n_shots : int
        Number of shots the rows are split into (in order).

    Raises
    ------
    InvalidShapeError
        If ``matrix`` is not 2-D with rows divisible by ``n_shots``.
    """

    def __init__(self, matrix: torch.Tensor, n_shots: int = 1) -> None:
        super().__init__()
        n_shots = check_positive_int("n_shots", n_shots)
        if matrix.ndim != 2 or matrix.shape[0] % n_shots:
            raise InvalidShapeError(
                f"matrix {tuple(matrix.shape)} must be 2-D with rows divisible by n_shots={n_shots}"
            )
        self.register_buffer("matrix", matrix.reshape(n_shots, -1, matrix.shape[1]))

    def forward(self, m: torch.Tensor, shots: torch.Tensor | None = None) -> torch.Tensor:
        """``[batch, n_shots or len(shots), rows_per_shot]`` data of ``m`` ``[batch, n]``."""
        a = self.matrix if shots is None else self.matrix[shots]
        return torch.einsum("srn,bn->bsr", a.to(m.dtype), m)


@dataclass
class LinearGaussianProblem:
    """A linear-Gaussian inverse problem and its exact posterior.

    Attributes
    ----------
    operator : MatrixOperator
        The forward operator.
    data : torch.Tensor
        ``[n_shots, rows_per_shot]`` noisy data.
    sigma : float
        Noise standard deviation (data units).
    prior : GaussianPrior
        ``N(0, τ² I)``.
    model : torch.Tensor
        ``[n]`` the true model (a prior draw).
    posterior_mean : torch.Tensor
        ``[n]`` μ (float64).
    posterior_covariance : torch.Tensor
        ``[n, n]`` Σ (float64).
    """

    operator: MatrixOperator
    data: torch.Tensor
    sigma: float
    prior: GaussianPrior
    model: torch.Tensor
    posterior_mean: torch.Tensor
    posterior_covariance: torch.Tensor

    @property
    def posterior_std(self) -> torch.Tensor:
        """``[n]`` point-wise posterior standard deviation."""
        return self.posterior_covariance.diagonal().sqrt()

    def likelihood(self, shot_batch: int | None = None, seed: int = 0) -> GaussianLikelihood:
        """The :class:`GaussianLikelihood` of this problem.

        Parameters
        ----------
        shot_batch, seed
            As in :class:`GaussianLikelihood` (``None``: all shots every call).

        Returns
        -------
        GaussianLikelihood
        """
        return GaussianLikelihood(
            self.operator, self.data, sigma=self.sigma, shot_batch=shot_batch, seed=seed
        )


def linear_gaussian_problem(
    n: int = 32,
    n_shots: int = 8,
    rows_per_shot: int = 4,
    sigma: float = 0.5,
    prior_std: float = 1.0,
    singular_values: tuple[float, float] = (0.2, 4.0),
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> LinearGaussianProblem:
    """Random problem with ``A = U diag(s) Vᵀ``, ``s`` log-spaced in ``singular_values``.

    Scaling ``s`` by ``σ`` relates data and prior: a direction with ``s ≫ σ/τ`` is
    fixed by the data, one with ``s ≪ σ/τ`` keeps its prior spread, so the
    posterior std varies over coordinates and the coordinates are correlated.

    Parameters
    ----------
    n : int
        Model size.
    n_shots, rows_per_shot : int
        The data are ``[n_shots, rows_per_shot]``.
    sigma : float
        Noise std σ (data units).
    prior_std : float
        τ of the prior ``N(0, τ² I)`` (model units).
    singular_values : tuple of float
        ``(s_min, s_max)``, increasing and positive, in units of ``σ/τ``.
    seed : int
        Seeds the operator, the true model and the noise.
    dtype : torch.dtype
        Of the operator, data, prior and model (the posterior moments are float64).

    Returns
    -------
    LinearGaussianProblem

    Raises
    ------
    InvalidArgumentError
        If a size or scale is not positive or ``singular_values`` decreases.
    """
    n = check_positive_int("n", n)
    n_shots = check_positive_int("n_shots", n_shots)
    rows = n_shots * check_positive_int("rows_per_shot", rows_per_shot)
    sigma = check_positive_scalar("sigma", sigma)
    prior_std = check_positive_scalar("prior_std", prior_std)
    s_min, s_max = check_tuple("singular_values", singular_values, 2, positive=True)
    if s_min > s_max:
        raise InvalidArgumentError(f"singular_values={singular_values} must be increasing")
    seed = check_int("seed", seed)
    g = torch.Generator().manual_seed(seed)
    k = min(n, rows)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    s = torch.logspace(
        torch.log10(torch.tensor(singular_values[0])).item(),
        torch.log10(torch.tensor(singular_values[1])).item(),
        k,
        dtype=torch.float64,
    )
    a = (u * (s * sigma / prior_std)) @ v.T
    model = prior_std * torch.randn(n, generator=g, dtype=torch.float64)
    data = a @ model + sigma * torch.randn(rows, generator=g, dtype=torch.float64)
    precision = a.T @ a / sigma**2 + torch.eye(n, dtype=torch.float64) / prior_std**2
    cov = torch.cholesky_inverse(torch.linalg.cholesky(precision))
    mean = cov @ (a.T @ data) / sigma**2
    return LinearGaussianProblem(
        operator=MatrixOperator(a.to(dtype), n_shots),
        data=data.reshape(n_shots, rows_per_shot).to(dtype),
        sigma=float(sigma),
        prior=GaussianPrior(torch.zeros(n, dtype=dtype), covariance=prior_std**2),
        model=model.to(dtype),
        posterior_mean=mean,
        posterior_covariance=cov,
    )


# ---------------------------------------------------------------------------- the 2-D ring

#: Modes of the ring, their variance and the angle between neighbouring centres (deg).
RING_MODES, RING_VARIANCE, RING_STEP_DEG = 20, 0.025, 15.0


def ring_centres(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[20, 2]`` centres on the unit circle at 15°·k."""
    ang = torch.arange(RING_MODES, dtype=torch.float64) * math.radians(RING_STEP_DEG)
    return torch.stack([ang.cos(), ang.sin()], 1).to(dtype)


class RingMixture(Prior):
    """Normalized negative log-density of the 20-Gaussian ring, ``[batch, 2] -> [batch]``.

    A :class:`Prior`, so that it is a whole posterior target on its own
    (``VariationalPosterior(flow, prior=RingMixture())``, ``MALA(prior=...)``).
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centres", ring_centres())

    def negative_log(self, m: torch.Tensor) -> torch.Tensor:
        d2 = (m.unsqueeze(1) - self.centres.to(m.dtype)).pow(2).sum(-1)  # [batch, 20]
        log_comp = -d2 / (2 * RING_VARIANCE) - math.log(2 * math.pi * RING_VARIANCE)
        return -(torch.logsumexp(log_comp, 1) - math.log(RING_MODES))


def ring_mode_fractions(samples: torch.Tensor) -> torch.Tensor:
    """``[20]`` fraction of ``samples`` ``[n, 2]`` whose nearest centre is each mode."""
    nearest = torch.cdist(samples.double(), ring_centres(torch.float64)).argmin(1)
    return torch.bincount(nearest, minlength=RING_MODES).double() / samples.shape[0]


def ring_modes_covered(fractions: torch.Tensor) -> bool:
    """True when every mode holds between 0.5/20 and 1.5/20 of the samples."""
    return bool(((fractions >= 0.5 / RING_MODES) & (fractions <= 1.5 / RING_MODES)).all())


@torch.no_grad()
def ring_kl_estimate(flow, target: RingMixture, n: int = 20000) -> tuple[float, float]:
    """KL(q‖p) = E_q[log q − log p] (nats) and its Monte-Carlo standard error.

    Exact up to Monte-Carlo error because the ring's density is normalized.

    Parameters
    ----------
    flow : devito_uq.flows.Flow
        Anything with ``rsample_and_log_prob(n)`` over ``[n, 2]``.
    target : RingMixture
        The ring.
    n : int
        Monte-Carlo draws.

    Returns
    -------
    (kl, stderr) : tuple of float
        In nats.
    """
    n = check_positive_int("n", n)
    x, log_q = flow.rsample_and_log_prob(n)
    diff = (log_q + target.negative_log(x)).double()
    return float(diff.mean()), float(diff.std() / math.sqrt(n))
