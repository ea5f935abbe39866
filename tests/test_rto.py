"""Batched preconditioned CG and randomize-then-optimize against a closed-form
linear-Gaussian posterior (random dense ``J``, correlated Gaussian prior, 80 unknowns)."""

from __future__ import annotations

import pytest
import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference import CorrelatedGaussianPrior
from devito_uq.inference.rto import (
    conjugate_gradient,
    monte_carlo_std_error,
    operator_norm,
    randomize_then_optimize,
)

NX, NZ, NDATA, SIGMA = 10, 8, 60, 0.3
N = NX * NZ


def _batched(mat: torch.Tensor):
    def apply(v: torch.Tensor) -> torch.Tensor:
        return (v.reshape(v.shape[0], -1) @ mat.T).reshape(v.shape)

    return apply


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    jac = torch.randn(NDATA, N, generator=g, dtype=torch.float64)
    prior = CorrelatedGaussianPrior(torch.full((NX, NZ), 0.2, dtype=torch.float64), 0.5, 2.0)
    truth = prior.sample(1, generator=g)[0]
    d = jac @ truth.flatten() + SIGMA * torch.randn(NDATA, generator=g, dtype=torch.float64)
    cov0 = prior.covariance_matrix()
    precision = jac.T @ jac / SIGMA**2 + torch.linalg.inv(cov0)
    cov = torch.linalg.inv(precision)
    mu0 = prior.mean.flatten()
    mean = cov @ (jac.T @ d / SIGMA**2 + torch.linalg.solve(cov0, mu0))
    return jac, d, prior, mean.reshape(NX, NZ), cov


def test_cg_solves_every_right_hand_side_to_the_tolerance():
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(0, 4, N, dtype=torch.float64)) @ q.T
    b = torch.randn(5, NX, NZ, generator=g, dtype=torch.float64)
    res = conjugate_gradient(_batched(a), b, rtol=1e-8, maxiter=1000)
    true = (_batched(a)(res.x) - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)
    assert bool(res.converged.all()) and float(res.residuals.max()) <= 1e-8
    assert float(true.max()) < 1e-7
    assert res.products == int(res.iterations.sum())
    # An exact preconditioner: one iteration each.
    exact = conjugate_gradient(_batched(a), b, _batched(torch.linalg.inv(a)), rtol=1e-8)
    assert exact.iterations.tolist() == [1] * 5
    # Too few iterations: reported, not hidden.
    short = conjugate_gradient(_batched(a), b, rtol=1e-8, maxiter=3)
    assert not bool(short.converged.any()) and short.iterations.tolist() == [3] * 5


def test_cg_error_estimate_stops_where_the_error_is_small_not_the_residual():
    """An imaging-like whitened system ``I + H̃`` (eigenvalues 1 + 10⁻³ … 10⁷, a top-40
    low-rank preconditioner, a solution spread over every direction): a relative residual
    of 1e-5 leaves the solution far off, because ``b`` is dominated by the large
    eigenvalues; the error estimate (``etol``) stops where the error of the mapped iterate
    is near ``etol`` — while the 2-norm error first grows 15-fold, which fools an
    estimate from the iterates' increments — and not absurdly far below it."""
    n, k = 400, 40
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.logspace(7, -3, n, dtype=torch.float64)
    a = q @ torch.diag(1 + lam) @ q.T
    w = q @ torch.randn(n, generator=g, dtype=torch.float64)
    b = (a @ w)[None]
    shrink = lam[:k] / (1 + lam[:k])
    vec = q[:, :k]

    def precondition(r):
        return r - ((r @ vec) * shrink) @ vec.T

    scale = torch.linspace(0.5, 2.0, n, dtype=torch.float64)  # a model-space map, e.g. L
    truth = w * scale

    def err(x):
        return float((x[0] * scale - truth).norm() / truth.norm())

    by_residual = conjugate_gradient(_batched(a), b, precondition, rtol=1e-5, maxiter=5000)
    assert bool(by_residual.converged[0]) and by_residual.errors is None
    assert err(by_residual.x) > 0.05  # a small residual, a large error
    for etol in (0.02, 0.005):
        res = conjugate_gradient(
            _batched(a),
            b,
            precondition,
            rtol=1e-14,
            maxiter=5000,
            etol=etol,
            error_map=lambda v: v * scale,
            error_scale=2.0,  # ‖diag(scale)‖₂
        )
        true = err(res.x)
        assert bool(res.converged[0]) and float(res.errors[0]) <= etol
        # measured: 0.024 at etol 0.02 (the delay-20 sum is a lower bound of ‖e‖²_A)
        assert true <= 1.5 * etol, (etol, true, float(res.errors[0]))
        assert true >= 0.02 * etol, (etol, true)  # nor far past it
    # A column that never gets there is reported, with its estimate.
    short = conjugate_gradient(_batched(a), b, precondition, rtol=1e-14, maxiter=50, etol=0.01)
    assert not bool(short.converged[0]) and float(short.errors[0]) > 0.01
    with pytest.raises(InvalidArgumentError, match="etol=1.5"):
        conjugate_gradient(_batched(a), b, precondition, etol=1.5)
    with pytest.raises(InvalidArgumentError, match="error_scale"):
        conjugate_gradient(_batched(a), b, precondition, etol=0.1, error_scale=-1.0)
    with pytest.raises(InvalidArgumentError, match="delay"):
        conjugate_gradient(_batched(a), b, precondition, etol=0.1, delay=0)


def test_operator_norm_is_the_largest_singular_value():
    g = torch.Generator().manual_seed(4)
    m = torch.randn(30, 20, generator=g, dtype=torch.float64)
    got = operator_norm(
        lambda v: (v.reshape(1, -1) @ m.T).reshape(1, 5, 6),
        lambda v: (v.reshape(1, -1) @ m).reshape(1, 4, 5),
        (4, 5),
        iterations=200,
    )
    assert got == pytest.approx(float(torch.linalg.matrix_norm(m, 2)), rel=1e-6)
    with pytest.raises(InvalidArgumentError, match="iterations"):
        operator_norm(lambda v: v, lambda v: v, (4, 5), iterations=0)


def test_rto_draws_match_the_closed_form_posterior(problem):
    jac, d, prior, mean, cov = problem
    h = jac.T @ jac / SIGMA**2
    grad = (jac.T @ (d - jac @ prior.mean.flatten()) / SIGMA**2).reshape(NX, NZ)

    def noise(k, gen):  # Jᵀη/σ: covariance JᵀJ/σ²
        eta = torch.randn(k, NDATA, generator=gen, dtype=torch.float64)
        return (eta @ jac / SIGMA).reshape(k, NX, NZ)

    n = 4000
    res = randomize_then_optimize(
        _batched(h), prior.sqrt(), grad, noise, n, prior_mean=prior.mean, rtol=1e-10
    )
    assert res.samples.shape == (n, NX, NZ) and res.iterations.shape == (n + 1,)
    assert float(res.residuals.max()) <= 1e-10
    torch.testing.assert_close(res.mean, mean, rtol=1e-7, atol=1e-9)
    se_mean, se_std = monte_carlo_std_error(res.samples)
    std = cov.diagonal().sqrt().reshape(NX, NZ)
    # every pixel within 4.5 Monte Carlo standard errors (80 pixels: a false alarm ~1e-3)
    assert float(((res.samples.mean(0) - mean).abs() / se_mean).max()) < 4.5
    assert float(((res.samples.std(0) - std).abs() / se_std).max()) < 4.5
    emp = torch.cov(res.samples.reshape(n, -1).T)
    assert float((emp - cov).norm() / cov.norm()) < 0.08


def test_rto_to_a_stated_model_error(problem):
    """With ``etol`` every draw stops at an estimated model-space error ≤ ``etol``, and is
    within that of the same draw solved to round-off (same seed)."""
    jac, d, prior, mean, _ = problem
    h = jac.T @ jac / SIGMA**2
    grad = (jac.T @ (d - jac @ prior.mean.flatten()) / SIGMA**2).reshape(NX, NZ)

    def noise(k, gen):
        eta = torch.randn(k, NDATA, generator=gen, dtype=torch.float64)
        return (eta @ jac / SIGMA).reshape(k, NX, NZ)

    args = (_batched(h), prior.sqrt(), grad, noise, 16)
    exact = randomize_then_optimize(*args, rtol=1e-12)
    res = randomize_then_optimize(*args, rtol=1e-14, etol=0.01)
    assert exact.errors is None and res.errors.shape == (17,)
    assert float(res.errors.max()) <= 0.01 and res.products < exact.products
    # the error is relative to L w, the draw's departure from the prior mean
    got, ref = (torch.cat([r.samples, r.mean[None]]) - prior.mean for r in (res, exact))
    err = (got - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)
    assert float(err.max()) <= 0.01, err
    assert float(err.max()) >= 1e-6  # it stopped early, not at round-off


def test_preconditioned_rto_takes_fewer_iterations_and_gives_the_same_draws(problem):
    jac, d, prior, _, _ = problem
    h = jac.T @ jac / SIGMA**2
    grad = (jac.T @ d / SIGMA**2).reshape(NX, NZ)
    sqrt = prior.sqrt()
    lmat = sqrt.matvec(torch.eye(N, dtype=torch.float64).reshape(N, NX, NZ)).reshape(N, N).T
    # a rough preconditioner: the inverse precision with the top 20 eigenpairs of LᵀHL only
    lam, vec = torch.linalg.eigh(lmat.T @ h @ lmat)
    lam, vec = lam[-20:], vec[:, -20:]
    p_inv = torch.eye(N, dtype=torch.float64) - vec @ torch.diag(lam / (1 + lam)) @ vec.T

    def noise(k, gen):
        return (torch.randn(k, NDATA, generator=gen, dtype=torch.float64) @ jac / SIGMA).reshape(
            k, NX, NZ
        )

    kw = dict(n=8, prior_mean=prior.mean, rtol=1e-9, seed=3)
    plain = randomize_then_optimize(_batched(h), sqrt, grad, noise, **kw)
    pre = randomize_then_optimize(
        _batched(h), sqrt, grad, noise, preconditioner=_batched(p_inv), **kw
    )
    assert float(pre.iterations.float().mean()) < 0.7 * float(plain.iterations.float().mean())
    torch.testing.assert_close(pre.samples, plain.samples, rtol=1e-6, atol=1e-7)


def test_bad_input_is_refused_with_the_value_named(problem):
    jac, d, prior, _, _ = problem
    h = _batched(jac.T @ jac)
    grad = torch.zeros(NX, NZ, dtype=torch.float64)

    def noise(k, gen):
        return torch.zeros(k, NX, NZ, dtype=torch.float64)

    sqrt = prior.sqrt()
    with pytest.raises(InvalidArgumentError, match="rtol=0.0"):
        randomize_then_optimize(h, sqrt, grad, noise, 4, rtol=0.0)
    with pytest.raises(InvalidArgumentError, match=r"rtol=1.5 must lie in \(0, 1\)"):
        randomize_then_optimize(h, sqrt, grad, noise, 4, rtol=1.5)
    with pytest.raises(InvalidArgumentError, match="n=0"):
        randomize_then_optimize(h, sqrt, grad, noise, 0)
    with pytest.raises(InvalidArgumentError, match="maxiter=-1"):
        randomize_then_optimize(h, sqrt, grad, noise, 2, maxiter=-1)
    bad = grad.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(InvalidArgumentError, match=r"gradient contains nan at index \(0, 2, 3\)"):
        randomize_then_optimize(h, sqrt, bad, noise, 2)
    with pytest.raises(InvalidShapeError, match=r"noise\(2, generator\) must be \[k"):
        randomize_then_optimize(h, sqrt, grad, lambda k, g: torch.zeros(k, NX), 2)
    with pytest.raises(InvalidShapeError, match="prior_mean must be"):
        randomize_then_optimize(h, sqrt, grad, noise, 2, prior_mean=torch.zeros(3))
    with pytest.raises(InvalidArgumentError, match="b must be a batch"):
        conjugate_gradient(h, torch.zeros(N))
