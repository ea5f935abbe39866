"""MAP estimation (devito_uq.inference.map) against closed-form modes."""

import pytest
import torch

from devito_uq.errors import InvalidArgumentError
from devito_uq.inference import (
    GaussianPrior,
    Parameterization,
    PosteriorTarget,
    linear_gaussian_problem,
    map_estimate,
)


@pytest.fixture(scope="module")
def problem():
    return linear_gaussian_problem(n=32, singular_values=(0.1, 8.0), seed=0)


@pytest.mark.parametrize("method,iterations,lr", [("lbfgs", 50, 1.0), ("adam", 3000, 0.05)])
def test_map_is_posterior_mean_for_linear_gaussian(problem, method, iterations, lr):
    res = map_estimate(
        problem.likelihood(),
        problem.prior,
        torch.zeros(32),
        method=method,
        iterations=iterations,
        lr=lr,
    )
    err = float(
        (res.model.double() - problem.posterior_mean).norm() / problem.posterior_mean.norm()
    )
    assert err < 1e-3  # float32 round-off
    assert res.history[-1] <= res.history[0]


def test_map_with_bounds_is_mode_of_m():
    """Interior mode (0.8, 0.3) in the box: the search on x must not add the Jacobian of g
    (the mode of the latent density would be pulled towards the box centre)."""
    prior = GaussianPrior(torch.tensor([0.8, 0.3], dtype=torch.float64), covariance=0.04)
    g = Parameterization(torch.tensor([0.5, 0.5], dtype=torch.float64), lower=0.0, upper=1.0)
    x0 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    res = map_estimate(None, prior, x0, parameterization=g, iterations=100)
    torch.testing.assert_close(res.model, prior.mean, atol=1e-6, rtol=0)


def test_map_accepts_a_target():
    """A PosteriorTarget in the first position gives the same search as its three pieces."""
    prior = GaussianPrior(torch.tensor([0.8, 0.3], dtype=torch.float64), covariance=0.04)
    g = Parameterization(torch.tensor([0.5, 0.5], dtype=torch.float64), lower=0.0, upper=1.0)
    x0 = torch.tensor([0.5, 0.5], dtype=torch.float64)
    a = map_estimate(None, prior, x0, parameterization=g, iterations=20)
    b = map_estimate(PosteriorTarget(prior=prior, parameterization=g), x0=x0, iterations=20)
    assert torch.equal(a.model, b.model) and a.history == b.history


def test_map_errors(problem):
    lik = problem.likelihood()
    with pytest.raises(InvalidArgumentError, match=r"method='newton' must be one of"):
        map_estimate(lik, problem.prior, torch.zeros(32), method="newton")
    with pytest.raises(InvalidArgumentError, match=r"iterations=0 must be an integer >= 1"):
        map_estimate(lik, problem.prior, torch.zeros(32), iterations=0)
    with pytest.raises(InvalidArgumentError, match=r"lr=nan must be finite and positive"):
        map_estimate(lik, problem.prior, torch.zeros(32), lr=float("nan"))
    with pytest.raises(InvalidArgumentError, match="x0 must be a floating-point tensor"):
        map_estimate(lik, problem.prior)
    with pytest.raises(InvalidArgumentError, match="either a PosteriorTarget or"):
        map_estimate(PosteriorTarget(lik), problem.prior, torch.zeros(32))
