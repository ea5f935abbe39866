"""Checks on input paths shared by the readers (SEG-Y, checkpoints, configs)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from devito_uq.errors import DevitoUQError

__all__ = ["check_input_file"]


def check_input_file(path: str | os.PathLike, what: str, error: type[DevitoUQError]) -> Path:
    """``path`` as a :class:`Path` if it names an existing regular file; else ``error``.

    The message says what the path really is (missing, a folder, a FIFO or device, not
    readable), so that a user who passed the wrong path sees why at once. A FIFO or a
    device is refused before it is opened: reading one could block or never end.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist") from None
    except OSError as exc:
        raise error(f"{what} {str(path)!r} cannot be accessed: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {str(path)!r} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or special file"
        raise error(f"{what} {str(path)!r} is {kind}, not a regular file")
    if not os.access(path, os.R_OK):
        raise error(f"{what} {str(path)!r} is not readable (permission denied)")
    return path
