"""Run the Sleipner AVP experiment: MAP, MALA and VI on one data set, then the summary.

Files in the output folder:

* ``vi_checkpoint.pt`` — VI's checkpoint (written by :meth:`VariationalPosterior.fit`),
  with the configuration fields VI depends on;
* ``map_mala.pt`` — the MAP estimate and the MALA draws, with the configuration they
  were made with, reused by ``resume=True`` only under the same configuration;
* ``posterior_samples.pt`` (``vi``, ``mala``, ``map``; read it with
  :func:`devito_uq.io.load_checkpoint`), ``summary.json`` and the figures;
* ``map_mala.log`` — while MAP + MALA run in a second process beside VI
  (``config.concurrent``, :mod:`.baselines`), that process's output; kept if it fails.

Every file is written atomically (a temporary file moved over the target: never half
written, a planted symbolic link replaced rather than followed) and the ``.pt`` files
carry a SHA-256 checked on load (:mod:`devito_uq.io.checkpoint`). With ``resume`` both
checkpoints are verified and compared with the configuration before any solve.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from typing import Any

import torch

from devito_uq.apps import prepare_output
from devito_uq.apps.avp.baselines import (
    BaselinesProcess,
    TakeFreeCores,
    concurrent_baselines,
    data_digest,
    run_baselines,
    thread_share,
)
from devito_uq.apps.avp.config import AVPConfig
from devito_uq.apps.avp.problem import (
    AVPProblem,
    AVPResults,
    build_problem,
    fit_vi,
    load_sleipner,
    make_flow,
)
from devito_uq.errors import CheckpointError, DevitoUQWarning
from devito_uq.inference import (
    PosteriorSummary,
    VariationalPosterior,
    refine_with_mcmc,
    summarize,
)
from devito_uq.io._atomic import atomic_path
from devito_uq.io.checkpoint import check_identity, load_checkpoint, save_checkpoint

__all__ = ["run_avp", "train_vi", "vi_checkpoint_every"]

#: Fields that change only the VI run or what is written: a MAP/MALA cache made
#: under other values of these is still valid.
_NOT_IN_BASELINES = frozenset(
    {
        "flow_steps",
        "flow_hidden",
        "flow_leaf",
        "iterations",
        "batch_size",
        "lr",
        "lr_decay",
        "lr_decay_every",
        "temper_fraction",
        "refine_steps",
        "refine_chains",
        "refine_burn_in",
        "checkpoint_every",
        "concurrent",
        "n_samples",
        "label",
        "extra",
    }
)
#: Fields that change only MAP/MALA or what is written: a VI checkpoint made under
#: other values of these is still valid.
_NOT_IN_VI = frozenset(
    {
        "map_iterations",
        "mala_chains",
        "mala_steps",
        "mala_burn_in",
        "mala_thin",
        "mala_step_size",
        "refine_steps",
        "refine_chains",
        "refine_burn_in",
        "checkpoint_every",
        "concurrent",
        "n_samples",
        "label",
        "extra",
    }
)
_CACHE_KEYS = ("config", "map", "mala", "info", "timings", "solves")
_AFRESH = "; run without resume to start afresh"


def _vi_identity(config: AVPConfig) -> dict[str, Any]:
    """The configuration fields a VI checkpoint depends on (stored in it, compared)."""
    return {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_VI}


def _load_baselines(path: str, config: AVPConfig) -> dict[str, Any]:
    """The cached MAP/MALA, refused (naming the key) if made under another config."""
    state = load_checkpoint(path, required=_CACHE_KEYS)
    saved, now = state["config"], config.to_dict()
    if not isinstance(saved, dict):
        raise CheckpointError(f"cache {path!r} holds no configuration{_AFRESH}")
    keys = sorted((saved.keys() | now.keys()) - _NOT_IN_BASELINES)
    check_identity(path, saved, now, keys, hint=_AFRESH)
    return state


def _check_vi_checkpoint(path: str, config: AVPConfig) -> None:
    """Refuse (naming the key) a VI checkpoint made under another configuration."""
    run = load_checkpoint(path, required=("run",))["run"]
    saved = run.get("identity") if isinstance(run, dict) else None
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path!r} holds no AVP configuration{_AFRESH}")
    check_identity(path, saved, _vi_identity(config), hint=_AFRESH)


def _prepare_output(out: str, resume: bool, config: AVPConfig) -> dict[str, Any] | None:
    """Check (or clear) the output folder before any solve; return the cached MAP/MALA.

    With ``resume`` both checkpoints are verified and compared with ``config`` here, so
    a run under another configuration is refused before it costs anything.
    """
    prepare_output(out, ("vi_checkpoint.pt", "map_mala.pt"), resume)
    ckpt, cache = os.path.join(out, "vi_checkpoint.pt"), os.path.join(out, "map_mala.pt")
    if not resume:
        return None
    base = _load_baselines(cache, config) if os.path.lexists(cache) else None
    if os.path.lexists(ckpt):
        _check_vi_checkpoint(ckpt, config)
    return base


def vi_checkpoint_every(config: AVPConfig) -> int:
    """VI checkpoint interval: the configured one, or 2 % of the run (at least 100)."""
    return config.checkpoint_every or max(100, config.iterations // 50)


def train_vi(
    problem: AVPProblem,
    config: AVPConfig,
    checkpoint_path: str | os.PathLike,
    progress: bool = True,
    callback=None,
) -> VariationalPosterior:
    """Train the HINT flow by VI on the Sleipner data (:func:`fit_vi`, the flow's
    weights and the fit seeded by ``config.seed``), resuming from ``checkpoint_path`` if
    it exists.

    Parameters
    ----------
    problem : AVPProblem
        Built from ``config`` (:func:`build_problem`).
    config : AVPConfig
        The schedule: ``iterations``, ``batch_size``, ``lr`` decayed ×``lr_decay`` every
        ``lr_decay_every`` iterations, ``temper_fraction``, ``checkpoint_every``, ``seed``.
    checkpoint_path : str or os.PathLike
        VI checkpoint, written every :func:`vi_checkpoint_every` iterations; it stores
        the configuration fields VI depends on.
    progress : bool
        A tqdm bar.
    callback : callable, optional
        ``callback(iteration, values)`` after every iteration.

    Returns
    -------
    VariationalPosterior
    """
    gamma = config.lr_decay ** (1.0 / config.lr_decay_every)

    def schedule(opt: torch.optim.Optimizer):
        # The original's ExpDecay: ×lr_decay every lr_decay_every steps, applied smoothly.
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)

    return fit_vi(
        problem,
        config.iterations,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
        lr_schedule=schedule,
        temper_iterations=round(config.temper_fraction * config.iterations),
        init_seed=config.seed,
        progress=progress,
        checkpoint_path=checkpoint_path,
        checkpoint_every=vi_checkpoint_every(config),
        callback=callback,
        identity=_vi_identity(config),
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.double() - b.double()) / torch.linalg.norm(b.double()))


def _inside(summary: PosteriorSummary, truth: torch.Tensor) -> float:
    """Fraction of depths whose true value lies in the 90 % equal-tailed interval."""
    lo, hi = summary.credible_interval(0.9)
    return ((truth >= lo) & (truth <= hi)).double().mean().item()


def _refine(vi, config: AVPConfig, op, timings: dict, solves: dict, progress: bool):
    """VI's flow refined by MALA in its latent (``None`` with ``refine_steps=0``); warns
    when the chains' own diagnostics say they have not converged."""
    if not config.refine_steps:
        return None
    t0, s0 = time.perf_counter(), op.n_solves
    res = refine_with_mcmc(
        vi,
        config.refine_steps,
        n_chains=config.refine_chains,
        burn_in=config.refine_burn_in,
        seed=config.seed,
        progress=progress,
    )
    timings["refine"], solves["refine"] = time.perf_counter() - t0, op.n_solves - s0
    if not res.converged:
        warnings.warn(
            f"the refinement chains have not converged (split-R̂ up to {res.rhat_max:.3g}, "
            f"ESS down to {res.ess_min:.0f}; wanted ≤ 1.05 and ≥ 100): their draws are "
            "exact only in the limit; raise refine_steps",
            DevitoUQWarning,
            stacklevel=3,
        )
    return res


def _refined_summary(res, s, vi_sum, mala_sum, m_true) -> dict[str, Any] | None:
    """The refined posterior's diagnostics and its spread against VI's and MALA's."""
    if res is None:
        return None
    return {
        **res.to_dict(),
        "truth_inside_90pct_interval": _inside(s, m_true),
        "relative_error_of_mean": _rel(s.mean, m_true),
        "std_over_vi_std_median": float((s.std / vi_sum.std).median()),
        "std_over_mala_std_median": float((s.std / mala_sum.std).median()),
        "mean_std": float(s.std.mean()),
    }


def run_avp(
    config: AVPConfig,
    out: str | os.PathLike,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
) -> dict[str, Any]:
    """Run MAP, VI (HINT flow) and MALA on the Sleipner data; write ``out``.

    Parameters
    ----------
    config : AVPConfig
        The schedule (:meth:`AVPConfig.short` or :meth:`AVPConfig.full`).
    out : str or os.PathLike
        Output folder (created): ``summary.json``, figures, ``vi_checkpoint.pt``,
        ``map_mala.pt``, ``posterior_samples.pt``.
    resume : bool
        Continue VI from ``out/vi_checkpoint.pt`` (same seed and schedule) and reuse the
        MAP/MALA of ``out/map_mala.pt`` (same configuration); otherwise start afresh.
    progress : bool
        tqdm bars.
    figures : bool
        Write the PNG figures.

    Returns
    -------
    dict
        The summary also written to ``out/summary.json``.

    Raises
    ------
    InvalidArgumentError
        A bad configuration value or combination (before any file is touched).
    CheckpointError
        With ``resume``, a corrupt checkpoint or cache, or one of another configuration
        (before any solve; the files are left as they are).
    WorkerError
        The MAP + MALA process failed (``map_mala.log`` is kept; VI's checkpoint is
        written, so a rerun with ``resume`` continues VI).

    Notes
    -----
    With ``config.concurrent`` (``auto``: when this process may run on two or more cores
    and MALA has at least 1,000 steps) MAP and MALA run in a second process while VI
    trains here, each with half the threads; once they are done, VI's plane-wave solves
    take every thread (rows split over threads, :func:`devito_uq.threads.set_solver_threads`).
    The numbers are the serial run's, bit for bit; the wall time is about VI's.
    """
    config.validate()
    # The flow's fields too, before MAP and MALA run (it is built only for VI).
    make_flow(config, load_sleipner()[1].numel())
    out = os.fspath(out)
    ckpt = os.path.join(out, "vi_checkpoint.pt")
    cache = os.path.join(out, "map_mala.pt")
    cached = _prepare_output(out, resume, config)
    t_start = time.perf_counter()
    torch.manual_seed(config.seed)
    problem = build_problem(config)
    op = problem.operator
    timings: dict[str, float] = {"setup": time.perf_counter() - t_start}
    solves: dict[str, int] = {"setup": op.n_solves}

    concurrent = cached is None and concurrent_baselines(config)
    if cached is not None:
        base = cached
    elif not concurrent:
        base = run_baselines(problem, config, progress)
        save_checkpoint(cache, {"config": config.to_dict(), **base})
    t0, s0 = time.perf_counter(), op.n_solves
    if concurrent:
        # VI here, MAP + MALA in a second process on the other core(s): the same results
        # (same code, seed and thread count) in about the time of the longer of the two.
        threads = torch.get_num_threads()
        child = max(1, threads // 2)
        log = os.path.join(out, "map_mala.log")
        worker = BaselinesProcess(config, cache, data_digest(problem.data), child, log)
        own = max(1, threads - child)
        # the child's threads come back to VI when it exits (even where the thread policy
        # gave this process a single thread: the two processes used two cores together)
        take_free_cores = TakeFreeCores(worker, own + child)
        with worker, thread_share(own):
            if progress:
                print(f"MAP + MALA run in process {worker.pid} (log: {log})", flush=True)
            vi = train_vi(problem, config, ckpt, progress, callback=take_free_cores)
            timings["vi"] = time.perf_counter() - t0
            timings["wait_for_mala"] = worker.wait()
        vi_alone_from = take_free_cores.iteration
        base = _load_baselines(cache, config)
        os.remove(log)
    else:
        vi = train_vi(problem, config, ckpt, progress)
        timings["vi"] = time.perf_counter() - t0
        vi_alone_from = None
    solves["vi"] = op.n_solves - s0
    timings.update(base["timings"])
    solves.update(base["solves"])
    vi_iters_run = config.iterations - vi.resumed_from
    t0 = time.perf_counter()
    vi_samples = vi.sample(config.n_samples)
    timings["vi_sampling"] = time.perf_counter() - t0

    refined = _refine(vi, config, op, timings, solves, progress)

    vi_sum, mala_sum = summarize(vi_samples.double()), summarize(base["mala"].double())
    with torch.no_grad():
        d_mean = op(vi_sum.mean.to(problem.data.dtype))
        d_bg = op(problem.m_background.to(problem.data.dtype))
    refined_sum = summarize(refined.flat().double()) if refined else None
    results = AVPResults(
        base["map"],
        vi_samples,
        base["mala"],
        vi_sum,
        mala_sum,
        vi.history,
        d_mean,
        d_bg,
        refined_sum,
    )
    m_true, m_bg = problem.m_true, problem.m_background
    inside = _inside(vi_sum, m_true)
    std_rel = ((vi_sum.std - mala_sum.std).abs() / mala_sum.std).mean().item()
    history = vi.history
    summary = {
        "experiment": "Sleipner AVP (Rizzuti et al., SEG 2020)",
        "schedule": config.label,
        "relative_error": {
            "background": _rel(m_bg, m_true),
            "map": _rel(base["map"], m_true),
            "vi_posterior_mean": _rel(vi_sum.mean, m_true),
            "mala_posterior_mean": _rel(mala_sum.mean, m_true),
        },
        "truth_inside_90pct_interval": {"vi": inside, "mala": _inside(mala_sum, m_true)},
        "vi_std_vs_mala_std_mean_relative_difference": std_rel,
        "mean_std": {"vi": float(vi_sum.std.mean()), "mala": float(mala_sum.std.mean())},
        "data_relative_misfit_of_vi_mean": _rel(d_mean, problem.data),
        "noise_sigma": problem.sigma,
        "ray_parameters_s_per_km": [float(v) for v in problem.ray_parameters],
        "vi": {
            "iterations": config.iterations,
            "iterations_this_run": vi_iters_run,
            "resumed_from": vi.resumed_from,
            "batch_size": config.batch_size,
            "seconds_per_iteration": timings["vi"] / max(vi_iters_run, 1),
            "final_loss": history["loss"][-1] if history["loss"] else None,
        },
        "mala": base["info"],
        "refined": _refined_summary(refined, refined_sum, vi_sum, mala_sum, m_true),
        "wall_time_s": time.perf_counter() - t_start,
        # MAP + MALA ran in a second process beside VI (time_s then overlap); VI's
        # solves took every thread from this iteration on (None: never)
        "concurrent_baselines": concurrent,
        "vi_all_threads_from_iteration": vi_alone_from,
        "time_s": timings,
        "pde_solves": {
            "total": sum(solves.values()),
            "by_phase": solves,
            "unit": "one 1D solve = one model × one ray parameter, forward or adjoint",
        },
        "config": config.to_dict(),
    }
    summary["targets"] = {
        "posterior_mean_closer_than_background": summary["relative_error"]["vi_posterior_mean"]
        < summary["relative_error"]["background"],
        "truth_inside_90pct_at_least_80pct": inside >= 0.8,
        "vi_std_within_30pct_of_mala": std_rel <= 0.3,
        "full_run_extrapolated_minutes": 32768 * summary["vi"]["seconds_per_iteration"] / 60.0,
    }
    save_checkpoint(
        os.path.join(out, "posterior_samples.pt"),
        {
            "vi": vi_samples,
            "mala": base["mala"],
            "map": base["map"],
            **({"refined": refined.flat()} if refined else {}),
        },
    )
    if figures:
        from devito_uq.apps.avp.figures import write_figures  # lazy: matplotlib

        write_figures(out, problem, results)
    with atomic_path(os.path.join(out, "summary.json")) as tmp, open(tmp, "w") as fh:
        json.dump(summary, fh, indent=2)
    return summary
