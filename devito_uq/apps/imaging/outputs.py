"""What an imaging run leaves behind, and ``devito-uq summarize``.

``posterior.pt`` holds the trained flow and its parameterization ``m = g(MAP + A x)``
(bounded for FWI) with the background, the truth when known and the illumination, so that
:func:`load_posterior` rebuilds the posterior and draws new samples with no PDE solve.
:func:`write_outputs` draws ``n`` samples and writes, in the output folder:

* ``posterior_mean.sgy``, ``posterior_std.sgy``, ``posterior_q05/q50/q95.sgy`` — SEG-Y images
  (:func:`devito_uq.io.write_image`: x in ``CDP_X``, depth in the sample axis), in the
  unknown's unit: the image ``δm`` (s²/km²) for ``born``, the velocity (km/s) for ``fwi``;
  for ``born`` also ``velocity_mean.sgy`` = ``1/√(m0 + E δm)``;
* PNG figures (:mod:`devito_uq.apps.imaging.figures`), ``posterior_samples.pt`` and the
  metrics of ``summary.json`` (with a truth: relative L2, SSIM, 90 % band coverage; always:
  the correlation of the std with the illumination ``diag(JᵀJ)/σ²``).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from devito_uq.apps.imaging import metrics
from devito_uq.errors import CheckpointError
from devito_uq.io._atomic import atomic_path

__all__ = [
    "ImagingPosterior",
    "load_posterior",
    "save_posterior",
    "write_history",
    "write_outputs",
    "write_summary",
]

_KEYS = ("flow", "flow_config", "reference", "sqrt", "eigenvalues", "eigenvectors", "bounds")
_KEYS += ("kind", "grid", "m0", "illumination", "map")


@dataclass
class ImagingPosterior:
    """A trained imaging posterior: ``m = g(T(z))``, ``[nx, nz]`` models.

    ``kind`` ``"born"`` (the unknown is ``δm``, s²/km²) or ``"fwi"`` (``m``); ``m0`` the
    background; ``truth`` the true unknown or ``None``; ``illumination`` the Gauss–Newton
    diagonal ``diag(JᵀJ)/σ²`` (1/(s²/km²)²); ``spacing``/``origin`` (m).
    """

    flow: Any
    parameterization: Any
    kind: str
    m0: torch.Tensor
    truth: torch.Tensor | None
    illumination: torch.Tensor
    m_map: torch.Tensor
    spacing: tuple[float, float]
    origin: tuple[float, float]

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """``[n, nx, nz]`` samples of the unknown (CPU), drawn from a fixed seed (the
        caller's random state is left as it was)."""
        out = []
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for k in range(0, n, 64):
                x = self.flow.sample(min(64, n - k))
                out.append(self.parameterization(x)[0].cpu())
        return torch.cat(out)

    def to_output_unit(self, u: torch.Tensor) -> torch.Tensor:
        """The unknown in the unit the files use: ``δm`` as is; ``m`` → velocity, km/s."""
        return u if self.kind == "born" else u.double().rsqrt().float()


def save_posterior(out: str, vi, problem, base: dict, config, write: bool = True):
    """Write ``posterior.pt`` (when ``write``) and return the :class:`ImagingPosterior`."""
    from devito_uq.io.checkpoint import save_checkpoint

    g = vi.parameterization
    state = {
        "flow": {k: v.cpu() for k, v in vi.flow.state_dict().items()},
        "flow_config": {
            "flow": config.flow,
            "flow_levels": config.flow_levels,
            "flow_steps": config.flow_steps,
            "flow_hidden": config.flow_hidden,
        },
        "reference": base["map"],
        "sqrt": base["sqrt"],
        "eigenvalues": base["eigenvalues"],
        "eigenvectors": base["eigenvectors"],
        "residual": base.get("residual", 1.0),
        "bounds": list(problem.bounds) if problem.bounds else None,
        "kind": problem.kind,
        "grid": {"spacing": list(problem.spacing), "origin": list(problem.origin)},
        "m0": problem.m0,
        "truth": problem.truth,
        "illumination": base["illumination"],
        "map": base["map"],
    }
    if write:
        save_checkpoint(os.path.join(out, "posterior.pt"), state)
    return ImagingPosterior(
        vi.flow,
        g,
        problem.kind,
        problem.m0,
        problem.truth,
        base["illumination"],
        base["map"],
        tuple(problem.spacing),
        tuple(problem.origin),
    )


def load_posterior(path: str | os.PathLike) -> ImagingPosterior:
    """Rebuild the posterior of ``posterior.pt`` (hash-checked, no pickle)."""
    from types import SimpleNamespace

    from devito_uq.apps.imaging.problem import make_flow
    from devito_uq.apps.imaging.run import laplace_parameterization
    from devito_uq.io.checkpoint import load_checkpoint

    s = load_checkpoint(path, required=_KEYS)
    try:
        flow = make_flow(SimpleNamespace(**s["flow_config"]), tuple(s["m0"].shape))
        flow.load_state_dict(s["flow"])
        bounds = tuple(s["bounds"]) if s["bounds"] else None
        g = laplace_parameterization(SimpleNamespace(bounds=bounds), s["reference"], s)
        grid = s["grid"]
        return ImagingPosterior(
            flow, g, s["kind"], s["m0"], s.get("truth"), s["illumination"], s["map"],
            tuple(grid["spacing"]), tuple(grid["origin"]),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{os.fspath(path)!r} is not an imaging posterior: {exc}") from None


def write_history(out: str, history: dict[str, list[float]]) -> None:
    """``history.csv``: one row per VI iteration (loss, its terms, learning rate)."""
    keys = [k for k, v in history.items() if len(v)]
    with atomic_path(os.path.join(out, "history.csv")) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        w.writerows(zip(*(history[k] for k in keys)))


def write_summary(out: str, summary: dict[str, Any]) -> None:
    with atomic_path(os.path.join(out, "summary.json")) as tmp, open(tmp, "w") as fh:
        json.dump(summary, fh, indent=2)


def _velocity(m: torch.Tensor) -> np.ndarray:
    return m.double().clamp_min(1e-6).rsqrt().numpy()


def image_metrics(post: ImagingPosterior, mean, std, lo, hi) -> dict[str, Any]:
    """The summary's metrics, from the statistics in the output unit (numpy ``[nx, nz]``)."""
    illum = post.illumination.double().numpy()
    res: dict[str, Any] = {
        "mean_std": float(std.mean()),
        "std_vs_illumination_correlation": metrics.correlation(std, illum),
        "log_std_vs_log_illumination_correlation": metrics.correlation(np.log(std), np.log(illum)),
    }
    if post.truth is None:
        return res
    truth = post.to_output_unit(post.truth).double().numpy()
    m0 = post.m0.double()
    v_true = _velocity(m0 + post.truth) if post.kind == "born" else truth
    v0 = _velocity(m0)
    v_mean = _velocity(m0 + torch.from_numpy(mean)) if post.kind == "born" else mean
    res.update(
        truth_inside_90pct_band=metrics.coverage(lo, hi, truth),
        velocity_relative_l2={
            "start": metrics.relative_l2(v0, v_true),
            "posterior_mean": metrics.relative_l2(v_mean, v_true),
        },
        velocity_ssim={
            "start": metrics.ssim(v0, v_true),
            "posterior_mean": metrics.ssim(v_mean, v_true),
        },
    )
    if post.kind == "born":
        res["image_relative_l2"] = metrics.relative_l2(mean, truth)
        res["image_ssim"] = metrics.ssim(mean, truth)
    return res


def write_outputs(
    out: str,
    post: ImagingPosterior,
    n_samples: int = 256,
    seed: int = 0,
    figures: bool = True,
    comm: Any = None,
) -> dict[str, Any]:
    """Draw ``n_samples``, write the images, samples and figures; return the metrics."""
    from devito_uq.inference import summarize
    from devito_uq.io import write_image
    from devito_uq.io.checkpoint import save_checkpoint
    from devito_uq.parallel import rank_and_size

    samples = post.to_output_unit(post.sample(n_samples, seed))
    s = summarize(samples.double(), quantiles=(0.05, 0.5, 0.95))
    mean, std = s.mean.numpy(), s.std.numpy()
    q = s.quantiles.numpy()
    summary = {
        "unknown": "image δm, s²/km²" if post.kind == "born" else "velocity, km/s",
        "n_samples": n_samples,
        "metrics": image_metrics(post, mean, std, q[0], q[2]),
    }
    if rank_and_size(comm)[0] != 0:
        return summary
    images = {
        "posterior_mean": mean,
        "posterior_std": std,
        "posterior_q05": q[0],
        "posterior_q50": q[1],
        "posterior_q95": q[2],
    }
    if post.kind == "born":
        images["velocity_mean"] = _velocity(post.m0.double() + s.mean)
    for name, img in images.items():
        write_image(os.path.join(out, f"{name}.sgy"), img, post.spacing, post.origin)
    save_checkpoint(os.path.join(out, "posterior_samples.pt"), {"samples": samples})
    summary["files"] = sorted(f"{n}.sgy" for n in images)
    if figures:
        from devito_uq.apps.imaging.figures import write_figures

        summary["figures"] = write_figures(out, post, samples, mean, std, q[0], q[2])
    return summary
