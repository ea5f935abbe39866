"""Atomic training checkpoints.

A checkpoint is a ``dict`` of tensors, numbers, strings and nested dicts / lists
(what ``state_dict()`` methods return), written with :func:`torch.save`. The write
goes to a temporary file in the target's folder and is moved over the target with
:func:`os.replace`, which is atomic on POSIX: a reader sees either the old
checkpoint or the new one, never a half-written file, even if the process dies
mid-write. Loading validates the file and raises :class:`CheckpointError` naming
the path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from devito_uq.errors import CheckpointError
from devito_uq.io._atomic import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_FORMAT"]

#: Tag stored in every checkpoint so that foreign ``.pt`` files are recognised.
CHECKPOINT_FORMAT = "devito_uq-checkpoint-v1"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically and return the path.

    The folder is created if needed. ``state`` must be a ``dict`` with string
    keys; a ``"format"`` entry is added.
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint state must be a dict, got {type(state).__name__}")
    path = Path(path)
    payload = dict(state)
    payload["format"] = CHECKPOINT_FORMAT
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)
    return path


def load_checkpoint(path: str | os.PathLike, required: Iterable[str] = ()) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` naming ``path`` if it is missing, unreadable,
    not a devito_uq checkpoint, or lacks one of the ``required`` keys.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        # weights_only: a checkpoint holds only tensors and plain containers, and
        # loading it must never execute code from the file.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or unreadable: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a devito_uq checkpoint ({CHECKPOINT_FORMAT})")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks the entries {missing}")
    return state
