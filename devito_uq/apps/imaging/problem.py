"""The 2D imaging problem: models, the survey read from SEG-Y, operators, prior, curvature, flow.

Two unknowns on one grid ``[nx, nz]``:

* ``born``: the image ``δm`` (squared slowness, s²/km²) around the background ``m0``; data
  ``d − F(m0) ≈ J(m0) δm``. The prior is centred on 0.
* ``fwi``: the squared slowness ``m`` itself, inside ``[1/vmax², 1/vmin²]`` (hard bounds through
  the :class:`~devito_uq.inference.Parameterization`), prior centred on ``m0``.

Under MPI each rank reads only its own shots' traces (``read_shots(shots=...)``); the
likelihood is the sum over ranks of each rank's likelihood of its shots
(:class:`RankSumLikelihood`), so every rank holds the same value and model gradient.

The flow works in the latent ``x`` of ``m = g(MAP + A x)`` (``g``: the FWI bounds), ``A`` the
low-rank Laplace factor of :mod:`devito_uq.inference.laplace` built from Gauss–Newton
products (:func:`gauss_newton_operator`): MAP centring and curvature whitening, without
which VI on these ill-conditioned posteriors stalls far from the answer (a diagonally
scaled flow ended at 0.5× the exact std after 3,000 steps on a 150-pixel Born problem).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from devito_uq.errors import InvalidArgumentError
from devito_uq.parallel import ShotDistribution, allreduce_sum, allreduce_value, share_gradient

__all__ = [
    "ImagingProblem",
    "RankSumLikelihood",
    "build_problem",
    "gauss_newton_diagonal",
    "gauss_newton_operator",
    "prior_sqrt",
    "resolve_path",
    "load_marmousi",
    "make_flow",
    "make_prior",
    "resample_window",
    "smooth_background",
    "water_mask",
]

MARMOUSI_SHAPE, MARMOUSI_SPACING = (1601, 401), 7.5


def load_marmousi() -> np.ndarray:
    """The shipped Marmousi-II P velocity ``[1601, 401]`` (x, z), km/s, at 7.5 m.

    Martin, Wiley and Marfurt (2006), Allied Geophysics Laboratory, University of Houston;
    see ``devito_uq/data/marmousi/README.md`` for the provenance and terms.
    """
    path = resources.files("devito_uq") / "data" / "marmousi" / "vp_marmousi_bi"
    with resources.as_file(path) as p:
        return np.fromfile(p, "<f4").reshape(MARMOUSI_SHAPE)


def resample_window(
    v: np.ndarray,
    spacing_in: tuple[float, float],
    origin_in: tuple[float, float],
    x_start: float,
    width: float,
    depth: float,
    spacing: float,
) -> tuple[np.ndarray, tuple[float, float]]:
    """Cut ``[x_start, x_start+width] × [z0, z0+depth]`` (m) out of ``v`` ``[nx, nz]`` and
    resample it to ``spacing`` (m): anti-alias filter of the slowness, then linear
    interpolation. ``width``/``depth`` 0 mean the whole extent. Returns ``(v [nx', nz'],
    origin (m))``."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    (dx, dz), (x0, z0) = spacing_in, origin_in
    x_end_in, z_end_in = x0 + dx * (v.shape[0] - 1), z0 + dz * (v.shape[1] - 1)
    width = width or (x_end_in - x_start)
    depth = depth or (z_end_in - z0)
    if x_start < x0 - 1e-6 or x_start + width > x_end_in + 1e-6 or z0 + depth > z_end_in + 1e-6:
        raise InvalidArgumentError(
            f"window x_start={x_start} m, width={width} m, depth={depth} m leaves the model "
            f"(x {x0:g}..{x_end_in:g} m, z {z0:g}..{z_end_in:g} m)"
        )
    nx, nz = int(np.floor(width / spacing + 1e-9)) + 1, int(np.floor(depth / spacing + 1e-9)) + 1
    if min(nx, nz) < 8:
        raise InvalidArgumentError(
            f"the window holds {nx}×{nz} points at spacing={spacing} m; at least 8×8 are needed"
        )
    s = 1.0 / np.asarray(v, np.float64)
    # Anti-alias: a Gaussian of σ ≈ half the new spacing, in input cells.
    sig = [max(0.0, 0.5 * spacing / h - 0.5) for h in (dx, dz)]
    if max(sig) > 0:
        s = gaussian_filter(s, sig, mode="nearest")
    xi = (x_start + spacing * np.arange(nx) - x0) / dx
    zi = (spacing * np.arange(nz)) / dz
    X, Z = np.meshgrid(xi, zi, indexing="ij")
    out = map_coordinates(s, [X, Z], order=1, mode="nearest")
    return (1.0 / out).astype(np.float32), (float(x_start), float(z0))


def water_mask(v: np.ndarray, tolerance: float = 1e-3, vmax_water: float = 1.55) -> np.ndarray:
    """``[nx, nz]`` bool: the rows of each column from the top down to the water bottom.

    Water is the leading run of samples equal (within ``tolerance`` km/s) to the top
    sample, when that is at most ``vmax_water`` km/s (a land model has none).
    """
    v = np.asarray(v)
    top = v[:, :1]
    same = (np.abs(v - top) <= tolerance) & (top <= vmax_water)
    return np.cumprod(same, axis=1).astype(bool)


def smooth_background(
    v: np.ndarray, spacing: float, length: float, keep_water: bool = True
) -> np.ndarray:
    """Background velocity (km/s): the slowness smoothed by a Gaussian of ``length`` m.

    With ``keep_water`` the water layer (:func:`water_mask`) stays exact, as it is known
    in practice, and the sediments are smoothed without mixing water into them (the
    water is first filled with the sediment velocity beneath it): the background then
    carries the water bottom and the direct wave exactly.
    """
    from scipy.ndimage import gaussian_filter

    v = np.asarray(v, np.float64)
    water = water_mask(v) if keep_water else np.zeros(v.shape, bool)
    filled = v.copy()
    for ix in np.flatnonzero(water.any(1)):
        nw = int(water[ix].sum())
        if nw < v.shape[1]:
            filled[ix, :nw] = v[ix, nw]
    s = gaussian_filter(1.0 / filled, length / spacing, mode="nearest")
    out = 1.0 / s
    out[water] = v[water]
    return out.astype(np.float32)


class RankSumLikelihood(nn.Module):
    """``Σ_ranks`` of each rank's likelihood of the shots it read (``[batch]``).

    The model gradient and the value are summed over ranks (:func:`share_gradient`,
    :func:`allreduce_value`), so all ranks agree; ``local=None`` is a rank without shots.
    ``comm`` is exposed for :meth:`VariationalPosterior.fit` (rank 0 writes checkpoints).
    """

    def __init__(self, local: nn.Module | None, comm: Any) -> None:
        super().__init__()
        self.local = local
        self.comm = comm

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        if self.comm is None:
            return self.local(m)
        m_local = share_gradient(m, self.comm)
        if self.local is None:  # a zero that still joins the collective gradient sum
            value = (m_local * 0).flatten(1).sum(1)
        else:
            value = self.local(m_local)
        return allreduce_value(value, self.comm)


@dataclass
class ImagingProblem:
    """Everything an inversion needs, built once per rank.

    ``m0`` ``[nx, nz]`` background squared slowness (s²/km²); ``truth`` the true unknown
    (``δm`` for born, ``m`` for fwi) when a true model was given; ``bounds`` the hard
    bounds of the unknown (fwi) or ``None``; ``operator`` this rank's Born or nonlinear
    modelling of its shots; ``shots`` this rank's shot indices in the file;
    ``d_background`` (born) ``F(m0)`` of those shots, ``[shot, time, receiver]``.
    """

    kind: str
    model: Any
    survey: Any
    data: torch.Tensor
    sigma: float
    m0: torch.Tensor
    truth: torch.Tensor | None
    v_true: np.ndarray | None
    bounds: tuple[float, float] | None
    operator: nn.Module | None
    likelihood: RankSumLikelihood
    spacing: tuple[float, float]
    origin: tuple[float, float]
    shots: list[int]
    nshots: int
    comm: Any
    report: dict[str, Any]
    d_background: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.m0.shape)


def resolve_path(path: str, base: str | os.PathLike) -> Path:
    """``path`` itself if absolute (``~`` expanded), else ``base / path``."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base) / p


def noise_sigma(config: Any, shots_path: Path) -> float:
    """``config.sigma``, or the σ that ``devito-uq simulate`` wrote to acquisition.json."""
    if config.sigma > 0:
        return float(config.sigma)
    sidecar = shots_path.parent / "acquisition.json"
    try:
        with open(sidecar) as fh:
            return float(json.load(fh)["noise_sigma"])
    except (OSError, KeyError, TypeError, ValueError):
        raise InvalidArgumentError(
            f"sigma=0 asks for the noise level from {str(sidecar)!r}, which is missing or has "
            "no 'noise_sigma'; give sigma (the data's noise standard deviation)"
        ) from None


def build_problem(config: Any, base: str | os.PathLike, comm: Any = None) -> ImagingProblem:
    """Read the files of ``config`` (an :class:`InvertConfig`; relative paths inside
    ``base``) and assemble this rank's share of the problem. Every check runs before any
    solve."""
    from devito_uq.inference import GaussianLikelihood
    from devito_uq.io import read_image, read_shots
    from devito_uq.io._files import check_input_file
    from devito_uq.physics import AcousticModel, AcousticModeling, BornModeling
    from devito_uq.physics.model import squared_slowness

    shots_path = resolve_path(config.shots, base)
    bg_path = resolve_path(config.background, base)
    check_input_file(shots_path, "shots file", InvalidArgumentError)
    check_input_file(bg_path, "background model", InvalidArgumentError)
    v0, spacing, origin = read_image(bg_path)
    if not (np.all(np.isfinite(v0)) and v0.min() > 0):
        raise InvalidArgumentError(f"background {str(bg_path)!r} holds non-positive velocities")
    if v0.min() < config.vmin or v0.max() > config.vmax:
        raise InvalidArgumentError(
            f"background velocities {v0.min():.3f}..{v0.max():.3f} km/s leave "
            f"[vmin={config.vmin}, vmax={config.vmax}]"
        )
    v_true = truth = None
    if config.truth:
        truth_path = check_input_file(
            resolve_path(config.truth, base), "true model", InvalidArgumentError
        )
        vt, sp_t, _ = read_image(truth_path)
        if vt.shape != v0.shape or not np.allclose(sp_t, spacing):
            raise InvalidArgumentError(
                f"truth {config.truth!r} has grid {vt.shape} at {sp_t} m; the background has "
                f"{v0.shape} at {spacing} m"
            )
        v_true = vt
    sigma = noise_sigma(config, shots_path)
    model = AcousticModel(v0.shape, spacing, origin, nbl=config.nbl, space_order=config.space_order)
    # Shot count from the headers; then each rank reads the samples of its own shots.
    probe, _ = read_shots(shots_path, f0_hz=config.f0, model=model, vmax=config.vmax, shots=[0])
    nshots = int(probe.segy_report["nshots_in_file"])
    mine = ShotDistribution(nshots, comm).shots
    m0 = torch.from_numpy(squared_slowness(v0.astype(np.float64))).float()
    local = survey = d_background = None
    data = torch.zeros(0)
    op: nn.Module | None = None
    if mine:
        survey, d = read_shots(
            shots_path, f0_hz=config.f0, model=model, vmax=config.vmax, shots=mine
        )
        data = torch.from_numpy(d)
        mask = torch.from_numpy(survey.mask())[:, None, :]
        if config.problem == "born":
            with torch.no_grad():
                d_background = AcousticModeling(model, survey)(m0)
            data = (data - d_background) * mask
            op = BornModeling(model, survey, m0)
        else:
            op = AcousticModeling(model, survey)
        local = GaussianLikelihood(op, data, sigma=sigma, mask=mask)
    likelihood = RankSumLikelihood(local, comm)
    bounds = None
    if config.problem == "fwi":
        bounds = (1.0 / config.vmax**2, 1.0 / config.vmin**2)
    if v_true is not None:
        m_true = torch.from_numpy(squared_slowness(v_true.astype(np.float64))).float()
        truth = m_true - m0 if config.problem == "born" else m_true
    report = {
        "shots_file": str(shots_path),
        "nshots": nshots,
        "ranks": 1 if comm is None else comm.Get_size(),
        "grid": list(v0.shape),
        "spacing_m": list(spacing),
        "origin_m": list(origin),
        "noise_sigma": sigma,
    }
    if survey is not None:
        report.update(
            solver_dt_ms=survey.dt, data_dt_ms=survey.data_axis.dt, nt_data=survey.nt_data
        )
    return ImagingProblem(
        config.problem,
        model,
        survey,
        data,
        sigma,
        m0,
        truth,
        v_true,
        bounds,
        op,
        likelihood,
        tuple(spacing),
        tuple(origin),
        mine,
        nshots,
        comm,
        report,
        d_background,
    )


def make_prior(config: Any, problem: ImagingProblem, base: str | os.PathLike = ".") -> nn.Module:
    """The prior over the unknown: a correlated Gaussian (exponential kernel), TV, or a
    trained posterior (``prior = "flow"``: ``prior_file``, the ``posterior.pt`` of an
    earlier run of the same kind on the same grid, e.g. a baseline survey)."""
    from devito_uq.inference import FlowPrior, TotalVariationPrior

    mean = torch.zeros_like(problem.m0) if problem.kind == "born" else problem.m0
    if config.prior == "gaussian":
        from devito_uq.inference import CorrelatedGaussianPrior

        return CorrelatedGaussianPrior(
            mean, config.prior_std, config.correlation_length, spacing=problem.spacing
        )
    if config.prior == "tv":
        return TotalVariationPrior(config.tv_weight, axes=(0, 1), spacing=problem.spacing)
    from devito_uq.apps.imaging.outputs import load_posterior
    from devito_uq.io._files import check_input_file

    if not config.prior_file:
        raise InvalidArgumentError("prior='flow' needs prior_file (a posterior.pt)")
    path = check_input_file(
        resolve_path(config.prior_file, base), "prior_file", InvalidArgumentError
    )
    post = load_posterior(path)
    if post.kind != problem.kind or tuple(post.m0.shape) != problem.shape:
        raise InvalidArgumentError(
            f"prior_file {str(path)!r} is a {post.kind} posterior on {tuple(post.m0.shape)}; "
            f"this run is {problem.kind} on {problem.shape}"
        )
    return FlowPrior(post.flow, post.parameterization)


def prior_sqrt(config: Any, prior: nn.Module, like: torch.Tensor):
    """Square root ``L`` of the prior covariance (Gaussian prior), or ``prior_std·I`` as a
    proxy for priors without one (TV): the whitening of the Laplace preconditioner."""
    from devito_uq.inference import DiagonalSqrt

    sqrt = getattr(prior, "sqrt", None)
    if callable(sqrt):
        return sqrt()
    return DiagonalSqrt(torch.full_like(like, config.prior_std))


def gauss_newton_operator(
    problem: ImagingProblem, m: torch.Tensor, chunk: int = 16, progress: bool = False
):
    """``v ↦ JᵀMJv/σ²`` (the misfit's Gauss–Newton Hessian at ``m``, ``J`` the Born operator,
    ``M`` the trace mask) on batches ``[k, nx, nz]``, summed over ranks; float64 in and out.
    One Born and one adjoint solve per shot and vector; ``chunk`` vectors per call; a
    progress bar per batch with ``progress``."""
    from tqdm.auto import tqdm

    from devito_uq.physics import BornModeling

    J = mask = None
    if problem.survey is not None:
        J = (
            problem.operator
            if problem.kind == "born"
            else BornModeling(problem.model, problem.survey, m)
        )
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
                u = v[k : k + chunk].to(problem.m0.dtype).requires_grad_(True)
                w = J(u) * mask
                (0.5 * w.pow(2).sum() / problem.sigma**2).backward()
                local[k : k + chunk] = u.grad.double()
        return allreduce_sum(local, problem.comm)

    return apply


def gauss_newton_diagonal(
    gn, shape: tuple[int, int], probes: int, seed: int, smooth_cells: float = 1.5
) -> torch.Tensor:
    r"""Hutchinson estimate of :math:`\mathrm{diag}(J^\top M J)/\sigma^2` ``[nx, nz]`` float64.

    ``E[v ⊙ Hv] = diag(H)`` for Rademacher probes ``v`` (Bekas, Kokiopoulou & Saad 2007),
    ``gn`` from :func:`gauss_newton_operator`. Smoothed by a Gaussian of ``smooth_cells``
    (the probes' off-diagonal noise is rough, the illumination it estimates is smooth)
    and floored at 10⁻³ of its maximum: the illumination proxy of the summary.
    """
    from scipy.ndimage import gaussian_filter

    g = torch.Generator().manual_seed(seed)
    v = (torch.randint(0, 2, (probes, *shape), generator=g) * 2 - 1).double()
    diag = (v * gn(v)).mean(0).numpy()
    diag = gaussian_filter(diag, smooth_cells, mode="nearest")
    return torch.from_numpy(np.maximum(diag, 1e-3 * diag.max()))


def make_flow(config: Any, shape: tuple[int, int]) -> nn.Module:
    """The 2D flow over the latent image (any grid: :class:`~devito_uq.flows.ImageFlow`)."""
    from devito_uq.flows import ImageFlow

    flow = ImageFlow(
        shape,
        kind=config.flow,
        levels=config.flow_levels,
        steps=config.flow_steps,
        hidden=config.flow_hidden,
    )
    # The Laplace-whitened latent is already ~N(0, I): ActNorm stays at the identity rather
    # than fitting the first VI batch (2 samples), whose noisy per-channel scales became
    # stripes with the period of the squeeze in the std maps.
    flow.net.skip_data_init()
    return flow
