"""Low-rank Laplace preconditioning: the eigensolver, the factor A and its inverse/log-det."""

from __future__ import annotations

import math

import pytest
import torch

from devito_uq.errors import InvalidArgumentError
from devito_uq.inference import (
    CorrelatedGaussianPrior,
    DiagonalSqrt,
    LaplaceParameterization,
    low_rank_eigh,
)
from devito_uq.inference.laplace import residual_shrink

SHAPE = (6, 5)
N = 30


def _spd(n: int, decay: float, seed: int = 0) -> torch.Tensor:
    """A PSD matrix with eigenvalues 1e4·i^-decay and random eigenvectors."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = 1e4 * torch.arange(1, n + 1, dtype=torch.float64) ** -decay
    return (q * lam) @ q.T


def _matvec(mat):
    return lambda v: (v.reshape(v.shape[0], -1) @ mat).reshape(v.shape)


def _explicit(g: LaplaceParameterization) -> torch.Tensor:
    """A as a dense [N, N] matrix (columns: images of unit latents), unbounded g."""
    eye = torch.eye(N, dtype=torch.float64).reshape(N, *SHAPE)
    ref = g.reference.reshape(1, -1)
    return (g(eye)[0].reshape(N, -1) - ref).T


def test_low_rank_eigh_finds_the_top_eigenpairs():
    h = _spd(N, 3.0)
    count = [0]

    def counted(v):
        count[0] += v.shape[0]
        return _matvec(h)(v)

    lam, vec = low_rank_eigh(counted, SHAPE, rank=6, oversample=8, seed=1)
    exact = torch.linalg.eigvalsh(h).flip(0)[:6]
    # Two passes with 8 extra vectors (28 products < N = 30): the top eigenvalues to ~1 %
    # (the spectrum decays as i^-3), the leading ones far better.
    assert count[0] == 28
    torch.testing.assert_close(lam, exact, rtol=1e-2, atol=0)
    assert abs(float(lam[0] / exact[0]) - 1) < 1e-6
    torch.testing.assert_close(vec.T @ vec, torch.eye(6, dtype=torch.float64), atol=1e-10, rtol=0)
    # Two passes of k = 16 would cost 32 products, more than the 30 of an assembly: it
    # assembles instead, exact, never spending more than N.
    count[0] = 0
    lam_full, _ = low_rank_eigh(counted, SHAPE, rank=10, oversample=6, seed=1)
    assert count[0] == N
    exact = torch.linalg.eigvalsh(h).flip(0)[:10]
    torch.testing.assert_close(lam_full, exact, rtol=1e-9, atol=0)


@pytest.mark.parametrize("whitening", ["diagonal", "kronecker"])
def test_full_rank_factor_is_the_exact_posterior_covariance(whitening):
    torch.set_default_dtype(torch.float64)
    try:
        if whitening == "diagonal":
            sqrt = DiagonalSqrt(torch.linspace(0.5, 2.0, N).reshape(SHAPE))
            prior_cov = torch.diag(sqrt.std.flatten() ** 2)
        else:
            prior = CorrelatedGaussianPrior(torch.zeros(SHAPE), 0.3, 2.5, spacing=(1.0, 1.5))
            sqrt, prior_cov = prior.sqrt(), prior.covariance_matrix()
        h = _spd(N, 2.0, seed=2)  # the misfit's Gauss–Newton Hessian
        lam, vec = low_rank_eigh(lambda v: sqrt.rmatvec(_matvec(h)(sqrt.matvec(v))), SHAPE, N)
        ref = torch.randn(SHAPE)
        g = LaplaceParameterization(ref, sqrt, lam, vec)
        a = _explicit(g)
        exact = torch.linalg.inv(torch.linalg.inv(prior_cov) + h)
        torch.testing.assert_close(a @ a.T, exact, rtol=1e-8, atol=1e-10 * float(exact.abs().max()))
        x = torch.randn(3, *SHAPE)
        m, logdet = g(x)
        torch.testing.assert_close(logdet, torch.full((3,), torch.linalg.slogdet(a)[1].item()))
        torch.testing.assert_close(g.inverse(m), x, rtol=1e-9, atol=1e-9)
    finally:
        torch.set_default_dtype(torch.float32)


def test_truncated_factor_with_residual_shrink_and_bounds():
    torch.set_default_dtype(torch.float64)
    try:
        sqrt = DiagonalSqrt(torch.full(SHAPE, 0.2))
        h = _spd(N, 1.0, seed=3)
        lam, vec = low_rank_eigh(_matvec(sqrt.std.flatten()[:, None] * h * 0.04 / 0.2), SHAPE, 6)
        res = residual_shrink(lam, N)
        assert 0.0 < res < 1.0
        g = LaplaceParameterization(torch.zeros(SHAPE), sqrt, lam, vec, residual=res)
        a = _explicit(g)
        _, logdet = g(torch.zeros(1, *SHAPE))
        assert math.isclose(float(logdet), float(torch.linalg.slogdet(a)[1]), rel_tol=1e-10)
        # Directions beyond rank 6 are scaled by the residual factor.
        w = torch.randn(N)
        w = w - vec @ (vec.T @ w)
        torch.testing.assert_close(a @ w, 0.2 * res * w)
        gb = LaplaceParameterization(
            torch.full(SHAPE, 0.5), sqrt, lam, vec, lower=0.1, upper=0.9, residual=res
        )
        x = torch.randn(4, *SHAPE)
        m, _ = gb(x)
        assert float(m.min()) > 0.1 and float(m.max()) < 0.9
        torch.testing.assert_close(gb.inverse(m), x, rtol=1e-7, atol=1e-7)
    finally:
        torch.set_default_dtype(torch.float32)


def test_residual_shrink_follows_a_power_law_tail():
    n, r = 2000, 100
    full = 1e6 * torch.arange(1, n + 1, dtype=torch.float64) ** -1.5
    exact = float(torch.mean(1.0 / (1.0 + full[r:])).sqrt())
    assert abs(residual_shrink(full[:r], n) / exact - 1.0) < 0.05
    assert residual_shrink(full, n) == 1.0  # nothing left to guess
    assert residual_shrink(torch.full((r,), 0.5), n) == 1.0  # tail below 1: the prior


def test_bad_arguments_are_refused():
    sqrt = DiagonalSqrt(torch.ones(SHAPE))
    with pytest.raises(InvalidArgumentError, match="eigenvectors"):
        LaplaceParameterization(torch.zeros(SHAPE), sqrt, torch.ones(2), torch.zeros(7, 2))
    with pytest.raises(InvalidArgumentError, match="residual"):
        LaplaceParameterization(
            torch.zeros(SHAPE), sqrt, torch.ones(2), torch.zeros(N, 2), residual=1.5
        )
    with pytest.raises(InvalidArgumentError, match="rank"):
        low_rank_eigh(lambda v: v, SHAPE, rank=0)
