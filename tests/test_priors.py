"""Gaussian, smoothness and total-variation priors (devito_uq.inference.priors)."""

import numpy as np
import pytest
import torch
from checks import slopes, taylor_test

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference import GaussianPrior, SmoothnessPrior, TotalVariationPrior


def test_gaussian_prior_forms_agree_with_torch_mvn():
    torch.manual_seed(2)
    n = 5
    b = torch.randn(n, n, dtype=torch.float64)
    cov = b @ b.T + n * torch.eye(n, dtype=torch.float64)
    mean = torch.randn(n, dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    m = torch.randn(7, n, dtype=torch.float64)
    for prior in (
        GaussianPrior(mean, covariance=cov),
        GaussianPrior(mean, precision=cov.inverse()),
    ):
        diff = prior.negative_log(m) + mvn.log_prob(m)
        torch.testing.assert_close(diff, diff[:1].expand(7))  # equal up to a constant
    iso = GaussianPrior(mean, covariance=2.0)
    diag = GaussianPrior(mean, precision=torch.full((n,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(iso(m), ((m - mean) ** 2).sum(1) / 4.0)
    torch.testing.assert_close(diag(m), iso(m))


def test_gaussian_prior_sample_covariance():
    torch.manual_seed(3)
    b = torch.randn(3, 3, dtype=torch.float64)
    cov = b @ b.T + torch.eye(3, dtype=torch.float64)
    prior = GaussianPrior(torch.ones(3, dtype=torch.float64), covariance=cov)
    s = prior.sample(40000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.cov(s.T), cov, rtol=0.05, atol=0.03)


def test_gaussian_prior_errors():
    m = torch.zeros(3)
    with pytest.raises(InvalidArgumentError, match="exactly one of covariance and precision"):
        GaussianPrior(m)
    with pytest.raises(InvalidArgumentError, match=r"covariance matrix \[3, 3\] is not positive"):
        GaussianPrior(m, covariance=-torch.eye(3))
    with pytest.raises(InvalidArgumentError, match="is not symmetric"):
        GaussianPrior(m, covariance=torch.eye(3) + torch.triu(torch.ones(3, 3), 1))
    with pytest.raises(InvalidShapeError, match=r"got shape \(2, 2\)"):
        GaussianPrior(m, precision=torch.eye(2))
    with pytest.raises(InvalidArgumentError, match=r"covariance=0.0 must be finite and positive"):
        GaussianPrior(m, covariance=0.0)
    with pytest.raises(InvalidShapeError, match=r"models must be \[batch, \*\(3,\)\]"):
        GaussianPrior(m, covariance=1.0)(torch.zeros(2, 4))


def test_smoothness_prior_closed_form():
    torch.manual_seed(4)
    m = torch.randn(2, 4, 5, dtype=torch.float64)
    prior = SmoothnessPrior(0.5, axes=(0, 1), spacing=(2.0, 1.0), sigma_norm=3.0)
    dz = (m[:, 1:] - m[:, :-1]) / 2.0
    dx = m[:, :, 1:] - m[:, :, :-1]
    expected = (dz**2).sum((1, 2)) / 0.5 + (dx**2).sum((1, 2)) / 0.5 + (m**2).sum((1, 2)) / 18
    torch.testing.assert_close(prior(m), expected)
    # A constant shift is free without the norm term (improper prior).
    free = SmoothnessPrior(0.5, axes=0)
    torch.testing.assert_close(free(m + 3.0), free(m))


def test_total_variation_of_a_step():
    m = torch.zeros(1, 10, dtype=torch.float64)
    m[0, 5:] = 2.0  # one jump of 2
    tv = TotalVariationPrior(weight=0.5, axes=0, epsilon=1e-8)
    assert float(tv(m)) == pytest.approx(0.5 * 2.0, rel=1e-6)
    m2 = torch.randn(1, 6, 7, dtype=torch.float64)
    tv2 = TotalVariationPrior(weight=1.0, axes=(0, 1), epsilon=0.1)
    h, e1, e2 = taylor_test(lambda x: tv2(x).sum(), m2, torch.randn_like(m2), h0=0.1)
    assert np.all(np.abs(slopes(h, e2) - 2) < 0.2)


def test_difference_prior_errors():
    with pytest.raises(InvalidArgumentError, match=r"sigma=-1.0 must be finite and positive"):
        SmoothnessPrior(-1.0)
    with pytest.raises(InvalidArgumentError, match=r"axes must not repeat, got \(0, 0\)"):
        SmoothnessPrior(1.0, axes=(0, 0))
    with pytest.raises(InvalidArgumentError, match=r"spacing=\(1.0,\) must give one value per"):
        TotalVariationPrior(1.0, axes=(0, 1), spacing=(1.0,))
    with pytest.raises(InvalidShapeError, match=r"prior axes \(1,\) do not exist"):
        SmoothnessPrior(1.0, axes=1)(torch.zeros(2, 5))
