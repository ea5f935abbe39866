"""Acoustic modeling and the adjoint-state gradient of a data misfit, through torch.

A layered model (1.5 → 2.5 km/s), a surface survey of 3 shots and 101 receivers;
the data of the true model are compared with those of a smoothed starting model
and ``loss.backward()`` gives the gradient of ½‖F(m₀) − d‖² with respect to the
squared slowness. Writes ``acoustic_gradient.png`` (one shot record and the
gradient) to ``--out``. Runs in a few seconds on one core.

    python examples/acoustic_gradient.py --out outputs/acoustic
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

from devito_uq.inference.plotting import save_figure  # noqa: E402
from devito_uq.physics import AcousticModel, AcousticModeling, Survey, squared_slowness  # noqa: E402


def layered_velocity(shape: tuple[int, int]) -> np.ndarray:
    """Four flat layers, 1.5 → 2.5 km/s, ``[nx, nz]``."""
    v = np.full(shape, 1.5, dtype=np.float32)
    nz = shape[1]
    for k, vel in enumerate([1.9, 2.2, 2.5]):
        v[:, (k + 1) * nz // 4 :] = vel
    return v


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/acoustic"), help="output folder")
    parser.add_argument("--nshots", type=int, default=3)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    shape, spacing = (101, 101), (10.0, 10.0)
    model = AcousticModel(shape, spacing, nbl=30, space_order=8)
    v_true = layered_velocity(shape)
    v0 = gaussian_filter(v_true, sigma=6).astype(np.float32)
    survey = Survey.surface(
        model, nshots=args.nshots, nreceivers=101, t1=1000.0, f0_hz=10.0, vmax=float(v_true.max())
    )
    F = AcousticModeling(model, survey)

    t = time.perf_counter()
    d_obs = F(squared_slowness(torch.tensor(v_true)))
    m0 = squared_slowness(torch.tensor(v0)).requires_grad_(True)
    loss = 0.5 * torch.sum((F(m0) - d_obs) ** 2)
    loss.backward()
    elapsed = time.perf_counter() - t
    print(
        f"{survey.nshots} shots, {survey.nt} time steps of {survey.dt:.3f} ms: "
        f"misfit {loss.item():.4g}, modeling + gradient {elapsed:.2f} s"
    )

    grad = m0.grad.numpy()
    shot = survey.nshots // 2
    x0, z0 = model.origin
    x1, z1 = model.domain_max
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.8))
    im = ax[0].imshow(v_true.T, extent=(x0, x1, z1, z0), cmap="viridis")
    ax[0].set_title("true velocity (km/s)")
    fig.colorbar(im, ax=ax[0])
    d = d_obs[shot].numpy()
    clip = np.percentile(np.abs(d), 98)
    ax[1].imshow(
        d,
        aspect="auto",
        cmap="gray",
        vmin=-clip,
        vmax=clip,
        extent=(x0, x1, survey.t1, survey.t0),
    )
    ax[1].set_title(f"shot {shot} (source x = {survey.src_positions[shot, 0]:.0f} m)")
    ax[1].set_xlabel("receiver x (m)")
    ax[1].set_ylabel("time (ms)")
    gclip = np.percentile(np.abs(grad), 99)
    im = ax[2].imshow(grad.T, extent=(x0, x1, z1, z0), cmap="seismic", vmin=-gclip, vmax=gclip)
    ax[2].set_title("gradient of ½‖F(m₀) − d‖² w.r.t. m")
    fig.colorbar(im, ax=ax[2])
    for a in (ax[0], ax[2]):
        a.set_xlabel("x (m)")
        a.set_ylabel("depth (m)")
    fig.tight_layout()
    path = args.out / "acoustic_gradient.png"
    save_figure(fig, path, dpi=110)  # atomic: never half an image, never through a link
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
