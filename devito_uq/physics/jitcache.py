"""A private directory for Devito's JIT-compiled kernels.

Devito writes and *loads* its compiled shared objects from
``$TMPDIR/devito-jitcache-uid<uid>`` (and codepy, which it compiles through, unpickles
cache metadata from ``$TMPDIR/devito-codepy-uid<uid>``), creating both with
``exist_ok=True``: on a shared machine another user can create those directories
first (``/tmp`` is world writable) and plant a library or a pickle there that our
process would then load — code execution as the user who solves. devito_uq therefore
points Devito at a private per-user directory (the codepy cache in its ``codepy``
subdirectory) before it compiles anything:

* ``$DEVITO_UQ_JIT_DIR`` if the user set it, else ``$XDG_CACHE_HOME/devito_uq/jit``,
  else ``~/.cache/devito_uq/jit``;
* created with mode 0700; whichever is used (also one the user named) must be a real
  directory (not a symlink) owned by the current user and not writable by group or
  others, otherwise :class:`JitCacheError` names it and nothing is compiled.

We redirect rather than only check Devito's default because the ``/tmp`` name is
predictable: checking it would turn a planted directory into a denial of service,
while a directory under the user's home cannot be pre-empted by others.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from devito_uq.errors import JitCacheError

__all__ = ["JitCacheError", "jit_dir", "secure_jit_dir", "install"]

_STATE = {"installed": False}


def jit_dir() -> Path:
    """The directory devito_uq wants Devito to compile into (not yet checked)."""
    env = os.environ.get("DEVITO_UQ_JIT_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "devito_uq" / "jit"


def secure_jit_dir(path: Path | None = None) -> Path:
    """Create ``path`` (default :func:`jit_dir`) mode 0700 and check that it is private."""
    path = jit_dir() if path is None else Path(path)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise JitCacheError(f"cannot create the JIT cache directory {str(path)!r}: {exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise JitCacheError(f"JIT cache {str(path)!r} is not a directory (a symlink?)")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise JitCacheError(
            f"JIT cache directory {str(path)!r} is owned by uid {st.st_uid}, not by you "
            f"(uid {os.getuid()}); refusing to load compiled code from it"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise JitCacheError(
            f"JIT cache directory {str(path)!r} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run chmod 700 on it"
        )
    return path


def install() -> None:
    """Make Devito's compilers use :func:`secure_jit_dir` (idempotent; imports Devito).

    Devito has no setting for this directory, so ``Compiler.get_jit_dir`` is
    replaced; the directory is re-checked on every compile (one ``lstat``).
    """
    if _STATE["installed"]:
        return
    import devito.arch.compiler as compiler  # noqa: PLC0415 - Devito loads lazily

    compiler.Compiler.get_jit_dir = lambda self: secure_jit_dir()
    compiler.Compiler.get_codepy_dir = lambda self: secure_jit_dir(jit_dir() / "codepy")
    _STATE["installed"] = True
    secure_jit_dir()
