"""Run under ``mpiexec -n N``: distributed likelihood value and gradient, saved by rank 0.

    mpiexec -n 2 python tests/mpi_scripts/likelihood_gradient.py OUT.npz

Saves ``value``/``grad`` (all shots, [1, batch] / [1, batch, nx, nz]), ``value_sgd``/
``grad_sgd`` (3 calls with shot_batch=1, so with 2 ranks one rank has no shot),
``rank_values`` and ``rank_grads`` (value and gradient seen by every rank, gathered
to check they agree), and ``sums`` (allreduce_sum of rank-dependent tensors).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _problem import build, value_and_gradient  # noqa: E402

from devito_uq.parallel import allreduce_sum, my_shots, world  # noqa: E402


def main(out: str) -> None:
    comm = world()
    rank, size = comm.Get_rank(), comm.Get_size()
    lik, m0 = build(comm=comm)
    value, grad = value_and_gradient(lik, m0)
    lik_sgd, _ = build(comm=comm, shot_batch=1, seed=3)
    value_sgd, grad_sgd = value_and_gradient(lik_sgd, m0, calls=3)
    # Gather what every rank saw (zeros except its own row) to check they agree.
    seen = torch.zeros(size, *value.shape, dtype=torch.float64)
    seen[rank] = torch.from_numpy(value)
    rank_values = allreduce_sum(seen, comm).numpy()
    seen_g = torch.zeros(size, *grad.shape, dtype=torch.float64)
    seen_g[rank] = torch.from_numpy(grad)
    rank_grads = allreduce_sum(seen_g, comm).numpy()
    sums = [
        allreduce_sum(torch.full((3,), float(rank + 1), dtype=dt), comm).to(torch.float64)
        for dt in (torch.float32, torch.float64, torch.float16, torch.int64)
    ]
    shots = allreduce_sum(torch.tensor([len(my_shots(lik.n_shots, comm))]), comm)
    if rank == 0:
        np.savez(
            out,
            size=size,
            value=value,
            grad=grad,
            value_sgd=value_sgd,
            grad_sgd=grad_sgd,
            rank_values=rank_values,
            rank_grads=rank_grads,
            sums=torch.stack(sums).numpy(),
            nshots=shots.numpy(),
        )


if __name__ == "__main__":
    main(sys.argv[1])
