r"""Inverse problems with a known posterior, to validate samplers.

:func:`linear_gaussian_problem` builds :math:`d = A m + \varepsilon`,
:math:`\varepsilon \sim N(0, \sigma^2 I)`, prior :math:`N(\mu_0, \tau^2 I)`, whose
posterior is Gaussian with

.. math::
    \Sigma = (A^\top A / \sigma^2 + I/\tau^2)^{-1}, \qquad
    \mu = \Sigma (A^\top d / \sigma^2 + \mu_0 / \tau^2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference.likelihood import GaussianLikelihood
from devito_uq.inference.priors import GaussianPrior

__all__ = ["MatrixOperator", "LinearGaussianProblem", "linear_gaussian_problem"]


class MatrixOperator(nn.Module):
    """``F(m) = A m`` with the rows of ``A`` grouped into shots.

    ``A`` is ``[n_shots · rows_per_shot, n]``; ``F(m)`` maps ``[batch, n]`` to
    ``[batch, n_shots, rows_per_shot]``, or to ``[batch, len(shots), rows_per_shot]``
    with ``shots=``, like a seismic operator restricted to some shots.
    """

    def __init__(self, matrix: torch.Tensor, n_shots: int = 1) -> None:
        super().__init__()
        if matrix.ndim != 2 or matrix.shape[0] % n_shots:
            raise InvalidShapeError(
                f"matrix {tuple(matrix.shape)} must be 2-D with rows divisible by n_shots={n_shots}"
            )
        self.register_buffer("matrix", matrix.reshape(n_shots, -1, matrix.shape[1]))

    def forward(self, m: torch.Tensor, shots: torch.Tensor | None = None) -> torch.Tensor:
        a = self.matrix if shots is None else self.matrix[shots]
        return torch.einsum("srn,bn->bsr", a.to(m.dtype), m)


@dataclass
class LinearGaussianProblem:
    """A linear-Gaussian inverse problem and its exact posterior.

    Attributes:
        operator: :class:`MatrixOperator`.
        data: ``[n_shots, rows_per_shot]`` noisy data.
        sigma: noise standard deviation.
        prior: :class:`GaussianPrior` ``N(0, τ² I)``.
        model: ``[n]`` the true model (a prior draw).
        posterior_mean: ``[n]`` μ (float64).
        posterior_covariance: ``[n, n]`` Σ (float64).
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
        """The :class:`GaussianLikelihood` of this problem."""
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
    """
    rows = n_shots * rows_per_shot
    if n < 1 or rows < 1:
        raise InvalidArgumentError(f"need n >= 1 and data rows >= 1, got n={n}, rows={rows}")
    if not (sigma > 0 and prior_std > 0 and 0 < singular_values[0] <= singular_values[1]):
        raise InvalidArgumentError(
            f"sigma, prior_std and singular values must be positive, got {sigma}, "
            f"{prior_std}, {singular_values}"
        )
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
