"""Gaussian, correlated Gaussian, smoothness, total-variation and flow priors
(devito_uq.inference.priors, priors_gaussian)."""

import math

import numpy as np
import pytest
import torch
from checks import slopes, taylor_test

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.flows import HINT, Flow, ImageFlow
from devito_uq.inference import (
    CorrelatedGaussianPrior,
    FlowPrior,
    GaussianPrior,
    SmoothnessPrior,
    TotalVariationPrior,
)


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


# -- CorrelatedGaussianPrior ---------------------------------------------------------------


def _exponential_covariance(shape, std, lengths, spacing):
    """Σ assembled from the grid coordinates, independently of the prior's code:
    std² · Π_k exp(−|x_k − x_k'| / ℓ_k), row-major flattening."""
    coords = torch.meshgrid(
        *[torch.arange(n, dtype=torch.float64) * h for n, h in zip(shape, spacing)],
        indexing="ij",
    )
    pts = torch.stack([c.reshape(-1) for c in coords], 1)  # [N, ndim]
    dist = (pts[:, None, :] - pts[None, :, :]).abs() / torch.tensor(lengths, dtype=torch.float64)
    s = torch.as_tensor(std, dtype=torch.float64).expand(shape).reshape(-1)
    return s[:, None] * torch.exp(-dist.sum(-1)) * s[None, :]


def test_correlated_gaussian_negative_log_matches_dense_gaussian():
    torch.manual_seed(5)
    shape, lengths, spacing = (6, 4), (30.0, 8.0), (10.0, 5.0)
    mean = torch.randn(*shape, dtype=torch.float64)
    prior = CorrelatedGaussianPrior(mean, 0.7, lengths, spacing=spacing)
    cov = _exponential_covariance(shape, 0.7, lengths, spacing)
    torch.testing.assert_close(prior.covariance_matrix(), cov)
    mvn = torch.distributions.MultivariateNormal(mean.reshape(-1), covariance_matrix=cov)
    m = mean + torch.randn(7, *shape, dtype=torch.float64)
    r = (m - mean).reshape(7, -1)
    torch.testing.assert_close(
        prior.negative_log(m), 0.5 * (r * torch.linalg.solve(cov, r.T).T).sum(1)
    )
    diff = prior(m) + mvn.log_prob(m.reshape(7, -1))
    torch.testing.assert_close(diff, diff[:1].expand(7))  # equal up to the constant
    torch.testing.assert_close(
        prior.precision_matvec(m - mean), torch.linalg.solve(cov, r.T).T.reshape(7, *shape)
    )
    torch.testing.assert_close(
        prior.precision_diagonal(), torch.linalg.inv(cov).diagonal().reshape(shape)
    )


def test_correlated_gaussian_tensor_std_and_one_axis():
    torch.manual_seed(6)
    mean = torch.zeros(5, 3, dtype=torch.float64)
    std = torch.linspace(0.5, 2.0, 3, dtype=torch.float64)  # [3] broadcast along axis 0
    prior = CorrelatedGaussianPrior(mean, std, 2.0, axes=1)  # rows independent
    cov = _exponential_covariance((5, 3), std, (1e-300, 2.0), (1.0, 1.0))
    torch.testing.assert_close(prior.covariance_matrix(), cov)
    m = torch.randn(4, 5, 3, dtype=torch.float64)
    r = m.reshape(4, -1)
    torch.testing.assert_close(prior(m), 0.5 * (r * torch.linalg.solve(cov, r.T).T).sum(1))
    torch.testing.assert_close(
        prior.precision_diagonal(), torch.linalg.inv(cov).diagonal().reshape(5, 3)
    )


def test_correlated_gaussian_sample_covariance_is_exponential():
    """The empirical covariance of exact draws matches the exponential kernel and rules
    out a squared-exponential one with the same length (which differs by > 0.1 here)."""
    shape, lengths = (6, 4), (3.0, 1.5)
    prior = CorrelatedGaussianPrior(torch.ones(*shape, dtype=torch.float64), 1.0, lengths)
    s = prior.sample(40000, generator=torch.Generator().manual_seed(0))
    assert s.shape == (40000, *shape)
    emp = torch.cov(s.reshape(40000, -1).T)
    cov = _exponential_covariance(shape, 1.0, lengths, (1.0, 1.0))
    assert float((emp - cov).abs().max()) < 0.04
    torch.testing.assert_close(
        s.mean(0), torch.ones(*shape, dtype=torch.float64), atol=0.03, rtol=0
    )
    coords = torch.meshgrid(torch.arange(6.0), torch.arange(4.0), indexing="ij")
    pts = torch.stack([c.reshape(-1) for c in coords], 1).double()
    d2 = (((pts[:, None] - pts[None]) / torch.tensor(lengths).double()) ** 2).sum(-1)
    assert float((emp - torch.exp(-d2)).abs().max()) > 0.1


def test_correlated_gaussian_errors():
    mean = torch.zeros(6, 4)
    with pytest.raises(InvalidArgumentError, match="correlation_length=-1.0 must be finite"):
        CorrelatedGaussianPrior(mean, 1.0, -1.0)
    with pytest.raises(InvalidArgumentError, match=r"correlation_length=\(1.0, 2.0, 3.0\) must"):
        CorrelatedGaussianPrior(mean, 1.0, (1.0, 2.0, 3.0))
    with pytest.raises(InvalidArgumentError, match=r"std=0.0 must be finite and positive"):
        CorrelatedGaussianPrior(mean, 0.0, 1.0)
    with pytest.raises(InvalidShapeError, match=r"std of shape \(5,\) does not broadcast"):
        CorrelatedGaussianPrior(mean, torch.ones(5), 1.0)
    with pytest.raises(InvalidArgumentError, match=r"axes=\(2,\) must be distinct axes"):
        CorrelatedGaussianPrior(mean, 1.0, 1.0, axes=2)
    with pytest.raises(InvalidArgumentError, match="mean must be a floating-point tensor"):
        CorrelatedGaussianPrior(torch.zeros(6, 4, dtype=torch.int64), 1.0, 1.0)
    prior = CorrelatedGaussianPrior(mean, 1.0, 1.0)
    with pytest.raises(InvalidShapeError, match=r"expects \[batch, \*\(6, 4\)\], got \(2, 4, 6\)"):
        prior(torch.zeros(2, 4, 6))
    with pytest.raises(InvalidArgumentError, match=r"N=4225 values.*refused above N=4096"):
        CorrelatedGaussianPrior(torch.zeros(65, 65), 1.0, 1.0).covariance_matrix()


# -- FlowPrior -------------------------------------------------------------------------------


def test_flow_prior_is_minus_flow_log_prob_with_gradient_in_m():
    torch.manual_seed(7)
    flow = Flow(HINT(4, steps=2, hidden=8, memory_frugal=False), (4,)).double()
    flow.net.skip_data_init()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    prior = FlowPrior(flow)
    assert not any(p.requires_grad for p in flow.parameters())
    m = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(prior(m), -flow.log_prob(m))
    h, e1, e2 = taylor_test(lambda x: prior(x).sum(), m, torch.randn_like(m), h0=0.1)
    assert np.all(np.abs(slopes(h, e2) - 2) < 0.2)
    # kwargs reach log_prob: an ImageFlow on a divisible grid is exact whatever n_pad
    img = ImageFlow((4, 4), levels=1, steps=1, hidden=4).double()
    x = torch.randn(2, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(FlowPrior(img, n_pad=3)(x), -img.log_prob(x))
    with pytest.raises(InvalidArgumentError, match="n_pad=0 must be an integer"):
        FlowPrior(img, n_pad=0)(x)


def test_flow_prior_with_a_parameterization_is_the_density_of_m():
    """``q(m) = q_x(g⁻¹(m)) / |det ∂g/∂x|``: checked with a flow at its initial weights
    (q_x = N(0, I): the mixing is orthogonal, the couplings the identity) and the
    Jacobian of a bounded ``g`` taken by autograd."""
    from devito_uq.inference import Parameterization

    torch.manual_seed(3)
    flow = Flow(HINT(4, steps=2, hidden=8, memory_frugal=False), (4,)).double()
    flow.net.skip_data_init()
    g = Parameterization(
        torch.full((4,), 0.5, dtype=torch.float64), scale=0.3, lower=0.1, upper=0.9
    )
    prior = FlowPrior(flow, g)
    x = torch.randn(2, 4, dtype=torch.float64)
    m = g(x)[0].detach()
    for k in range(2):
        jac = torch.autograd.functional.jacobian(lambda u: g(u[None])[0][0], x[k])
        log_q = -0.5 * x[k].pow(2).sum() - 2 * math.log(2 * math.pi) - torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(prior(m[k : k + 1])[0], -log_q)


def test_flow_prior_refuses_a_non_flow():
    with pytest.raises(InvalidArgumentError, match="FlowPrior needs a devito_uq.flows.Flow.*HINT"):
        FlowPrior(HINT(4, steps=1, hidden=4))
