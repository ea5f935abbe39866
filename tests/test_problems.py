"""Problems with known posteriors (devito_uq.inference.problems): the linear-Gaussian
problem's closed form and the 2-D ring mixture."""

import math

import pytest
import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference import MatrixOperator, RingMixture, linear_gaussian_problem
from devito_uq.inference.problems import (
    ring_centres,
    ring_kl_estimate,
    ring_mode_fractions,
    ring_modes_covered,
)


def test_linear_gaussian_posterior_is_the_closed_form():
    """μ and Σ against a direct solve of the normal equations in float64, and Σ⁻¹'s
    stationarity: the gradient of misfit + prior vanishes at μ."""
    p = linear_gaussian_problem(n=6, n_shots=3, rows_per_shot=2, dtype=torch.float64)
    a = p.operator.matrix.reshape(6, 6)
    precision = a.T @ a / p.sigma**2 + torch.eye(6, dtype=torch.float64)
    torch.testing.assert_close(p.posterior_covariance @ precision, torch.eye(6).double())
    mu = p.posterior_mean.clone().requires_grad_(True)
    u = p.likelihood()(mu.unsqueeze(0)) + p.prior(mu.unsqueeze(0))
    (grad,) = torch.autograd.grad(u.sum(), mu)
    assert float(grad.abs().max()) < 1e-10
    assert p.data.shape == (3, 2) and p.model.shape == (6,)


def test_matrix_operator_shot_subsets():
    a = torch.arange(12.0).reshape(6, 2)
    op = MatrixOperator(a, n_shots=3)
    m = torch.tensor([[1.0, -1.0]])
    full = op(m)
    assert full.shape == (1, 3, 2)
    torch.testing.assert_close(full.reshape(1, 6), m @ a.T)
    torch.testing.assert_close(op(m, shots=torch.tensor([2, 0])), full[:, [2, 0]])


def test_problem_errors():
    with pytest.raises(InvalidArgumentError, match=r"n=0 must be an integer >= 1"):
        linear_gaussian_problem(n=0)
    with pytest.raises(InvalidArgumentError, match=r"sigma=-0.5 must be finite and positive"):
        linear_gaussian_problem(sigma=-0.5)
    with pytest.raises(InvalidArgumentError, match=r"singular_values=\(4.0, 0.2\) must be incr"):
        linear_gaussian_problem(singular_values=(4.0, 0.2))
    with pytest.raises(InvalidShapeError, match=r"rows divisible by n_shots=4"):
        MatrixOperator(torch.ones(6, 2), n_shots=4)


def test_ring_is_the_specified_normalized_mixture():
    c = ring_centres(torch.float64)
    assert c.shape == (20, 2)
    torch.testing.assert_close(c.norm(dim=1), torch.ones(20, dtype=torch.float64))
    angles = torch.rad2deg(torch.atan2(c[:, 1], c[:, 0])) % 360
    torch.testing.assert_close(angles, 15.0 * torch.arange(20, dtype=torch.float64))
    target = RingMixture().double()
    # Normalized: the density integrates to 1 (midpoint rule on [-2, 2]²).
    n, half = 400, 2.0
    t = -half + (torch.arange(n, dtype=torch.float64) + 0.5) * (2 * half / n)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    mass = torch.exp(-target.negative_log(grid)).sum() * (2 * half / n) ** 2
    assert float(mass) == pytest.approx(1.0, abs=1e-4)
    # At a centre far from the others the density is ≈ one component's peak / 20.
    peak = 1 / (20 * 2 * math.pi * 0.025)
    assert float(torch.exp(-target.negative_log(c[9:10]))) > peak


def _exact_ring_samples(n, generator):
    k = torch.randint(20, (n,), generator=generator)
    return k, ring_centres()[k] + math.sqrt(0.025) * torch.randn(n, 2, generator=generator)


def test_ring_mode_fractions_of_exact_samples():
    k, x = _exact_ring_samples(200000, torch.Generator().manual_seed(0))
    fr = ring_mode_fractions(x)
    assert float(fr.sum()) == pytest.approx(1.0)
    assert ring_modes_covered(fr)
    # A sampler that misses one mode fails the check.
    assert not ring_modes_covered(ring_mode_fractions(x[k != 7]))


class _Exact:
    """The ring itself as a 'flow': exact samples and exact log-density, so KL = 0."""

    def __init__(self, target):
        self.target, self.gen = target, torch.Generator().manual_seed(1)

    def rsample_and_log_prob(self, n):
        x = _exact_ring_samples(n, self.gen)[1]
        return x, -self.target.negative_log(x)


class _Shifted(_Exact):
    """Exact samples shifted by δ: KL(q‖p) of a translate, positive."""

    def rsample_and_log_prob(self, n):
        x = _exact_ring_samples(n, self.gen)[1]
        return x + 0.3, -self.target.negative_log(x)


def test_ring_kl_estimate_known_answers():
    target = RingMixture()
    kl, se = ring_kl_estimate(_Exact(target), target, 20000)
    assert abs(kl) < 1e-5 and se < 1e-5  # log q − log p is zero sample by sample
    kl_shift, se_shift = ring_kl_estimate(_Shifted(target), target, 20000)
    assert kl_shift > 10 * se_shift > 0
