"""MALA and SGLD (devito_uq.inference.mcmc) against closed-form posteriors."""

import pytest
import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference import (
    MALA,
    SGLD,
    GaussianPrior,
    Parameterization,
    RingMixture,
    linear_gaussian_problem,
)
from devito_uq.inference.problems import ring_mode_fractions, ring_modes_covered


@pytest.fixture(scope="module")
def problem():
    return linear_gaussian_problem(n=32, singular_values=(0.1, 8.0), seed=0)


def _errors(summary, p):
    mean_err = float((summary.mean.double() - p.posterior_mean).norm() / p.posterior_mean.norm())
    std_err = ((summary.std.double() - p.posterior_std).abs() / p.posterior_std).max()
    return mean_err, float(std_err)


def test_mala_linear_gaussian_matches_closed_form(problem):
    """Same bounds as VI: mean 5 % (relative norm), std 10 % (max over coordinates)."""
    mala = MALA(problem.likelihood(), problem.prior, step_size=1e-3)
    r = mala.run(
        1000, n_chains=200, x0=torch.zeros(1, 32), burn_in=300, thin=5, seed=0, progress=False
    )
    assert r.samples.shape == (200, 200, 32)
    mean_err, std_err = _errors(mala.summary(), problem)
    assert mean_err < 0.05 and std_err < 0.10
    # Burn-in adaptation reaches the optimal MALA acceptance from a 20× too small step.
    assert r.acceptance_rate == pytest.approx(0.574, abs=0.05)
    assert r.step_size > 5e-3
    assert r.gradient_evaluations == 200 * 1301
    assert float(r.effective_sample_size().min()) > 500


def test_sgld_with_shot_subsets(problem):
    """Constant-step SGLD on 4 of 8 shots per step: biased by O(h), small at h = 0.003."""
    sgld = SGLD(problem.likelihood(shot_batch=4, seed=1), problem.prior, step_size=3e-3)
    r = sgld.run(
        2000, n_chains=200, x0=torch.zeros(1, 32), burn_in=1500, thin=10, seed=0, progress=False
    )
    mean_err, std_err = _errors(r.summary(), problem)
    assert mean_err < 0.05 and std_err < 0.10
    assert r.gradient_evaluations == pytest.approx(200 * 3500 * 0.5)
    assert r.acceptance_rate is None


def test_mala_bounded_parameterization_samples_truncated_normal():
    """The chain runs on x with −log|det J_g| in its potential; the draws of m must follow
    the truncated normal in (0, 1), not its image under a wrong change of variables."""
    from scipy.stats import truncnorm

    loc, scale = torch.tensor([0.2, 0.7], dtype=torch.float64), torch.tensor([0.3, 0.4])
    scale = scale.double()
    prior = GaussianPrior(loc, covariance=scale**2)
    g = Parameterization(torch.tensor([0.5, 0.5], dtype=torch.float64), 0.3, lower=0.0, upper=1.0)
    mala = MALA(prior=prior, parameterization=g, step_size=0.5)
    r = mala.run(600, n_chains=500, burn_in=200, thin=2, seed=1, progress=False)
    s = r.summary()
    a, b = (0 - loc) / scale, (1 - loc) / scale
    mean = torch.tensor(truncnorm.mean(a, b, loc=loc, scale=scale))
    std = torch.tensor(truncnorm.std(a, b, loc=loc, scale=scale))
    torch.testing.assert_close(s.mean, mean, atol=0.01, rtol=0)
    torch.testing.assert_close(s.std, std, rtol=0.04, atol=0)
    assert float(r.samples.min()) > 0.0 and float(r.samples.max()) < 1.0


def test_mcmc_errors(problem):
    lik = problem.likelihood()
    with pytest.raises(InvalidArgumentError, match=r"step_size=-1.0 must be finite and positive"):
        MALA(lik, problem.prior, step_size=-1.0)
    with pytest.raises(InvalidArgumentError, match=r"target_acceptance=1.5 must lie in \(0, 1\)"):
        MALA(lik, problem.prior, target_acceptance=1.5)
    with pytest.raises(InvalidArgumentError, match=r"decay=2.0 must lie in \[0, 1\]"):
        SGLD(lik, problem.prior, decay=2.0)
    with pytest.raises(InvalidArgumentError, match=r"n_chains=2.5 must be an integer"):
        MALA(lik, problem.prior).run(10, n_chains=2.5, x0=torch.zeros(1, 32), progress=False)
    mala = MALA(lik, problem.prior)
    with pytest.raises(InvalidArgumentError, match="x0 is required without a parameterization"):
        mala.run(10, n_chains=2, progress=False)
    with pytest.raises(InvalidShapeError, match="x0 has 3 chains but n_chains=2"):
        mala.run(10, n_chains=2, x0=torch.zeros(3, 32), progress=False)
    with pytest.raises(InvalidArgumentError, match="n_steps=3 keeps no draw with thin=5"):
        mala.run(3, x0=torch.zeros(1, 32), thin=5, progress=False)
    with pytest.raises(InvalidArgumentError, match=r"MALA.summary\(\) needs a run\(\) first"):
        mala.summary()


def test_mala_visits_every_mode_of_the_ring():
    """Many short chains from a broad cloud: every one of the 20 ring modes gets its share."""
    x0 = 1.5 * torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    r = MALA(prior=RingMixture(), step_size=0.05).run(
        400, n_chains=200, x0=x0, burn_in=100, thin=10, seed=0, progress=False
    )
    assert ring_modes_covered(ring_mode_fractions(r.flat()))
