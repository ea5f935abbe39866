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

A small residual is not a small error when ``P`` is this ill-conditioned: the residual is
dominated by the well-determined directions while the error hides in the poorly
determined ones. On the 5,151-unknown Marmousi window (``cond(P) ≈ 10⁷``) CG stopped at
rtol 1e-5 left the posterior mean 8–13 % off. :func:`conjugate_gradient` therefore can
stop on an *estimated error* instead (``etol``): CG's A-norm error obeys
``‖e_j‖²_A − ‖e_(j+1)‖²_A = α_j r_jᵀ z_j`` (Hestenes & Stiefel 1952), so the sum of that
quantity over the last ``delay`` iterations estimates ``‖e‖²_A`` of the iterate ``delay``
steps back (Strakoš & Tichý 2002: a lower bound, tight once the error falls over the
window); since ``P ⪰ I``, ``‖M e‖ ≤ ‖M‖ ‖e‖_A`` for the map ``M`` to the quantity that
matters (``L``: the model). Measured there (``benchmarks/bench_cg_stopping.py``, CG
preconditioned by 100–1,000 eigenpairs) the estimate ran 4–18× above the true error of the
mean — stopped at 1 % the mean was 0.08–0.26 % off, at 5 % 0.3–1.7 % — and on a synthetic
spectrum where the 2-norm error first grows 15-fold, which fools an estimate from the
iterates' increments, it stayed within 1.3× (``tests/test_rto.py``).
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
    "operator_norm",
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
        ``[k]`` bool: reached ``rtol`` (or, with ``etol``, an estimated error ≤ ``etol``).
    products : int
        Vectors the operator was applied to, all right-hand sides together.
    errors : torch.Tensor or None
        ``[k]`` (with ``etol``) the last estimated relative error of ``error_map(x)``, NaN
        before ``delay`` iterations; else ``None``.
    """

    x: torch.Tensor
    iterations: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    products: int
    errors: torch.Tensor | None = None


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


def _check_rtol(rtol, name: str = "rtol") -> float:
    rtol = check_positive_scalar(name, rtol)
    if rtol >= 1:
        raise InvalidArgumentError(f"{name}={rtol} must lie in (0, 1): a relative tolerance")
    return rtol


def conjugate_gradient(
    matvec: Batch,
    b: torch.Tensor,
    preconditioner: Batch | None = None,
    rtol: float = 1e-6,
    maxiter: int = 500,
    etol: float | None = None,
    error_map: Batch | None = None,
    error_scale: float = 1.0,
    delay: int = 20,
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
    etol : float, optional
        Also stop a column once ``error_scale · (Σ_(last delay) α_j r_jᵀz_j)^½ /
        ‖error_map(x)‖`` — the estimated relative error of ``error_map(x)`` (module
        docstring; it assumes ``A ⪰ I``, as a whitened posterior precision is) — is at
        most ``etol``, in (0, 1): the criterion to use when ``A`` is ill-conditioned.
        ``rtol`` then acts as a floor: keep it small.
    error_map : callable, optional
        ``[k, *shape] -> [k, ...]`` the quantity whose error matters (e.g. the prior
        square root, for a model-space error); default the identity.
    error_scale : float
        ``‖error_map‖₂`` (its largest singular value), or a bound of it.
    delay : int
        Iterations the error estimate sums over (Strakoš & Tichý's delay).

    Returns
    -------
    CGResult

    Raises
    ------
    InvalidArgumentError
        ``rtol`` or ``etol`` outside (0, 1), ``maxiter`` or ``delay`` not positive, ``b``
        not finite floating point.
    InvalidShapeError
        ``b`` has no batch axis.
    """
    rtol = _check_rtol(rtol)
    maxiter = check_positive_int("maxiter", maxiter)
    if etol is not None:
        etol = _check_rtol(etol, "etol")
        delay = check_positive_int("delay", delay)
        error_scale = check_positive_scalar("error_scale", error_scale)
    mapped = error_map or (lambda v: v)
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
    errors = torch.full((k,), float("nan"), dtype=torch.float64) if etol is not None else None
    energy = torch.zeros(k, delay if etol is not None else 1, dtype=torch.float64)
    for it in range(maxiter):
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
        rz_old, rz_new = rz[idx], _dot(r_new, z_new)
        beta = (rz_new - _dot(r_new, z[idx])) / rz[
            idx
        ]  # Polak–Ribière (= Fletcher–Reeves for fixed M)
        p[idx] = z_new + beta.view(shape) * p[idx]
        r[idx], z[idx], rz[idx] = r_new, z_new, rz_new
        iterations[idx] += 1
        rel[idx] = r_new.flatten(1).norm(dim=1) / bnorm[idx]
        if errors is not None:  # α_j r_jᵀz_j = ‖e_j‖²_A − ‖e_(j+1)‖²_A, the last `delay`
            energy[idx, it % delay] = (alpha * rz_old).double()
            if it + 1 >= delay:
                size = mapped(x[idx]).flatten(1).norm(dim=1).double()
                tail = error_scale * energy[idx].sum(1).clamp_min(0).sqrt()
                errors[idx] = torch.where(size > 0, tail / size.clamp_min(1e-300), math.inf)
        done = rel <= rtol if errors is None else (rel <= rtol) | ((errors <= etol) & ~stopped)
        active = ~done & ~stopped
    return CGResult(x, iterations, rel, done, products, errors)


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
    errors : torch.Tensor or None
        ``[n + 1]`` (with ``etol``) each solve's estimated relative model-space error.
    """

    samples: torch.Tensor
    mean: torch.Tensor
    iterations: torch.Tensor
    residuals: torch.Tensor
    rtol: float
    products: int
    errors: torch.Tensor | None = None


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
    etol: float | None = None,
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
    etol : float, optional
        Also stop each solve once its estimated relative error in model space
        (``‖L(w − w*)‖/‖L w‖``, :func:`conjugate_gradient`'s ``etol`` with ``error_map = L``)
        is at most ``etol`` — the tolerance to state when ``I + LᵀHL`` is ill-conditioned,
        where a residual tolerance says little about the draws (module docstring); keep
        ``rtol`` small then.

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

    extra = {}
    if etol is not None:
        scale = operator_norm(sqrt.matvec, sqrt.rmatvec, shape)
        extra = dict(etol=etol, error_map=sqrt.matvec, error_scale=scale)
    res = conjugate_gradient(precision, rhs, preconditioner, rtol=rtol, maxiter=maxiter, **extra)
    m = mu + sqrt.matvec(res.x)
    return RTOResult(m[:n], m[n], res.iterations, res.residuals, rtol, res.products, res.errors)


def operator_norm(
    matvec: Batch, rmatvec: Batch, shape: tuple[int, ...], iterations: int = 50, seed: int = 0
) -> float:
    """``‖M‖₂`` (largest singular value) of ``M`` by power iteration on ``MᵀM``.

    Parameters
    ----------
    matvec, rmatvec : callable
        ``M`` and ``Mᵀ`` on ``[k, *shape]``.
    shape : tuple of int
        The shape of one vector.
    iterations : int
        Power iterations (no PDE solve: ``M`` is e.g. a prior square root).
    seed : int
        Seed of the start vector.

    Returns
    -------
    float
    """
    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(1, *shape, generator=g, dtype=torch.float64)
    norm = 0.0
    for _ in range(check_positive_int("iterations", iterations)):
        v = v / v.norm()
        w = rmatvec(matvec(v))
        norm = math.sqrt(max(float((v * w).sum()), 0.0))
        v = w
    return norm


def monte_carlo_std_error(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard errors of the sample mean and sample std of ``samples`` ``[n, *shape]``
    (Gaussian draws: ``s/√n`` and ``s/√(2(n−1))``)."""
    n = samples.shape[0]
    s = samples.std(0)
    return s / math.sqrt(n), s / math.sqrt(2 * (n - 1))
