"""Product-convolution (PSF) curvature: convergence to the exact operator, adjointness,
the whitened precision's solves and factors, and bad input refused."""

from __future__ import annotations

import math

import pytest
import torch

from devito_uq.errors import DevitoUQError, InvalidArgumentError, InvalidShapeError
from devito_uq.inference import CorrelatedGaussianPrior
from devito_uq.inference.curvature import (
    WhitenedPrecision,
    product_convolution,
    relative_operator_error,
)
from devito_uq.inference.rto import conjugate_gradient

NX, NZ, RADIUS = 18, 13, 3


def _synthetic_hessian() -> torch.Tensor:
    """Dense symmetric ``[N, N]`` with spatially varying anisotropic Gaussian kernels cut
    at radius 3 (width and amplitude change with the spike's position)."""
    x, z = torch.meshgrid(
        torch.arange(NX, dtype=torch.float64), torch.arange(NZ, dtype=torch.float64), indexing="ij"
    )
    cols = []
    for j in range(NX * NZ):
        yx, yz = divmod(j, NZ)
        width = 0.8 + 0.6 * yx / NX
        amp = 1.0 + 0.5 * math.sin(yz / 3.0)
        d2 = ((x - yx) / width) ** 2 + ((z - yz) / (0.7 * width)) ** 2
        inside = ((x - yx).abs() <= RADIUS) & ((z - yz).abs() <= RADIUS)
        cols.append((amp * torch.exp(-0.5 * d2) * inside).flatten())
    b = torch.stack(cols, 1)
    return 0.5 * (b + b.T)


@pytest.fixture(scope="module")
def hessian() -> torch.Tensor:
    return _synthetic_hessian()


def _apply(h: torch.Tensor):
    def apply(v: torch.Tensor) -> torch.Tensor:
        return (v.reshape(v.shape[0], -1) @ h.T).reshape(v.shape)

    return apply


def test_converges_to_the_exact_operator_as_the_budget_grows(hessian):
    """Comb spacing 8 (kernel radius 3) on lattices of 4, 2, 1 cells: 4, 16, 64 products;
    the error falls, and with every cell sampled the operator is exact."""
    g = torch.Generator().manual_seed(0)
    v = torch.randn(6, NX, NZ, generator=g, dtype=torch.float64)
    hv = _apply(hessian)(v)
    errors, dense_errors, products = [], [], []
    for step, comb in ((4, 2), (2, 4), (1, 8)):
        pc = product_convolution(_apply(hessian), (NX, NZ), step=step, comb=comb)
        products.append(pc.products)
        errors.append(float(relative_operator_error(pc, v, hv).max()))
        dense_errors.append(float((pc.dense() - hessian).norm() / hessian.norm()))
    assert products == [4, 16, 64]
    assert errors[0] > errors[1] > 1e-3 and errors[0] < 0.3
    assert errors[2] < 1e-12 and dense_errors[2] < 1e-12
    assert dense_errors[0] > dense_errors[1] > dense_errors[2]


def test_scatter_and_gather_are_adjoint_and_the_operator_symmetric(hessian):
    pc = product_convolution(_apply(hessian), (NX, NZ), step=3, comb=3)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 3, NX, NZ, generator=g, dtype=torch.float64)
    lhs, rhs = (pc._scatter(a) * b).sum(), (a * pc._gather(b)).sum()
    assert abs(float(lhs - rhs)) <= 1e-12 * float(lhs.abs())
    assert float((pc(a) * b).sum() - (a * pc(b)).sum()) == pytest.approx(0.0, abs=1e-10)


def test_kernels_wider_than_the_comb_are_truncated_not_lost(hessian):
    """Comb spacing 4 (radius 1) cannot hold radius-3 kernels: step 1 is then not exact."""
    pc = product_convolution(_apply(hessian), (NX, NZ), step=1, comb=4)
    assert pc.products == 16 and pc.radius == (1, 1)
    assert float((pc.dense() - hessian).norm() / hessian.norm()) > 0.05


@pytest.fixture(scope="module")
def whitened(hessian):
    """A positive semi-definite cheap Hessian (``H²``), the prior root and dense ``P``."""
    psd = hessian @ hessian
    prior = CorrelatedGaussianPrior(torch.zeros(NX, NZ, dtype=torch.float64), 3.0, 2.0)
    sqrt = prior.sqrt()
    eye = torch.eye(NX * NZ, dtype=torch.float64).reshape(-1, NX, NZ)
    lmat = sqrt.matvec(eye).reshape(NX * NZ, -1).T  # column j = L e_j
    p = torch.eye(NX * NZ, dtype=torch.float64) + lmat.T @ psd @ lmat
    return _apply(psd), sqrt, p


def test_whitened_precision_dense_solve_factor_and_logdet(whitened):
    pc, sqrt, p = whitened
    prec = WhitenedPrecision(pc, sqrt, (NX, NZ), method="dense")
    assert prec.method == "dense"
    g = torch.Generator().manual_seed(2)
    b = torch.randn(4, NX, NZ, generator=g, dtype=torch.float64)
    x = prec.solve(b)
    assert float((prec.matvec(x) - b).norm() / b.norm()) < 1e-10
    n = NX * NZ
    f = prec.inverse_sqrt(torch.eye(n, dtype=torch.float64).reshape(n, NX, NZ)).reshape(n, n)
    cov = f @ f.T  # columns: P^{-1/2} e_j
    torch.testing.assert_close(cov, torch.linalg.inv(p), rtol=1e-8, atol=1e-10)
    assert prec.logdet() == pytest.approx(float(torch.linalg.slogdet(p)[1]), rel=1e-10)
    assert prec.clamped == 0


def test_an_indefinite_approximation_is_projected_to_precision_at_least_one(hessian):
    """``P = I − LᵀHL`` has eigenvalues below 1 (and below 0): raised to 1, so the
    preconditioner stays symmetric positive definite; CG on it stops, unconverged."""
    pc = product_convolution(_apply(-hessian), (NX, NZ), step=1, comb=8)
    prior = CorrelatedGaussianPrior(torch.zeros(NX, NZ, dtype=torch.float64), 3.0, 2.0)
    prec = WhitenedPrecision(pc, prior.sqrt(), (NX, NZ), method="dense")
    assert prec.clamped == NX * NZ and prec.logdet() == pytest.approx(0.0, abs=1e-9)
    b = torch.randn(2, NX, NZ, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(prec.solve(b), b)
    res = conjugate_gradient(prec.matvec, b, rtol=1e-6)
    assert not bool(res.converged.any()) and bool(torch.isfinite(res.x).all())


def test_whitened_precision_inner_cg_solves_to_its_tolerance(whitened):
    pc, sqrt, _ = whitened
    prec = WhitenedPrecision(pc, sqrt, (NX, NZ), method="cg", rtol=1e-9)
    b = torch.randn(3, NX, NZ, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = prec.solve(b)
    rel = (prec.matvec(x) - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)
    assert float(rel.max()) < 1e-8 and prec.inner_iterations > 0
    with pytest.raises(InvalidArgumentError, match="logdet needs method='dense'"):
        prec.logdet()


def test_bad_input_is_refused_with_the_value_named(hessian):
    apply = _apply(hessian)
    with pytest.raises(InvalidArgumentError, match="step"):
        product_convolution(apply, (NX, NZ), step=0)
    with pytest.raises(InvalidArgumentError, match="comb"):
        product_convolution(apply, (NX, NZ), comb=(2, 2.5))
    with pytest.raises(InvalidArgumentError, match="shape"):
        product_convolution(apply, (NX, -1))
    with pytest.raises(InvalidShapeError, match=r"apply\(combs\) must be \[k"):
        product_convolution(lambda v: v[:, :-1], (NX, NZ))
    with pytest.raises(InvalidArgumentError, match=r"apply\(combs\) contains nan"):
        product_convolution(lambda v: v * float("nan"), (NX, NZ))
    pc = product_convolution(apply, (NX, NZ), step=3, comb=2)
    with pytest.raises(InvalidShapeError, match=r"v must be \[k, \*\(18, 13\)\]"):
        pc(torch.zeros(NX, NZ, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="contains inf"):
        pc(torch.full((1, NX, NZ), float("inf"), dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match="rtol=-1"):
        WhitenedPrecision(pc, None, (NX, NZ), method="cg", rtol=-1.0)
    with pytest.raises(InvalidArgumentError, match="method='lu'"):
        WhitenedPrecision(pc, None, (NX, NZ), method="lu")
    with pytest.raises(InvalidShapeError, match="differ in shape"):
        relative_operator_error(pc, torch.zeros(2, NX, NZ), torch.zeros(3, NX, NZ))
    assert issubclass(InvalidShapeError, DevitoUQError)
