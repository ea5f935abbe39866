"""pCN (devito_uq.inference.pcn) against closed-form posteriors, in plain and whitened latents."""

import math

import pytest
import torch

from devito_uq.errors import InvalidArgumentError
from devito_uq.inference import (
    PCN,
    DiagonalSqrt,
    LaplaceParameterization,
    PosteriorTarget,
    linear_gaussian_problem,
)


@pytest.fixture(scope="module")
def problem():
    return linear_gaussian_problem(n=16, singular_values=(0.1, 8.0), seed=0, dtype=torch.float64)


def _whitened(p, centre):
    """``m = centre + A x`` with ``A Aᵀ`` the exact posterior covariance (full-rank Laplace)."""
    n = p.posterior_mean.numel()
    sqrt = DiagonalSqrt(torch.ones(n, dtype=torch.float64))  # the problem's prior is N(0, I)
    a = p.operator.matrix.reshape(-1, n).double()
    h = a.T @ a / p.sigma**2  # prior-whitened Gauss–Newton Hessian (exact here)
    lam, vec = torch.linalg.eigh(h)
    return LaplaceParameterization(centre, sqrt, lam.clamp_min(0.0), vec)


def test_pcn_matches_the_closed_form_posterior_in_the_prior_latent(problem):
    """x = m with the N(0, I) prior: Φ is the misfit alone, the textbook pCN. The data fix
    some directions to 1/80 of their prior spread, so moves are small, yet the chain's law
    is the posterior: mean and std within 4 Monte Carlo standard errors."""
    sampler = PCN(problem.likelihood(), problem.prior, step_size=0.5)
    r = sampler.run(
        3000,
        n_chains=64,
        x0=torch.zeros(1, 16, dtype=torch.float64),
        burn_in=500,
        seed=0,
        progress=False,
    )
    ess = r.effective_sample_size().double()
    s = r.summary()
    sd = problem.posterior_std
    z_mean = (s.mean.double() - problem.posterior_mean) / (sd / ess.sqrt())
    # Var of a sample std ≈ σ²/(2·ESS) for near-Gaussian draws.
    z_std = (s.std.double() - sd) / (sd / (2.0 * ess).sqrt())
    assert float(z_mean.abs().max()) < 4.0, z_mean
    assert float(z_std.abs().max()) < 4.0, z_std
    assert float(ess.min()) > 300
    assert r.acceptance_rate == pytest.approx(0.25, abs=0.05)  # the burn-in's target
    assert r.method == "pCN" and 0.0 < r.step_size < 0.4  # shrunk from 0.5
    assert r.gradient_evaluations == 64 * 3501


def test_pcn_in_the_exact_posterior_latent_accepts_everything_and_draws_independently(problem):
    """When the latent's law is the posterior (the Laplace latent of a linear-Gaussian
    problem at full rank), Φ is constant: every proposal is accepted, β adapts to its cap
    and the draws are independent (ESS ≈ the number of draws)."""
    g = _whitened(problem, problem.posterior_mean.clone())
    target = PosteriorTarget(problem.likelihood(), problem.prior, g)
    r = PCN(target, step_size=0.3).run(400, n_chains=32, burn_in=100, seed=1, progress=False)
    assert r.acceptance_rate == 1.0
    assert r.step_size > 0.999
    ess = r.effective_sample_size()
    assert float(ess.min()) > 0.5 * 400 * 32
    flat = r.flat().double()
    torch.testing.assert_close(flat.std(0), problem.posterior_std, rtol=0.05, atol=0)


def test_pcn_is_exact_for_a_non_gaussian_target_in_a_mismatched_latent():
    """U(m) = m⁴/4 (no Gaussian part) from a latent scaled 2× too wide: the draws must
    follow exp(−m⁴/4), whose E[m²] = 2 Γ(3/4)/Γ(1/4) and E[m⁴] = 1."""

    def potential(m):
        return m.pow(4).sum(-1) / 4.0

    class Flat:  # no prior term: the target is the likelihood's alone
        def negative_log(self, m):
            return torch.zeros(m.shape[0], dtype=m.dtype)

    from devito_uq.inference import Parameterization

    g = Parameterization(torch.zeros(1, dtype=torch.float64), 2.0)
    r = PCN(potential, Flat(), g, step_size=0.9).run(
        2000, n_chains=200, burn_in=300, seed=2, progress=False
    )
    m = r.flat().double().flatten()
    second = 2.0 * math.gamma(0.75) / math.gamma(0.25)
    ess = float(r.effective_sample_size().min())
    assert float(m.pow(2).mean()) == pytest.approx(second, abs=4.0 * 0.6 / math.sqrt(ess))
    assert float(m.pow(4).mean()) == pytest.approx(1.0, abs=4.0 * 1.6 / math.sqrt(ess))
    assert abs(float(m.mean())) < 4.0 / math.sqrt(ess)


def test_pcn_errors(problem):
    lik = problem.likelihood()
    with pytest.raises(InvalidArgumentError, match=r"step_size=1.5 must lie in \(0, 1\]"):
        PCN(lik, problem.prior, step_size=1.5)
    with pytest.raises(InvalidArgumentError, match=r"step_size=0.0 must lie in \(0, 1\]"):
        PCN(lik, problem.prior, step_size=0.0)
    with pytest.raises(InvalidArgumentError, match=r"target_acceptance=1.0 must lie in \(0, 1\)"):
        PCN(lik, problem.prior, target_acceptance=1.0)
    sampler = PCN(lambda m: torch.full((m.shape[0],), math.inf, dtype=m.dtype), problem.prior)
    with pytest.raises(InvalidArgumentError, match="potential at the start x0 of chain 0 is inf"):
        sampler.run(5, n_chains=2, x0=torch.zeros(1, 16, dtype=torch.float64), progress=False)
    with pytest.raises(InvalidArgumentError, match=r"pCN.summary\(\) needs a run\(\) first"):
        sampler.summary()


def test_pcn_without_adaptation_keeps_its_step(problem):
    r = PCN(problem.likelihood(), problem.prior, step_size=0.05, adapt=False).run(
        50,
        n_chains=4,
        x0=torch.zeros(1, 16, dtype=torch.float64),
        burn_in=20,
        seed=0,
        progress=False,
    )
    assert r.step_size == 0.05
    assert r.samples.shape == (50, 4, 16)
