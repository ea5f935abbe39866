"""Tests of devito_uq.threads: the per-process thread policy (fake nodes, real torch)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from devito_uq import threads
from devito_uq.errors import InvalidArgumentError
from devito_uq.threads import configure_threads, local_rank_count


class RankOnly:
    """A communicator stand-in that only knows its rank and size."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.size

    def Allreduce(self, send, recv) -> None:  # pragma: no cover - never called
        raise AssertionError("the thread policy needs no reduction")


_THREAD_VARS = ("OMP_NUM_THREADS", *threads._LOCAL_SIZE_VARS)


@pytest.fixture
def machine(monkeypatch):
    """A fake node: ``machine(cpus, affinity)`` sets os.cpu_count and the affinity mask;
    the environment starts without thread or launcher variables; torch threads restored."""
    for var in _THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "_written_omp", None)  # nothing written by earlier tests
    monkeypatch.setattr(threads, "_solver_threads", None)
    before = torch.get_num_threads()

    def set_machine(cpus: int, affinity: int | None = None, load: float = 0.0) -> None:
        monkeypatch.setattr(os, "cpu_count", lambda: cpus)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
        mask = set(range(cpus if affinity is None else affinity))
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: mask)

    yield set_machine
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "var,ranks,cpus,want",
    [
        (None, None, 8, 8),  # alone on the node: every core
        ("MPI_LOCALNRANKS", "4", 8, 2),  # MPICH/Hydra
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "3", 8, 2),  # Open MPI; 8 // 3
        ("PMI_LOCAL_SIZE", "16", 8, 1),  # more ranks than cores: never 0
    ],
)
def test_configure_threads_splits_cores_among_local_ranks(
    machine, monkeypatch, var, ranks, cpus, want
):
    machine(cpus)
    if var:
        monkeypatch.setenv(var, ranks)
    policy = configure_threads()
    assert policy.threads == want and policy.source == "cores" and policy.cores == cpus
    assert policy.local_ranks == (int(ranks) if ranks else 1)
    assert torch.get_num_threads() == want
    assert os.environ["OMP_NUM_THREADS"] == str(want)


def test_configure_threads_respects_user_omp_and_argument(machine, monkeypatch):
    machine(8)
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    policy = configure_threads()
    assert (policy.threads, policy.source) == (3, "OMP_NUM_THREADS")
    assert torch.get_num_threads() == 3 and os.environ["OMP_NUM_THREADS"] == "3"
    policy = configure_threads(threads=1)
    assert (policy.threads, policy.source) == (1, "argument")
    assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"


@pytest.mark.parametrize("load,want", [(0.4, 4), (1.0, 3), (2.6, 1), (9.0, 1)])
def test_configure_threads_leaves_busy_cores_alone(machine, load, want):
    machine(4, load=load)
    assert configure_threads().threads == want
    assert configure_threads(use_load=False).threads == 4


def test_configure_threads_does_not_divide_a_bound_mask(machine, monkeypatch):
    # the launcher pinned this rank to 2 of 16 CPUs: those 2 are its share already
    machine(16, affinity=2)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "8")
    assert configure_threads().threads == 2


def test_configure_threads_counts_ranks_of_a_shared_memory_split(machine, monkeypatch):
    from mpi4py import MPI

    machine(6)
    monkeypatch.setenv("MPI_LOCALNRANKS", "6")  # the communicator wins over the environment

    class Node:
        freed = False

        def Get_size(self):
            return 3

        def Free(self):
            Node.freed = True

    class World(RankOnly):
        def Split_type(self, kind):
            assert kind == MPI.COMM_TYPE_SHARED
            return Node()

    policy = configure_threads(World(0, 5))
    assert (policy.local_ranks, policy.threads) == (3, 2) and Node.freed
    assert local_rank_count(RankOnly(0, 1)) == 6  # serial communicator: the environment


def test_configure_threads_errors(machine, monkeypatch):
    machine(4)
    with pytest.raises(InvalidArgumentError, match="threads=0 must be an integer >= 1"):
        configure_threads(threads=0)
    with pytest.raises(InvalidArgumentError, match="use_load='no' must be True or False"):
        configure_threads(use_load="no")
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")
    with pytest.raises(InvalidArgumentError, match="OMP_NUM_THREADS='4,2' must be a positive"):
        configure_threads()


def test_configure_threads_sets_interop_threads_in_a_fresh_process():
    code = (
        "import os, torch; from devito_uq.threads import configure_threads; "
        "p = configure_threads(threads=2); "
        "print(p.interop_threads, torch.get_num_interop_threads(), torch.get_num_threads())"
    )
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_VARS}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2", "2"]


def test_solver_threads_follow_the_policy(machine, monkeypatch):
    machine(8)
    assert threads.solver_threads() == 1  # nothing set: OMP_NUM_THREADS absent -> 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.solver_threads() == 3  # the user's OpenMP setting
    threads.configure_threads(threads=4)
    assert threads.solver_threads() == 4  # what the policy applied
    assert threads.set_solver_threads(2) == 4
    assert threads.solver_threads() == 2
    with pytest.raises(InvalidArgumentError, match="n=0"):
        threads.set_solver_threads(0)
    threads.set_solver_threads(None)
    assert threads.solver_threads() == 4  # OMP_NUM_THREADS as the policy wrote it
