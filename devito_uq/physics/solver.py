"""The solver protocol shared by every physics: compile once, call fast, own buffers.

* :class:`Solver` — base class of ``AcousticSolver`` and ``PlaneWaveSolver``. It
  builds each Devito ``Operator`` once per key (:meth:`Solver.run`), counts
  ``n_compiles`` (operators built) and ``n_solves`` (PDE solves run), and calls the
  compiled C function through a cached argument list.
* :class:`Wavefield` — a buffer holding a saved forward wavefield, with an ``owner``
  token compared by identity: a backward pass uses the buffer only if it still holds
  *its* forward's wavefield (``wavefield.owner is token``), otherwise it recomputes.
  Every solver has a pool of them under a byte budget (``max_wavefield_bytes``,
  :meth:`Solver.acquire_wavefield`, :meth:`Solver.find_wavefield`).
* :func:`get_solver` / :func:`clear_solvers` — the one registry of shared solvers,
  keyed by everything that changes generated code (``cls.cache_key``). The registry
  is bounded: at most ``cls.max_cached`` solvers of one class are kept (least
  recently used evicted first; :data:`MAX_CACHED_SOLVERS` by default), so a loop over
  ever-new geometries or batch sizes does not keep every kernel and buffer alive.
  Before the first solver is built, Devito's JIT cache is pointed at a private
  per-user directory (:mod:`devito_uq.physics.jitcache`).

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

import ctypes
import sys
import weakref
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

__all__ = [
    "Solver",
    "Wavefield",
    "get_solver",
    "clear_solvers",
    "total_compiles",
    "new_owner",
    "cached_solvers",
    "MAX_CACHED_SOLVERS",
    "run_parallel",
]

#: Default cap on the solvers of one class kept by the registry (LRU eviction).
MAX_CACHED_SOLVERS = 8

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
    names: list | None = None  # the operator's parameter names, in ``values`` order
    split: dict | None = None  # (dimension, parts) -> argument tuples, one per part
    keep: list | None = None  # the per-part profiler structs the tuples point to


class Solver:
    """Compile-once operator cache and counters shared by every physics solver.

    Subclasses define ``cache_key(*args)`` (a classmethod: the registry key of the
    arguments their ``__init__`` takes) and call :meth:`run` for every solve.
    ``max_cached`` caps how many solvers of the class the registry keeps.

    The pool of saved forward wavefields lives here, so any physics gets it: a
    subclass that saves wavefields defines :meth:`wavefield_nbytes` and
    ``_new_buffer``, and its torch layer takes buffers with
    :meth:`acquire_wavefield` and finds them again by owner token with
    :meth:`find_wavefield`.

    Parameters
    ----------
    max_wavefield_bytes : int
        Memory the pool of saved wavefields may hold (default 1 GiB); beyond it the
        least recently used buffers are reused or freed.
    """

    max_cached: int = MAX_CACHED_SOLVERS

    def __init__(self, max_wavefield_bytes: int = 2**30) -> None:
        self._ops: dict[Any, Any] = {}
        self._built: dict[Any, dict] = {}
        self._calls: dict[Any, _Call] = {}
        #: Devito Operators this solver built (each JIT-compiled once).
        self.n_compiles = 0
        #: PDE solves run (a batched call counts one per row solved).
        self.n_solves = 0
        #: Models a torch layer solved one per call, keyed by the operator's name and the
        #: short chunk size: a size that keeps coming back gets a batched kernel
        #: (``devito_uq.physics.batching.plan``).
        self.small_chunks: Counter = Counter()
        self._pool: OrderedDict[int, Wavefield] = OrderedDict()
        #: Bytes of saved wavefields the pool may hold (the first buffer is always made).
        self.max_wavefield_bytes = int(max_wavefield_bytes)

    @classmethod
    def cache_key(cls, *args: Any, **kwargs: Any) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def wavefield_nbytes(self, nt: int, factor: int = 1) -> int:  # pragma: no cover - abstract
        """Bytes of one saved wavefield of ``nt`` samples kept every ``factor``-th step."""
        raise NotImplementedError

    def _new_buffer(self, nt: int, factor: int) -> Wavefield:  # pragma: no cover - abstract
        """A new (unowned) saved-wavefield buffer of ``nt`` samples, every ``factor``-th."""
        raise NotImplementedError

    # ------------------------------------------------------------- wavefield pool
    def acquire_wavefield(self, nt: int, factor: int = 1, owner: object = None) -> Wavefield:
        """A saved-wavefield buffer from the pool for ``owner`` (free ones first, then LRU)."""
        for key, buf in self._pool.items():
            if buf.nt == nt and buf.factor == factor and buf.owner is None:
                self._pool.move_to_end(key)
                buf.owner = owner
                return buf
        need = self.wavefield_nbytes(nt, factor)
        total = sum(b.nbytes for b in self._pool.values())
        if self._pool and total + need > self.max_wavefield_bytes:
            # Reuse the least recently used buffer of the same size, else free it.
            for key, buf in list(self._pool.items()):
                if buf.nt == nt and buf.factor == factor:
                    self._pool.move_to_end(key)
                    buf.owner = owner
                    return buf
            while self._pool and total + need > self.max_wavefield_bytes:
                _, old = self._pool.popitem(last=False)
                total -= old.nbytes
        buf = self._new_buffer(nt, factor)
        buf.owner = owner
        self._pool[id(buf)] = buf
        return buf

    def find_wavefield(self, owner: object) -> Wavefield | None:
        """The pooled buffer still holding ``owner``'s wavefield (identity), if any."""
        for buf in self._pool.values():
            if buf.owner is owner:
                return buf
        return None

    def wavefield_capacity(self, nt: int, factor: int = 1) -> int:
        """How many saved wavefields of this size fit in ``max_wavefield_bytes`` (≥ 1)."""
        return max(1, self.max_wavefield_bytes // self.wavefield_nbytes(nt, factor))

    def release_owners(self, owners: Any) -> int:
        """Drop the pooled buffers held by any of ``owners`` (identity); return how many.

        Called when a module that pins wavefields across calls (``BornModeling``) is
        garbage-collected, so its buffers do not stay in the pool forever.
        """
        ids = {id(o) for o in owners}
        gone = [k for k, b in self._pool.items() if b.owner is not None and id(b.owner) in ids]
        for k in gone:
            del self._pool[k]
        return len(gone)

    def release_wavefields(self) -> None:
        """Drop every pooled wavefield buffer (they are reallocated on demand)."""
        self._pool.clear()

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

    def run(
        self,
        key: Any,
        build: Callable[[], Any],
        objs: dict,
        solves: int,
        split: str | None = None,
        **scalars,
    ) -> None:
        """Apply operator ``key`` with this call's Devito objects ``objs`` and ``scalars``.

        ``objs`` maps symbol names to the objects this call uses; those that differ
        from the build-time ones are passed as overrides when the argument list is
        (re)built. ``solves`` is added to :attr:`n_solves`.

        ``split``: the name of a dimension whose indices are independent problems over
        the whole time loop (the plane-wave solver's rows: each a 1D solve that never
        reads another row). With :func:`devito_uq.threads.solver_threads` > 1 its range
        is cut into that many contiguous parts, each run by the same compiled function
        in its own thread (ctypes releases the GIL). No synchronization per time step,
        unlike an OpenMP loop inside it, and every row computes exactly what it computes
        alone: results are bit-identical for any thread count.
        """
        call = self._call(key, build, objs, scalars)
        threads = solver_threads() if split is not None else 1
        if threads > 1:
            run_parallel(call.cfunction, _split_values(call, call.names, split, threads))
        else:
            call.cfunction(*call.values)
        self.n_solves += solves

    def run_steps(
        self, key: Any, build: Callable[[], Any], objs: dict, first: int, last: int, **scalars
    ) -> None:
        """Apply operator ``key`` for time iterations ``first … last`` only.

        The argument list is the cached one of ``scalars`` (which include the full
        ``time_m``/``time_M``) with the two time bounds replaced: a checkpointing schedule
        calls it thousands of times, each costing one C call instead of ``op.arguments``.
        """
        call = self._call(key, build, objs, scalars)
        values = list(call.values)
        values[call.names.index("time_m")] = first
        values[call.names.index("time_M")] = last
        call.cfunction(*values)

    def _call(self, key: Any, build: Callable[[], Any], objs: dict, scalars: dict) -> _Call:
        """The cached argument list of operator ``key`` for ``objs`` and ``scalars``."""
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
            names = [p.name for p in op.parameters]
            call = _Call(op.cfunction, values, dict(scalars), refs, names)
            self._calls[key] = call
        return call


# ------------------------------------------------------ threads over independent rows
_POOL: dict[str, Any] = {"pool": None, "workers": 0}


def solver_threads() -> int:
    """Threads a solver may use over independent rows (:func:`devito_uq.threads.solver_threads`)."""
    from devito_uq.threads import solver_threads as _threads

    return _threads()


def _split_values(call: _Call, names: list[str], dim: str, parts: int) -> list[tuple]:
    """Argument tuples of ``call`` for ``parts`` contiguous ranges of ``dim`` (cached)."""
    cached = call.split.get((dim, parts)) if call.split is not None else None
    if cached is not None:
        return cached
    lo_i, hi_i = names.index(f"{dim}_m"), names.index(f"{dim}_M")
    lo, hi = int(call.values[lo_i]), int(call.values[hi_i])
    parts = max(1, min(parts, hi - lo + 1))
    edges = [lo + (hi - lo + 1) * k // parts for k in range(parts + 1)]
    lists = []
    for a, b in zip(edges, edges[1:]):
        values = list(call.values)
        values[lo_i], values[hi_i] = a, b - 1
        if "timers" in names:  # each thread its own profiler struct: no shared writes
            i = names.index("timers")
            struct = type(values[i]._obj)()
            values[i] = ctypes.byref(struct)
            call.keep = [*(call.keep or []), struct]  # alive as long as the tuples
        lists.append(tuple(values))
    call.split = {**(call.split or {}), (dim, parts): lists}
    return lists


def run_parallel(fn: Callable[..., Any], argument_lists: list[tuple]) -> None:
    """``fn(*args)`` for every ``args``: the first in the calling thread, the others in
    a shared pool of worker threads (for compiled kernels, which release the GIL)."""
    if len(argument_lists) == 1:
        fn(*argument_lists[0])
        return
    workers = len(argument_lists) - 1
    if _POOL["workers"] < workers:
        if _POOL["pool"] is not None:
            _POOL["pool"].shutdown(wait=True)
        _POOL["pool"] = ThreadPoolExecutor(workers, thread_name_prefix="devito_uq-rows")
        _POOL["workers"] = workers
    futures = [_POOL["pool"].submit(fn, *args) for args in argument_lists[1:]]
    fn(*argument_lists[0])
    for f in futures:
        f.result()


# ------------------------------------------------------------------- registry
_SOLVERS: OrderedDict[tuple, Solver] = OrderedDict()


def get_solver(cls: type, *args: Any, **kwargs: Any) -> Any:
    """The shared ``cls(*args, **kwargs)`` solver, one per ``cls.cache_key(*args, **kwargs)``.

    Two equal geometries (same shape, spacing, order, dtype, …) share compiled
    operators and buffers. When more than ``cls.max_cached`` solvers of ``cls``
    exist, the least recently used one is dropped from the registry (its memory is
    freed once no module holds it).
    """
    key = (cls, *cls.cache_key(*args, **kwargs))
    solver = _SOLVERS.get(key)
    if solver is None:
        from devito_uq.physics import jitcache

        jitcache.install()  # before anything compiles
        solver = cls(*args, **kwargs)
        _SOLVERS[key] = solver
        same = [k for k in _SOLVERS if k[0] is cls]
        for old in same[: max(0, len(same) - int(cls.max_cached))]:
            del _SOLVERS[old]
    else:
        _SOLVERS.move_to_end(key)
    return solver


def cached_solvers(cls: type | None = None) -> list[Solver]:
    """The solvers the registry holds now (of ``cls`` only, when given), oldest first."""
    return [s for k, s in _SOLVERS.items() if cls is None or k[0] is cls]


def clear_solvers() -> None:
    """Forget every cached solver (operators, buffers) and clear Devito's symbol cache."""
    _SOLVERS.clear()
    if "devito" in sys.modules:
        sys.modules["devito"].clear_cache()
