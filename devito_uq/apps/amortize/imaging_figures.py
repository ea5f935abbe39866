"""PNG figures of the 2D amortized study (written atomically by ``save_figure``).

* ``amortized_<survey>.png`` — the truth ``δm``, then one row per posterior (amortized,
  corrected, exact Gaussian, per-survey VI): mean (same colour scale as the truth) and std
  (one colour scale for the whole figure, so widths compare at a glance);
* ``calibration.png`` — expected coverage of central intervals against the nominal level.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from devito_uq.inference.plotting import save_figure  # noqa: E402

__all__ = ["write_figures"]


def _survey_figure(path, title, truth, posteriors, extent):
    rows = 1 + len(posteriors)
    fig, axes = plt.subplots(rows, 2, figsize=(10, 2.6 * rows), squeeze=False)
    a = float(np.percentile(np.abs(truth), 99)) or 1.0
    smax = max(float(np.percentile(p["std"], 99)) for p in posteriors.values()) or 1.0
    kw = dict(extent=extent, aspect="auto")

    def show(ax, img, name, **opts):
        im = ax.imshow(np.asarray(img).T, **kw, **opts)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("x (m)")
        ax.set_ylabel("z (m)")
        fig.colorbar(im, ax=ax, shrink=0.85)

    show(axes[0, 0], truth, "truth δm (s²/km²)", cmap="seismic", vmin=-a, vmax=a)
    axes[0, 1].axis("off")
    for row, (name, p) in enumerate(posteriors.items(), start=1):
        show(axes[row, 0], p["mean"], f"{name}: mean", cmap="seismic", vmin=-a, vmax=a)
        show(axes[row, 1], p["std"], f"{name}: std", cmap="magma", vmin=0, vmax=smax)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def write_figures(out: str, setting, panels: dict, calibration: dict | None) -> list[str]:
    """Write the figures of the module docstring; return their file names."""
    a = setting.acquisition
    nx, nz = setting.shape
    (dx, dz), (x0, z0) = a["spacing"], a["origin"]
    extent = (x0, x0 + dx * (nx - 1), z0 + dz * (nz - 1), z0)
    truth = a["dm_true"].numpy()
    written = []
    for survey, posteriors in panels.items():
        name = f"amortized_{survey}.png"
        _survey_figure(
            os.path.join(out, name), f"held-out section: {survey}", truth, posteriors, extent
        )
        written.append(name)
    if calibration and "coverage_curve" in calibration:
        curve = calibration["coverage_curve"]
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
        ax.plot(curve["levels"], curve["coverage"], lw=2, label="amortized")
        ax.set_xlabel("credibility level")
        ax.set_ylabel("expected coverage (central intervals)")
        ax.set_title(f"{calibration['n_truths']} truths from the crop prior")
        ax.legend()
        fig.tight_layout()
        save_figure(fig, os.path.join(out, "calibration.png"))
        written.append("calibration.png")
    return written
