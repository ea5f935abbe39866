"""PNG figures of an imaging posterior (written atomically by ``save_figure``).

* ``posterior.png`` — mean, std, ``std/|mean|`` and three samples;
* ``truth.png`` (with a true model) — truth, mean, error, and where the truth lies outside
  the 90 % band (below the 5 % quantile: −1, above the 95 %: +1);
* ``illumination.png`` — the std beside the illumination proxy ``diag(JᵀJ)/σ²``.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from devito_uq.inference.plotting import save_figure  # noqa: E402

__all__ = ["write_figures"]


def _panels(path, panels, extent, title):
    fig, axes = plt.subplots(
        (len(panels) + 2) // 3, 3, figsize=(13, 3.0 * ((len(panels) + 2) // 3)), squeeze=False
    )
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (name, img, cmap, sym) in zip(axes.flat, panels):
        kw = {}
        if sym:  # zero-centred colour scale for signed images
            a = float(np.percentile(np.abs(img), 99)) or 1.0
            kw = {"vmin": -a, "vmax": a}
        im = ax.imshow(np.asarray(img).T, extent=extent, cmap=cmap, aspect="auto", **kw)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("x (m)")
        ax.set_ylabel("z (m)")
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def write_figures(out, post, samples, mean, std, lo, hi) -> list[str]:
    """Write the figures of the module docstring; return their file names."""
    nx, nz = mean.shape
    (dx, dz), (x0, z0) = post.spacing, post.origin
    extent = (x0, x0 + dx * (nx - 1), z0 + dz * (nz - 1), z0)
    born = post.kind == "born"
    unit = "δm (s²/km²)" if born else "v (km/s)"
    cmap = "seismic" if born else "viridis"
    s = samples.numpy()
    panels = [
        (f"posterior mean {unit}", mean, cmap, born),
        ("posterior std", std, "magma", False),
        ("std / |mean|", std / np.maximum(np.abs(mean), 1e-3 * np.abs(mean).max()), "magma", False),
    ] + [(f"sample {i}", s[i], cmap, born) for i in range(min(3, len(s)))]
    written = ["posterior.png"]
    _panels(os.path.join(out, "posterior.png"), panels, extent, f"{post.kind} posterior")
    illum = post.illumination.double().numpy()
    _panels(
        os.path.join(out, "illumination.png"),
        [
            ("posterior std", std, "magma", False),
            ("illumination diag(JᵀJ)/σ² (log10)", np.log10(illum), "viridis", False),
        ],
        extent,
        "uncertainty against illumination",
    )
    written.append("illumination.png")
    if post.truth is not None:
        truth = post.to_output_unit(post.truth).numpy()
        outside = np.where(truth < lo, -1.0, np.where(truth > hi, 1.0, 0.0))
        _panels(
            os.path.join(out, "truth.png"),
            [
                (f"truth {unit}", truth, cmap, born),
                (f"posterior mean {unit}", mean, cmap, born),
                ("error mean − truth", mean - truth, "seismic", True),
                (f"outside 90 % band ({np.mean(outside != 0):.0%})", outside, "bwr", True),
            ],
            extent,
            "posterior against the true model",
        )
        written.append("truth.png")
    return written
