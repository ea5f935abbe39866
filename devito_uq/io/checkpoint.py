"""Atomic, self-verifying training checkpoints and caches: tensors + JSON, never pickle.

A checkpoint is a ``dict`` of tensors, numbers, strings, ``None``, and nested dicts,
lists and tuples (what ``state_dict()`` methods return). The file is::

    DEVITO-UQ-CHECKPOINT 2\\n                 magic line
    sha256 <64 hex digits>\\n                 SHA-256 of everything below
    <8-byte little-endian length n><n bytes of JSON><tensor bytes>

The JSON holds the tree with every tensor replaced by ``{"__tensor__": i}`` and a table
of ``dtype``, ``shape``, ``offset`` and ``nbytes`` per tensor; the tensors' raw bytes
follow. Nothing in the file is ever unpickled: loading parses JSON and copies bytes
into tensors of allow-listed dtypes, so a file planted in an output folder cannot run
code, and any change to any byte (a flipped bit, a truncation, an edit) fails the hash
and is refused with :class:`CheckpointError` naming the file.

Writes go through ``devito_uq.io._atomic.atomic_path``: a reader sees the old
file or the new one, never a half-written one; a symbolic link planted at the target
is replaced, never written through.

A caller stores the configuration a checkpoint depends on inside it and compares it on
load with :func:`check_identity` (a mismatch names the file and the key); the file on
disk is never modified by a load or a refused resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from devito_uq.errors import CheckpointError
from devito_uq.io._atomic import atomic_path
from devito_uq.io._files import read_input_bytes

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "check_identity",
    "checkpoint_exists",
    "CHECKPOINT_FORMAT",
]

#: Format tag, stored in the JSON and returned as the ``"format"`` entry of a loaded state.
CHECKPOINT_FORMAT = "devito_uq-checkpoint-v2"

_MAGIC = b"DEVITO-UQ-CHECKPOINT 2\n"
_DIGEST_LINE = len(b"sha256 ") + 64 + 1
_HEADER = len(_MAGIC) + _DIGEST_LINE
_LENGTH = struct.Struct("<Q")

# Only plain numeric dtypes are read back: anything else in a file is refused.
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.complex64,
        torch.complex128,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}
# Tags of the JSON encoding (single-key objects); user dicts using such keys are escaped.
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


# --------------------------------------------------------------------------- encoding
def _encode(obj: Any, where: str, tensors: list[torch.Tensor]) -> Any:
    """JSON-able form of ``obj``; tensors are appended to ``tensors``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided or obj.is_quantized:
            raise CheckpointError(f"checkpoint entry {where}: {obj.layout} tensors are not stored")
        if str(obj.dtype).removeprefix("torch.") not in _DTYPES:
            raise CheckpointError(f"checkpoint entry {where}: dtype {obj.dtype} is not stored")
        tensors.append(obj.detach().to("cpu").contiguous())
        return {_TENSOR: len(tensors) - 1}
    if hasattr(obj, "dtype") and hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        return _encode(obj.item(), where, tensors)  # numpy scalars
    if isinstance(obj, tuple):
        return {_TUPLE: [_encode(v, f"{where}[{i}]", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{where}[{i}]", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        plain = all(isinstance(k, str) and not k.startswith("__") for k in obj)
        if plain:
            return {k: _encode(v, f"{where}[{k!r}]", tensors) for k, v in obj.items()}
        # Integer keys (an optimizer's per-parameter state) must come back as integers.
        return {
            _ITEMS: [
                [_encode(k, f"{where} key {k!r}", tensors), _encode(v, f"{where}[{k!r}]", tensors)]
                for k, v in obj.items()
            ]
        }
    raise CheckpointError(
        f"checkpoint entry {where} is a {type(obj).__name__}; a checkpoint holds tensors, "
        "numbers, strings, None and dicts/lists/tuples of them"
    )


def _decode(obj: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if key == _TENSOR:
            return tensors[value]
        if key == _TUPLE:
            return tuple(_decode(v, tensors) for v in value)
        if key == _ITEMS:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _serialize(state: dict[str, Any]) -> bytes:
    tensors: list[torch.Tensor] = []
    tree = _encode(state, "state", tensors)
    table, blobs, offset = [], [], 0
    for t in tensors:
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        table.append(
            {
                "dtype": str(t.dtype).removeprefix("torch."),
                "shape": list(t.shape),
                "offset": offset,
                "nbytes": len(raw),
            }
        )
        blobs.append(raw)
        offset += len(raw)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "byteorder": sys.byteorder,
        "tensors": table,
        "state": tree,
    }
    text = json.dumps(meta, separators=(",", ":"), allow_nan=True).encode()
    return b"".join([_LENGTH.pack(len(text)), text, *blobs])


def _deserialize(payload: bytes, where: str) -> dict[str, Any]:
    (n,) = _LENGTH.unpack_from(payload, 0)
    start = _LENGTH.size + n
    meta = json.loads(payload[_LENGTH.size : start].decode())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where} has format {meta.get('format')!r}, not {CHECKPOINT_FORMAT}")
    if meta.get("byteorder") != sys.byteorder:
        raise CheckpointError(f"{where} was written on a {meta.get('byteorder')}-endian machine")
    tensors = []
    for entry in meta["tensors"]:
        dtype = _DTYPES[entry["dtype"]]
        shape = [int(s) for s in entry["shape"]]
        lo = start + int(entry["offset"])
        hi = lo + int(entry["nbytes"])
        if hi > len(payload) or math.prod(shape) * dtype.itemsize != hi - lo:
            raise ValueError(f"tensor entry {entry} does not fit the file")
        if hi == lo:
            tensors.append(torch.empty(shape, dtype=dtype))
        else:
            # A fresh bytearray per tensor: owned, writable and aligned memory.
            tensors.append(torch.frombuffer(bytearray(payload[lo:hi]), dtype=dtype).reshape(shape))
    state = _decode(meta["state"], tensors)
    if not isinstance(state, dict):
        raise ValueError("the stored state is not a dict")
    return state


# --------------------------------------------------------------------------- public API
def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically, with its SHA-256; return the path.

    The folder is created if needed. ``state`` must be a ``dict`` with string keys
    whose leaves are tensors (any device; stored on the CPU), ``bool``/``int``/
    ``float``/``str``/``None`` or numpy scalars; anything else raises
    :class:`CheckpointError` naming the entry, and nothing is written.
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint state must be a dict, got {type(state).__name__}")
    path = Path(path)
    payload = _serialize(state)
    digest = hashlib.sha256(payload).hexdigest().encode()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(_MAGIC + b"sha256 " + digest + b"\n")
        fh.write(payload)
    return path


def load_checkpoint(path: str | os.PathLike, required: Iterable[str] = ()) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Returns the saved ``dict`` (tensors on the CPU) plus ``"format"``. Raises
    :class:`CheckpointError` naming ``path`` if it is missing, a folder, a FIFO or a
    device, not a devito_uq checkpoint (including the pickle-based files of older
    versions, which are never unpickled), fails its SHA-256 check (corrupt,
    truncated or edited), or lacks one of the ``required`` keys.
    """
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    # Regular files only (checked again on the open descriptor: a FIFO swapped in after
    # the check cannot block); no size bound beyond the file's own, which is on disk.
    data = read_input_bytes(path, "checkpoint", CheckpointError, max_bytes=None)
    if not data.startswith(_MAGIC):
        old = " (a pickle-based file of an older version is never loaded)"
        raise CheckpointError(
            f"{str(path)!r} is not a devito_uq checkpoint ({CHECKPOINT_FORMAT})"
            + (old if data.startswith(b"PK\x03\x04") else "")
        )
    line = data[len(_MAGIC) : _HEADER]
    stored = line[7:-1]
    well_formed = (
        len(line) == _DIGEST_LINE
        and line.startswith(b"sha256 ")
        and line.endswith(b"\n")
        and all(c in b"0123456789abcdef" for c in stored)
    )
    if not well_formed:
        raise CheckpointError(f"{where} is corrupt: its integrity header is damaged")
    payload = data[_HEADER:]
    if hashlib.sha256(payload).hexdigest().encode() != stored:
        raise CheckpointError(
            f"{where} is corrupt: its SHA-256 does not match its content "
            f"({len(data)} bytes; truncated or modified)"
        )
    try:
        state = _deserialize(payload, where)
    except CheckpointError:
        raise
    except Exception as exc:  # a file with a valid hash but a foreign layout
        raise CheckpointError(f"{where} is unreadable: {type(exc).__name__}: {exc}") from None
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{where} lacks the entries {missing}")
    state["format"] = CHECKPOINT_FORMAT
    return state


def checkpoint_exists(path: str | os.PathLike, comm: Any = None) -> bool:
    """Whether ``path`` exists, agreed by every rank of the MPI communicator ``comm``.

    Call it on every rank (it is collective when ``comm`` has more than one rank). The
    first reduction doubles as a barrier: a write by rank 0 before the call is complete
    before any rank looks. A file seen by some ranks only (a folder local to each node)
    would make the ranks' states diverge silently: it raises :class:`CheckpointError`
    on every rank instead.
    """
    from devito_uq.parallel import allreduce_sum, rank_and_size

    _, size = rank_and_size(comm)
    if size > 1:
        allreduce_sum(torch.zeros(1, dtype=torch.float64), comm)
    exists = os.path.exists(path)
    if size > 1:
        seen = int(allreduce_sum(torch.tensor([float(exists)], dtype=torch.float64), comm))
        if 0 < seen < size:
            raise CheckpointError(
                f"checkpoint {str(os.fspath(path))!r} is visible on {seen} of {size} MPI "
                "ranks; put it in a folder every rank shares"
            )
    return exists


def _plain(value: Any) -> Any:
    """One spelling for values that compare unequal only by container type (tuple/list)."""
    with contextlib.suppress(TypeError, ValueError):
        return json.loads(json.dumps(value))
    return value


def check_identity(
    path: str | os.PathLike,
    saved: Mapping[str, Any],
    expected: Mapping[str, Any],
    keys: Iterable[str] | None = None,
    hint: str = "",
) -> None:
    """Refuse a checkpoint made under another configuration.

    Compares ``saved[k]`` with ``expected[k]`` for every ``k`` in ``keys`` (default:
    every key of either mapping; a key missing on one side counts as a mismatch), tuples
    and lists alike. Raises :class:`CheckpointError` naming ``path``, the key and both
    values; ``hint`` is appended (e.g. how to start afresh).
    """
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"checkpoint {str(os.fspath(path))!r} holds no run identity")
    names = sorted(set(saved) | set(expected)) if keys is None else list(keys)
    missing = object()
    for key in names:
        a, b = saved.get(key, missing), expected.get(key, missing)
        if a is missing or b is missing or _plain(a) != _plain(b):
            have = "no value" if a is missing else f"{key}={a!r}"
            want = "no value" if b is missing else f"{key}={b!r}"
            raise CheckpointError(
                f"checkpoint {str(os.fspath(path))!r} belongs to another run: it has {have}, "
                f"this run has {want}{hint}"
            )
