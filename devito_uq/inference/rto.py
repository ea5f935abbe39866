r"""Exact samples of a linear-Gaussian posterior by perturbation-optimization.

For :math:`d = J m + \sigma\eta` and the prior :math:`m = \mu + L w`, :math:`w \sim N(0, I)`,
the posterior of :math:`w` is :math:`N(P^{-1} L^\top g,\; P^{-1})` with
:math:`P = I + L^\top H L`, :math:`H = J^\top J/\sigma^2` and
:math:`g = J^\top (d - J\mu)/\sigma^2`. Perturbing both terms of the right-hand side,

.. math::
    P\, w_s = \varepsilon + L^\top (g + n), \qquad
    \varepsilon \sim N(0, I), \quad n = J^\top \eta/\sigma \sim N(0, H),

gives :math:`w_s \sim N(P^{-1} L^\top g,\ P^{-1} (I + L^\top H L) P^{-1}) = N(\cdot, P^{-1})`:
each solve is an exact posterior draw (Papandreou & Yuille 2010; Bardsley et al. 2014's
randomize-then-optimize for linear models; Fang et al. 2016 in seismic imaging), exact up
to the solver's tolerance. The solves run as one batched, preconditioned CG
(:func:`conjugate_gradient`), every iteration one batch of Hessian products; the
preconditioner is a cheap approximation of :math:`P^{-1}`
(:class:`~devito_uq.inference.curvature.WhitenedPrecision` of a
:class:`~devito_uq.inference.curvature.ProductConvolution`, or a low-rank inverse).

The tolerance is relative to ``‖rhs‖``, which the data term dominates; since ``P ⪰ I`` the
error of a draw is at most ``rtol·‖rhs‖`` and, at the imaging default case's
``cond(P) = 1.9·10⁷``, rtol 1e-6 left draws 1.2 % from direct solves and rtol 1e-8 1e-4
(``benchmarks/results/bench_curvature.md``); float32 Gauss–Newton products stop short of
that (3 % at rtol 1e-5), float64 ones reach it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.validation import check_finite, check_positive_int, check_positive_scalar

__all__ = [
    "CGResult",
    "check_batch",
    "RTOResult",
    "conjugate_gradient",
    "monte_carlo_std_error",
    "randomize_then_optimize",
]

Batch = Callable[[torch.Tensor], torch.Tensor]


def check_batch(name: str, v: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``v`` if it is a finite floating tensor ``[k, *shape]``; else a named error.

    Raises
    ------
    InvalidShapeError
        Not ``[k, *shape]``.
    InvalidArgumentError
        Not floating point, or a NaN/inf entry.
    """
    if not isinstance(v, torch.Tensor) or v.ndim != len(shape) + 1 or tuple(v.shape[1:]) != shape:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise InvalidShapeError(f"{name} must be [k, *{shape}], got {got}")
    if not v.is_floating_point():
        raise InvalidArgumentError(f"{name} must be floating point, got {v.dtype}")
    check_finite(name, v)
    return v


@dataclass
class CGResult:
    """A batch of CG solves.

    Attributes
    ----------
    x : torch.Tensor
        ``[k, *shape]`` solutions.
    iterations : torch.Tensor
        ``[k]`` int: iterations (operator products) each right-hand side took.
    residuals : torch.Tensor
        ``[k]`` final ``‖b − A x‖ / ‖b‖`` (recursive residual).
    converged : torch.Tensor
        ``[k]`` bool: reached ``rtol``.
    products : int
        Vectors the operator was applied to, all right-hand sides together.
    """

    x: torch.Tensor
    iterations: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    products: int


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


def _check_rtol(rtol) -> float:
    rtol = check_positive_scalar("rtol", rtol)
    if rtol >= 1:
        raise InvalidArgumentError(f"rtol={rtol} must lie in (0, 1): a relative residual")
    return rtol


def conjugate_gradient(
    matvec: Batch,
    b: torch.Tensor,
    preconditioner: Batch | None = None,
    rtol: float = 1e-6,
    maxiter: int = 500,
) -> CGResult:
    """Solve ``A x = b`` for a batch of right-hand sides by (flexible) preconditioned CG.

    Each iteration applies ``matvec`` to the columns not yet converged only (a PDE
    product is spent on nothing else). A column that meets ``pᵀAp ≤ 0`` (``A`` not
    positive definite) stops there, unconverged. With a preconditioner, ``β`` is Polak–Ribière's
    (flexible CG, Notay 2000), robust to a preconditioner applied by an inexact inner
    solve.

    Parameters
    ----------
    matvec : callable
        ``A``: ``[k, *shape] -> [k, *shape]``, symmetric positive definite.
    b : torch.Tensor
        ``[k, *shape]`` right-hand sides.
    preconditioner : callable, optional
        ``M ≈ A⁻¹``, ``[k, *shape] -> [k, *shape]``, symmetric positive definite.
    rtol : float
        Stop a column at ``‖b − A x‖ ≤ rtol ‖b‖``, in (0, 1).
    maxiter : int
        Most iterations.

    Returns
    -------
    CGResult

    Raises
    ------
    InvalidArgumentError
        ``rtol`` outside (0, 1), ``maxiter`` not positive, ``b`` not finite floating point.
    InvalidShapeError
        ``b`` has no batch axis.
    """
    rtol = _check_rtol(rtol)
    maxiter = check_positive_int("maxiter", maxiter)
    if not isinstance(b, torch.Tensor) or b.ndim < 2:
        got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
        raise InvalidArgumentError(f"b must be a batch [k, *shape] of right-hand sides, got {got}")
    check_batch("b", b, tuple(b.shape[1:]))
    precondition = preconditioner or (lambda r: r)
    k = b.shape[0]
    x = torch.zeros_like(b)
    r = b.clone()
    bnorm = b.flatten(1).norm(dim=1)
    bnorm = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))
    z = precondition(r)
    p = z.clone()
    rz = _dot(r, z)
    iterations = torch.zeros(k, dtype=torch.long)
    rel = r.flatten(1).norm(dim=1) / bnorm
    stopped = torch.zeros(k, dtype=torch.bool)
    active = rel > rtol
    products = 0
    for _ in range(maxiter):
        idx = torch.nonzero(active).flatten()
        if idx.numel() == 0:
            break
        ap = matvec(p[idx])
        products += idx.numel()
        curvature = _dot(p[idx], ap)
        broken = curvature <= 0  # not positive definite along p: stop that column here
        stopped[idx[broken]] = True
        alpha = torch.where(broken, 0.0, rz[idx] / torch.where(broken, 1.0, curvature))
        shape = (-1,) + (1,) * (b.ndim - 1)
        x[idx] += alpha.view(shape) * p[idx]
        r_new = r[idx] - alpha.view(shape) * ap
        z_new = precondition(r_new)
        rz_new = _dot(r_new, z_new)
        beta = (rz_new - _dot(r_new, z[idx])) / rz[
            idx
        ]  # Polak–Ribière (= Fletcher–Reeves for fixed M)
        p[idx] = z_new + beta.view(shape) * p[idx]
        r[idx], z[idx], rz[idx] = r_new, z_new, rz_new
        iterations[idx] += 1
        rel[idx] = r_new.flatten(1).norm(dim=1) / bnorm[idx]
        active = (rel > rtol) & ~stopped
    return CGResult(x, iterations, rel, rel <= rtol, products)


@dataclass
class RTOResult:
    """Posterior draws and mean of a linear-Gaussian problem (module docstring).

    Attributes
    ----------
    samples : torch.Tensor
        ``[n, *shape]`` exact draws (up to ``rtol``), model units.
    mean : torch.Tensor
        ``[*shape]`` the posterior mean (the unperturbed solve).
    iterations : torch.Tensor
        ``[n + 1]`` CG iterations per solve (the mean's last).
    residuals : torch.Tensor
        ``[n + 1]`` final relative residuals.
    rtol : float
        The tolerance the solves were run to.
    products : int
        Hessian products spent by CG (each one Born and one adjoint solve per shot).
    """

    samples: torch.Tensor
    mean: torch.Tensor
    iterations: torch.Tensor
    residuals: torch.Tensor
    rtol: float
    products: int


def randomize_then_optimize(
    hessian: Batch,
    sqrt,
    gradient: torch.Tensor,
    noise: Callable[[int, torch.Generator], torch.Tensor],
    n: int,
    prior_mean: torch.Tensor | None = None,
    preconditioner: Batch | None = None,
    rtol: float = 1e-6,
    maxiter: int = 500,
    seed: int = 0,
) -> RTOResult:
    """``n`` exact posterior draws and the posterior mean, all solved as one CG batch.

    Parameters
    ----------
    hessian : callable
        ``H = JᵀJ/σ²``: ``[k, *shape] -> [k, *shape]`` (a batch of Gauss–Newton products).
    sqrt : object
        Prior square root ``L`` (``matvec``, ``rmatvec`` on ``[k, *shape]``).
    gradient : torch.Tensor
        ``g = Jᵀ(d − Jμ)/σ²``, ``[*shape]`` (1/model units).
    noise : callable
        ``(k, generator) -> [k, *shape]`` draws of ``n ~ N(0, H)``, e.g. ``Jᵀη/σ`` for
        white data noise ``η`` (one adjoint solve per shot and draw).
    n : int
        Number of draws.
    prior_mean : torch.Tensor, optional
        ``μ`` ``[*shape]``; default 0.
    preconditioner : callable, optional
        ``≈ (I + LᵀHL)⁻¹`` on ``[k, *shape]``
        (:class:`~devito_uq.inference.curvature.WhitenedPrecision`).
    rtol : float
        Relative residual of every solve, in (0, 1).
    maxiter : int
        Most CG iterations.
    seed : int
        Seed of ``ε`` and of the generator passed to ``noise``.

    Returns
    -------
    RTOResult

    Raises
    ------
    InvalidArgumentError
        ``n``, ``maxiter`` not positive, ``rtol`` outside (0, 1), non-finite ``gradient``.
    InvalidShapeError
        ``gradient``, ``prior_mean`` or the draws of ``noise`` of the wrong shape.
    """
    n = check_positive_int("n", n)
    rtol = _check_rtol(rtol)
    maxiter = check_positive_int("maxiter", maxiter)
    if not isinstance(gradient, torch.Tensor):
        raise InvalidArgumentError(f"gradient must be a tensor, got {type(gradient).__name__}")
    shape = tuple(gradient.shape)
    g = check_batch("gradient", gradient[None], shape)[0].double()
    mu = torch.zeros_like(g) if prior_mean is None else prior_mean
    mu = check_batch("prior_mean", mu[None], shape)[0].double()
    gen = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(n, *shape, generator=gen, dtype=torch.float64)
    draws = check_batch(f"noise({n}, generator)", noise(n, gen), shape).double()
    rhs = torch.cat([eps + sqrt.rmatvec(g + draws), sqrt.rmatvec(g[None])])

    def precision(w: torch.Tensor) -> torch.Tensor:
        return w + sqrt.rmatvec(hessian(sqrt.matvec(w)))

    res = conjugate_gradient(precision, rhs, preconditioner, rtol=rtol, maxiter=maxiter)
    m = mu + sqrt.matvec(res.x)
    return RTOResult(m[:n], m[n], res.iterations, res.residuals, rtol, res.products)


def monte_carlo_std_error(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard errors of the sample mean and sample std of ``samples`` ``[n, *shape]``
    (Gaussian draws: ``s/√n`` and ``s/√(2(n−1))``)."""
    n = samples.shape[0]
    s = samples.std(0)
    return s / math.sqrt(n), s / math.sqrt(2 * (n - 1))
