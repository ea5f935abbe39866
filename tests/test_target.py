"""The posterior target (devito_uq.inference.target): U(x) and its terms, with and without
the Jacobian of g, full and stochastic likelihoods, validation, and samplers built on it."""

import numpy as np
import pytest
import torch
from checks import slopes, taylor_test

from devito_uq.errors import InvalidArgumentError
from devito_uq.flows import HINT, Flow
from devito_uq.inference import (
    MALA,
    SGLD,
    Parameterization,
    PosteriorTarget,
    VariationalPosterior,
    linear_gaussian_problem,
)


@pytest.fixture
def pieces():
    p = linear_gaussian_problem(n=4, n_shots=4, rows_per_shot=2, dtype=torch.float64)
    g = Parameterization(torch.full((4,), 0.5, dtype=torch.float64), 0.3, lower=-2.0, upper=3.0)
    return p, g


def test_value_is_misfit_plus_prior_minus_logdet(pieces):
    p, g = pieces
    lik = p.likelihood()
    target = PosteriorTarget(lik, p.prior, g)
    x = torch.randn(5, 4, dtype=torch.float64)
    m, logdet = g(x)
    expected = lik(m) + p.prior(m)
    torch.testing.assert_close(target.value(x, jacobian=False), expected)
    torch.testing.assert_close(target(x), expected - logdet)
    t = target.terms(x)
    torch.testing.assert_close(t.model, m)
    torch.testing.assert_close(t.misfit, lik(m))
    torch.testing.assert_close(t.prior, p.prior(m))
    torch.testing.assert_close(t.logdet, logdet)
    torch.testing.assert_close(target.to_latent(target.to_model(x)[0]), x)
    assert target.model_shape == (4,)


def test_missing_pieces_are_zero(pieces):
    p, _ = pieces
    x = torch.randn(3, 4, dtype=torch.float64)
    only_prior = PosteriorTarget(prior=p.prior)
    torch.testing.assert_close(only_prior(x), p.prior(x))
    only_lik = PosteriorTarget(lambda m: m.pow(2).sum(1))  # a plain callable, no full=
    torch.testing.assert_close(only_lik(x, full=False), x.pow(2).sum(1))
    assert only_lik.model_shape is None


def test_full_and_stochastic_likelihood(pieces):
    p, _ = pieces
    full = p.likelihood()
    target = PosteriorTarget(p.likelihood(shot_batch=1, seed=0))
    x = torch.randn(2, 4, dtype=torch.float64)
    torch.testing.assert_close(target(x), full(x))  # default: every shot (MALA, MAP)
    # One of four shots per call, ×4: differs from the full value, averages to it.
    draws = torch.stack([target(x, full=False) for _ in range(4000)])
    assert not torch.allclose(draws[0], full(x))
    torch.testing.assert_close(draws.mean(0), full(x), rtol=0.05, atol=0)


def test_gradient_taylor(pieces):
    p, g = pieces
    target = PosteriorTarget(p.likelihood(), p.prior, g)
    x0 = torch.randn(1, 4, dtype=torch.float64)
    dx = torch.randn(1, 4, dtype=torch.float64)
    u, grad = target.value_and_grad(x0)
    torch.testing.assert_close(u, target(x0))
    assert not u.requires_grad and not grad.requires_grad
    h, e1, e2 = taylor_test(lambda x: target(x).sum(), x0, dx, h0=1e-2)
    assert np.all(np.abs(slopes(h, e1) - 1) < 0.1)
    assert np.all(np.abs(slopes(h, e2) - 2) < 0.1)
    # value_and_grad's gradient is autograd's, sample by sample.
    xs = torch.randn(3, 4, dtype=torch.float64)
    _, gs = target.value_and_grad(xs, jacobian=False)
    for i in range(3):
        _, gi = target.value_and_grad(xs[i : i + 1], jacobian=False)
        torch.testing.assert_close(gs[i : i + 1], gi)


def test_target_errors(pieces):
    p, g = pieces
    with pytest.raises(InvalidArgumentError, match="got neither"):
        PosteriorTarget()
    with pytest.raises(InvalidArgumentError, match="likelihood must be callable, got int"):
        PosteriorTarget(3)
    with pytest.raises(InvalidArgumentError, match="prior must provide negative_log"):
        PosteriorTarget(prior=lambda m: m)
    with pytest.raises(InvalidArgumentError, match="must be a Parameterization, got str"):
        PosteriorTarget(p.likelihood(), parameterization="log")
    target = PosteriorTarget(p.likelihood())
    with pytest.raises(InvalidArgumentError, match="either a PosteriorTarget or"):
        MALA(target, p.prior)
    with pytest.raises(InvalidArgumentError, match="either a PosteriorTarget or"):
        VariationalPosterior(Flow(HINT(4, steps=1, hidden=8), (4,)), target, None, g)


def test_samplers_accept_a_target(pieces):
    """A target in the first position runs the same chain / objective as its pieces."""
    p, g = pieces
    lik, prior = p.likelihood(), p.prior
    target = PosteriorTarget(lik, prior, g)
    runs = [
        MALA(*args, step_size=0.01).run(20, n_chains=3, seed=4, progress=False)
        for args in ((lik, prior, g), (target,))
    ]
    assert torch.equal(runs[0].samples, runs[1].samples)
    sgld = SGLD(target, step_size=1e-3)
    assert sgld.target is target
    torch.manual_seed(0)
    flow = Flow(HINT(4, steps=1, hidden=8, memory_frugal=False), (4,)).double()
    losses = []
    for vi in (VariationalPosterior(flow, lik, prior, g), VariationalPosterior(flow, target)):
        torch.manual_seed(1)
        with torch.no_grad():
            losses.append(float(vi.loss_terms(16)["loss"]))
        assert vi.likelihood is lik and vi.prior is prior and vi.parameterization is g
    assert losses[0] == losses[1]
