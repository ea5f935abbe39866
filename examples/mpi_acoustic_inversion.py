"""Variational inference on a 2D acoustic problem with the shots spread over MPI ranks.

1. Every rank models its share of the synthetic shots of a true model; rank 0
   writes all of them, with noise, to ``shots.sgy`` (SEG-Y).
2. Every rank reads the SEG-Y back (geometry, time axis and data) and builds the
   likelihood with ``comm=``: each rank solves only its shots, and the misfit and
   its gradient are summed over ranks, so all ranks train the same posterior.
3. A mean-field Gaussian posterior over the squared slowness is trained by
   reverse KL with a smoothness prior (swap in a ``devito_uq.flows.Flow`` for a
   richer posterior; nothing else changes). Rank 0 writes the posterior mean and
   standard deviation of the velocity (km/s) with ``write_image``. The full application
   with a 2D flow, a Laplace start, SEG-Y outputs and resume is
   ``mpiexec -n 2 devito-uq imaging`` / ``devito-uq invert`` (``devito_uq.apps.imaging``).

    mpiexec -n 2 .venv/bin/python examples/mpi_acoustic_inversion.py --out outputs/mpi

(``.venv/bin/mpiexec`` comes with the ``mpich`` package.) About 10 s on 2 cores, one
OpenMP thread per rank. Plain ``python examples/mpi_acoustic_inversion.py`` runs the
same inversion on one rank; the 1- and 2-rank posteriors agree to float32 round-off.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("DEVITO_LOGGING", "ERROR")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402
from torch import nn  # noqa: E402

from devito_uq.inference import (  # noqa: E402
    GaussianLikelihood,
    Parameterization,
    SmoothnessPrior,
    VariationalPosterior,
)
from devito_uq.io import read_shots, write_image, write_shots  # noqa: E402
from devito_uq.parallel import allreduce_sum, my_shots, world  # noqa: E402
from devito_uq.physics import AcousticModel, AcousticModeling, Survey  # noqa: E402
from devito_uq.threads import configure_threads  # noqa: E402


class DiagonalGaussian(nn.Module):
    """Mean-field Gaussian ``N(mu, diag(exp(2 log_std)))`` with the Flow interface."""

    def __init__(self, mean: torch.Tensor, std: float) -> None:
        super().__init__()
        self.mu = nn.Parameter(mean.clone())
        self.log_std = nn.Parameter(torch.full_like(mean, float(np.log(std))))

    def rsample_and_log_prob(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.randn(n, *self.mu.shape, dtype=self.mu.dtype)
        x = self.mu + self.log_std.exp() * z
        log_q = (
            -0.5 * z.flatten(1).pow(2).sum(1)
            - self.log_std.sum()
            - 0.5 * z[0].numel() * np.log(2 * np.pi)
        )
        return x, log_q

    def sample(self, n: int) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample_and_log_prob(n)[0]

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mu) / self.log_std.exp()
        return (
            -0.5 * z.flatten(1).pow(2).sum(1)
            - self.log_std.sum()
            - 0.5 * z[0].numel() * np.log(2 * np.pi)
        )


def true_velocity(shape: tuple[int, int]) -> np.ndarray:
    """Two layers (1.5 / 2.0 km/s) and a slow lens (−0.15 km/s), ``[nx, nz]``."""
    x, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    v = np.where(z > 0.55 * shape[1], 2.0, 1.5)
    lens = np.exp(-((x - shape[0] / 2) ** 2 + (z - 0.35 * shape[1]) ** 2) / 18.0)
    return (v - 0.15 * lens).astype(np.float32)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/mpi"), help="output folder")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--nshots", type=int, default=4)
    args = parser.parse_args(argv)
    comm = world()
    configure_threads(comm)  # each rank its share of the node's cores, before any work
    rank, size = comm.Get_rank(), comm.Get_size()
    t_start = time.perf_counter()

    shape, spacing = (51, 51), (10.0, 10.0)
    model = AcousticModel(shape, spacing, nbl=20, space_order=8, dtype=np.float32)
    v_true = true_velocity(shape)
    # Posterior samples stay within [vmin, vmax] (bounded parameterization); the time
    # step is stable for vmax and, as SEG-Y stores whole µs, rounded down.
    vmin, vmax = 1.3, 2.6
    dt = np.floor(1000 * model.critical_dt(vmax)) / 1000
    survey = Survey.surface(model, args.nshots, nreceivers=51, t1=600.0, f0_hz=12.0, dt=dt)
    shots_file = args.out / "shots.sgy"

    # 1. Synthetic data: each rank models its own shots, the sum gathers them all.
    mine = my_shots(survey.nshots, comm)
    F_true = AcousticModeling(model, survey)
    d = torch.zeros(survey.nshots, survey.nt, survey.nreceivers[0])
    with torch.no_grad():
        d[mine] = F_true(torch.from_numpy(1.0 / v_true**2), shots=mine)
    d = allreduce_sum(d, comm)
    sigma = 0.01 * float(d.abs().max())
    noise = torch.randn(d.shape, generator=torch.Generator().manual_seed(1)) * sigma
    if rank == 0:
        write_shots(shots_file, survey, d + noise)
    comm.Barrier()  # the file is complete before anyone reads it

    # 2. Field-data path: geometry, time axis and data from the SEG-Y file.
    survey_in, data = read_shots(shots_file, f0_hz=12.0)
    F = AcousticModeling(model, survey_in)
    likelihood = GaussianLikelihood(F, torch.from_numpy(data), sigma=sigma, comm=comm)

    # 3. Reverse-KL VI; identical seeds make every rank draw the same samples.
    m0 = torch.from_numpy(1.0 / gaussian_filter(v_true, 8) ** 2)
    prior = SmoothnessPrior(2e-4, axes=(0, 1), spacing=spacing, sigma_norm=0.05, reference=m0)
    g = Parameterization(m0, scale=0.05, lower=1 / vmax**2, upper=1 / vmin**2)
    q = DiagonalGaussian(torch.zeros_like(m0), std=0.05)  # over the latent x, m = g(x)
    vi = VariationalPosterior(q, likelihood, prior, parameterization=g)
    history = vi.fit(args.iterations, batch_size=2, lr=5e-2, seed=0, progress=rank == 0)

    v = 1.0 / torch.sqrt(vi.sample(64))  # posterior samples of m: no PDE solve
    v_mean, v_std = v.mean(0).numpy(), v.std(0).numpy()
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        write_image(args.out / "velocity_true.sgy", v_true, spacing, model.origin)
        write_image(args.out / "velocity_mean.sgy", v_mean, spacing, model.origin)
        write_image(args.out / "velocity_std.sgy", v_std, spacing, model.origin)

        def err(v):
            return float(np.linalg.norm(v - v_true) / np.linalg.norm(v_true))

        v0 = 1.0 / np.sqrt(m0.numpy())
        print(
            f"{size} rank(s), {survey_in.nshots} shots read from {shots_file} "
            f"({survey_in.nt} samples of {survey_in.dt} ms)\n"
            f"misfit {history['misfit'][0]:.4g} -> {history['misfit'][-1]:.4g}; "
            f"velocity error {err(v0):.4f} (start) -> {err(v_mean):.4f} (posterior mean); "
            f"posterior std {v_std.mean():.4f} km/s on average\n"
            f"wrote velocity_true/mean/std.sgy to {args.out} in "
            f"{time.perf_counter() - t_start:.1f} s"
        )


if __name__ == "__main__":
    main()
