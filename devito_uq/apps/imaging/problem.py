"""The 2D imaging problem: models, the survey read from SEG-Y, operators, prior, curvature, flow.

Two unknowns on one grid ``[nx, nz]``:

* ``born``: the image ``δm`` (squared slowness, s²/km²) around the background ``m0``; data
  ``d − F(m0) ≈ J(m0) δm``. The prior is centred on 0.
* ``fwi``: the squared slowness ``m`` itself, inside ``[1/vmax², 1/vmin²]`` (hard bounds through
  the :class:`~devito_uq.inference.Parameterization`), prior centred on ``m0``.

Under MPI each rank reads only its own shots' traces (``read_shots(shots=...)``); the
likelihood is the sum over ranks of each rank's likelihood of its shots
(:class:`~devito_uq.inference.RankSummedLikelihood`), so every rank holds the same value
and model gradient. With ``vi_shots`` each VI iteration uses a random subset of the
global shots, the same on every rank, each rank solving its own shots of it; the MAP
(the exact target), the curvature (the operator's products) and the metrics use all.

The flow (:mod:`devito_uq.apps.imaging.posterior`) works in the latent ``x`` of
``m = g(MAP + A x)`` (``g``: the FWI bounds), ``A`` the low-rank Laplace factor of
:mod:`devito_uq.inference.laplace` built from Gauss–Newton products
(:mod:`devito_uq.apps.imaging.curvature`): MAP centring and curvature whitening, without which VI on
these ill-conditioned posteriors stalls far from the answer (a diagonally scaled flow ended
at 0.5× the exact std after 3,000 steps on a 150-pixel Born problem).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from devito_uq.apps.imaging.noise import MIN_WINDOW_SAMPLES, noise_sigma, pre_arrival_sigma
from devito_uq.apps.imaging.posterior import load_posterior
from devito_uq.apps.scenarios import water_mask
from devito_uq.errors import InvalidArgumentError
from devito_uq.inference import (
    CorrelatedGaussianPrior,
    FlowPrior,
    GaussianLikelihood,
    TotalVariationPrior,
    map_estimate,
)
from devito_uq.inference.likelihood import RankSummedLikelihood
from devito_uq.io import read_shots, read_velocity
from devito_uq.io._files import check_input_file
from devito_uq.io.hdf5 import BACKGROUND_DATASETS
from devito_uq.parallel import ShotDistribution
from devito_uq.physics import AcousticModel, AcousticModeling, BornModeling
from devito_uq.physics.model import squared_slowness
from devito_uq.physics.solver import cached_solvers

__all__ = [
    "HeldFixed",
    "ImagingProblem",
    "build_problem",
    "make_prior",
    "map_search",
    "pde_solve_report",
    "pde_solves",
    "resolve_path",
]


@dataclass
class ImagingProblem:
    """Everything an inversion needs, built once per rank (:func:`build_problem`).

    Attributes
    ----------
    kind : str
        ``"born"`` or ``"fwi"``.
    m0 : torch.Tensor
        ``[nx, nz]`` background squared slowness, s²/km².
    truth : torch.Tensor or None
        The true unknown (``δm`` for born, ``m`` for fwi) when a true model was given.
    bounds : tuple of float or None
        The hard bounds of the unknown (fwi), s²/km², or ``None``.
    operator : torch.nn.Module or None
        This rank's Born or nonlinear modelling of its shots (``None``: no shots here).
    shots : list of int
        This rank's shot indices in the file.
    d_background : torch.Tensor or None
        (born) ``F(m0)`` of those shots, ``[shot, time, receiver]``.
    water : torch.Tensor or None
        ``[nx, nz]`` bool, the water held fixed (``fixed_water``), or ``None``.
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
    likelihood: RankSummedLikelihood
    spacing: tuple[float, float]
    origin: tuple[float, float]
    shots: list[int]
    nshots: int
    comm: Any
    report: dict[str, Any]
    d_background: torch.Tensor | None = None
    water: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.m0.shape)


class HeldFixed(nn.Module):
    """``m ↦ F(m)`` with ``m`` replaced by ``fill`` where ``mask`` (known water): those
    pixels then reach neither the data nor the gradient.

    Parameters
    ----------
    operator : torch.nn.Module
        ``F``, ``[batch, nx, nz] -> [batch, shot, time, receiver]``, accepting ``shots=``.
    mask : torch.Tensor
        ``[nx, nz]`` bool, True where held.
    fill : torch.Tensor
        ``[nx, nz]`` the held values (born: 0; fwi: ``m0``), s²/km².
    """

    def __init__(self, operator: nn.Module, mask: torch.Tensor, fill: torch.Tensor) -> None:
        super().__init__()
        self.operator = operator
        self.register_buffer("mask", mask)
        self.register_buffer("fill", fill)

    def forward(self, m: torch.Tensor, shots: Any = None) -> torch.Tensor:
        held = torch.where(self.mask, self.fill.to(m), m)
        return self.operator(held) if shots is None else self.operator(held, shots=shots)


def resolve_path(path: str, base: str | os.PathLike) -> Path:
    """``path`` itself if absolute (``~`` expanded), else ``base / path``.

    Parameters
    ----------
    path : str
        A path from a config.
    base : str or os.PathLike
        The folder relative paths are inside (the run's output folder).

    Returns
    -------
    pathlib.Path
    """
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base) / p


def build_problem(config: Any, base: str | os.PathLike, comm: Any = None) -> ImagingProblem:
    """Read the files of ``config`` and assemble this rank's share of the problem.

    Every check runs before any solve; each rank reads only its own shots' traces.

    Parameters
    ----------
    config : InvertConfig
        The files (relative paths inside ``base``), ``problem``, grid and noise fields.
    base : str or os.PathLike
        The folder relative paths are inside.
    comm : mpi4py communicator or None
        The ranks that share the shots.

    Returns
    -------
    ImagingProblem

    Raises
    ------
    InvalidArgumentError
        A missing or unreadable file, velocities outside ``[vmin, vmax]``, a truth on
        another grid, or no noise level.
    """
    shots_path = resolve_path(config.shots, base)
    bg_path = resolve_path(config.background, base)
    check_input_file(shots_path, "shots file", InvalidArgumentError)
    check_input_file(bg_path, "background model", InvalidArgumentError)
    # an HDF5 background is JUDI's m0 where the file has one
    v0, spacing, origin, units = read_velocity(bg_path, config.model_units, BACKGROUND_DATASETS)
    config.check_model_velocity(v0, config.vmax, f"background {str(bg_path)!r}", units)
    v_true = truth = None
    model_units = {"background": units}
    if config.truth:
        truth_path = check_input_file(
            resolve_path(config.truth, base), "true model", InvalidArgumentError
        )
        vt, sp_t, _, model_units["truth"] = read_velocity(truth_path, config.model_units)
        if vt.shape != v0.shape or not np.allclose(sp_t, spacing):
            raise InvalidArgumentError(
                f"truth {config.truth!r} has grid {vt.shape} at {sp_t} m; the background has "
                f"{v0.shape} at {spacing} m"
            )
        v_true = vt
    sigma = noise_sigma(config, shots_path)
    model = AcousticModel(v0.shape, spacing, origin, nbl=config.nbl, space_order=config.space_order)
    # Shot count from the headers; then each rank reads the samples of its own shots.
    headers = config.shot_headers()  # convention, datum, line_tolerance
    probe, _ = read_shots(
        shots_path, f0_hz=config.f0, model=model, vmax=config.vmax, shots=[0], **headers
    )
    nshots = int(probe.segy_report["nshots_in_file"])
    mine = ShotDistribution(nshots, comm).shots
    m0 = torch.from_numpy(squared_slowness(v0.astype(np.float64))).float()
    local = survey = d_background = d = None
    op: nn.Module | None = None
    if mine:
        survey, d = read_shots(
            shots_path, f0_hz=config.f0, model=model, vmax=config.vmax, shots=mine, **headers
        )
    given = "acquisition.json" if sigma != config.sigma else "config"
    noise: dict[str, Any] = {"sigma_from": given}
    if sigma is None:  # sigma = "auto": every rank joins the sum, before any solve
        noise = pre_arrival_sigma(survey, d, config.vmax, comm)
        if noise["samples"] < MIN_WINDOW_SAMPLES:
            raise InvalidArgumentError(
                f"sigma='auto' found {noise['samples']} samples before the first arrivals "
                f"(t < onset + offset/vmax, vmax={config.vmax} km/s), fewer than "
                f"{MIN_WINDOW_SAMPLES}; give sigma (the data's noise standard deviation)"
            )
        sigma = noise["sigma"]
        noise["sigma_from"] = "estimate"
    noise["sigma_before_inflation"] = sigma
    sigma *= 1.0 if config.sigma_inflation == "auto" else float(config.sigma_inflation)
    water = None
    if config.fixed_water:  # the background's water layer (scenarios.water_mask)
        water = torch.from_numpy(water_mask(v0))
    data = torch.zeros(0)
    if mine:
        data = torch.from_numpy(d)
        mask = torch.from_numpy(survey.mask())[:, None, :]
        if config.problem == "born":
            with torch.no_grad():
                d_background = AcousticModeling(model, survey)(m0)
            data = (data - d_background) * mask
            op = BornModeling(model, survey, m0)
        else:
            op = AcousticModeling(model, survey)
        if water is not None and water.any():
            op = HeldFixed(op, water, torch.zeros_like(m0) if config.problem == "born" else m0)
        local = GaussianLikelihood(op, data, sigma=sigma, mask=mask)
    # VI's random shot subsets (0 or ≥ nshots: all): the same on every rank (same seed).
    vi_shots = getattr(config, "vi_shots", 0)
    subset = vi_shots if 0 < vi_shots < nshots else None
    likelihood = RankSummedLikelihood(
        local, comm, mine, nshots, shot_batch=subset, seed=config.seed
    )
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
        "noise": noise,
        "model_units": model_units,
    }
    if water is not None:
        report["water_held_fixed"] = {
            "pixels": int(water.sum()),
            "fraction": float(water.double().mean()),
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
        water,
    )


def make_prior(config: Any, problem: ImagingProblem, base: str | os.PathLike = ".") -> nn.Module:
    """The prior over the unknown.

    A correlated Gaussian (exponential kernel), TV, or a trained posterior (``prior =
    "flow"``: ``prior_file``, the ``posterior.pt`` of an earlier run of the same kind on the
    same grid, e.g. a baseline survey).

    Parameters
    ----------
    config : InvertConfig
        ``prior`` and its fields (``prior_std``, ``correlation_length``, ``tv_weight``,
        ``prior_file``).
    problem : ImagingProblem
        Its ``kind``, ``m0`` and grid.
    base : str or os.PathLike
        The folder a relative ``prior_file`` is inside.

    Returns
    -------
    torch.nn.Module
        ``m [batch, nx, nz] -> [batch]`` negative log-density.

    Raises
    ------
    InvalidArgumentError
        ``prior_file`` missing, or a posterior of another kind or grid.
    """
    mean = torch.zeros_like(problem.m0) if problem.kind == "born" else problem.m0
    if config.prior == "gaussian":
        return CorrelatedGaussianPrior(
            mean, config.prior_std, config.correlation_length, spacing=problem.spacing
        )
    if config.prior == "tv":
        return TotalVariationPrior(config.tv_weight, axes=(0, 1), spacing=problem.spacing)
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


#: The L-BFGS MAP stops once 10 iterations lower −log posterior by less than this (nats):
#: what is left is below the posterior's own resolution. A fixed 40 iterations had left the
#: FWI MAP 4,300 nats above its optimum on a 2,048-unknown Marmousi window (velocity error
#: 3.2 % instead of 2.0 %), its Laplace and VI bands holding the truth at 42–47 %.
MAP_STALL_NATS = 1.0


def map_search(
    config: Any,
    problem: ImagingProblem,
    prior: nn.Module,
    start: torch.Tensor,
    g: Any,
    progress: bool = False,
) -> tuple[torch.Tensor, dict[str, Any] | None]:
    """The MAP by L-BFGS in the latent of ``g`` from ``start`` ``[nx, nz]``: at most
    ``config.map_iterations`` iterations, stopped at a stall of :data:`MAP_STALL_NATS`.

    Returns the model and what the search did (``iterations``, ``cap``, ``converged``,
    ``objective`` in nats, ``stall_nats``, ``gradient_evaluations``; ``None`` when
    ``map_iterations`` is 0 and the start is returned). Collective under MPI.
    """
    if not config.map_iterations:
        return start.clone(), None
    res = map_estimate(
        problem.likelihood,
        prior,
        x0=start,
        parameterization=g,
        iterations=config.map_iterations,
        progress=progress,
        stall_nats=MAP_STALL_NATS,
    )
    info = {
        "method": "L-BFGS",
        "iterations": res.iterations,
        "cap": config.map_iterations,
        "converged": bool(res.converged),
        "objective": res.objective,
        "stall_nats": MAP_STALL_NATS,
        "gradient_evaluations": res.gradient_evaluations,
    }
    return res.model.detach(), info


def prior_precision_diagonal(prior: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """``diag`` of the prior's precision where it has one (Gaussian), else zeros."""
    diag = getattr(prior, "precision_diagonal", None)
    return diag().to(like) if callable(diag) else torch.zeros_like(like)


def pde_solves() -> int:
    """PDE solves run so far by this process, over every cached solver.

    Returns
    -------
    int
        One 2D solve is one shot, forward, Born (2: background and scattered wavefields
        in one time loop) or adjoint.
    """
    return sum(s.n_solves for s in cached_solvers())


def pde_solve_report(by_phase: dict[str, int]) -> dict[str, Any]:
    """The ``pde_solves`` entry of a summary.

    Parameters
    ----------
    by_phase : dict of str to int
        Phase → :func:`pde_solves` spent in it by this process.

    Returns
    -------
    dict
        ``total``, ``by_phase`` and the ``unit``.
    """
    return {
        "total": sum(by_phase.values()),
        "by_phase": by_phase,
        "unit": "per rank: one 2D solve = one shot, forward, Born or adjoint",
    }
