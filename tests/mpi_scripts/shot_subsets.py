"""Run under ``mpiexec -n N``: VI-style random shot subsets of a rank-summed likelihood.

    mpiexec -n 2 python tests/mpi_scripts/shot_subsets.py OUT.npz

Each rank holds only its own shots (round-robin) of a 5-shot linear problem, as the
imaging app reads them, in a :class:`~devito_uq.inference.RankSummedLikelihood` with
``shot_batch=2`` and one seed. Rank 0 saves, over 6 calls, the subsets every rank drew
(``subsets [rank, call, 2]``), the value and gradient every rank saw (``values [rank,
call, batch]``, ``grads [rank, call, batch, n]``), and ``shots`` (how many shots each
rank solved per call). :func:`build` with ``comm=None`` is the serial reference.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from devito_uq.inference import (
    GaussianLikelihood,
    MatrixOperator,
    RankSummedLikelihood,
    linear_gaussian_problem,
)
from devito_uq.parallel import ShotDistribution, allreduce_sum, world

NSHOTS, BATCH, SEED, CALLS = 5, 2, 3, 6


def build(comm=None) -> RankSummedLikelihood:
    """This rank's share of the problem, summed over the ranks of ``comm``."""
    p = linear_gaussian_problem(n=6, n_shots=NSHOTS, rows_per_shot=3, dtype=torch.float64)
    mine = ShotDistribution(NSHOTS, comm).shots
    a = p.operator.matrix[mine]
    op = MatrixOperator(a.reshape(-1, a.shape[-1]), len(mine)) if mine else None
    local = GaussianLikelihood(op, p.data[mine], sigma=p.sigma) if mine else None
    return RankSummedLikelihood(local, comm, mine, NSHOTS, shot_batch=BATCH, seed=SEED)


def calls(lik: RankSummedLikelihood) -> tuple[list, np.ndarray, np.ndarray]:
    """Subsets drawn, values ``[call, 2]`` and gradients ``[call, 2, 6]`` of CALLS calls."""
    drawn, values, grads = [], [], []
    draw = lik.draw_shots

    def logged() -> torch.Tensor:
        drawn.append(draw())
        return drawn[-1]

    lik.draw_shots = logged
    for k in range(CALLS):
        m = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(2, 6) * (k + 1)
        m.requires_grad_(True)
        v = lik(m)
        v.sum().backward()
        values.append(v.detach().numpy())
        grads.append(m.grad.numpy())
    return drawn, np.stack(values), np.stack(grads)


def main(out: str) -> None:
    comm = world()
    rank, size = comm.Get_rank(), comm.Get_size()
    lik = build(comm)
    mine = set(lik.shots)
    drawn, values, grads = calls(lik)

    def gathered(x: np.ndarray) -> np.ndarray:  # every rank's x, [rank, ...]
        seen = torch.zeros(size, *x.shape, dtype=torch.float64)
        seen[rank] = torch.from_numpy(np.asarray(x, dtype=np.float64))
        return allreduce_sum(seen, comm).numpy()

    solved = np.array([len(mine & set(d.tolist())) for d in drawn])
    subsets = gathered(np.stack([d.numpy() for d in drawn]))
    res = dict(subsets=subsets, values=gathered(values), grads=gathered(grads))
    res["shots"] = gathered(solved)
    if rank == 0:
        np.savez(out, size=size, **res)


if __name__ == "__main__":
    main(sys.argv[1])
