"""``devito-uq invert`` and ``devito-uq imaging``: the posterior of a 2D survey.

Steps (each rank solving its own shots; rank 0 writes):

1. read the background/starting velocity (it sets the grid) and this rank's shots;
2. the illumination ``diag(JᵀJ)/σ²`` by random probes, and the top ``rank`` eigenpairs of the
   prior-whitened Gauss–Newton Hessian at ``m0`` (:mod:`devito_uq.inference.laplace`);
3. the MAP by L-BFGS in the Laplace-whitened latent (all three cached in ``map.pt``);
4. VI: a 2D flow (:class:`~devito_uq.flows.ImageFlow`) over ``x`` with ``m = g(MAP + A x)``
   (``A`` the low-rank Laplace factor, ``g`` the FWI bounds), so it starts at the Laplace
   approximation; ``vi_checkpoint.pt`` every ``checkpoint_every`` iterations (with the
   generator of the random shot subsets when ``vi_shots`` is set);
5. ``posterior.pt`` (the flow and its parameterization: everything ``devito-uq summarize``
   needs to draw more samples without a solve), then the outputs of
   :func:`devito_uq.apps.imaging.outputs.write_outputs`.

``resume=True`` continues VI from its checkpoint and reuses ``map.pt`` when both were made
under the same configuration (compared key by key before any solve).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from typing import Any

import torch

from devito_uq.apps import prepare_output
from devito_uq.apps.imaging.config import NOT_IN_VI, ImagingConfig, InvertConfig
from devito_uq.apps.imaging.curvature import laplace_baseline
from devito_uq.apps.imaging.noise import (
    checked_baseline,
    linearization_error,
    model_check_line,
    set_noise_sigma,
)
from devito_uq.apps.imaging.outputs import (
    check_run_kind,
    write_history,
    write_outputs,
    write_summary,
)
from devito_uq.apps.imaging.posterior import laplace_parameterization, make_flow, save_posterior
from devito_uq.apps.imaging.problem import (
    build_problem,
    make_prior,
    pde_solve_report,
    pde_solves,
    resolve_path,
)
from devito_uq.apps.imaging.simulate import idle_ranks, run_simulate
from devito_uq.errors import CheckpointError, DevitoUQWarning, InvalidArgumentError
from devito_uq.inference import VariationalPosterior
from devito_uq.io import check_image
from devito_uq.io._files import check_input_file, read_input_json
from devito_uq.io.checkpoint import check_identity, load_checkpoint, save_checkpoint
from devito_uq.parallel import rank_and_size

__all__ = [
    "file_digest",
    "input_digests",
    "resolve_device",
    "run_imaging",
    "run_invert",
]

#: Fields that change only VI or what is written: a MAP cache made under other values holds.
_NOT_IN_MAP = NOT_IN_VI | {
    "flow",
    "flow_levels",
    "flow_steps",
    "flow_hidden",
    "iterations",
    "batch_size",
    "vi_shots",
    "lr",
}
_AFRESH = "; run without --resume to start afresh"
_CACHE_KEYS = ("identity", "map", "illumination", "sqrt", "eigenvalues", "eigenvectors")
_CACHE_KEYS += ("model_check", "noise_sigma")


def resolve_device(device: str) -> torch.device:
    """The torch device of a config's ``device`` field.

    Parameters
    ----------
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    torch.device

    Raises
    ------
    InvalidArgumentError
        ``"cuda"`` without a GPU.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError("device='cuda' but torch sees no GPU; use 'cpu' or 'auto'")
    return torch.device(device)


def _invert_fields(config: InvertConfig) -> dict[str, Any]:
    names = set(InvertConfig.__dataclass_fields__)
    return {k: v for k, v in config.to_dict().items() if k in names}


def input_digests(config: InvertConfig, out: str) -> dict[str, str]:
    """SHA-256 of the input files (shots, background, a prior posterior).

    Part of a run's identity, so that ``--resume`` after the data changed is refused, not
    silently mixed.

    Parameters
    ----------
    config : InvertConfig
        ``shots``, ``background`` and (``prior = "flow"``) ``prior_file``.
    out : str
        The folder relative paths are inside.

    Returns
    -------
    dict of str to str
        Field name → hex digest.

    Raises
    ------
    InvalidArgumentError
        A missing input file.
    """
    keys = ("shots", "background") + (("prior_file",) if config.prior == "flow" else ())
    what = {"shots": "shots file", "background": "background model", "prior_file": "prior_file"}
    digests = {}
    for key in keys:
        path = check_input_file(
            resolve_path(getattr(config, key), out), what[key], InvalidArgumentError
        )
        digests[key] = file_digest(path)
    return digests


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB chunks.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    str
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _identity(config: InvertConfig, exclude: frozenset, digests: dict) -> dict[str, Any]:
    fields = {k: v for k, v in _invert_fields(config).items() if k not in exclude}
    return {**fields, "input_sha256": digests}


def _prepare(
    out: str, resume: bool, config: InvertConfig, writer: bool, digests: dict
) -> dict | None:
    """Check or clear the checkpoints before any solve; return a valid MAP cache.

    ``summary.json`` is written last, so its presence marks a finished run: once the
    checks have passed, a stale one is removed, and a run that stops early (a full disk,
    a kill) leaves a folder without it.
    """
    prepare_output(out, ("vi_checkpoint.pt", "map.pt"), resume, writer)
    ckpt, cache = os.path.join(out, "vi_checkpoint.pt"), os.path.join(out, "map.pt")
    if not resume:
        _drop_summary(out, writer)
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
    _drop_summary(out, writer)
    return base


def _drop_summary(out: str, writer: bool) -> None:
    path = os.path.join(out, "summary.json")
    if writer and os.path.isfile(path) and not os.path.islink(path):
        os.remove(path)


def run_invert(
    config: InvertConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    comm: Any = None,
) -> dict[str, Any]:
    """The posterior of the survey of ``config`` (MAP, Laplace, VI), written to ``out``.

    ``devito-uq invert`` without ``--amortized`` (the command dispatches ``--amortized``
    to :func:`devito_uq.apps.amortize.imaging_invert.invert_amortized`).

    Parameters
    ----------
    config : InvertConfig
        The survey's files and every knob; ``amortized`` must be empty.
    out : str or os.PathLike
        The output folder (relative input paths are inside it).
    resume : bool
        Continue from ``vi_checkpoint.pt`` and reuse ``map.pt`` (same configuration).
    progress : bool
        Progress bars (rank 0).
    figures : bool
        Write the PNG figures.
    comm : mpi4py communicator or None
        The ranks that share the shots (rank 0 writes).

    Returns
    -------
    dict
        The summary written to ``summary.json``.

    Raises
    ------
    InvalidArgumentError
        A bad value, file or grid, or ``amortized`` set; before any solve.
    CheckpointError
        ``resume`` with a checkpoint of another configuration; before any solve.
    """
    config.validate()
    if config.amortized:
        raise InvalidArgumentError(
            f"amortized={config.amortized!r}: an amortized posterior is sampled by "
            "devito_uq.apps.amortize.imaging_invert.invert_amortized (devito-uq invert "
            "--amortized), not by run_invert"
        )
    device = resolve_device(config.device)
    out = os.fspath(out)
    rank, _ = rank_and_size(comm)
    t_start = time.perf_counter()
    if os.path.exists(out) and not os.path.isdir(out):
        raise InvalidArgumentError(f"out={out!r} exists and is not a folder")
    digests = input_digests(config, out)
    check_run_kind(out, config.problem, config.overwrite, writer=rank == 0)
    cached = _prepare(out, resume, config, rank == 0, digests)
    problem = build_problem(config, out, comm)
    idle_ranks(problem.nshots, comm)
    # The output images' grid (the background's): refused now, not after the solves.
    check_image(problem.shape, problem.spacing, problem.origin, path=os.path.join(out, "*.sgy"))
    make_flow(config, problem.shape)  # the flow's fields, before any solve
    prior = make_prior(config, problem, out)
    timings: dict[str, float] = {"setup": time.perf_counter() - t_start}
    solves: dict[str, int] = {"setup": pde_solves()}
    if cached is None:  # with the noise model's check at the MAP (and σ inflated)
        base = checked_baseline(problem, prior, config, progress, laplace_baseline)
        if rank == 0:
            save_checkpoint(
                os.path.join(out, "map.pt"),
                {"identity": _identity(config, _NOT_IN_MAP, digests), **base},
            )
    else:
        base = cached
        set_noise_sigma(problem, float(base["noise_sigma"]))
    problem.report["noise_sigma"] = problem.sigma
    check_line = model_check_line(base["model_check"])
    if check_line is not None and rank == 0:  # before VI: the user may stop here
        warnings.warn(check_line, DevitoUQWarning, stacklevel=2)
    timings.update(base["time_s"])
    solves.update(base["pde_solves"])

    g = laplace_parameterization(base["map"], base, problem.bounds)
    torch.manual_seed(config.seed)  # the flow's initial weights, identical on every rank
    flow = make_flow(config, problem.shape)
    vi = VariationalPosterior(flow.to(device), problem.likelihood, prior.to(device), g.to(device))
    t0, s0 = time.perf_counter(), pde_solves()
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
    timings["vi"], solves["vi"] = time.perf_counter() - t0, pde_solves() - s0
    iters = config.iterations - vi.resumed_from
    posterior = save_posterior(out, vi, problem, base, config, write=rank == 0)
    summary = write_outputs(
        out,
        posterior,
        config.n_samples,
        config.seed,
        figures=figures,
        comm=comm,
        velocity_bounds=(config.vmin, config.vmax),
        water=problem.water,
    )
    summary["model_check"] = base["model_check"]
    summary["vi"] = {
        "iterations": config.iterations,
        "iterations_this_run": iters,
        "resumed_from": vi.resumed_from,
        "batch_size": config.batch_size,
        "shots_per_iteration": problem.likelihood.shot_batch or problem.nshots,
        "seconds_per_iteration": timings["vi"] / max(iters, 1),
        "final_loss": vi.history["loss"][-1] if vi.history["loss"] else None,
        "device": str(device),
    }
    summary["time_s"] = {**timings, "total": time.perf_counter() - t_start}
    summary["pde_solves"] = pde_solve_report(solves)
    summary["problem"] = problem.report
    lam = base["eigenvalues"]
    summary["laplace"] = {
        "rank": int(lam.numel()),
        "largest_eigenvalue": float(lam[0]),
        "smallest_computed_eigenvalue": float(lam[-1]),
        "eigenvalues_above_1": int((lam > 1).sum()),
        "residual_shrink": float(base.get("residual", 1.0)),
        "unknowns": int(problem.m0.numel()),
        "estimate_before": base.get("estimate"),  # products × s/product, said before the phase
        "coverage_before": base.get("coverage"),  # informed directions, said before the phase
        "hessian": base.get("hessian"),  # route: Green's functions (exact) or products
    }
    if lam.numel() < problem.m0.numel() and float(lam[-1]) > 1.0:
        # The directions beyond the rank still carry information the start ignores: it keeps
        # the prior's spread there and VI over-contracts from it (docs/results/imaging.md,
        # "where it stops being calibrated"); say so where the user looks.
        message = (
            f"Laplace rank {lam.numel()} of {problem.m0.numel()} unknowns stops at eigenvalue "
            f"{float(lam[-1]):.3g} > 1: the error bars are not calibrated (the start keeps the "
            f"prior's spread beyond the rank); raise rank (rank {problem.m0.numel()}: exact)"
        )
        cover = base.get("coverage")
        if cover is not None:
            message += (
                f"; about {cover['eigenvalues_above_1']} directions are informed (coverage_check)"
            )
        summary["laplace"]["warning"] = message
        if rank == 0:
            warnings.warn(message, DevitoUQWarning, stacklevel=2)
    solve = base.get("map_solve")
    if solve is not None:  # the Born MAP by CG: its error estimate says whether it is the mean
        summary["map"] = dict(solve)
        if not solve["converged"]:
            error = solve.get("estimated_error")
            message = (
                f"the Born MAP's CG stopped after {solve['iterations']} Gauss-Newton products "
                f"at an estimated error of the mean of "
                f"{'(not yet estimated)' if error is None else f'{error:.2g}'} > "
                f"{solve['etol']:g}: the posterior mean is not converged; raise rank (a "
                "better preconditioner)"
            )
            summary["map"]["warning"] = message
            if rank == 0:
                warnings.warn(message, DevitoUQWarning, stacklevel=2)
    search = base.get("map_search")
    if search is not None:  # the L-BFGS MAP (FWI, or a non-Gaussian prior)
        summary["map"] = dict(search)
        if not search["converged"]:
            message = (
                f"the MAP's L-BFGS reached its cap of {search['cap']} iterations before 10 "
                f"iterations gained less than {search['stall_nats']:g} nat: the posterior is "
                "centred on an unconverged point (too narrow around it, off the truth); raise "
                "map_iterations"
            )
            summary["map"]["warning"] = message
            if rank == 0:
                warnings.warn(message, DevitoUQWarning, stacklevel=2)
    summary["config"] = config.to_dict()
    if problem.truth is not None and problem.kind == "born":
        # How far the wave equation's data of the truth are from its Born data: the model
        # error a Born posterior ignores (model_check estimates it at the MAP, no truth).
        summary["linearization_error"] = linearization_error(problem)
        summary["data_simulated_as"] = _simulated_as(config, out)
    if rank == 0:
        write_history(out, vi.history)
        write_summary(out, summary)
    return summary


def _simulated_as(config: InvertConfig, out: str) -> str:
    """``"born"``/``"nonlinear"`` from ``acquisition.json`` beside the shots, or ``"unknown"``."""
    sidecar = resolve_path(config.shots, out).parent / "acquisition.json"
    try:
        return str(
            read_input_json(sidecar, "acquisition.json", InvalidArgumentError)["config"]["data"]
        )
    except (InvalidArgumentError, KeyError, TypeError, ValueError):
        return "unknown"


def run_imaging(
    config: ImagingConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    comm: Any = None,
) -> dict[str, Any]:
    """``devito-uq imaging``: simulate the survey of ``config`` into ``out``, then invert it.

    Parameters
    ----------
    config : ImagingConfig
        The simulation and inversion fields.
    out : str or os.PathLike
        The output folder.
    resume, progress, figures, comm
        As :func:`run_invert`.

    Returns
    -------
    dict
        The inversion's summary with the ``acquisition`` of the simulation.
    """
    config.validate()
    sim = config.simulate_config()
    inv = config.invert_config()
    # Another kind of run in ``out`` is refused before the simulation rewrites its inputs.
    check_run_kind(os.fspath(out), inv.problem, inv.overwrite, rank_and_size(comm)[0] == 0)
    acquisition = run_simulate(sim, out, progress=progress, figures=figures, comm=comm)
    summary = run_invert(inv, out, resume=resume, progress=progress, figures=figures, comm=comm)
    summary["acquisition"] = {k: v for k, v in acquisition.items() if k != "config"}
    if rank_and_size(comm)[0] == 0:
        write_summary(out, summary)
    return summary
