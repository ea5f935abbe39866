r"""Thread policy: each process its share of the node's cores.

:func:`configure_threads` sets torch's intra-op (and, before any parallel work,
inter-op) threads and Devito's ``OMP_NUM_THREADS`` per process, so that
``mpiexec -n N`` on an N-core node runs N single-threaded ranks instead of N ranks of
N threads each. Call it once per process, after MPI is up (:func:`devito_uq.parallel.world`)
and before torch or Devito do any work; the ``devito-uq`` command does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from devito_uq.errors import InvalidArgumentError
from devito_uq.parallel import _check_comm
from devito_uq.validation import check_bool, check_positive_int

__all__ = [
    "ThreadPolicy",
    "available_cores",
    "configure_threads",
    "local_rank_count",
    "set_solver_threads",
    "solver_threads",
]

# Launchers that export how many ranks share this node: MPICH/Hydra, Open MPI, PMI/PMIx
# (Intel MPI, Slurm's PMI), MVAPICH.
_LOCAL_SIZE_VARS = (
    "MPI_LOCALNRANKS",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "PMI_LOCAL_SIZE",
    "MV2_COMM_WORLD_LOCAL_SIZE",
)


@dataclass(frozen=True)
class ThreadPolicy:
    """What :func:`configure_threads` set, and why.

    ``threads``: torch intra-op threads and ``OMP_NUM_THREADS`` (Devito's OpenMP) of this
    process; ``interop_threads``: torch inter-op threads, or None where torch had already
    started parallel work and refused the change; ``cores``: CPUs this process may run on;
    ``local_ranks``: processes sharing them; ``source``: ``"argument"``,
    ``"OMP_NUM_THREADS"`` (respected as the user set it) or ``"cores"`` (the free cores
    divided among the local ranks).
    """

    threads: int
    interop_threads: int | None
    cores: int
    local_ranks: int
    source: str


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, which cgroups and launchers set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def local_rank_count(comm: Any = None) -> int:
    """Number of processes of this job on this node.

    With a communicator of size > 1 that can split by shared memory (mpi4py's
    ``Split_type(COMM_TYPE_SHARED)``): the size of this node's part of it (a collective
    call: every rank of ``comm`` must make it). Otherwise the launcher's environment
    (``MPI_LOCALNRANKS``, ``OMPI_COMM_WORLD_LOCAL_SIZE``, ``PMI_LOCAL_SIZE``,
    ``MV2_COMM_WORLD_LOCAL_SIZE``), else 1.
    """
    comm = _check_comm(comm)
    if comm is not None and int(comm.Get_size()) > 1 and hasattr(comm, "Split_type"):
        from mpi4py import MPI

        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return int(node.Get_size())
        finally:
            node.Free()
    for var in _LOCAL_SIZE_VARS:
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


# The OMP_NUM_THREADS value configure_threads last wrote: a later call recomputes instead of
# taking its own earlier choice for the user's.
_written_omp: str | None = None


def _user_omp_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value or value == _written_omp:
        return None
    if not value.isdigit() or int(value) < 1:
        raise InvalidArgumentError(
            f"OMP_NUM_THREADS={value!r} must be a positive integer (Devito reads it as one)"
        )
    return int(value)


def _busy_cores() -> float:
    """Runnable processes averaged over the last minute (0 where the OS does not say)."""
    try:
        return max(0.0, os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def configure_threads(
    comm: Any = None, threads: int | None = None, use_load: bool = True
) -> ThreadPolicy:
    """Set this process's torch and OpenMP thread counts from the cores it may use.

    Rule: ``threads`` if given; else ``OMP_NUM_THREADS`` if the user set it (kept as is);
    else ``max(1, free // local_ranks)``. ``cores`` is the size of the process's CPU
    affinity mask, ``local_ranks`` the number of ranks on this node
    (:func:`local_rank_count`) and ``free = min(cores, round(cores − load))`` with
    ``load`` the 1-minute load average (``use_load=False``: ``free = cores``). When the
    mask is smaller than the machine (a launcher bound each rank to its own cores), the
    mask is this rank's share already and is not divided again. Then
    ``torch.set_num_threads(threads)``, inter-op threads likewise where torch still allows
    it, and ``OMP_NUM_THREADS=threads`` in the environment, which Devito reads when an
    operator first runs.

    Call once per process, after MPI is up and before torch or Devito work starts (Devito
    caches the thread count per operator; the load then does not yet count this job's own
    ranks). Returns the :class:`ThreadPolicy` it applied.

    Why: torch and OpenMP default to one thread per core in every process, so N ranks on
    N cores run N² threads, and a thread that waits at a barrier for a core that another
    process holds costs a time slice per operation: on the 2-core test machine a
    40-dimensional VI fit ran 10–100× slower with 2 threads than with 1 next to two busy
    processes (benchmarks/bench_threads.py). A thread too few costs at most the speed-up
    of that thread; a thread too many can cost far more, so the rule errs low.
    """
    check_bool("use_load", use_load)
    cores = available_cores()
    ranks = local_rank_count(comm)
    if threads is not None:
        n = check_positive_int("threads", threads)
        source = "argument"
    elif (user := _user_omp_threads()) is not None:
        n, source = user, "OMP_NUM_THREADS"
    else:
        free = min(cores, round(cores - _busy_cores())) if use_load else cores
        bound = cores < (os.cpu_count() or cores)
        n, source = max(1, free if bound else free // ranks), "cores"
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
        interop: int | None = n
    except RuntimeError:  # parallel work has started (or it was set before): torch refuses
        interop = None
    global _written_omp
    os.environ["OMP_NUM_THREADS"] = _written_omp = str(n)
    set_solver_threads(n)
    return ThreadPolicy(n, interop, cores, ranks, source)


# Threads of the solvers' row-parallel calls (None: not set, see solver_threads).
_solver_threads: int | None = None


def solver_threads() -> int:
    """Threads a physics solver runs independent rows on (the plane-wave batches).

    The value of :func:`set_solver_threads` (:func:`configure_threads` sets it to its
    thread count); if never set, ``OMP_NUM_THREADS`` when it is a positive integer,
    else 1 — a library user who configured nothing gets one thread, never more threads
    than cores.
    """
    if _solver_threads is not None:
        return _solver_threads
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


def set_solver_threads(n: int | None) -> int | None:
    """Set :func:`solver_threads` to ``n`` (``None``: back to the default); return the old
    setting. Process-wide; the plane-wave solver splits its rows over that many threads
    (bit-identical results for any count), e.g. for a run whose second core came free."""
    global _solver_threads
    old = _solver_threads
    _solver_threads = None if n is None else check_positive_int("n", n)
    return old
