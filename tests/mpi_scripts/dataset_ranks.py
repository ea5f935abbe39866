"""simulate_dataset over MPI ranks: shards dealt round-robin, same files as a serial run.

    mpiexec -n N python tests/mpi_scripts/dataset_ranks.py FOLDER [FAIL_AT]

Simulates 18 pairs in shards of 4 (5 shards) with :func:`simulator`, resuming what is in
FOLDER. Every rank prints ``rank R simulated [k, ...]``. With FAIL_AT=k the rank owning
shard k raises there (a killed run; the abort handler ends every rank).
"""

from __future__ import annotations

import sys

import torch

from devito_uq.io import simulate_dataset
from devito_uq.parallel import world

N_PAIRS, SHARD_SIZE = 18, 4
A = torch.linspace(-1.0, 1.0, 15).reshape(5, 3)


def simulator(index: int, count: int, generator: torch.Generator, calls=None, fail_at=None):
    """``{"model": [count, 3], "condition": [count, 5]}`` drawn with ``generator`` only."""
    if index == fail_at:
        raise RuntimeError(f"killed at shard {index}")
    if calls is not None:
        calls.append(index)
    m = torch.randn(count, 3, generator=generator)
    d = m @ A.T + 0.1 * torch.randn(count, 5, generator=generator)
    return {"model": m, "condition": d}


def main() -> None:
    folder = sys.argv[1]
    fail_at = int(sys.argv[2]) if len(sys.argv) > 2 else None
    comm = world()
    calls: list[int] = []
    simulate_dataset(
        folder,
        N_PAIRS,
        lambda k, n, g: simulator(k, n, g, calls, fail_at),
        shard_size=SHARD_SIZE,
        comm=comm,
        progress=False,
    )
    print(f"rank {comm.Get_rank()} simulated {calls}", flush=True)


if __name__ == "__main__":
    main()
