"""The solver protocol shared by every physics: compile once, call fast, own buffers.

* :class:`Solver` — base class of ``AcousticSolver`` and ``PlaneWaveSolver``. It
  builds each Devito ``Operator`` once per key (:meth:`Solver.run`), counts
  ``n_compiles`` (operators built) and ``n_solves`` (PDE solves run), and calls the
  compiled C function through a cached argument list.
* :class:`Wavefield` — a buffer holding a saved forward wavefield, with an ``owner``
  token compared by identity: a backward pass uses the buffer only if it still holds
  *its* forward's wavefield (``wavefield.owner is token``), otherwise it recomputes.
* :func:`get_solver` / :func:`clear_solvers` — the one registry of shared solvers,
  keyed by everything that changes generated code (``cls.cache_key``).

Calling compiled operators: ``Operator.apply`` re-derives every argument from the
symbols on each call (about 1 ms of Python per gradient on the acoustic benchmark,
more than the plane-wave solve itself). The argument list is built once by
``op.arguments`` and reused while the call's Devito objects (sparse functions,
buffers) and scalars (``dt``, time bounds) are the same ones; a change rebuilds it.
The objects are remembered by weak reference so that a freed buffer whose id is
reused can never be mistaken for the old one. Devito data buffers are allocated
once per object, so the pointers in a cached list stay valid.
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Solver", "Wavefield", "get_solver", "clear_solvers", "total_compiles", "new_owner"]

# Operators built by every solver since import (the "no recompilation" tests read it).
_TOTAL = {"compiles": 0}


def total_compiles() -> int:
    """How many Devito Operators every solver together has built (and JIT-compiled)."""
    return _TOTAL["compiles"]


def new_owner() -> object:
    """A fresh owner token for :class:`Wavefield` (compared by identity only)."""
    return object()


@dataclass(eq=False)
class Wavefield:
    """A saved-wavefield buffer (``function``: a Devito ``TimeFunction``) and its owner.

    ``owner`` is the token of the forward solve whose wavefield the buffer holds
    (``None``: free). The next saving forward overwrites it in place and sets a new owner.
    """

    function: Any
    nt: int
    factor: int = 1
    owner: object = None
    nbytes: int = 0


@dataclass(eq=False)
class _Call:
    cfunction: Any
    values: list
    scalars: dict
    objs: dict  # name -> weakref to the Devito object used


class Solver:
    """Compile-once operator cache and counters shared by every physics solver.

    Subclasses define ``cache_key(*args)`` (a classmethod: the registry key of the
    arguments their ``__init__`` takes) and call :meth:`run` for every solve.
    """

    def __init__(self) -> None:
        self._ops: dict[Any, Any] = {}
        self._built: dict[Any, dict] = {}
        self._calls: dict[Any, _Call] = {}
        #: Devito Operators this solver built (each JIT-compiled once).
        self.n_compiles = 0
        #: PDE solves run (a batched call counts one per row solved).
        self.n_solves = 0

    @classmethod
    def cache_key(cls, *args: Any, **kwargs: Any) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def operator(self, key: Any, build: Callable[[], Any], objs: dict | None = None) -> Any:
        """The operator ``key``, built (and compiled) by ``build()`` on first use."""
        op = self._ops.get(key)
        if op is None:
            op = build()
            op.cfunction  # noqa: B018  -- JIT-compile now, not inside the first timed call
            self._ops[key] = op
            self._built[key] = dict(objs or {})
            self.n_compiles += 1
            _TOTAL["compiles"] += 1
        return op

    def run(self, key: Any, build: Callable[[], Any], objs: dict, solves: int, **scalars) -> None:
        """Apply operator ``key`` with this call's Devito objects ``objs`` and ``scalars``.

        ``objs`` maps symbol names to the objects this call uses; those that differ
        from the build-time ones are passed as overrides when the argument list is
        (re)built. ``solves`` is added to :attr:`n_solves`.
        """
        op = self.operator(key, build, objs)
        call = self._calls.get(key)
        if (
            call is None
            or call.scalars != scalars
            or call.objs.keys() != objs.keys()
            or any(call.objs[n]() is not o for n, o in objs.items())
        ):
            built = self._built[key]
            over = {n: o for n, o in objs.items() if built.get(n) is not o}
            args = op.arguments(**scalars, **over)
            values = [args[p.name] for p in op.parameters]
            refs = {n: weakref.ref(o) for n, o in objs.items()}
            call = _Call(op.cfunction, values, dict(scalars), refs)
            self._calls[key] = call
        call.cfunction(*call.values)
        self.n_solves += solves


# ------------------------------------------------------------------- registry
_SOLVERS: dict[tuple, Solver] = {}


def get_solver(cls: type, *args: Any, **kwargs: Any) -> Any:
    """The shared ``cls(*args, **kwargs)`` solver, one per ``cls.cache_key(*args, **kwargs)``.

    Two equal geometries (same shape, spacing, order, dtype, …) share compiled
    operators and buffers.
    """
    key = (cls, *cls.cache_key(*args, **kwargs))
    solver = _SOLVERS.get(key)
    if solver is None:
        solver = cls(*args, **kwargs)
        _SOLVERS[key] = solver
    return solver


def clear_solvers() -> None:
    """Forget every cached solver (operators, buffers) and clear Devito's symbol cache."""
    _SOLVERS.clear()
    if "devito" in sys.modules:
        sys.modules["devito"].clear_cache()
