"""The noise model of an imaging run: where σ comes from, and whether it holds at the MAP.

* :func:`noise_sigma` — σ as given, from ``acquisition.json`` beside the shots (``sigma = 0``),
  or estimated from the data (``sigma = "auto"``: :func:`pre_arrival_sigma`);
* :func:`model_check` — the data misfit at the MAP against the noise level. Under the
  Gaussian-noise model the MAP residual's ``χ²/n`` is ``1 − p/n`` (``p = Σ λ/(1+λ)`` the
  effective number of parameters, from the Laplace eigenvalues) with spread ``√(2/n)``;
  what exceeds that is model error the posterior ignores (for Born: the linearization
  error, also measured directly at the MAP). Above :data:`EXCESS_LIMIT` (and significant)
  the check fails: one :class:`~devito_uq.errors.DevitoUQWarning` line and ``model_check`` in
  ``summary.json``, offering the remedy: ``sigma_inflation = "auto"`` (σ scaled by the
  unexplained residual, :func:`model_check`) or, for Born, ``problem = "fwi"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from devito_uq.errors import InvalidArgumentError
from devito_uq.io._files import read_input_json
from devito_uq.parallel import allreduce_sum
from devito_uq.physics import AcousticModeling
from devito_uq.physics.wavelets import ricker

__all__ = [
    "EXCESS_LIMIT",
    "MIN_WINDOW_SAMPLES",
    "checked_baseline",
    "linearization_error",
    "model_check",
    "model_check_line",
    "noise_sigma",
    "pre_arrival_sigma",
    "ricker_onset",
    "set_noise_sigma",
]

#: Excess of the MAP residual's ``χ²/n`` over its expectation above which the Gaussian-noise
#: model is said not to hold (also when beyond 3 spreads ``√(2/n)``). Measured on the tiny
#: survey of ``tests/test_apps_imaging.py`` (n = 5632): 0.029 on Born data (90 % band
#: coverage 97.5 %), 0.277 on the wave equation's data of the same model (coverage 49 %).
EXCESS_LIMIT = 0.1
#: Fewest pre-arrival samples ``sigma = "auto"`` accepts (the estimate's error ~ 1/√(2N)).
MIN_WINDOW_SAMPLES = 200


def noise_sigma(config: Any, shots_path: Path) -> float | None:
    """The data's noise standard deviation as the config gives it, before the inflation.

    Parameters
    ----------
    config : InvertConfig
        ``sigma``: > 0, the answer; 0, read from the file; ``"auto"``, estimated from the
        data once read (this returns ``None``).
    shots_path : pathlib.Path
        The shots file; ``acquisition.json`` beside it holds ``noise_sigma``.

    Returns
    -------
    float or None

    Raises
    ------
    InvalidArgumentError
        ``sigma = 0`` and ``acquisition.json`` is missing or has no ``noise_sigma``.
    """
    if config.sigma == "auto":
        return None
    if config.sigma > 0:
        return float(config.sigma)
    sidecar = shots_path.parent / "acquisition.json"
    try:  # a regular file, size-bounded, decoded with one-line errors
        return float(
            read_input_json(sidecar, "acquisition.json", InvalidArgumentError)["noise_sigma"]
        )
    except (InvalidArgumentError, KeyError, TypeError, ValueError):
        raise InvalidArgumentError(
            f"sigma=0 asks for the noise level from {str(sidecar)!r}, which is missing, "
            "unreadable or has no 'noise_sigma'; give sigma (the data's noise standard "
            "deviation) or sigma='auto' (estimated from the data before the first arrivals)"
        ) from None


def ricker_onset(f0_hz: float) -> float:
    """When a Ricker of peak ``f0_hz`` (Hz) centred at ``1/f0`` first exceeds 10⁻³ of its
    peak, ms (the default wavelet of ``invert``)."""
    td = 1000.0 / f0_hz
    t = np.linspace(0.0, 2 * td, 20001)
    w = np.abs(ricker(t, f0_hz, td))
    return float(t[np.argmax(w > 1e-3 * w.max())])


def pre_arrival_sigma(
    survey: Any,
    data: np.ndarray | torch.Tensor | None,
    vmax: float,
    comm: Any = None,
    onset_ms: float | None = None,
) -> dict[str, Any]:
    """σ from the samples recorded before any wave can arrive (summed over ranks).

    A sample at time ``t`` of the trace at distance ``r`` from its source is kept when
    ``t < t_onset + r/vmax``: no wave travels faster than ``vmax``, and ``t_onset`` is the
    first time the source wavelet exceeds 10⁻³ of its peak. σ is the RMS of the kept
    samples of the live traces (white, zero-mean noise).

    Parameters
    ----------
    survey : devito_uq.physics.Survey or None
        This rank's shots (positions, data axis, wavelet, trace mask); ``None``: no shots.
    data : numpy.ndarray or torch.Tensor or None
        ``[shot, time, receiver]`` the raw records of those shots.
    vmax : float
        The fastest velocity of the medium, km/s.
    comm : mpi4py communicator or None
        The ranks that share the shots.
    onset_ms : float or None
        ``t_onset``, ms (``None``: from ``survey.wavelet``).

    Returns
    -------
    dict
        ``sigma`` (data units, ``nan`` without samples), ``samples`` (the count),
        ``method`` (a sentence), ``vmax_km_s``.
    """
    sums = torch.zeros(2, dtype=torch.float64)
    if survey is not None:
        d = torch.as_tensor(data).double()
        w = np.abs(survey.wavelet[0])
        onset = onset_ms if onset_ms is not None else survey.time[np.argmax(w > 1e-3 * w.max())]
        t = torch.from_numpy(survey.data_axis.times)  # [time]
        for s in range(survey.nshots):
            rec = survey.rec_positions[s]
            dist = np.linalg.norm(rec - survey.src_positions[s], axis=1)  # m
            arrival = torch.from_numpy(onset + dist / vmax)  # m / (km/s) = ms
            keep = (t[:, None] < arrival[None, :]) & torch.from_numpy(survey.trace_mask[s])[
                None, : len(rec)
            ]
            trace = d[s, :, : len(rec)]
            sums += torch.stack([trace[keep].pow(2).sum(), keep.sum().double()])
    total = allreduce_sum(sums, comm)
    n = int(total[1])
    return {
        "sigma": math.sqrt(float(total[0]) / n) if n else float("nan"),
        "samples": n,
        "method": "RMS of the samples before t_onset + offset/vmax (no wave arrives earlier)",
        "vmax_km_s": float(vmax),
    }


def set_noise_sigma(problem: Any, sigma: float) -> None:
    """Use ``sigma`` in the problem's likelihood and curvature from now on.

    Parameters
    ----------
    problem : ImagingProblem
        Its ``sigma`` and this rank's likelihood.
    sigma : float
        The noise standard deviation, data units.
    """
    problem.sigma = float(sigma)
    if problem.likelihood.local is not None:
        problem.likelihood.local.sigma = float(sigma)


def model_check(
    problem: Any, m_map: torch.Tensor, eigenvalues: torch.Tensor, vmin: float, vmax: float
) -> dict[str, Any]:
    """Whether the MAP fits the data to the noise level (summed over ranks).

    Parameters
    ----------
    problem : ImagingProblem
        Its likelihood (data, mask, σ), kind and (born) background data ``F(m0)``.
    m_map : torch.Tensor
        ``[nx, nz]`` the MAP of the unknown.
    eigenvalues : torch.Tensor
        ``[rank]`` the prior-whitened Gauss–Newton eigenvalues (the effective number of
        parameters ``Σ λ/(1+λ)``).
    vmin, vmax : float
        The velocity bounds, km/s: (born) ``m0 + δm_MAP`` is clipped to them before the
        wave equation models it.

    Returns
    -------
    dict
        ``chi2_per_datum`` (``‖M(d − F(m_MAP))‖²/(nσ²)``), ``expected`` (``1 − p/n``) and
        ``spread`` (``√(2/n)``) under the noise model, ``n_data``, ``excess`` (``χ²/n −
        expected``: the residual variance the noise does not explain, in σ²); for born also
        ``linearization`` (the relative error ``‖ΔF − Jδm‖/‖ΔF‖`` at the MAP, ``ΔF =
        F(m0 + δm_MAP) − F(m0)``) and ``linearization_over_noise`` (``‖ΔF − Jδm‖²/(nσ²)``);
        ``sigma``, ``rule``, ``verdict`` (``"holds"``/``"fails"``), ``inflation`` (the
        factor ``sigma_inflation = "auto"`` applies: ``√(1 + max(excess, linearization over
        noise))`` when it fails, else 1) and, when it fails, the ``remedy``.
    """
    sums = torch.zeros(5, dtype=torch.float64)
    local = problem.likelihood.local
    born = problem.kind == "born"
    if local is not None:
        with torch.no_grad():
            m = m_map[None].to(problem.m0.dtype)
            r = local.residual(m)[0].double()
            mask = local.mask.double() if local.mask is not None else torch.ones(())
            sums[0] = r.pow(2).sum() / problem.sigma**2
            sums[1] = mask.expand_as(r).sum()
            if born:  # the wave equation's data of the MAP against its Born data
                F = AcousticModeling(problem.model, problem.survey)
                m_full = (problem.m0 + m[0]).clamp(1.0 / vmax**2, 1.0 / vmin**2)
                scattered = (F(m_full) - problem.d_background).double() * mask
                error = scattered - problem.operator(m).double()[0] * mask
                sums[2:4] = torch.stack([error.pow(2).sum(), scattered.pow(2).sum()])
                sums[4] = sums[2] / problem.sigma**2
    total = [float(v) for v in allreduce_sum(sums, problem.comm)]
    chi2, n = total[0], total[1]
    lam = eigenvalues.double().clamp_min(0)
    expected = 1.0 - float((lam / (1 + lam)).sum()) / n
    spread = math.sqrt(2.0 / n)
    excess = chi2 / n - expected
    fails = excess > max(EXCESS_LIMIT, 3 * spread)
    res: dict[str, Any] = {
        "chi2_per_datum": chi2 / n,
        "expected": expected,
        "spread": spread,
        "n_data": int(n),
        "excess": excess,
    }
    grow = max(excess, 0.0)
    if born:
        lin_noise = total[4] / n
        res.update(
            linearization=math.sqrt(total[2] / total[3]) if total[3] > 0 else 0.0,
            linearization_over_noise=lin_noise,
        )
        grow = max(grow, lin_noise)
    res.update(
        sigma=problem.sigma,
        rule=f"fails when chi2/n - expected > max({EXCESS_LIMIT}, 3 spread)",
        verdict="fails" if fails else "holds",
        inflation=math.sqrt(1.0 + grow) if fails else 1.0,
    )
    if fails:
        other = "; or problem='fwi'" if born else ""
        res["remedy"] = f"sigma_inflation='auto' (sigma x {res['inflation']:.3g}){other}"
    return res


def checked_baseline(
    problem: Any, prior: Any, config: Any, progress: bool, baseline: Callable
) -> dict[str, Any]:
    """The MAP and Laplace baseline, the :func:`model_check` at its MAP, and (when the check
    fails and ``sigma_inflation = "auto"``) both again with σ inflated.

    Parameters
    ----------
    problem : ImagingProblem
        This rank's share; its σ is changed in place when inflated.
    prior : torch.nn.Module
        The prior.
    config : InvertConfig
        ``sigma_inflation``, ``vmin``, ``vmax`` and what ``baseline`` reads.
    progress : bool
        Progress bars.
    baseline : callable
        :func:`~devito_uq.apps.imaging.curvature.laplace_baseline`.

    Returns
    -------
    dict
        ``baseline``'s dict (times and solves summed over both passes) with ``model_check``
        (with ``after_inflation`` when inflated) and ``noise_sigma``, the σ it was made with.
    """
    base = baseline(problem, prior, config, progress)
    check = model_check(problem, base["map"], base["eigenvalues"], config.vmin, config.vmax)
    if config.sigma_inflation == "auto" and check["verdict"] == "fails":
        set_noise_sigma(problem, problem.sigma * check["inflation"])
        first = base
        base = baseline(problem, prior, config, progress)
        for key in ("time_s", "pde_solves"):
            base[key] = {k: v + first[key].get(k, 0) for k, v in base[key].items()}
        after = model_check(problem, base["map"], base["eigenvalues"], config.vmin, config.vmax)
        check["after_inflation"] = after
    return {**base, "model_check": check, "noise_sigma": problem.sigma}


def model_check_line(check: dict[str, Any]) -> str | None:
    """The one-line warning of a failed :func:`model_check` (``None`` when it holds).

    Parameters
    ----------
    check : dict
        :func:`model_check`'s result, with ``after_inflation`` when σ was inflated.

    Returns
    -------
    str or None
    """
    if check["verdict"] != "fails":
        return None
    lin = (
        f", linearization error at the MAP {check['linearization']:.2g} "
        f"({check['linearization_over_noise']:.3g} sigma^2 per datum)"
        if "linearization" in check
        else ""
    )
    head = (
        f"the data misfit at the MAP is chi2/n = {check['chi2_per_datum']:.3g} (expected "
        f"{check['expected']:.3g} +- {check['spread']:.2g}{lin}): the Gaussian-noise model "
        "does not hold (or the MAP stopped early: raise map_iterations) and the band is "
        "over-confident; "
    )
    if "after_inflation" in check:
        return head + (
            f"sigma was inflated x{check['inflation']:.3g} (sigma_inflation='auto')"
            + ("; problem='fwi' models what Born leaves out" if lin else "")
        )
    return head + "remedy: " + check["remedy"]


def linearization_error(problem: Any) -> float:
    """The model error a Born posterior ignores, over all shots (summed over ranks).

    ``‖(F(m_true) − F(m0)) − J δm_true‖ / ‖F(m_true) − F(m0)‖`` on the live traces: a
    property of the physics and the truth, whichever way the data were simulated.

    Parameters
    ----------
    problem : ImagingProblem
        A born problem with a truth.

    Returns
    -------
    float
    """
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
