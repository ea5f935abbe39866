"""The imaging app's exact Gauss–Newton Hessian from receiver Green's functions (issue 20).

Assembling ``JᵀMJ/σ²`` from products costs ``N`` Gauss–Newton products (two solves per shot
each); a randomized rank ``k`` costs ``2(k + oversample)`` and truncates the posterior's
spread. :func:`devito_uq.physics.acoustic.green.born_gram` gives the same matrix exactly from
``shots + receiver positions`` wave solves and dense algebra (``rows · N · (N + 1024)`` flops
for the Gram products, ``O(N³)`` for the eigendecomposition). The Laplace start is then the exact
Gauss–Newton posterior at full rank (for Born data, the exact posterior), whatever ``rank``
says.

``hessian = "auto"`` (the default) takes it when the matrices fit in memory and it is
estimated no slower than an exact assembly by products (``N`` of them; measured on this
machine before the phase, :func:`green_estimate`) — even where a truncated rank would be
quicker: a truncated rank keeps the prior's spread beyond it, so its error bars are not
calibrated (``hessian = "products"`` chooses it anyway). ``"green"`` insists (refused by name
when the physics is not acoustic or the matrix does not fit in memory).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from devito_uq.errors import InvalidArgumentError
from devito_uq.parallel import allreduce_sum, rank_and_size
from devito_uq.physics.acoustic.green import born_gram, born_gram_cost
from devito_uq.physics.acoustic.model import AcousticModel
from devito_uq.validation import available_memory, check_allocation

__all__ = [
    "choose_route",
    "green_estimate",
    "green_laplace",
    "route_message",
    "use_green",
]

#: Dense eigendecomposition with vectors, ≈ this many · N³ flops (LAPACK syevd, measured
#: 9–11 on the 2-core VM at N = 2,000–5,151), plus 4 N³ for the whitening products.
EIGH_FLOPS_PER_N3 = 14.0

#: The FFT convolutions' nominal flops run this much slower than a large matrix product
#: (memory-bound; measured 3.5–5 on the 2-core VM at 861 and 5,151 unknowns).
CONVOLUTION_SLOWDOWN = 5.0


def _flop_rate(n: int = 1536) -> float:
    """Float64 matrix-product flops per second on this machine's torch threads."""
    a = torch.randn(n, n, dtype=torch.float64)
    a @ a  # warm-up (thread pool, caches)
    t0 = time.perf_counter()
    for _ in range(3):
        a @ a
    return 3 * 2 * n**3 / max(time.perf_counter() - t0, 1e-9)


def green_estimate(problem: Any, seconds_per_product: float) -> dict[str, Any] | None:
    """Wave solves, bytes and estimated seconds of the Green's-function route on this rank.

    ``None`` when it does not apply (no acoustic model or no shots on this rank). The seconds
    scale one measured Gauss–Newton product (two solves per shot) to the route's solves and
    the measured flop rate to its algebra; the Fourier convolutions are counted at
    :data:`CONVOLUTION_SLOWDOWN` times that (memory-bound).
    """
    if problem.survey is None or not isinstance(problem.model, AcousticModel):
        return None
    cost = born_gram_cost(problem.model, problem.survey)
    n = problem.m0.numel()
    rate = _flop_rate()
    per_solve = seconds_per_product / (2 * len(problem.survey.select()))
    seconds = (
        cost["wave_solves"] * 1.5 * per_solve  # saving every step: ≈ 1.5 × a plain solve
        + cost["gram_flops"] / rate
        + CONVOLUTION_SLOWDOWN * cost["convolution_flops"] / rate
        + EIGH_FLOPS_PER_N3 * n**3 / rate
    )
    bytes_ = cost["bytes"] + 5 * 8 * n * n  # kept JᵀMJ, L, LᵀHL, eigenvectors, LAPACK work
    return {
        "wave_solves": cost["wave_solves"],
        "receiver_positions": cost["receiver_positions"],
        "data_rows": cost["rows"],
        "flops": cost["gram_flops"] + EIGH_FLOPS_PER_N3 * n**3,
        "flop_rate": rate,
        "bytes": int(bytes_),
        "estimated_s": float(seconds),
    }


def use_green(config: Any, estimate: dict[str, Any] | None, exact_seconds: float, n: int) -> bool:
    """Whether the Laplace phase assembles ``H`` from Green's functions.

    ``"auto"``: when it applies, fits in memory, and is estimated no slower than an exact
    assembly by ``N`` products (``exact_seconds``); ``"green"``: always (refused when it
    cannot); ``"products"``: never.
    """
    choice = getattr(config, "hessian", "auto")
    if choice == "products":
        return False
    if estimate is None:
        if choice == "green":
            raise InvalidArgumentError(
                "hessian='green' needs the acoustic physics (receiver Green's functions); "
                "use hessian='products' or 'auto'"
            )
        return False
    if choice == "green":
        check_allocation(f"the exact {n}-unknown Gauss–Newton Hessian", estimate["bytes"])
        return True
    avail = available_memory("cpu")
    if avail is not None and estimate["bytes"] > avail:
        return False
    return estimate["estimated_s"] <= exact_seconds


def choose_route(
    config: Any, problem: Any, n: int, products: int, per_product: float
) -> tuple[dict[str, Any] | None, bool]:
    """This rank's :func:`green_estimate` and whether every rank takes the Green's route
    (:func:`use_green` on each rank's own shots; a rank without shots does not vote)."""
    green = None if config.hessian == "products" else green_estimate(problem, per_product)
    vote = None if green is None else use_green(config, green, n * per_product, n)
    if config.hessian == "green" and problem.survey is not None and green is None:
        use_green(config, None, 0.0, n)  # raises: not the acoustic physics
    size = rank_and_size(problem.comm)[1]
    yes, voters = allreduce_sum(
        torch.tensor([float(vote is not False), float(vote is not None)]), problem.comm
    ).tolist()
    return green, bool(yes == size and voters > 0)


def route_message(green: dict | None, exact_green: bool, products: int, per_product: float) -> str:
    """The line said before the Laplace phase: which route, how many solves, how long."""
    minutes = products * per_product / 60
    if exact_green:
        return (
            f"Laplace: exact H from {green['wave_solves']} wave solves (receiver Green's "
            f"functions), about {green['estimated_s'] / 60:.1f} min instead of {products} "
            f"Gauss-Newton products (about {minutes:.1f} min)"
        )
    return (
        f"Laplace: {products} Gauss-Newton products at {per_product:.3g} s each (measured on "
        f"the illumination probes): at most about {minutes:.1f} min"
    )


def green_laplace(
    problem: Any, m: torch.Tensor, sqrt: Any, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every eigenpair of the whitened Gauss–Newton Hessian ``LᵀJᵀMJL/σ²`` at ``m``, exactly.

    ``J`` is the Born Jacobian at ``m`` (``[nx, nz]`` s²/km²) over every rank's shots (each
    rank assembles its own shots' Gram matrix, summed over ranks), known water held fixed
    (its rows and columns zero), ``L`` the prior square root (``sqrt``). ``JᵀMJ`` is kept
    on ``problem`` (``green_gram``, for the background ``m``): a second call with σ
    inflated solves nothing.

    Returns
    -------
    eigenvalues : torch.Tensor
        ``[N]`` float64, descending, ``≥ 0``.
    eigenvectors : torch.Tensor
        ``[N, N]`` float64, orthonormal columns.
    """
    shape = problem.shape
    n = problem.m0.numel()
    cached = getattr(problem, "green_gram", None)  # σ inflated: the same JᵀMJ, no solve
    if cached is not None and torch.equal(cached[0], m.detach()):
        gram = cached[1] / problem.sigma**2
    else:
        gram = torch.zeros(n, n, dtype=torch.float64)
        if problem.survey is not None:
            gram = born_gram(problem.model, problem.survey, m.detach(), progress=progress)
        gram = allreduce_sum(gram, problem.comm)
        problem.green_gram = (m.detach().clone(), gram.clone())
        gram /= problem.sigma**2
    if problem.water is not None and problem.water.any():
        held = problem.water.reshape(-1)
        gram[held] = 0.0
        gram[:, held] = 0.0
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    lmat = sqrt.matvec(eye).reshape(n, n).T  # column j: L e_j
    ht = sqrt.rmatvec((gram @ lmat).T.reshape(n, *shape)).reshape(n, n).T
    del gram, lmat
    ht = 0.5 * (ht + ht.T)
    lam, vec = torch.linalg.eigh(ht)
    order = torch.flip(torch.arange(n), (0,))
    return lam[order].clamp_min(0.0), vec[:, order]
