"""Figures of the Sleipner AVP experiment (PNG, velocity profiles with depth down)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from devito_uq.apps.avp.problem import AVPProblem
    from devito_uq.apps.avp.run import AVPResults

__all__ = ["write_figures"]


def write_figures(out: str | os.PathLike, problem: AVPProblem, results: AVPResults) -> None:
    """Write ``models.png``, ``std.png``, ``interval.png``, ``samples.png``,
    ``data_fit.png`` and ``loss.png`` into the folder ``out``."""
    # plotting selects the headless Agg backend before pyplot loads.
    from devito_uq.inference.plotting import plot_loss, plt, save_figure

    m_map, vi_samples, history = results.m_map, results.vi_samples, results.history
    vi_sum, mala_sum = results.vi_summary, results.mala_summary
    d_mean, d_bg = results.d_mean, results.d_background
    z = problem.depth.numpy()

    def vel(m):  # plot velocity (km/s): what a geophysicist reads off a profile
        return 1.0 / np.sqrt(m.detach().double().cpu().numpy())

    true, bg = problem.m_true, problem.m_background

    fig, ax = plt.subplots(figsize=(4.5, 6))
    ax.plot(vel(true), z, "k", lw=2, label="true")
    ax.plot(vel(bg), z, "C7--", label="background")
    ax.plot(vel(m_map), z, "C1", label="MAP")
    ax.plot(vel(vi_sum.mean), z, "C0", label="VI posterior mean")
    ax.plot(vel(mala_sum.mean), z, "C2:", label="MALA posterior mean")
    ax.invert_yaxis()
    ax.set_xlabel("velocity (km/s)")
    ax.set_ylabel("depth (m)")
    ax.legend(fontsize=8)
    save_figure(fig, os.path.join(out, "models.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 6))
    ax.plot(vi_sum.std.numpy(), z, "C0", label="VI (HINT)")
    ax.plot(mala_sum.std.numpy(), z, "C2", label="MALA")
    ax.invert_yaxis()
    ax.set_xlabel("pointwise std of m (s²/km²)")
    ax.set_ylabel("depth (m)")
    ax.legend(fontsize=8)
    save_figure(fig, os.path.join(out, "std.png"))
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(8, 6), sharey=True)
    for ax, s, name, color in ((axes[0], vi_sum, "VI", "C0"), (axes[1], mala_sum, "MALA", "C2")):
        lo, hi = s.credible_interval(0.9)
        ax.fill_betweenx(z, lo.numpy(), hi.numpy(), color=color, alpha=0.3, label="90% interval")
        ax.plot(s.mean.numpy(), z, color=color, label="posterior mean")
        ax.plot(true.numpy(), z, "k--", label="true")
        ax.set_title(name)
        ax.set_xlabel("m (s²/km²)")
        ax.legend(fontsize=8)
    axes[0].invert_yaxis()
    axes[0].set_ylabel("depth (m)")
    save_figure(fig, os.path.join(out, "interval.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 6))
    for s in vi_samples[:30]:
        ax.plot(vel(s), z, color="C0", lw=0.5, alpha=0.5)
    ax.plot(vel(true), z, "k", lw=1.5, label="true")
    ax.invert_yaxis()
    ax.set_xlabel("velocity (km/s)")
    ax.set_ylabel("depth (m)")
    ax.set_title("VI posterior samples")
    ax.legend(fontsize=8)
    save_figure(fig, os.path.join(out, "samples.png"))
    plt.close(fig)

    t = problem.operator.times.numpy()
    # The direct wave is the same for every model: show the scattered part, the
    # data minus the background model's response, which carries the information.
    d_obs = (problem.data - d_bg).double().numpy()
    d_fit = (d_mean - d_bg).double().numpy()
    gain = 0.5 / np.abs(d_obs).max()  # half a trace spacing at the largest amplitude
    fig, ax = plt.subplots(figsize=(7, 5))
    for i in range(d_obs.shape[0]):
        ax.plot(i + gain * d_obs[i], t, "0.6", lw=0.6)
        ax.plot(i + gain * d_fit[i], t, "C0", lw=0.8)
    ax.plot([], [], "0.6", label="observed − d(background) (noisy)")
    ax.plot([], [], "C0", label="d(VI mean) − d(background)")
    ax.invert_yaxis()
    ax.set_xticks(range(d_obs.shape[0]))
    ax.set_xticklabels([f"{p:.3f}" for p in problem.ray_parameters], fontsize=7)
    ax.set_xlabel("ray parameter p (s/km)")
    ax.set_ylabel("time (ms)")
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, os.path.join(out, "data_fit.png"))
    plt.close(fig)

    fig = plot_loss(history, path=os.path.join(out, "loss.png"))
    plt.close(fig)
