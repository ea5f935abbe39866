"""Figures of the Sleipner AVP experiment (PNG, velocity profiles with depth down).

Importing this module loads matplotlib (headless Agg backend, selected by
:mod:`devito_uq.inference.plotting`): the run imports it only to write figures.
"""

from __future__ import annotations

import os

import numpy as np

from devito_uq.apps.avp.problem import AVPProblem, AVPResults
from devito_uq.inference.plotting import plot_loss, plt, save_figure

__all__ = ["write_figures"]


def write_figures(out: str | os.PathLike, problem: AVPProblem, results: AVPResults) -> None:
    """Write ``models.png``, ``std.png``, ``interval.png``, ``samples.png``,
    ``data_fit.png`` and ``loss.png`` into the folder ``out``.

    Parameters
    ----------
    out : str or os.PathLike
        An existing folder.
    problem : AVPProblem
        Depths, truth, background, data and operator of the run.
    results : AVPResults
        What MAP, MALA and VI produced.
    """
    m_map, vi_samples, history = results.m_map, results.vi_samples, results.history
    vi_sum, mala_sum, refined = results.vi_summary, results.mala_summary, results.refined_summary
    d_mean, d_bg = results.d_mean, results.d_background
    z = problem.depth.numpy()

    def vel(m):  # plot velocity (km/s): what a geophysicist reads off a profile
        return 1.0 / np.sqrt(m.detach().double().cpu().numpy())

    true, bg = problem.m_true, problem.m_background
    _profiles(
        os.path.join(out, "models.png"),
        z,
        "velocity (km/s)",
        [
            (vel(true), dict(color="k", lw=2, label="true")),
            (vel(bg), dict(color="C7", ls="--", label="background")),
            (vel(m_map), dict(color="C1", label="MAP")),
            (vel(vi_sum.mean), dict(color="C0", label="VI posterior mean")),
            (vel(mala_sum.mean), dict(color="C2", ls=":", label="MALA posterior mean")),
        ],
    )
    stds = [
        (vi_sum.std.numpy(), dict(color="C0", label="VI (HINT)")),
        (mala_sum.std.numpy(), dict(color="C2", label="MALA")),
    ]
    if refined is not None:
        label = "VI refined (MALA in its latent)"
        stds.append((refined.std.numpy(), dict(color="C3", ls="--", label=label)))
    _profiles(os.path.join(out, "std.png"), z, "pointwise std of m (s²/km²)", stds)
    draws = [(vel(s), dict(color="C0", lw=0.5, alpha=0.5)) for s in vi_samples[:30]]
    _profiles(
        os.path.join(out, "samples.png"),
        z,
        "velocity (km/s)",
        [*draws, (vel(true), dict(color="k", lw=1.5, label="true"))],
        title="VI posterior samples",
    )

    panels = [(vi_sum, "VI", "C0"), (mala_sum, "MALA", "C2")]
    if refined is not None:
        panels.append((refined, "VI refined", "C3"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 6), sharey=True)
    for ax, (s, name, color) in zip(axes, panels):
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


def _profiles(path: str, z: np.ndarray, xlabel: str, curves, title: str | None = None) -> None:
    """One depth-profile panel (depth down) of ``(values [nz], plot kwargs)`` curves."""
    fig, ax = plt.subplots(figsize=(4.5, 6))
    for values, style in curves:
        ax.plot(values, z, **style)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("depth (m)")
    if title is not None:
        ax.set_title(title)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)
