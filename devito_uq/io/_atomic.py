"""Atomic file replacement shared by every writer of devito_uq (checkpoints, SEG-Y, results).

A writer gets a temporary name beside the target, writes the whole file there, and the
file is moved over the target with :func:`os.replace`:

* atomic on POSIX (both names are in one folder): a reader sees the old file or the new
  one, never a half-written one, even if the process is killed mid-write;
* a symbolic link planted at the target is replaced by the new file, never written
  through (``rename`` acts on the link itself), and the temporary file is created with
  ``O_EXCL | O_NOFOLLOW``, so no link can redirect the write either;
* the new file gets the usual permissions (``0666`` less the process umask, applied by
  the kernel at creation) without ever changing the process umask;
* temporary files left by a killed writer (``.NAME.PID.RANDOM.tmp``) are removed by the
  next write to the same target once their process is gone;
* an OS error while writing (disk full, quota exceeded, an I/O error) becomes one
  :class:`~devito_uq.errors.OutputWriteError` naming the path, the operation and the
  bytes written so far; the temporary file is removed and the old file is left intact.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from devito_uq.errors import DevitoUQError, OutputWriteError

__all__ = ["atomic_path", "sweep_stale_temporaries"]


def _temporary_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def sweep_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files of ``path`` whose writing process no longer exists.

    Returns the removed paths. Files of live processes (a concurrent writer) are kept.
    """
    path = Path(path)
    removed = []
    prefix = f".{path.name}."
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        parts = name[len(prefix) : -len(".tmp")].split(".")
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        if int(parts[0]) == os.getpid() or _pid_alive(int(parts[0])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; on success move it over ``path``.

    The caller writes the whole file to the yielded name (it exists, empty, and may be
    reopened or replaced by the writer). On leaving the block the file is flushed to
    disk and renamed over ``path``. If the block raises, the temporary file is removed
    and ``path`` is left untouched.
    """
    path = Path(path)
    step = "creating the folder of"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temporaries(path)
        tmp = _temporary_name(path)
        step = "creating a temporary file beside"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        os.close(os.open(tmp, flags, 0o666))  # mode 0666 & ~umask, applied by the kernel
    except DevitoUQError:
        raise
    except OSError as exc:
        raise _write_error(exc, step, path, None) from None
    step = "writing"
    try:
        yield str(tmp)
        step = "flushing to disk"
        with open(tmp, "rb+") as fh:  # on disk before the rename makes it visible
            os.fsync(fh.fileno())
        step = "renaming the finished file onto"
        os.replace(tmp, path)
    except BaseException as exc:
        error = exc
        if isinstance(exc, OSError) and not isinstance(exc, DevitoUQError):
            error = _write_error(exc, step, path, tmp)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if error is exc:
            raise
        raise error from None


def _write_error(exc: OSError, step: str, path: Path, tmp: Path | None) -> OutputWriteError:
    """One line: the path, the operation, the bytes written and why (disk full named as such)."""
    written = ""
    if tmp is not None:
        with contextlib.suppress(OSError):
            written = f" after {os.stat(tmp).st_size} bytes"
    reason = os.strerror(exc.errno) if exc.errno else " ".join(str(exc).split())
    if not exc.errno:  # libraries (segyio) may drop errno: say when the disk is full
        with contextlib.suppress(OSError):
            st = os.statvfs(path.parent)
            if st.f_bavail * st.f_frsize < 2**20:
                reason += f" (no space left on the device: {st.f_bavail * st.f_frsize} bytes free)"
    keep = "the previous file is intact" if os.path.lexists(path) else "nothing was written"
    error = OutputWriteError(f"{step} {str(path)!r} failed{written}: {reason}; {keep}")
    error.errno = exc.errno
    return error
