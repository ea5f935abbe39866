"""VI over MPI ranks with a checkpoint; optionally a deliberate failure on the last rank.

    mpiexec -n N python tests/mpi_scripts/vi_resume.py CHECKPOINT RESULT ITERATIONS [FAIL_AT]

Trains a diagonal-Gaussian variational family (a flow stand-in: cheap and exact) on the
small acoustic problem of ``_problem.py`` with ``checkpoint_every=1``, resuming from
CHECKPOINT if it exists. With FAIL_AT=k the last rank raises during iteration k+1, after
the forward ``Allreduce`` (so rank 0 has finished writing the checkpoint of iteration k),
and the abort handler of :func:`devito_uq.parallel.world` ends every rank. Rank 0 writes
RESULT (``.npz``: the final parameters and the loss history) and prints
``resumed_from=K``; every rank prints ``rank R saved iteration I`` for each checkpoint
it writes.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _problem import build  # noqa: E402

import devito_uq.inference.training as training  # noqa: E402
from devito_uq.inference import VariationalPosterior  # noqa: E402
from devito_uq.parallel import world  # noqa: E402


class DiagonalGaussian(nn.Module):
    """q(m) = N(mu, diag(exp(2 log_s))) over ``shape``; what VI needs of a flow."""

    def __init__(self, mean: torch.Tensor, scale: float) -> None:
        super().__init__()
        self.shape = tuple(mean.shape)
        self.mu = nn.Parameter(mean.clone())
        self.log_s = nn.Parameter(torch.full_like(mean, math.log(scale)))

    def rsample_and_log_prob(self, n: int):
        z = torch.randn(n, *self.shape, dtype=self.mu.dtype)
        m = self.mu + torch.exp(self.log_s) * z
        log_q = (-0.5 * z**2 - self.log_s - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
        return m, log_q

    def sample(self, n: int):
        with torch.no_grad():
            return self.rsample_and_log_prob(n)[0]

    def log_prob(self, m: torch.Tensor):
        z = (m - self.mu) / torch.exp(self.log_s)
        return (-0.5 * z**2 - self.log_s - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


class FailingLikelihood(nn.Module):
    """The likelihood, raising on rank ``rank`` right after its call number ``at``."""

    def __init__(self, inner, rank: int, at: int | None) -> None:
        super().__init__()
        self.inner, self.rank, self.at, self.calls = inner, rank, at, 0

    @property
    def comm(self):  # VariationalPosterior.fit looks here for the communicator
        return self.inner.comm

    def forward(self, m):
        value = self.inner(m)  # includes the forward Allreduce of every rank
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise RuntimeError(f"deliberate failure on rank {self.rank} in call {self.calls}")
        return value


def main(checkpoint: str, result: str, iterations: int, fail_at: int | None) -> None:
    comm = world()
    rank, size = comm.Get_rank(), comm.Get_size()
    torch.manual_seed(0)
    lik, m0 = build(comm=comm)
    fail_rank = size - 1
    likelihood = FailingLikelihood(
        lik, rank, fail_at + 1 if fail_at is not None and rank == fail_rank else None
    )
    save = training.save_checkpoint

    def logged_save(path, state):
        print(f"rank {rank} saved iteration {state['iteration']}", flush=True)
        return save(path, state)

    training.save_checkpoint = logged_save
    vi = VariationalPosterior(DiagonalGaussian(m0, 1e-3), likelihood)
    vi.fit(
        iterations,
        batch_size=2,
        lr=2e-3,
        checkpoint_path=checkpoint,
        checkpoint_every=1,
        seed=5,
        progress=False,
    )
    if rank == 0:
        np.savez(
            result,
            mu=vi.flow.mu.detach().numpy(),
            log_s=vi.flow.log_s.detach().numpy(),
            loss=np.array(vi.history["loss"]),
        )
        print(f"resumed_from={vi.resumed_from}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[1], int(args[2]), int(args[3]) if len(args) > 3 else None)
