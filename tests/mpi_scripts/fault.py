"""Run under ``mpiexec -n 2``: rank 1 fails in one of several ways; every rank must end.

    mpiexec -n 2 python tests/mpi_scripts/fault.py MODE

MODE: ``raise`` (an exception on rank 1 while rank 0 waits in a collective),
``exit`` (``sys.exit(3)`` on rank 1), ``between`` (rank 1 raises after the forward
solve and before ``backward``, while rank 0 waits in the gradient sum),
``badshot`` (the operator refuses a shot that only rank 1 solves), ``ok`` (no fault).
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _problem import build  # noqa: E402

from devito_uq.errors import InvalidSurveyError  # noqa: E402
from devito_uq.parallel import world  # noqa: E402


class _RefuseShot(torch.nn.Module):
    """The wrapped operator, refusing shot ``bad`` (as a per-shot check would)."""

    def __init__(self, operator, bad: int) -> None:
        super().__init__()
        self.operator, self.bad = operator, bad

    def forward(self, m, shots=None):
        if shots is not None and self.bad in [int(s) for s in shots]:
            raise InvalidSurveyError(f"shot {self.bad} has a receiver outside the model")
        return self.operator(m, shots=shots)


def main(mode: str) -> None:
    comm = world()
    rank = comm.Get_rank()
    lik, m0 = build(comm=comm)
    if mode == "badshot":
        lik.operator = _RefuseShot(lik.operator, bad=1)  # shot 1 lives on rank 1 (cyclic)
    m = m0[None].clone().requires_grad_(True)
    if mode == "raise" and rank == 1:
        raise RuntimeError("deliberate failure on rank 1")
    if mode == "exit" and rank == 1:
        sys.exit(3)
    value = lik(m)
    if mode == "between" and rank == 1:
        raise RuntimeError("deliberate failure on rank 1 between forward and backward")
    value.sum().backward()
    print(f"rank {rank} finished: {float(value):.6g}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
