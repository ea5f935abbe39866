"""Reading user-named input files safely: regular files only, bounded, decoded with a clear error.

Every reader of devito_uq that opens a path a user can name (configs, resume manifests,
per-truth results, dataset shards, SEG-Y, checkpoints) goes through these helpers:

* :func:`check_input_file` refuses a path that is missing, a folder, a FIFO, a device or
  unreadable, naming what it really is, before anything opens it;
* :func:`read_input_bytes` opens with ``O_NONBLOCK`` and checks the *open* descriptor
  again (a FIFO swapped in after the check cannot block) and reads at most
  ``max_bytes`` (``/dev/zero`` or a huge file is refused, never read until memory runs out);
* :func:`read_input_text` and :func:`read_input_json` decode with one-line errors (not
  UTF-8, not JSON, nested too deep);
* :func:`load_input_npz` reads every array of an ``.npz`` eagerly, so a truncated or
  bit-flipped archive fails here with the file named, not later in a ``BadZipFile``.
"""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from devito_uq.errors import DevitoUQError
from devito_uq.validation import available_memory, format_bytes

__all__ = [
    "MAX_TEXT_BYTES",
    "MAX_NESTING",
    "check_input_file",
    "read_input_bytes",
    "read_input_text",
    "read_input_json",
    "check_nesting",
    "load_input_npz",
]

#: Largest config / manifest / JSON file read (16 MiB: thousands of times any real one).
MAX_TEXT_BYTES = 16 * 2**20
#: Deepest nesting of lists/tables accepted in a config or JSON file.
MAX_NESTING = 64


def _check_regular(mode: int, path: Path, what: str, error: type[DevitoUQError]) -> None:
    """``error`` naming what ``path`` is unless ``mode`` is a regular file's."""
    if stat.S_ISDIR(mode):
        raise error(f"{what} {str(path)!r} is a folder, not a file")
    if not stat.S_ISREG(mode):
        kind = "a device or special file"
        if stat.S_ISFIFO(mode):
            kind = "a FIFO"
        elif stat.S_ISSOCK(mode):
            kind = "a socket"
        raise error(f"{what} {str(path)!r} is {kind}, not a regular file")


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
    _check_regular(st.st_mode, path, what, error)
    if not os.access(path, os.R_OK):
        raise error(f"{what} {str(path)!r} is not readable (permission denied)")
    return path


def read_input_bytes(
    path: str | os.PathLike,
    what: str,
    error: type[DevitoUQError],
    max_bytes: int | None = MAX_TEXT_BYTES,
) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``; ``None``: no bound).

    Raises ``error`` naming ``what`` and the path if it is not a regular file (checked
    on the open descriptor too), is larger than ``max_bytes``, or cannot be read.
    """
    path = check_input_file(path, what, error)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"{what} {str(path)!r} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)  # the open file itself: a FIFO swapped in after the check
        _check_regular(st.st_mode, path, what, error)
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(
                f"{what} {str(path)!r} has {st.st_size} bytes; more than the {max_bytes} "
                "bytes such a file can hold"
            )
        avail = available_memory()
        if avail is not None and st.st_size > avail:  # refused, not a MemoryError later
            raise error(
                f"{what} {str(path)!r} has {st.st_size} bytes, more than the "
                f"{format_bytes(avail)} of memory available to read it"
            )
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
    except DevitoUQError:
        raise
    except OSError as exc:
        raise error(f"{what} {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if max_bytes is not None and len(data) > max_bytes:  # grew while being read
        raise error(f"{what} {str(path)!r} has more than {max_bytes} bytes")
    return data


def read_input_text(
    path: str | os.PathLike,
    what: str,
    error: type[DevitoUQError],
    max_bytes: int = MAX_TEXT_BYTES,
) -> str:
    """The UTF-8 text of ``path`` (see :func:`read_input_bytes`); ``error`` if not UTF-8."""
    data = read_input_bytes(path, what, error, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {os.fspath(path)!r} is not UTF-8 text (byte {exc.start}: "
            f"{data[exc.start : exc.start + 1]!r})"
        ) from None


def check_nesting(
    value: Any, what: str, error: type[DevitoUQError], limit: int = MAX_NESTING
) -> None:
    """``error`` if lists/dicts in ``value`` nest deeper than ``limit`` (no recursion)."""
    stack = [(value, 1)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, dict):
            children = obj.values()
        elif isinstance(obj, list):
            children = obj
        else:
            continue
        if depth > limit:
            raise error(f"{what} nests lists or tables more than {limit} deep")
        stack.extend((c, depth + 1) for c in children)


def read_input_json(
    path: str | os.PathLike,
    what: str,
    error: type[DevitoUQError],
    max_bytes: int = MAX_TEXT_BYTES,
) -> Any:
    """The JSON value in ``path``, with one-line errors for every way it can be bad."""
    text = read_input_text(path, what, error, max_bytes)
    where = f"{what} {os.fspath(path)!r}"
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{where} nests lists or objects too deep") from None
    except ValueError as exc:
        raise error(f"{where} is not valid JSON: {exc}") from None
    check_nesting(value, where, error)
    return value


def load_input_npz(
    path: str | os.PathLike,
    what: str,
    error: type[DevitoUQError],
    max_bytes: int = 1 << 30,
) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path``, read eagerly (never unpickled).

    Raises ``error`` naming the file if it is not a regular file, exceeds ``max_bytes``,
    is not a zip archive, fails a member's CRC (a flipped bit), is truncated, or holds
    object arrays.
    """
    data = read_input_bytes(path, what, error, max_bytes)
    where = f"{what} {os.fspath(path)!r}"
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise error(f"{where} is an .npy file, not an .npz archive")
        with archive as z:
            return {name: z[name] for name in z.files}
    except DevitoUQError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as exc:
        raise error(
            f"{where} is corrupt or not an .npz archive "
            f"({type(exc).__name__}: {' '.join(str(exc).split())})"
        ) from None
