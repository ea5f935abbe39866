"""Exception hierarchy of devito_uq.

Every invalid user input raises a subclass of :class:`DevitoUQError` whose
message names the offending value, before any Devito compile or solve. Where a
builtin category fits, the subclass also derives from it (``ValueError``,
``TypeError``) so generic ``except ValueError`` code keeps working.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = [
    "DevitoUQError",
    "InvalidArgumentError",
    "InvalidModelError",
    "InvalidShapeError",
    "InvalidDtypeError",
    "InvalidSurveyError",
    "StabilityError",
    "SegyError",
    "CheckpointError",
    "TrainingDivergedError",
    "InsufficientMemoryError",
    "JitCacheError",
    "WorkerError",
    "OutputWriteError",
    "DevitoUQWarning",
    "SegyHeaderWarning",
    "warning_printer",
]


class DevitoUQError(Exception):
    """Base class of every error raised by devito_uq on purpose."""


class InvalidArgumentError(DevitoUQError, ValueError):
    """An argument has a value outside what the function accepts."""


class InvalidModelError(InvalidArgumentError):
    """Non-physical model: non-positive, NaN or infinite velocity / slowness."""


class InvalidShapeError(InvalidArgumentError):
    """A tensor or array does not have the shape the operator expects."""


class InvalidDtypeError(DevitoUQError, TypeError):
    """Unsupported floating-point type."""


class InvalidSurveyError(InvalidArgumentError):
    """Acquisition geometry, time axis, wavelet or shot selection is invalid."""


class StabilityError(InvalidArgumentError):
    """The time step exceeds the CFL stability limit of the scheme."""


class SegyError(DevitoUQError, ValueError):
    """A SEG-Y file is missing, truncated or lacks the headers we need."""


class CheckpointError(DevitoUQError, ValueError):
    """A checkpoint file is missing, corrupt or belongs to another run."""


class TrainingDivergedError(DevitoUQError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class InsufficientMemoryError(InvalidArgumentError, MemoryError):
    """An input asks for more memory than the machine has available (nothing allocated)."""


class JitCacheError(DevitoUQError, PermissionError):
    """Devito's JIT cache folder is unsafe (a link, foreign-owned, group/world-writable)."""


class WorkerError(DevitoUQError, RuntimeError):
    """A helper process of a run (e.g. the AVP's MAP + MALA beside VI) failed; the
    message quotes the end of its log."""


class OutputWriteError(DevitoUQError, OSError):
    """Writing an output file failed (disk full, quota, permissions); the message names
    the path, the operation and the bytes written, and the previous file is intact."""


class DevitoUQWarning(UserWarning):
    """A result to check before trusting it (a one-line message). Its facts come from
    inputs every MPI rank shares, so the command line prints it once, from rank 0."""


class SegyHeaderWarning(DevitoUQWarning):
    """A SEG-Y file's depth fields disagree with the header convention read with (e.g. a
    convention reading every source at 0 m while another field holds the depths)."""


def warning_printer(rank: int = 0, prog: str = "devito-uq") -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints each warning as one line on stderr.

    ``<prog>: warning: <message>``: no category, file or source line, and a message
    already printed is not repeated. A :class:`DevitoUQWarning` (the same on every MPI
    rank) is printed by rank 0 only; another warning of rank k > 0 says ``(rank k)``.

    Parameters
    ----------
    rank : int
        This process's MPI rank (0 when serial).
    prog : str
        The program name that starts each line.

    Returns
    -------
    callable
        With ``warnings.showwarning``'s signature.
    """
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if rank > 0 and issubclass(category, DevitoUQWarning):
            return
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            who = f" (rank {rank})" if rank > 0 else ""
            print(f"{prog}: warning{who}: {text}", file=sys.stderr)

    return show
