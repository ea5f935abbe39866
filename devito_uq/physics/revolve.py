r"""Binomial (Griewank's *revolve*) checkpointing schedules, written here.

A time loop of ``steps`` forward steps ``x_k = F(x_{k-1})`` is reversed by adjoint
steps ``i = steps … 1``, each needing the state ``x_{i-1}``. With room for ``snaps``
stored states (one of them holds ``x_0``), the fewest forward steps that deliver every
state in reverse order is Griewank's binomial optimum (Griewank & Walther 2000,
*Algorithm 799: revolve*):

.. math::
    T(n, s) = r\,n - \binom{s + r}{r - 1}, \qquad
    \binom{s + r - 1}{s} < n \le \binom{s + r}{s},

(``T = n(n-1)/2`` for one snapshot; ``n - 1`` once ``s ≥ n``). :func:`schedule` emits an
optimal sequence of actions, splitting every segment where the cost of its two halves
(``j`` steps + the right part with one snapshot less + the left part) is least.

Why not pyrevolve: its only release on PyPI (2.2.8) is a source distribution with a
C++ extension (``crevolve.cpp``), which needs a C++ compiler at install time; a
fresh machine has gcc only.

Actions (tuples): ``("advance", a, b)`` runs forward steps ``a+1 … b`` from the working
state ``x_a``; ``("takeshot", slot, k)`` stores the working state ``x_k``;
``("restore", slot, k)`` makes the stored ``x_k`` the working state; ``("reverse", i)``
runs adjoint step ``i`` on the working state ``x_{i-1}``.
"""

from __future__ import annotations

from math import comb

import numpy as np

from devito_uq.errors import InvalidArgumentError

__all__ = ["optimal_forward_steps", "schedule", "forward_steps"]


def optimal_forward_steps(steps: int, snaps: int) -> int:
    """Griewank's minimum of forward steps to reverse ``steps`` steps with ``snaps`` states.

    Parameters
    ----------
    steps : int
        Forward steps of the loop (``≥ 1``).
    snaps : int
        Stored states available, the initial one included (``≥ 1``).
    """
    if steps < 1 or snaps < 1:
        raise InvalidArgumentError(f"need steps >= 1 and snaps >= 1; got {steps}, {snaps}")
    r = 0
    while comb(snaps + r, snaps) < steps:
        r += 1
    return r * steps - comb(snaps + r, r - 1) if r > 0 else 0


def _costs(lengths: np.ndarray, free: int) -> np.ndarray:
    """Cost of delivering ``l + 1`` states backwards from a held ``x_0`` with ``free``
    more snapshots, for every ``l`` in ``lengths`` (``T(l + 1, free + 1)``)."""
    n, s = lengths + 1, free + 1
    out = np.empty(len(n), dtype=np.int64)
    for k, nk in enumerate(n.tolist()):
        out[k] = optimal_forward_steps(nk, s)
    return out


def schedule(steps: int, snaps: int) -> list[tuple]:
    """An optimal revolve schedule: list of actions (see the module docstring).

    ``snaps`` is capped at ``steps`` (more never helps). The ``advance`` actions add up
    to :func:`optimal_forward_steps` ``(steps, snaps)``.
    """
    optimal_forward_steps(steps, snaps)  # validates
    snaps = min(snaps, steps)
    actions: list[tuple] = [("takeshot", 0, 0)]
    free = list(range(snaps - 1, 0, -1))
    working = 0
    # Tasks: ("deliver", lo, hi, slot of x_lo) reverses steps hi+1 … lo+1; ("free", slot).
    tasks: list[tuple] = [("deliver", 0, steps - 1, 0)]
    while tasks:
        task = tasks.pop()
        if task[0] == "free":
            free.append(task[1])
            continue
        _, lo, hi, slot = task
        if hi > lo and free:
            j_all = np.arange(1, hi - lo + 1)
            cost = j_all + _costs(hi - lo - j_all, len(free) - 1) + _costs(j_all - 1, len(free))
            j = int(j_all[int(np.argmin(cost))])
            if working != lo:
                actions.append(("restore", slot, lo))
            new = free.pop()
            actions += [("advance", lo, lo + j), ("takeshot", new, lo + j)]
            working = lo + j
            tasks += [("deliver", lo, lo + j - 1, slot), ("free", new)]
            tasks.append(("deliver", lo + j, hi, new))
            continue
        for k in range(hi, lo - 1, -1):  # no snapshot left: recompute from x_lo each time
            if working > k or working < lo:
                actions.append(("restore", slot, lo))
                working = lo
            if k > working:
                actions.append(("advance", working, k))
            actions.append(("reverse", k + 1))
            working = k
    return actions


def forward_steps(actions: list[tuple]) -> int:
    """Forward steps a schedule runs (the sum of its ``advance`` lengths)."""
    return sum(a[2] - a[1] for a in actions if a[0] == "advance")
