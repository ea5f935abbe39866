r"""Spread shots over MPI ranks and sum what they compute.

A small service that knows only mpi4py and torch. The misfit of a survey is a
sum over shots, :math:`\Phi(m) = \sum_r \Phi_r(m)` with :math:`\Phi_r` the
shots of rank ``r``; each rank solves only its own shots and two autograd
functions make the sum and its gradient identical on every rank:

* :func:`allreduce_value` — forward :math:`\sum_r x_r`; backward identity (the
  incoming gradient of the total is the gradient of each part);
* :func:`share_gradient` — forward identity; backward :math:`\sum_r g_r`, so
  every rank receives :math:`\sum_r \partial\Phi_r/\partial m`.

Apply ``share_gradient`` to the model before the rank's shots and
``allreduce_value`` to their misfit; everything else (flow, prior, optimizer)
then runs redundantly and identically on every rank, as long as every rank
draws the same random numbers (same seeds) and calls ``backward`` (the
gradient sum is a collective call).

``comm`` is an ``mpi4py.MPI.Comm`` (or any object with ``Get_rank()``,
``Get_size()`` and ``Allreduce(sendbuf, recvbuf)`` summing numpy buffers).
``comm=None`` or a communicator of size 1 takes the serial path, which never
imports mpi4py: users without MPI never initialise it. Tensors on a GPU are
copied to the host for the reduction and the result copied back.

Threads: :func:`configure_threads` gives each process its share of the node's cores —
torch's intra-op (and, before any parallel work, inter-op) threads and Devito's
``OMP_NUM_THREADS`` — so that ``mpiexec -n N`` on an N-core node runs N single-threaded
ranks instead of N ranks of N threads each. Call it once per process, before torch or
Devito do any work.

Shot layouts: ``"cyclic"`` (round-robin, the default: shot ``i`` on rank
``i mod size``) or ``"block"`` (contiguous blocks, the first ``nshots mod size``
ranks one shot more). Both give every rank ``⌊n/size⌋`` or ``⌈n/size⌉`` shots.

Failure on one rank: the other ranks are typically blocked in a collective call
(``Allreduce`` of a misfit or a gradient) and would wait forever, burning a
cluster allocation. :func:`world` therefore installs, for runs of more than one
rank, a ``sys.excepthook`` and a ``sys.exit`` wrapper that print the failing
rank's message and call ``MPI_Abort``: every rank ends within seconds with a
non-zero exit status (1 for an exception, the status given to ``sys.exit``).
MPI is finalized at exit only on a clean exit (a blocking ``MPI_Finalize`` after
a failure is what used to hang). :func:`abort` is the same exit for code that
catches its own errors.
"""

from __future__ import annotations

import atexit
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from devito_uq.errors import InvalidArgumentError, InvalidDtypeError
from devito_uq.validation import check_bool, check_positive_int

__all__ = [
    "world",
    "abort",
    "install_abort_handler",
    "rank_and_size",
    "ShotDistribution",
    "my_shots",
    "allreduce_sum",
    "share_gradient",
    "allreduce_value",
    "ThreadPolicy",
    "configure_threads",
    "local_rank_count",
]

_LAYOUTS = ("cyclic", "block")


def world() -> Any:
    """``mpi4py.MPI.COMM_WORLD``, initialising MPI on first call if nobody has.

    Devito imports mpi4py with ``rc.initialize=False`` (it initialises MPI only for
    its own domain decomposition), so after ``import devito`` MPI may be loaded but
    not initialised: initialise it here, and finalise it at a clean exit. With more
    than one rank, :func:`install_abort_handler` makes any failure on any rank end
    every rank (see the module docstring).
    """
    from mpi4py import MPI  # lazy: only MPI users pay for (and need) MPI

    if not MPI.Is_initialized():
        MPI.Init_thread()
        atexit.register(_finalize)
    if MPI.COMM_WORLD.Get_size() > 1:
        install_abort_handler()
    return MPI.COMM_WORLD


def _finalize() -> None:
    from mpi4py import MPI

    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()


def abort(status: int = 1, message: str | None = None) -> None:
    """Print ``message`` (prefixed with this rank) to stderr and end every rank.

    Calls ``MPI_Abort(MPI_COMM_WORLD, status)`` when MPI is running with more than
    one rank; otherwise exits this process with ``status``. Never returns.
    """
    rank, size = 0, 1
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        rank, size = mpi.COMM_WORLD.Get_rank(), mpi.COMM_WORLD.Get_size()
    if message:
        print(f"devito_uq: rank {rank} of {size}: {message}", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe must not stop the abort
            pass
    if size > 1:
        mpi.COMM_WORLD.Abort(int(status) if status else 1)
    _EXIT["original"](status)


_EXIT: dict[str, Any] = {"original": sys.exit, "installed": False}


def _exit_status(code: Any) -> tuple[int, str | None]:
    """``sys.exit`` semantics: ``None`` is 0, an int itself, anything else printed and 1."""
    if code is None:
        return 0, None
    if isinstance(code, int) and not isinstance(code, bool):
        return code, None
    return 1, str(code)


def _abort_on_exit(code: Any = None) -> None:
    status, text = _exit_status(code)
    if status != 0:
        if text is not None:
            print(text, file=sys.stderr)
        abort(status, f"sys.exit({code!r}); aborting every rank")
    _EXIT["original"](code)


def _abort_on_exception(exc_type, exc, tb) -> None:
    traceback.print_exception(exc_type, exc, tb)
    status = 130 if issubclass(exc_type, KeyboardInterrupt) else 1
    abort(status, f"{exc_type.__name__}: {exc}; aborting every rank")


def install_abort_handler() -> None:
    """Make an uncaught exception or ``sys.exit(non-zero)`` on this rank end every rank.

    Installed by :func:`world` for runs of more than one rank; idempotent. Code that
    catches its own errors (a CLI printing a one-line message) calls :func:`abort`.
    """
    if _EXIT["installed"]:
        return
    _EXIT["installed"] = True
    _EXIT["original"] = sys.exit
    sys.excepthook = _abort_on_exception
    sys.exit = _abort_on_exit


def _check_comm(comm: Any) -> Any:
    if comm is None:
        return None
    for attr in ("Get_rank", "Get_size", "Allreduce"):
        if not callable(getattr(comm, attr, None)):
            raise InvalidArgumentError(
                f"comm must be an mpi4py communicator (or None for serial runs); "
                f"{type(comm).__name__} has no {attr}()"
            )
    return comm


def rank_and_size(comm: Any = None) -> tuple[int, int]:
    """``(rank, size)`` of ``comm``; ``(0, 1)`` for ``None``."""
    comm = _check_comm(comm)
    if comm is None:
        return 0, 1
    return int(comm.Get_rank()), int(comm.Get_size())


def _distributed(comm: Any) -> bool:
    return rank_and_size(comm)[1] > 1


class ShotDistribution:
    """Which of ``nshots`` items (shots, or positions in a list of shots) each rank owns.

    Attributes: ``nshots``, ``rank``, ``size``, ``layout``; :attr:`shots` are this
    rank's indices (ascending), :meth:`shots_of` any rank's, :meth:`owner` the rank of
    one index, :attr:`counts` ``[size]`` the number per rank.
    """

    def __init__(self, nshots: int, comm: Any = None, layout: str = "cyclic") -> None:
        if isinstance(nshots, bool) or not isinstance(nshots, (int, np.integer)) or nshots < 0:
            raise InvalidArgumentError(f"nshots={nshots!r} must be an integer >= 0")
        if layout not in _LAYOUTS:
            raise InvalidArgumentError(f"layout={layout!r} must be one of {_LAYOUTS}")
        self.nshots = int(nshots)
        self.layout = layout
        self.rank, self.size = rank_and_size(comm)

    def shots_of(self, rank: int) -> list[int]:
        """Indices owned by ``rank``."""
        n, p = self.nshots, self.size
        if self.layout == "cyclic":
            return list(range(rank, n, p))
        q, extra = divmod(n, p)
        start = rank * q + min(rank, extra)
        return list(range(start, start + q + (rank < extra)))

    @property
    def shots(self) -> list[int]:
        """This rank's indices."""
        return self.shots_of(self.rank)

    @property
    def counts(self) -> list[int]:
        """Number of indices per rank."""
        return [len(self.shots_of(r)) for r in range(self.size)]

    def owner(self, shot: int) -> int:
        """Rank that owns index ``shot``."""
        if not 0 <= shot < self.nshots:
            raise InvalidArgumentError(f"shot {shot} is out of range for {self.nshots} shots")
        if self.layout == "cyclic":
            return shot % self.size
        return next(r for r in range(self.size) if shot in self.shots_of(r))

    def __repr__(self) -> str:
        return (
            f"ShotDistribution(nshots={self.nshots}, rank={self.rank}, size={self.size}, "
            f"layout={self.layout!r})"
        )


def my_shots(nshots: int, comm: Any = None, layout: str = "cyclic") -> list[int]:
    """This rank's shot indices out of ``range(nshots)`` (all of them when serial)."""
    return ShotDistribution(nshots, comm, layout).shots


# MPI has no half-precision sum: reduce those in float32 and cast back.
_WIDEN = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def allreduce_sum(tensor: torch.Tensor, comm: Any = None) -> torch.Tensor:
    """Element-wise sum of ``tensor`` over the ranks of ``comm`` (a new tensor, not autograd).

    Every rank must pass the same shape and dtype. The result has the input's dtype
    and device (GPU tensors travel through host memory). Serial: a detached copy.
    """
    if not isinstance(tensor, torch.Tensor):
        raise InvalidArgumentError(
            f"allreduce_sum needs a torch.Tensor, got {type(tensor).__name__}"
        )
    if tensor.dtype == torch.bool:
        raise InvalidDtypeError("allreduce_sum cannot sum a bool tensor; convert it to int first")
    if not _distributed(comm):
        return tensor.detach().clone()
    work = _WIDEN.get(tensor.dtype, tensor.dtype)
    # A C-contiguous host copy (np.ascontiguousarray would turn a 0-d value into 1-d).
    send = tensor.detach().to(device="cpu", dtype=work).contiguous().numpy()
    recv = np.empty_like(send)
    comm.Allreduce(send, recv)  # mpi4py's default op is SUM
    return torch.from_numpy(recv).to(device=tensor.device, dtype=tensor.dtype)


class _ShareGradient(torch.autograd.Function):
    """Forward identity; backward sums the incoming gradient over ranks."""

    @staticmethod
    def forward(ctx, m: torch.Tensor, comm: Any) -> torch.Tensor:
        ctx.comm = comm
        return m.view_as(m)  # a new node, so that backward runs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return allreduce_sum(grad, ctx.comm), None  # m; comm is not a tensor


class _AllreduceValue(torch.autograd.Function):
    """Forward sums per-rank values over ranks; backward identity."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, comm: Any) -> torch.Tensor:
        return allreduce_sum(x, comm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None  # x; comm is not a tensor


def share_gradient(m: torch.Tensor, comm: Any = None) -> torch.Tensor:
    r"""Identity on ``m`` whose backward sums the gradient over ranks.

    Use it on the model before a rank evaluates its own part :math:`\Phi_r`:
    after ``backward`` every rank holds :math:`\sum_r \partial\Phi_r/\partial m`.
    Backward is a collective call: every rank must run it. Serial: returns ``m``.
    """
    if not isinstance(m, torch.Tensor):
        raise InvalidArgumentError(f"share_gradient needs a torch.Tensor, got {type(m).__name__}")
    if not _distributed(comm):
        return m
    return _ShareGradient.apply(m, comm)


def allreduce_value(x: torch.Tensor, comm: Any = None) -> torch.Tensor:
    r"""Sum of the per-rank values ``x`` over ranks, with an identity backward.

    ``x`` is a rank's part :math:`\Phi_r` (any shape, same on every rank); the result
    :math:`\sum_r \Phi_r` is identical on every rank. Pair it with
    :func:`share_gradient` on the inputs of :math:`\Phi_r`. Serial: returns ``x``.
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"allreduce_value needs a torch.Tensor, got {type(x).__name__}")
    if not _distributed(comm):
        return x
    return _AllreduceValue.apply(x, comm)


# ---------------------------------------------------------------------- threads
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


def _available_cores() -> int:
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
    cores = _available_cores()
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
    return ThreadPolicy(n, interop, cores, ranks, source)
