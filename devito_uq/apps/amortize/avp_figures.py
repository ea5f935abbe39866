"""Figures of the AVP amortized study (PNG, written atomically into the output folder).

Importing this module loads matplotlib (headless Agg backend, selected by
:mod:`devito_uq.inference.plotting`): the study imports it only to write figures.

* ``amortize_sleipner.png``: velocity profiles on the Sleipner survey — truth,
  background, the MALA reference's 90 % band, and the mean and 90 % band of the
  amortized, corrected and per-survey VI posteriors; next to it their std by depth;
* ``amortize_shift.png``: the same for the shifted surveys (double noise, half the ray
  parameters), the per-survey VI fit as the reference;
* ``amortize_training.png``: training and validation NLL, when ``amortized.pt`` holds a
  history.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from devito_uq.apps.amortize.run import checkpoint_file
from devito_uq.inference.plotting import plt
from devito_uq.io._atomic import atomic_path
from devito_uq.io.checkpoint import load_checkpoint

__all__ = ["write_figures"]

_STYLE = {
    "amortized": ("C0", "amortized"),
    "corrected": ("C2", "corrected"),
    "vi": ("C1", "per-survey VI"),
}


def _velocity(m: torch.Tensor) -> np.ndarray:
    return 1.0 / np.sqrt(np.clip(m.double().numpy(), 1e-12, None))


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def _panel(ax_mean, ax_std, z, truth, background, draws, reference=None, ref_label=""):
    ax_mean.plot(_velocity(truth), z, "k", lw=1.3, label="truth")
    ax_mean.plot(_velocity(background), z, color="0.5", ls=":", lw=1.0, label="background")
    if reference is not None:
        v = _velocity(reference)
        lo, hi = np.quantile(v, [0.05, 0.95], axis=0)
        ax_mean.fill_betweenx(z, lo, hi, color="0.8", label=f"{ref_label} 90 %")
        ax_std.plot(reference.double().std(0).numpy(), z, "k", lw=1.2, label=ref_label)
    for name, samples in draws.items():
        color, label = _STYLE[name]
        v = _velocity(samples)
        lo, hi = np.quantile(v, [0.05, 0.95], axis=0)
        ax_mean.plot(v.mean(0), z, color=color, lw=1.0, label=f"{label} mean")
        ax_mean.plot(lo, z, color=color, lw=0.6, ls="--")
        ax_mean.plot(hi, z, color=color, lw=0.6, ls="--")
        ax_std.plot(samples.double().std(0).numpy(), z, color=color, lw=1.0, label=label)
    # The panels share their depth axis: inverting it twice would undo it.
    if not ax_mean.yaxis_inverted():
        ax_mean.invert_yaxis()
    if not ax_std.yaxis_inverted():
        ax_std.invert_yaxis()
    ax_mean.set_ylabel("depth (m)")
    ax_mean.set_xlabel("velocity (km/s)")
    ax_std.set_xlabel("std of m (s²/km²)")


def write_figures(out, setting, surveys, draws, mala_draws, shift_draws) -> list[Path]:
    """Write the study's figures into ``out``; return their paths."""
    out = Path(out)
    p = setting.problem
    z = p.depth.numpy()
    paths = []

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(8.0, 5.2), sharey=True)
    _panel(a0, a1, z, p.m_true, p.m_background, draws, mala_draws, "MALA")
    a0.legend(fontsize=6.5, loc="lower left", framealpha=0.9)
    a1.legend(fontsize=7, loc="lower right", framealpha=0.9)
    a0.set_title("Sleipner survey: posteriors (dashed: 90 %)", fontsize=9)
    a1.set_title("posterior std", fontsize=9)
    fig.tight_layout()
    paths.append(out / "amortize_sleipner.png")
    _save(fig, paths[-1])
    plt.close(fig)

    names = list(shift_draws)
    fig, axes = plt.subplots(
        len(names), 2, squeeze=False, figsize=(8.0, 4.8 * len(names)), sharey=True
    )
    rays = f"{len(surveys['half_rays'].kept)} of {setting.condition_shape[0]} ray parameters"
    titles = {
        "noise": f"noise × {setting.config.noise_factor:g}",
        "half_rays": f"{rays} (others zero)",
        "half_rays_mean_filled": f"{rays} (others: training mean)",
    }
    for row, name in enumerate(names):
        d = dict(shift_draws[name])
        ref = d.pop("vi")
        a0, a1 = axes[row]
        _panel(a0, a1, z, p.m_true, p.m_background, d, ref, "per-survey VI")
        # A posterior far off (the zero-filled half-ray survey) must not hide the others.
        vt = _velocity(p.m_true)
        a0.set_xlim(vt.min() - 0.3, vt.max() + 0.4)
        a1.set_xlim(0.0, 3.0 * float(ref.double().std(0).max()))
        a0.set_title(f"{titles.get(name, name)}: posteriors", fontsize=9)
        a1.set_title("posterior std", fontsize=9)
        if row == 0:
            a0.legend(fontsize=6.5, loc="lower left", framealpha=0.9)
            a1.legend(fontsize=7, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    paths.append(out / "amortize_shift.png")
    _save(fig, paths[-1])
    plt.close(fig)

    history = _history(setting, out)
    if history:
        fig, ax = plt.subplots(figsize=(5.0, 3.4))
        it, tr = history.get("iteration", []), history.get("train_nll", [])
        if it and tr:
            k = max(1, len(tr) // 200)  # a running mean: the batch NLL is noisy
            smooth = np.convolve(tr, np.ones(k) / k, mode="valid")
            ax.plot(it[k - 1 :], smooth, lw=0.8, label="training (batch, running mean)")
        if history.get("val_nll"):
            ax.plot(history["val_iteration"], history["val_nll"], "o-", ms=3, label="validation")
        ax.set_xlabel("iteration")
        ax.set_ylabel("−log q(m | y) per depth (nats)")
        ax.legend(fontsize=8)
        ax.set_title("maximum-likelihood training", fontsize=9)
        fig.tight_layout()
        paths.append(out / "amortize_training.png")
        _save(fig, paths[-1])
        plt.close(fig)
    return paths


def _history(setting, out: Path) -> dict:
    """The training history stored in the study's ``amortized.pt`` (empty if none)."""
    path = checkpoint_file(setting.config, str(out))
    if not Path(path).exists():
        return {}
    try:
        hist = load_checkpoint(path).get("history") or {}
    except Exception:  # a figure never fails the study
        return {}
    finite = all(math.isfinite(v) for v in hist.get("train_nll", [])[:10])
    return hist if finite else {}
