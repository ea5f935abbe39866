"""``devito-uq invert --amortized PATH [--correct]``: a trained 2D amortized posterior
applied to a survey on disk.

Reads the survey and its background as ``devito-uq invert`` does
(:func:`devito_uq.apps.imaging.problem.build_problem`, ``problem = "born"``), checks that
grid, background and acquisition are the ones the posterior was trained for (a mismatch is
refused, naming it, before any solve; dead traces are allowed), conditions a
Gaussian-residual posterior on the survey's own live traces and σ (:func:`own_geometry`:
free for another σ, the survey's ``JᵀMJ`` for dead traces), migrates the scattered data
(``y = JᵀM(d − F(m0))``: one Born and one adjoint solve per shot), draws ``n_samples``
from ``q(δm | y)`` — with ``correct``, after the latent correction (Siahkoohi et al.
2023) against this survey's Born likelihood and the correlated Gaussian prior
(``prior_std``, ``correlation_length``),
``iterations`` steps of ``batch_size`` samples at ``lr``, checkpointed in
``correct_checkpoint.pt`` — and writes the outputs of ``devito-uq invert``
(:func:`devito_uq.apps.imaging.outputs.write_outputs`: SEG-Y mean/std/quantiles, figures,
``summary.json``) with the timings and PDE-solve counts.

The CLI dispatches ``devito-uq invert`` here when ``amortized`` is set
(:mod:`devito_uq.cli`), so that the imaging application never imports this one.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from devito_uq.apps import prepare_output
from devito_uq.apps.amortize.imaging_study import survey_condition
from devito_uq.apps.amortize.run import load_amortized
from devito_uq.apps.imaging.config import InvertConfig
from devito_uq.apps.imaging.curvature import gauss_newton_diagonal, gauss_newton_operator
from devito_uq.apps.imaging.outputs import check_run_kind, write_outputs, write_summary
from devito_uq.apps.imaging.posterior import ImagingPosterior
from devito_uq.apps.imaging.problem import (
    build_problem,
    pde_solve_report,
    pde_solves,
    resolve_path,
)
from devito_uq.apps.imaging.run import file_digest, input_digests
from devito_uq.apps.imaging.simulate import idle_ranks
from devito_uq.errors import InvalidArgumentError
from devito_uq.inference import CorrelatedGaussianPrior, PosteriorTarget
from devito_uq.io import read_image, read_shots
from devito_uq.io._files import check_input_file
from devito_uq.parallel import rank_and_size
from devito_uq.physics import AcousticModel

__all__ = ["invert_amortized", "check_survey", "own_geometry"]

_CKPT = "correct_checkpoint.pt"


def _refuse(path, what: str, got: Any, want: Any) -> None:
    raise InvalidArgumentError(
        f"the survey's {what} is {got}, but {os.fspath(path)!r} was trained for {want}; "
        "train an amortized posterior for this survey (devito-uq amortize) or invert it "
        "without --amortized"
    )


def _identity(config, out: str, path) -> dict[str, Any]:
    """What a correction checkpoint depends on: the inputs' SHA-256 (the amortized posterior
    included) and the correction's knobs; ``--resume`` under another is refused."""
    keys = ("prior_std", "correlation_length", "batch_size", "lr", "seed")
    knobs = {k: getattr(config, k) for k in keys}
    return {"input_sha256": {**input_digests(config, out), "amortized": file_digest(path)}, **knobs}


def check_survey(config: InvertConfig, out: str, setting, trained, path):
    """Refuse a survey whose grid, background or acquisition differ from the training's;
    return the survey (:class:`~devito_uq.physics.Survey`, every shot, dead traces masked).

    Reads the background image and the shots file: no solve. Dead traces are allowed (a
    Gaussian-residual posterior is conditioned on them, :func:`own_geometry`).

    Parameters
    ----------
    config : InvertConfig
        The survey's files and modelling fields.
    out : str
        The folder relative paths are inside.
    setting : ImagingSetting
        The setting the posterior was trained on (its acquisition).
    trained : AmortizeConfig
        The training configuration.
    path : str or os.PathLike
        The amortized posterior's file (named in the message).

    Raises
    ------
    InvalidArgumentError
        Naming the first mismatch.
    """
    a = setting.acquisition
    for name, got, want in (
        ("nbl", config.nbl, trained.nbl),
        ("space_order", config.space_order, trained.space_order),
        ("Ricker peak frequency f0 (Hz)", config.f0, trained.f0),
    ):
        if got != want:
            _refuse(path, name, got, want)
    bg = check_input_file(
        resolve_path(config.background, out), "background model", InvalidArgumentError
    )
    v0, spacing, origin = read_image(bg)
    if tuple(v0.shape) != tuple(setting.shape):
        _refuse(path, "grid (nx, nz)", tuple(v0.shape), tuple(setting.shape))
    if not np.allclose(spacing, a["spacing"]):
        _refuse(path, "grid spacing (m)", tuple(spacing), a["spacing"])
    m0 = 1.0 / np.asarray(v0, np.float64) ** 2
    gap = float(np.abs(m0 - a["m0"].double().numpy()).max() / np.abs(m0).max())
    if gap > 1e-4:
        _refuse(path, "background model", f"{gap:.2g} (relative) away from", "another one")
    shots = check_input_file(resolve_path(config.shots, out), "shots file", InvalidArgumentError)
    model = AcousticModel(v0.shape, spacing, origin, nbl=config.nbl, space_order=config.space_order)
    survey, _ = read_shots(
        shots, f0_hz=config.f0, model=model, vmax=config.vmax, **config.shot_headers()
    )
    ref = a["survey"]
    if survey.nshots != ref.nshots:
        _refuse(path, "number of shots", survey.nshots, ref.nshots)
    o_got, o_ref = np.asarray(origin), np.asarray(a["origin"])
    for what, got, want in (
        ("source positions (m, from the origin)", survey.src_positions, ref.src_positions),
        ("receiver positions (m, from the origin)", survey.rec_positions, ref.rec_positions),
    ):
        g = [np.asarray(p) - o_got for p in got]
        w = [np.asarray(p) - o_ref for p in want]
        if any(x.shape != y.shape or not np.allclose(x, y, atol=1e-3) for x, y in zip(g, w)):
            _refuse(
                path,
                what,
                [p.tolist() for p in g[:2]] + ["..."],
                [p.tolist() for p in w[:2]] + ["..."],
            )
    ga, ra = survey.data_axis, ref.data_axis
    if ga.nt != ra.nt or not np.isclose(ga.dt, ra.dt) or not np.isclose(ga.t0, ra.t0):
        _refuse(
            path, "data time axis (t0, dt ms, nt)", (ga.t0, ga.dt, ga.nt), (ra.t0, ra.dt, ra.nt)
        )
    return survey


def own_geometry(posterior, setting, survey, sigma: float, progress: bool) -> dict[str, Any]:
    """Condition a Gaussian-residual posterior on the survey's own live traces and noise σ
    (``set_geometry``); return what was done.

    Another σ costs no solve (the stored training ``JᵀMJ``); dead traces (all-zero or
    flagged dead in the SEG-Y, :func:`~devito_uq.io.read_shots`) need the survey's own
    ``JᵀMJ``: one Born and one adjoint solve per shot and grid point, as in training. A
    posterior of another design is left as it is (it answers the training geometry).
    """
    trained = setting.acquisition["mask"]
    live = torch.zeros_like(trained)
    m = torch.from_numpy(np.asarray(survey.mask()))
    live[:, 0, : m.shape[1]] = m
    live &= trained
    dead = int((trained & ~live).sum())
    info: dict[str, Any] = {"dead_traces": dead, "noise_sigma": float(sigma)}
    if not hasattr(posterior, "set_geometry"):
        info["conditioned"] = False
        return info
    sigma_t = float(posterior.noise_sigma)
    info["noise_sigma_training"] = sigma_t
    same_sigma = sigma_t > 0 and abs(sigma - sigma_t) <= 1e-6 * sigma_t
    if dead == 0 and same_sigma:
        info["conditioned"] = False  # the training geometry: the stored factors
        return info
    s0, t0 = pde_solves(), time.perf_counter()
    if dead:
        H = setting.normal_matrices(progress, live).sum(0)
    else:
        H = posterior.normal_operator
    posterior.set_geometry(H, sigma)
    info.update(conditioned=True, pde_solves=pde_solves() - s0, seconds=time.perf_counter() - t0)
    return info


def invert_amortized(
    config: InvertConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    comm: Any = None,
) -> dict[str, Any]:
    """``devito-uq invert --amortized PATH [--correct]``: see the module docstring.

    Parameters
    ----------
    config : InvertConfig
        ``amortized`` (the trained posterior, relative to ``out``), ``correct`` and the
        survey's files; ``problem`` must be ``"born"``.
    out, progress, figures, comm
        As :func:`devito_uq.apps.imaging.run.run_invert`.
    resume : bool
        Continue the correction from ``correct_checkpoint.pt`` (same inputs and knobs).

    Returns
    -------
    dict
        The summary written to ``summary.json``: the outputs of ``devito-uq invert`` with
        ``amortized`` (checkpoint, correction), ``time_s`` and ``pde_solves``.

    Raises
    ------
    InvalidArgumentError
        ``problem`` not born, a missing file, a posterior of another problem, or a survey
        unlike the training's; before any solve.
    """
    config.validate()
    t_start = time.perf_counter()
    out = os.fspath(out)
    rank, _ = rank_and_size(comm)
    if config.problem != "born":
        raise InvalidArgumentError(
            f"problem={config.problem!r}: an amortized posterior is a Born image posterior; "
            "use problem='born'"
        )
    if os.path.exists(out) and not os.path.isdir(out):
        raise InvalidArgumentError(f"out={out!r} exists and is not a folder")
    path = check_input_file(
        resolve_path(config.amortized, out), "amortized posterior", InvalidArgumentError
    )
    posterior, trained, setting = load_amortized(os.fspath(path), comm=comm)
    if trained.problem != "imaging":
        raise InvalidArgumentError(
            f"{os.fspath(path)!r} is an amortized posterior of problem={trained.problem!r}; "
            "invert needs one trained with problem='imaging'"
        )
    survey = check_survey(config, out, setting, trained, path)
    check_run_kind(out, "amortized", config.overwrite, writer=rank == 0)
    prepare_output(out, (_CKPT,), resume, writer=rank == 0)
    problem = build_problem(config, out, comm)
    idle_ranks(problem.nshots, comm)
    times = {"setup": time.perf_counter() - t_start}
    solves = {"setup": pde_solves()}

    t0, s0 = time.perf_counter(), pde_solves()
    y = survey_condition(problem).float()
    times["migration"], solves["migration"] = time.perf_counter() - t0, pde_solves() - s0
    t0, s0 = time.perf_counter(), pde_solves()
    gn = gauss_newton_operator(problem, problem.m0)
    illum = gauss_newton_diagonal(gn, problem.shape, config.probes, config.seed)
    times["illumination"], solves["illumination"] = time.perf_counter() - t0, pde_solves() - s0
    posterior = posterior.cpu().eval()
    t0, s0 = time.perf_counter(), pde_solves()
    geometry = own_geometry(posterior, setting, survey, problem.sigma, progress and rank == 0)
    times["geometry"], solves["geometry"] = time.perf_counter() - t0, pde_solves() - s0
    flow = posterior.conditioned(y)
    report: dict[str, Any] = {
        "checkpoint": os.fspath(path),
        "corrected": bool(config.correct),
        "noise_sigma_survey": problem.sigma,
        "geometry": geometry,
        "training": {k: getattr(trained, k) for k in ("n_train", "snr_db", "seed")},
    }
    if config.correct:
        prior = CorrelatedGaussianPrior(
            torch.zeros(problem.shape), config.prior_std, config.correlation_length,
            spacing=problem.spacing,
        )  # fmt: skip
        target = PosteriorTarget(problem.likelihood, prior, posterior.parameterization)
        t0, s0 = time.perf_counter(), pde_solves()
        vi = posterior.correct(
            target, y, config.iterations, batch_size=config.batch_size, lr=config.lr,
            seed=config.seed, checkpoint_path=os.path.join(out, _CKPT),
            checkpoint_every=config.checkpoint_every, progress=progress and rank == 0,
            identity=_identity(config, out, path),
        )  # fmt: skip
        times["correction"], solves["correction"] = time.perf_counter() - t0, pde_solves() - s0
        flow = vi.flow
        report["correction"] = {
            "iterations": config.iterations,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "resumed_from": getattr(vi, "resumed_from", 0),
            "final_loss": vi.history["loss"][-1] if vi.history.get("loss") else None,
        }
    post = ImagingPosterior(
        flow, posterior.parameterization, "born", problem.m0, problem.truth, illum,
        torch.zeros(problem.shape), tuple(problem.spacing), tuple(problem.origin),
    )  # fmt: skip
    t0 = time.perf_counter()
    summary = write_outputs(out, post, config.n_samples, config.seed, figures=figures, comm=comm)
    times["sampling_and_outputs"] = time.perf_counter() - t0
    summary["amortized"] = report
    summary["time_s"] = {**times, "total": time.perf_counter() - t_start}
    summary["pde_solves"] = pde_solve_report(solves)
    summary["problem"] = problem.report
    summary["config"] = config.to_dict()
    if rank == 0:
        write_summary(out, summary)
    return summary
