"""Small resume-side result files: numpy arrays with the run's identity and a SHA-256.

A per-item result of a resumable run (one calibration truth, say) is an ``.npz`` of
numpy arrays written atomically (``io._atomic.atomic_path``). Two
entries are added, as a checkpoint carries them (:mod:`devito_uq.io.checkpoint`):

* ``meta``: the run's identity as canonical JSON (the settings the result depends on);
* ``digest``: the SHA-256 of every other entry's name, dtype, shape and bytes.

:func:`load_record` reads the file eagerly through
``io._files.load_input_npz`` (regular files only, bounded, never
unpickled), checks the digest (a flipped bit or an edit is refused), then compares the
identity key by key: a file planted from another run or configuration is refused,
naming the file and the first key that differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from devito_uq.errors import CheckpointError
from devito_uq.io._atomic import atomic_path
from devito_uq.io._files import load_input_npz
from devito_uq.io.checkpoint import check_identity

__all__ = ["save_record", "load_record"]

_RESERVED = ("meta", "digest")


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(k for k in arrays if k != "digest"):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_record(
    path: str | os.PathLike, arrays: Mapping[str, Any], identity: Mapping[str, Any]
) -> Path:
    """Write ``arrays`` (name → numpy array or scalar) with ``identity`` to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file (its folder is created).
    arrays : mapping of str to array_like
        The result; numeric arrays and scalars (no objects: read back without pickle).
        The names ``meta`` and ``digest`` are reserved.
    identity : mapping of str to JSON value
        The run's identity, compared on load.

    Returns
    -------
    Path
        ``path``.
    """
    clash = [k for k in _RESERVED if k in arrays]
    if clash:
        raise CheckpointError(f"record entries {clash} are reserved")
    rec = {k: np.asarray(v) for k, v in arrays.items()}
    rec["meta"] = np.asarray(json.dumps(dict(identity), sort_keys=True))
    rec["digest"] = np.asarray(_digest(rec))
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **rec)
    return path


def load_record(
    path: str | os.PathLike, identity: Mapping[str, Any], what: str = "result file"
) -> dict[str, np.ndarray]:
    """The arrays of a file written by :func:`save_record`, verified.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.
    identity : mapping of str to JSON value
        This run's identity: every key must match the stored one.
    what : str
        What the file is, for messages (``"calibration result"``).

    Returns
    -------
    dict of str to numpy.ndarray
        The arrays, without ``meta`` and ``digest``.

    Raises
    ------
    CheckpointError
        Not a regular file, too large, corrupt or truncated (zip CRC or SHA-256), no run
        identity (another program or an older version wrote it), or another run's
        identity (names the key and both values).
    """
    rec = load_input_npz(path, what, CheckpointError)
    where = f"{what} {os.fspath(path)!r}"
    if "digest" not in rec or "meta" not in rec:
        raise CheckpointError(
            f"{where} carries no run identity (another program or an older devito_uq wrote "
            "it); remove it or use another output folder"
        )
    if str(rec.pop("digest")) != _digest(rec):
        raise CheckpointError(f"{where} is corrupt: its SHA-256 does not match its content")
    try:
        saved = json.loads(str(rec.pop("meta")))
    except ValueError:
        saved = None
    check_identity(path, saved, identity, hint="; remove the file or use another output folder")
    return rec
