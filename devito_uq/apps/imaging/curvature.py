"""The curvature of the imaging misfit and the Laplace baseline built on it.

Gauss–Newton products (:func:`gauss_newton_operator`), the illumination
(:func:`gauss_newton_diagonal`), the prior square root that whitens them
(:func:`prior_sqrt`), and :func:`laplace_baseline`: the illumination, the MAP and the
low-rank Laplace factor (:mod:`devito_uq.inference.laplace`) that ``map.pt`` caches and VI
starts from.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn
from tqdm.auto import tqdm

from devito_uq.apps.imaging.config import InvertConfig
from devito_uq.apps.imaging.green_hessian import choose_route, green_laplace, route_message
from devito_uq.apps.imaging.posterior import laplace_parameterization
from devito_uq.apps.imaging.problem import (
    HeldFixed,
    ImagingProblem,
    map_search,
    pde_solves,
    prior_precision_diagonal,
)
from devito_uq.inference import DiagonalSqrt, Parameterization, low_rank_eigh
from devito_uq.inference.curvature import WhitenedPrecision
from devito_uq.inference.laplace import residual_shrink
from devito_uq.inference.lateral_curvature import lateral_stationary_hessian
from devito_uq.inference.rto import conjugate_gradient, operator_norm
from devito_uq.parallel import allreduce_sum, rank_and_size
from devito_uq.physics import BornModeling

__all__ = [
    "born_map",
    "coverage_estimate",
    "gauss_newton_diagonal",
    "gauss_newton_operator",
    "laplace_baseline",
    "prior_sqrt",
]


def prior_sqrt(config: Any, prior: nn.Module, like: torch.Tensor):
    """Square root ``L`` of the prior covariance: the whitening of the Laplace factor.

    Parameters
    ----------
    config : InvertConfig
        ``prior_std``: the proxy ``prior_std·I`` for priors without a square root (TV).
    prior : torch.nn.Module
        The prior (its ``sqrt()`` when it has one).
    like : torch.Tensor
        ``[nx, nz]``: shape and dtype of the proxy.

    Returns
    -------
    The prior's square root operator (``matvec``/``rmatvec``/``state``).
    """
    sqrt = getattr(prior, "sqrt", None)
    return sqrt() if callable(sqrt) else DiagonalSqrt(torch.full_like(like, config.prior_std))


def gauss_newton_operator(
    problem: ImagingProblem, m: torch.Tensor, chunk: int = 16, progress: bool = False, dtype=None
):
    """``v ↦ JᵀMJv/σ²``: the misfit's Gauss–Newton Hessian at ``m``, summed over ranks.

    ``J`` the Born operator, ``M`` the trace mask. One Born and one adjoint solve per shot
    and vector.

    Parameters
    ----------
    problem : ImagingProblem
        This rank's shots (none: it contributes zeros to the sum).
    m : torch.Tensor
        ``[nx, nz]`` where to linearize (born: ``problem.operator`` itself).
    chunk : int
        Vectors per Born call.
    progress : bool
        A progress bar per batch.
    dtype : torch.dtype, optional
        Precision of the PDE solves (default the problem's).

    Returns
    -------
    callable
        ``[k, nx, nz]`` float64 → ``[k, nx, nz]`` float64.
    """
    J = mask = None
    if problem.survey is not None:
        J = (
            problem.operator
            if problem.kind == "born"
            else BornModeling(problem.model, problem.survey, m)
        )
        if problem.kind != "born" and problem.water is not None and problem.water.any():
            # Known water is held fixed (the Born operator already is): no curvature there.
            J = HeldFixed(J, problem.water, torch.zeros_like(problem.m0))
        mask = torch.from_numpy(problem.survey.mask())[:, None, :]

    def apply(v: torch.Tensor) -> torch.Tensor:
        local = torch.zeros(v.shape, dtype=torch.float64)
        if J is not None:
            starts = range(0, v.shape[0], chunk)
            bar = tqdm(
                starts,
                desc=f"Gauss-Newton products ({v.shape[0]})",
                disable=not progress or v.shape[0] <= chunk,
                leave=False,
            )
            for k in bar:
                u = v[k : k + chunk].to(dtype or problem.m0.dtype).requires_grad_(True)
                w = J(u) * mask
                (0.5 * w.pow(2).sum() / problem.sigma**2).backward()
                local[k : k + chunk] = u.grad.double()
        return allreduce_sum(local, problem.comm)

    return apply


def gauss_newton_diagonal(
    gn, shape: tuple[int, int], probes: int, seed: int, smooth_cells: float = 1.5
) -> torch.Tensor:
    r"""Hutchinson estimate of :math:`\mathrm{diag}(J^\top M J)/\sigma^2`: the illumination.

    ``E[v ⊙ Hv] = diag(H)`` for Rademacher probes ``v`` (Bekas, Kokiopoulou & Saad 2007).
    Smoothed by a Gaussian of ``smooth_cells`` (the probes' off-diagonal noise is rough,
    the illumination it estimates is smooth) and floored at 10⁻³ of its maximum.

    Parameters
    ----------
    gn : callable
        From :func:`gauss_newton_operator`.
    shape : tuple of int
        ``(nx, nz)``.
    probes : int
        Number of Rademacher probes.
    seed : int
        Seed of the probes.
    smooth_cells : float
        σ of the smoothing, cells.

    Returns
    -------
    torch.Tensor
        ``[nx, nz]`` float64, 1/(s²/km²)².
    """
    g = torch.Generator().manual_seed(seed)
    v = (torch.randint(0, 2, (probes, *shape), generator=g) * 2 - 1).double()
    diag = (v * gn(v)).mean(0).numpy()
    diag = gaussian_filter(diag, smooth_cells, mode="nearest")
    return torch.from_numpy(np.maximum(diag, 1e-3 * diag.max()))


#: Estimated relative model-space error at which the Born MAP's CG stops (``etol`` of
#: ``conjugate_gradient``): on the 5,151-unknown window a residual rule (rtol 1e-5) left the
#: mean 8–13 % off at rank 100–1,000, this rule 0.08–0.26 % (bench_cg_stopping.md).
MAP_ETOL = 0.01
#: Residual floor of that CG, and the iterations its error estimate sums over.
MAP_RTOL, MAP_DELAY = 1e-10, 20


def born_map(
    problem: ImagingProblem,
    prior: nn.Module,
    sqrt: Any,
    gn,
    eigenvalues: torch.Tensor,
    eigenvectors: torch.Tensor,
    rtol: float = MAP_RTOL,
    maxiter: int | None = None,
    etol: float = MAP_ETOL,
) -> tuple[torch.Tensor, dict[str, Any]]:
    r"""The Born MAP (the posterior mean) by preconditioned CG in the whitened variable.

    With ``m = L w`` (``L`` the prior square root, ``LLᵀ = Γ``) the Born objective is the
    quadratic :math:`\tfrac12 wᵀ(I + \tilde H)w - bᵀw`, ``H̃ = LᵀHL``, so the MAP solves
    ``(I + H̃) w = b`` with ``b = −Lᵀ∇f(0)`` (``f`` = negative log-likelihood + negative
    log-prior, any prior mean). CG is preconditioned by the Laplace eigenpairs,
    ``(I + VΛVᵀ)⁻¹ = I − V diag(λ/(1+λ)) Vᵀ``: exact when the rank covers every unknown
    (one or two products), and otherwise iterating until the estimated error of the mean
    ``m = L w`` is below ``etol`` — unlike L-BFGS in the truncated latent (20–300 % off at
    rank 100–400 on the imaging default case) or a residual rule (:data:`MAP_ETOL`).

    Parameters
    ----------
    problem : ImagingProblem
        This rank's share (``likelihood(m, full=True)`` is summed over ranks).
    prior : torch.nn.Module
        A Gaussian prior whose covariance is ``sqrt``'s ``LLᵀ``.
    sqrt : devito_uq.inference.priors_gaussian.KroneckerSqrt
        ``L``: ``matvec``/``rmatvec`` on ``[k, nx, nz]``.
    gn : callable
        ``[k, nx, nz] -> [k, nx, nz]`` float64: ``JᵀMJ/σ²`` summed over ranks.
    eigenvalues, eigenvectors : torch.Tensor
        ``[r]`` and ``[N, r]``: the Laplace factor of ``H̃``.
    rtol : float
        Also stop at ``‖b − (I + H̃)w‖ ≤ rtol‖b‖`` (a floor).
    maxiter : int, optional
        Most CG iterations (Gauss–Newton products); default ``N`` — an exact assembly's
        cost.
    etol : float
        Stop once the estimated relative error of the mean is at most ``etol``.

    Returns
    -------
    map : torch.Tensor
        ``[nx, nz]`` in the problem's dtype (s²/km², δm).
    report : dict
        ``method``, ``iterations`` (= Gauss–Newton products), ``relative_residual``,
        ``rtol``, ``estimated_error`` (``None`` before :data:`MAP_DELAY` iterations), ``etol``,
        ``converged``.
    """
    shape = problem.shape
    n = problem.m0.numel()
    x = torch.zeros(1, *shape, dtype=problem.m0.dtype, requires_grad=True)
    objective = problem.likelihood(x, full=True).sum() + prior(x).sum()
    (grad,) = torch.autograd.grad(objective, x)
    b = -sqrt.rmatvec(grad.double())
    lam = eigenvalues.double()
    vec = eigenvectors.double()
    shrink = lam / (1.0 + lam)

    def precision(w: torch.Tensor) -> torch.Tensor:
        return w + sqrt.rmatvec(gn(sqrt.matvec(w)))

    def precondition(r: torch.Tensor) -> torch.Tensor:
        flat = r.reshape(r.shape[0], n)
        return (flat - ((flat @ vec) * shrink) @ vec.T).reshape(r.shape)

    res = conjugate_gradient(
        precision,
        b,
        precondition,
        rtol=rtol,
        maxiter=maxiter or n,
        etol=etol,
        error_map=sqrt.matvec,
        error_scale=operator_norm(sqrt.matvec, sqrt.rmatvec, shape),
        delay=1 if vec.shape[1] >= n else MAP_DELAY,  # full rank: a direct solve
    )
    error = float(res.errors[0])
    report = {
        "method": "preconditioned CG (whitened, Laplace eigenpairs)",
        "iterations": int(res.iterations[0]),
        "relative_residual": float(res.residuals[0]),
        "rtol": rtol,
        "estimated_error": None if math.isnan(error) else error,
        "etol": etol,
        "converged": bool(res.converged[0]),
    }
    return sqrt.matvec(res.x)[0].to(problem.m0.dtype), report


#: Largest number of unknowns for which the coverage check diagonalizes its approximate
#: whitened Hessian densely (``O(N³)``: about a minute at 6,000 on one core).
COVERAGE_MAX_UNKNOWNS = 6000


def coverage_estimate(gn, sqrt, shape: tuple[int, int], seed: int = 0) -> dict[str, Any]:
    """How many directions the data inform, estimated before the Laplace eigensolve.

    The laterally stationary Hessian (:mod:`devito_uq.inference.lateral_curvature`, two
    node traces and 32 diagonal probes: ``2·nz + 36`` products), whitened by the prior and
    diagonalized densely: the number of its eigenvalues above 1 (where the data outweigh
    the prior) and its ``log det(I + H̃)``. Measured against exact spectra
    (``benchmarks/results/bench_lateral.md``): 791 for 751 on the imaging default case,
    2,045 for 2,125 on the 5,151-unknown Marmousi window; log-determinants within 1–6 %.

    Parameters
    ----------
    gn : callable
        Gauss–Newton products ``[k, nx, nz] -> [k, nx, nz]`` float64 (collective under MPI:
        every rank calls this function alike).
    sqrt : object
        The prior square root (``matvec``, ``rmatvec``).
    shape : tuple of int
        ``(nx, nz)``.
    seed : int
        Seed of the probes.

    Returns
    -------
    dict
        ``eigenvalues_above_1``, ``log_det`` (of ``I + LᵀĤL``), ``gauss_newton_products``,
        ``operator_error`` (held-out relative error of the approximation).
    """
    approx = lateral_stationary_hessian(gn, shape, seed=seed)
    precision = WhitenedPrecision(approx, sqrt, shape, method="dense")
    return {
        # eigenvalues of P = I + LᵀĤL: above 2 is an eigenvalue of LᵀĤL above 1
        "eigenvalues_above_1": int((precision.eigenvalues > 2.0).sum()),
        "log_det": precision.logdet(),
        "gauss_newton_products": approx.products,
        "operator_error": approx.check_error,
    }


def laplace_baseline(
    problem: ImagingProblem, prior, config: InvertConfig, progress: bool
) -> dict[str, Any]:
    """The illumination, the MAP and the low-rank Laplace factor at the MAP.

    Born: the Gauss–Newton Hessian does not depend on the model, so the Laplace factor
    comes first; with a Gaussian prior the MAP is the solution of a linear system, solved by
    CG preconditioned with that factor to :data:`MAP_RTOL` (:func:`born_map`; a few products
    when the rank covers every unknown), otherwise found by L-BFGS in the factor's whitened
    latent. FWI: the MAP comes first, by L-BFGS in
    the latent scaled by the Jacobi curvature ``(diag(JᵀJ)/σ² + diag(prior precision))^-½``
    (small, local steps: a whitened latent lets the first steps jump to a cycle-skipped
    model), then the Laplace factor at the MAP.

    Parameters
    ----------
    problem : ImagingProblem
        This rank's share of the problem.
    prior : torch.nn.Module
        The prior (:func:`~devito_uq.apps.imaging.problem.make_prior`).
    config : InvertConfig
        ``probes``, ``rank``, ``oversample``, ``residual``, ``map_iterations``, ``seed``.
    progress : bool
        Progress bars.

    Returns
    -------
    dict
        ``illumination`` ``[nx, nz]``, ``sqrt`` (the prior square root's state), ``map``
        ``[nx, nz]``, ``eigenvalues`` ``[rank]``, ``eigenvectors`` ``[rank, nx, nz]``,
        ``residual``, ``eigenvalues_above_1``, per phase ``time_s`` (s) and
        ``pde_solves``, for a CG-solved Born MAP ``map_solve`` (:func:`born_map`'s
        report), and for a truncated rank (``config.coverage_check``, at most
        :data:`COVERAGE_MAX_UNKNOWNS` unknowns) ``coverage`` (:func:`coverage_estimate`).
    """
    times: dict[str, float] = {}
    counts: dict[str, int] = {}

    def phase(name, fn):
        t0, s0 = time.perf_counter(), pde_solves()
        result = fn()
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0
        counts[name] = counts.get(name, 0) + pde_solves() - s0
        return result

    show = progress and rank_and_size(problem.comm)[0] == 0
    gn0 = gauss_newton_operator(problem, problem.m0, progress=show)
    # One product first: it builds the operators, whose seconds are not a product's (the
    # estimate below was 4.9× the Laplace phase's time on the default case without it, and
    # is 1.4× with it: the eigensolver's batched chunks beat the probes' single calls).
    phase("illumination", lambda: gn0(torch.ones(1, *problem.shape, dtype=torch.float64)))
    warm = times["illumination"]
    illum = phase(
        "illumination",
        lambda: gauss_newton_diagonal(gn0, problem.shape, config.probes, config.seed),
    )
    n = problem.m0.numel()
    k, exact_green = min(config.rank + config.oversample, n), False
    # low_rank_eigh: two passes of k products, or one on the identity (exact) when that
    # costs no more; then the Laplace keeps every eigenpair it paid for.
    exact = 2 * k >= n
    products = n if exact else 2 * k
    per_product = (times["illumination"] - warm) / max(config.probes, 1)
    base_estimate = {
        "gauss_newton_products": products,
        "seconds_per_product": per_product,
        "estimated_s": products * per_product,
    }
    green, exact_green = choose_route(config, problem, n, products, per_product)
    exact = exact or exact_green
    if show:  # before the long phase, so that a user can stop early
        tqdm.write(route_message(green, exact_green, products, per_product))
    sqrt = prior_sqrt(config, prior, problem.m0)
    base: dict[str, Any] = {"illumination": illum, "sqrt": sqrt.state(), "estimate": base_estimate}
    if config.coverage_check and not exact and n <= COVERAGE_MAX_UNKNOWNS:
        # A truncated rank keeps the prior's spread beyond it: say how far short it falls
        # before the long phase, not only after it (issue 23).
        cover = phase("coverage", lambda: coverage_estimate(gn0, sqrt, problem.shape, config.seed))
        base["coverage"] = cover
        if show:
            short = cover["eigenvalues_above_1"] > config.rank
            tqdm.write(
                f"Coverage ({cover['gauss_newton_products']} products): the data inform about "
                f"{cover['eigenvalues_above_1']} of {n} directions (whitened eigenvalues > 1); "
                f"rank {config.rank} "
                + (
                    "falls short: the error bars beyond it will be the prior's (too wide). "
                    f"Raise rank to at least {cover['eigenvalues_above_1']} "
                    f"(rank {n}: exact), or go on"
                    if short
                    else "covers them"
                )
            )

    def laplace(gn, m):
        def whitened(v: torch.Tensor) -> torch.Tensor:  # Lᵀ H_d L v
            return sqrt.rmatvec(gn(sqrt.matvec(v)))

        rank = n if exact else config.rank
        if exact_green:  # its seconds and solves: time_s / pde_solves "laplace"
            lam, vec = green_laplace(problem, m, sqrt, show)
            base["hessian"] = {"route": "green", **(green or {})}
        else:
            lam, vec = low_rank_eigh(whitened, problem.shape, rank, config.oversample, config.seed)
            base["hessian"] = {"route": "products", "green_estimate": green}
        base.update(
            eigenvalues=lam.float(),
            eigenvectors=vec.float(),
            residual=(residual_shrink(lam, n) if config.residual == "tail" else 1.0),
        )
        return lam, vec  # float64: the MAP's preconditioner needs orthonormal columns

    def map_from(start, g):
        model, base["map_search"] = map_search(config, problem, prior, start, g, progress)
        return model

    if problem.kind == "born":
        lam, vec = phase("laplace", lambda: laplace(gn0, problem.m0))
        start = torch.zeros_like(problem.m0)
        if config.map_iterations and callable(getattr(prior, "sqrt", None)):
            # Gaussian prior: the objective is a quadratic, solved to a tolerance.
            # float64 solves: float32 products (1e-4 relative error) left the mean 3.9 % off
            # at rank 200 on the default case, float64 ones 1.0 % (the same 861 products).
            gn64 = gauss_newton_operator(problem, problem.m0, progress=show, dtype=torch.float64)
            solve = phase("map", lambda: born_map(problem, prior, sqrt, gn64, lam, vec))
            base["map"], base["map_solve"] = solve
        else:
            g = laplace_parameterization(start, base, problem.bounds)
            base["map"] = phase("map", lambda: map_from(start, g))
    else:
        precision = illum + prior_precision_diagonal(prior, illum)
        lo, hi = problem.bounds
        g = Parameterization(problem.m0, precision.rsqrt().float(), lower=lo, upper=hi)
        base["map"] = phase("map", lambda: map_from(problem.m0, g))
        gn = gauss_newton_operator(problem, base["map"], progress=show)
        phase("laplace", lambda: laplace(gn, base["map"]))
    base.update(
        time_s=times,
        pde_solves=counts,
        eigenvalues_above_1=int((base["eigenvalues"] > 1).sum()),
    )
    return base
