"""``devito-uq invert`` and ``devito-uq imaging``: the posterior of a 2D survey.

Steps (each rank solving its own shots; rank 0 writes):

1. read the background/starting velocity (it sets the grid) and this rank's shots;
2. the illumination ``diag(JᵀJ)/σ²`` by random probes, and the top ``rank`` eigenpairs of the
   prior-whitened Gauss–Newton Hessian at ``m0`` (:mod:`devito_uq.inference.laplace`);
3. the MAP by L-BFGS in the Laplace-whitened latent (all three cached in ``map.pt``);
4. VI: a 2D flow (:class:`~devito_uq.flows.ImageFlow`) over ``x`` with ``m = g(MAP + A x)``
   (``A`` the low-rank Laplace factor, ``g`` the FWI bounds), so it starts at the Laplace
   approximation; ``vi_checkpoint.pt`` every ``checkpoint_every`` iterations;
5. ``posterior.pt`` (the flow and its parameterization: everything ``devito-uq summarize``
   needs to draw more samples without a solve), then the outputs of
   :func:`devito_uq.apps.imaging.outputs.write_outputs`.

``resume=True`` continues VI from its checkpoint and reuses ``map.pt`` when both were made
under the same configuration (compared key by key before any solve).
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import torch

from devito_uq.apps import prepare_output
from devito_uq.apps.imaging.config import NOT_IN_VI, ImagingConfig, InvertConfig
from devito_uq.apps.imaging.problem import (
    build_problem,
    gauss_newton_diagonal,
    make_flow,
    make_prior,
)
from devito_uq.errors import CheckpointError, InvalidArgumentError
from devito_uq.parallel import rank_and_size

__all__ = ["run_invert", "run_imaging", "resolve_device", "laplace_parameterization"]

#: Fields that change only VI or what is written: a MAP cache made under other values holds.
_NOT_IN_MAP = NOT_IN_VI | {
    "flow",
    "flow_levels",
    "flow_steps",
    "flow_hidden",
    "iterations",
    "batch_size",
    "lr",
}
_AFRESH = "; run without --resume to start afresh"
_CACHE_KEYS = ("identity", "map", "illumination", "sqrt", "eigenvalues", "eigenvectors")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError("device='cuda' but torch sees no GPU; use 'cpu' or 'auto'")
    return torch.device(device)


def _invert_fields(config: InvertConfig) -> dict[str, Any]:
    names = set(InvertConfig.__dataclass_fields__)
    return {k: v for k, v in config.to_dict().items() if k in names}


def input_digests(config: InvertConfig, out: str) -> dict[str, str]:
    """SHA-256 of the input files (shots, background, a prior posterior): part of a run's
    identity, so that ``--resume`` after the data changed is refused, not silently mixed."""
    import hashlib

    from devito_uq.apps.imaging.problem import resolve_path
    from devito_uq.io._files import check_input_file

    keys = ("shots", "background") + (("prior_file",) if config.prior == "flow" else ())
    what = {"shots": "shots file", "background": "background model", "prior_file": "prior_file"}
    digests = {}
    for key in keys:
        path = check_input_file(
            resolve_path(getattr(config, key), out), what[key], InvalidArgumentError
        )
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        digests[key] = h.hexdigest()
    return digests


def _identity(config: InvertConfig, exclude: frozenset, digests: dict) -> dict[str, Any]:
    fields = {k: v for k, v in _invert_fields(config).items() if k not in exclude}
    return {**fields, "input_sha256": digests}


def _prepare(
    out: str, resume: bool, config: InvertConfig, writer: bool, digests: dict
) -> dict | None:
    """Check or clear the checkpoints before any solve; return a valid MAP cache."""
    from devito_uq.io.checkpoint import check_identity, load_checkpoint

    prepare_output(out, ("vi_checkpoint.pt", "map.pt"), resume, writer)
    ckpt, cache = os.path.join(out, "vi_checkpoint.pt"), os.path.join(out, "map.pt")
    if not resume:
        return None
    base = None
    if os.path.lexists(cache):
        base = load_checkpoint(cache, required=_CACHE_KEYS)
        now = _identity(config, _NOT_IN_MAP, digests)
        check_identity(cache, base["identity"], now, hint=_AFRESH)
    if os.path.lexists(ckpt):
        run = load_checkpoint(ckpt, required=("run",))["run"]
        saved = run.get("identity") if isinstance(run, dict) else None
        if not isinstance(saved, dict):
            raise CheckpointError(f"checkpoint {ckpt!r} holds no imaging configuration{_AFRESH}")
        check_identity(ckpt, saved, _identity(config, NOT_IN_VI, digests), hint=_AFRESH)
    return base


def laplace_parameterization(problem, reference: torch.Tensor, base: dict[str, Any]):
    """``m = g(reference + A x)``: the low-rank Laplace factor ``A`` of ``base`` around
    ``reference`` (clamped strictly inside the FWI bounds)."""
    from devito_uq.inference import LaplaceParameterization
    from devito_uq.inference.laplace import sqrt_from_state

    sqrt = sqrt_from_state(base["sqrt"])
    lam, vec = base["eigenvalues"], base["eigenvectors"]
    res = float(base.get("residual", 1.0))
    if problem.bounds is None:
        return LaplaceParameterization(reference, sqrt, lam, vec, residual=res)
    lo, hi = problem.bounds
    gap = 1e-4 * (hi - lo)  # the MAP may sit on a bound to round-off
    ref = reference.clamp(lo + gap, hi - gap)
    return LaplaceParameterization(ref, sqrt, lam, vec, lower=lo, upper=hi, residual=res)


def _baselines(problem, prior, config: InvertConfig, progress: bool) -> dict[str, Any]:
    """Illumination, the MAP and the low-rank Laplace factor at the MAP.

    Born: the Gauss–Newton Hessian does not depend on the model, so the Laplace factor
    comes first and the MAP is found in its whitened latent (a quadratic there close to
    ``½‖x‖²``: L-BFGS converges in a few steps). FWI: the MAP comes first, by L-BFGS in
    the latent scaled by the Jacobi curvature ``(diag(JᵀJ)/σ² + diag(prior precision))^-½``
    (small, local steps: a whitened latent lets the first steps jump to a cycle-skipped
    model), then the Laplace factor at the MAP.
    """
    from devito_uq.apps.imaging.problem import gauss_newton_operator, prior_sqrt
    from devito_uq.inference import Parameterization, low_rank_eigh, map_estimate
    from devito_uq.inference.laplace import residual_shrink

    times: dict[str, float] = {}
    counts: dict[str, int] = {}

    def phase(name, fn):
        t0, s0 = time.perf_counter(), _solves(problem)
        result = fn()
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0
        counts[name] = counts.get(name, 0) + _solves(problem) - s0
        return result

    show = progress and rank_and_size(problem.comm)[0] == 0
    gn0 = gauss_newton_operator(problem, problem.m0, progress=show)
    illum = phase(
        "illumination",
        lambda: gauss_newton_diagonal(gn0, problem.shape, config.probes, config.seed),
    )
    sqrt = prior_sqrt(config, prior, problem.m0)
    base: dict[str, Any] = {"illumination": illum, "sqrt": sqrt.state()}

    def laplace(gn):
        def whitened(v: torch.Tensor) -> torch.Tensor:  # Lᵀ H_d L v
            return sqrt.rmatvec(gn(sqrt.matvec(v)))

        rank = min(config.rank, problem.m0.numel())
        lam, vec = low_rank_eigh(whitened, problem.shape, rank, config.oversample, config.seed)
        base.update(
            eigenvalues=lam.float(),
            eigenvectors=vec.float(),
            residual=(
                residual_shrink(lam, problem.m0.numel()) if config.residual == "tail" else 1.0
            ),
        )

    def map_from(start, g):
        if not config.map_iterations:
            return start.clone()
        return map_estimate(
            problem.likelihood,
            prior,
            x0=start,
            parameterization=g,
            iterations=config.map_iterations,
            progress=progress,
        ).model.detach()

    if problem.kind == "born":
        phase("laplace", lambda: laplace(gn0))
        start = torch.zeros_like(problem.m0)
        g = laplace_parameterization(problem, start, base)
        base["map"] = phase("map", lambda: map_from(start, g))
    else:
        precision = illum + _prior_precision_diagonal(prior, illum)
        lo, hi = problem.bounds
        g = Parameterization(problem.m0, precision.rsqrt().float(), lower=lo, upper=hi)
        base["map"] = phase("map", lambda: map_from(problem.m0, g))
        gn = gauss_newton_operator(problem, base["map"], progress=show)
        phase("laplace", lambda: laplace(gn))
    base.update(
        time_s=times,
        pde_solves=counts,
        eigenvalues_above_1=int((base["eigenvalues"] > 1).sum()),
    )
    return base


def _prior_precision_diagonal(prior, like: torch.Tensor) -> torch.Tensor:
    """``diag`` of the prior's precision where it has one (Gaussian), else zeros."""
    diag = getattr(prior, "precision_diagonal", None)
    return diag().to(like) if callable(diag) else torch.zeros_like(like)


def _solves(problem) -> int:
    """PDE solves run so far by this process (every cached acoustic solver)."""
    from devito_uq.physics.solver import cached_solvers

    return sum(s.n_solves for s in cached_solvers())


def run_invert(
    config: InvertConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    comm: Any = None,
) -> dict[str, Any]:
    """Posterior of the survey of ``config`` written to ``out``; returns the summary.

    Raises :class:`InvalidArgumentError` (bad value, file or grid) or
    :class:`CheckpointError` (``resume`` with a checkpoint of another configuration)
    before any solve.
    """
    from devito_uq.apps.imaging.outputs import save_posterior, write_outputs
    from devito_uq.inference import VariationalPosterior
    from devito_uq.io.checkpoint import save_checkpoint

    config.validate()
    if config.amortized:
        # A trained amortized posterior instead of MAP + VI (devito_uq.apps.amortize).
        from devito_uq.apps.amortize.imaging import invert_amortized

        return invert_amortized(config, out, resume, progress, figures, comm)
    device = resolve_device(config.device)
    out = os.fspath(out)
    rank, _ = rank_and_size(comm)
    t_start = time.perf_counter()
    if os.path.exists(out) and not os.path.isdir(out):
        raise InvalidArgumentError(f"out={out!r} exists and is not a folder")
    digests = input_digests(config, out)
    cached = _prepare(out, resume, config, rank == 0, digests)
    problem = build_problem(config, out, comm)
    make_flow(config, problem.shape)  # the flow's fields, before any solve
    prior = make_prior(config, problem, out)
    timings: dict[str, float] = {"setup": time.perf_counter() - t_start}
    solves: dict[str, int] = {"setup": _solves(problem)}
    if cached is None:
        base = _baselines(problem, prior, config, progress)
        if rank == 0:
            save_checkpoint(
                os.path.join(out, "map.pt"),
                {"identity": _identity(config, _NOT_IN_MAP, digests), **base},
            )
    else:
        base = cached
    timings.update(base["time_s"])
    solves.update(base["pde_solves"])

    g = laplace_parameterization(problem, base["map"], base)
    torch.manual_seed(config.seed)  # the flow's initial weights, identical on every rank
    flow = make_flow(config, problem.shape)
    vi = VariationalPosterior(flow.to(device), problem.likelihood, prior.to(device), g.to(device))
    t0, s0 = time.perf_counter(), _solves(problem)
    vi.fit(
        config.iterations,
        batch_size=config.batch_size,
        lr=config.lr,
        lr_schedule="cosine",
        checkpoint_path=os.path.join(out, "vi_checkpoint.pt"),
        checkpoint_every=config.checkpoint_every,
        seed=config.seed,
        progress=progress and rank == 0,
        identity=_identity(config, NOT_IN_VI, digests),
    )
    timings["vi"], solves["vi"] = time.perf_counter() - t0, _solves(problem) - s0
    iters = config.iterations - vi.resumed_from
    posterior = save_posterior(out, vi, problem, base, config, write=rank == 0)
    summary = write_outputs(
        out, posterior, config.n_samples, config.seed, figures=figures, comm=comm
    )
    summary["vi"] = {
        "iterations": config.iterations,
        "iterations_this_run": iters,
        "resumed_from": vi.resumed_from,
        "batch_size": config.batch_size,
        "seconds_per_iteration": timings["vi"] / max(iters, 1),
        "final_loss": vi.history["loss"][-1] if vi.history["loss"] else None,
        "device": str(device),
    }
    summary["time_s"] = {**timings, "total": time.perf_counter() - t_start}
    summary["pde_solves"] = {
        "total": sum(solves.values()),
        "by_phase": solves,
        "unit": "per rank: one 2D solve = one shot, forward, Born or adjoint",
    }
    summary["problem"] = problem.report
    lam = base["eigenvalues"]
    summary["laplace"] = {
        "rank": int(lam.numel()),
        "largest_eigenvalue": float(lam[0]),
        "smallest_computed_eigenvalue": float(lam[-1]),
        "eigenvalues_above_1": int((lam > 1).sum()),
        "residual_shrink": float(base.get("residual", 1.0)),
        "unknowns": int(problem.m0.numel()),
    }
    if lam.numel() < problem.m0.numel() and float(lam[-1]) > 1.0:
        # The directions beyond the rank still carry information the start ignores: the MAP
        # is not converged there and VI over-contracts (README, "where it stops being
        # calibrated"); say so where the user looks.
        message = (
            f"Laplace rank {lam.numel()} of {problem.m0.numel()} unknowns stops at eigenvalue "
            f"{float(lam[-1]):.3g} > 1: the posterior is not calibrated; raise rank"
        )
        summary["laplace"]["warning"] = message
        if rank == 0:
            warnings.warn(message, stacklevel=2)
    summary["config"] = config.to_dict()
    if problem.truth is not None and problem.kind == "born":
        # How far the wave equation's data of the truth are from its Born data: the model
        # error a Born posterior ignores (0 when the shots were simulated as Born data).
        summary["linearization_error"] = linearization_error(problem)
        summary["data_simulated_as"] = _simulated_as(config, out)
    if rank == 0:
        from devito_uq.apps.imaging.outputs import write_history, write_summary

        write_history(out, vi.history)
        write_summary(out, summary)
    return summary


def _simulated_as(config: InvertConfig, out: str) -> str:
    """``"born"``/``"nonlinear"`` from ``acquisition.json`` beside the shots, or ``"unknown"``."""
    import json

    from devito_uq.apps.imaging.problem import resolve_path

    try:
        with open(resolve_path(config.shots, out).parent / "acquisition.json") as fh:
            return str(json.load(fh)["config"]["data"])
    except (OSError, KeyError, TypeError, ValueError):
        return "unknown"


def linearization_error(problem) -> float:
    """``‖(F(m_true) − F(m0)) − J δm_true‖ / ‖F(m_true) − F(m0)‖`` over all shots."""
    from devito_uq.parallel import allreduce_sum
    from devito_uq.physics import AcousticModeling

    num = den = torch.zeros((), dtype=torch.float64)
    if problem.survey is not None:
        F = AcousticModeling(problem.model, problem.survey)
        with torch.no_grad():  # F(m0) was computed when the data were read
            scattered = F(problem.m0 + problem.truth) - problem.d_background
            born = problem.operator(problem.truth)
        mask = torch.from_numpy(problem.survey.mask())[:, None, :]
        num = ((scattered - born) * mask).double().pow(2).sum()
        den = (scattered * mask).double().pow(2).sum()
    pair = allreduce_sum(torch.stack([num, den]), problem.comm)
    return float((pair[0] / pair[1]).sqrt())


def run_imaging(
    config: ImagingConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    comm: Any = None,
) -> dict[str, Any]:
    """Simulate the survey of ``config`` into ``out``, then invert it there."""
    from devito_uq.apps.imaging.simulate import run_simulate

    config.validate()
    sim = config.simulate_config()
    inv = config.invert_config()
    acquisition = run_simulate(sim, out, progress=progress, figures=figures, comm=comm)
    summary = run_invert(inv, out, resume=resume, progress=progress, figures=figures, comm=comm)
    summary["acquisition"] = {k: v for k, v in acquisition.items() if k != "config"}
    if rank_and_size(comm)[0] == 0:
        from devito_uq.apps.imaging.outputs import write_summary

        write_summary(out, summary)
    return summary
