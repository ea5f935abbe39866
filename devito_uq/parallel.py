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

Threads per rank (each process its share of the node's cores) are set by
:func:`devito_uq.threads.configure_threads`.

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
import sys
import time
import traceback
from typing import Any

import numpy as np
import torch

from devito_uq.errors import InvalidArgumentError, InvalidDtypeError

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
        # The launcher forwards this rank's stderr through a pipe and tears every rank down
        # at MPI_Abort: without a pause the last line (the message above) was lost now and
        # then on a loaded machine (tests/test_parallel_faults.py).
        time.sleep(ABORT_GRACE_S)
        mpi.COMM_WORLD.Abort(int(status) if status else 1)
    _EXIT["original"](status)


_EXIT: dict[str, Any] = {"original": sys.exit, "installed": False}
#: Seconds a failing rank waits between printing its message and ``MPI_Abort``.
ABORT_GRACE_S = 0.5


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
