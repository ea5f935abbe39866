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


def test_map_stops_on_a_stall_and_says_whether_the_cap_came_first():
    """stall_nats turns iterations into a cap: on an ill-conditioned quadratic (float64, so
    round-off does not fake a stall) L-BFGS stops once 10 iterations gain < 1e-8 nats,
    well before 500, at the exact mode; a cap of 5 comes first and is reported as not
    converged. The search continues across windows with its curvature pairs: the stalled
    run matches one uninterrupted run of as many iterations."""
    p = linear_gaussian_problem(n=32, singular_values=(0.01, 100.0), seed=1, dtype=torch.float64)
    x0 = torch.zeros(32, dtype=torch.float64)
    res = map_estimate(p.likelihood(), p.prior, x0, iterations=500, stall_nats=1e-8)
    err = float((res.model - p.posterior_mean).norm() / p.posterior_mean.norm())
    assert res.converged is True and 10 < res.iterations < 500, res.iterations
    assert err < 1e-4, err
    whole = map_estimate(p.likelihood(), p.prior, x0, iterations=res.iterations)
    assert whole.converged is None
    torch.testing.assert_close(whole.model, res.model, atol=1e-9, rtol=0)
    short = map_estimate(p.likelihood(), p.prior, x0, iterations=5, stall_nats=1e-8)
    assert short.converged is False and short.iterations == 5
    adam = map_estimate(
        p.likelihood(), p.prior, x0, method="adam", lr=0.05, iterations=20000, stall_nats=1e-6
    )
    assert adam.converged is True and adam.iterations < 20000 and adam.iterations % 10 == 0
    with pytest.raises(InvalidArgumentError, match=r"stall_nats=0.0 must be finite and positive"):
        map_estimate(p.likelihood(), p.prior, x0, stall_nats=0.0)
    with pytest.raises(InvalidArgumentError, match=r"stall_window=0 must be an integer >= 1"):
        map_estimate(p.likelihood(), p.prior, x0, stall_nats=1.0, stall_window=0)
