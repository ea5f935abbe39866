r"""Plane-wave (τ-p) 1D operators written with Devito's DSL.

For each ray parameter :math:`p` the constant-density acoustic wave equation
reduces, after a plane-wave decomposition, to the 1D equation

.. math::
    (m(z) - p^2)\,\partial_t^2 u - \partial_z^2 u + \eta(z)\,\partial_t u
        = q(t)\,\delta(z - z_s),

with :math:`m = 1/v^2` (s²/km², z in m, t in ms) and :math:`\eta` a damping profile
non-zero only in the absorbing layers above and below the model. The Devito grid
is 2D: its first axis indexes rows (model, ray parameter) and carries no
derivative, its second axis is depth. Sources and receivers are not
``SparseTimeFunction``\ s (interpolation at the last row read the halo): the
wavelet (residual) enters at the one surface depth sample, and the kernel copies the
receiver sample of each row into a small trace buffer every step.

Discretisation (2nd order in time, ``space_order`` in depth; :math:`A = m - p^2`):

.. math::
    B\,u^{n+1} = (2A/\Delta t^2 + L)\,u^n - E\,u^{n-1} + q^n e_s/\Delta z, \quad
    B = A/\Delta t^2 + \eta/(2\Delta t),\ E = A/\Delta t^2 - \eta/(2\Delta t),

written as :math:`u^{n+1} = 2u^n - u^{n-1} + g\,(u^{n-1} - u^n) + c\,L u^n + c\,q^n e_s/\Delta z`
with the two coefficients ``g = (η/Δt)/B`` (zero outside the absorbing layers) and
``c = 1/B`` set per call (the same scheme as ``c1 = 2A/Δt²/B = 2 − g``, ``c2 = E/B = 1 − g``,
one array fewer to stream). Time indexing: ``U[j] = u^{j−1}`` (``U[0] = U[1] = 0``);
iteration ``time`` writes ``U[t+1]``. The adjoint runs the same scheme backward,
``V[j] = λ^{j−1}``.

Speed is memory traffic (``benchmarks/results/bench_planewave.md``): ``u`` and ``λ``
live in ``BLOCK + 2`` rolling levels (cache resident), and the one array saved for
the adjoint is ``D[j] = ∂²_t U[j] = (U[j+1] − 2U[j] + U[j−1])/Δt²``, halo-free
``[time, rows, depth]``, the only quantity the adjoint and Born operators need from the
forward. The forward writes it ``BLOCK`` planes at a time and the adjoint images ``BLOCK``
planes at a time (one gradient read-modify-write per block, not per step). The depth
sweeps carry no source mask: a scalar statement per row adds the injected term at the
source (receiver) depth after the sweep.

Factories (as Devito's ``examples/seismic/*/operators.py``), compiled once by
:class:`~devito_uq.physics.planewave.solver.PlaneWaveSolver`:

* :func:`forward_operator` — ``u`` from the source ``q``: the traces, ``D`` (all steps, or
  one segment's steps into a small modulo buffer) and/or checkpoints;
* :func:`gradient_operator` — adjoint wavefield from the residual at the receiver and
  the imaging condition ``grad −= λ D`` (``∂⟨r, d⟩/∂A``);
* :func:`born_operator` — ``δu`` from ``−δA D``, the exact derivative of the forward
  recursion, and its traces.
"""

from __future__ import annotations

from devito import ConditionalDimension, Eq, Function, Operator, TimeFunction
from devito.symbolics import CondEq
from sympy import Mod

__all__ = [
    "BLOCK",
    "forward_operator",
    "gradient_operator",
    "born_operator",
    "checkpoint_functions",
    "segment_adjoint_operator",
]

#: Time steps per block: the forward writes ``D`` and the adjoint reads it in blocks of
#: this many planes from a ``BLOCK + 2``-level rolling ``u`` / ``λ`` (measured best of 4/8/16).
BLOCK = 8


def _every(time, phase: int, name: str) -> ConditionalDimension:
    """Iterations with ``time ≡ phase (mod BLOCK)``."""
    return ConditionalDimension(
        name=name, parent=time, condition=CondEq(Mod(time, BLOCK), phase % BLOCK)
    )


def _step(w: TimeFunction, new, old, coef, src, iz: int) -> list[Eq]:
    """``new = 2w − old + g (old − w) + c ∂²_z w``, then ``new += c src`` at depth ``iz``.

    The source term is a scalar statement per row after the depth sweep, not a second
    loop over a one-sample subdomain (whose per-row SIMD set-up cost forward 0.25 ms,
    adjoint 0.55 ms at the AVP size); the same scheme, summed in another order.
    """
    g, c = coef
    z = w.dimensions[2]
    point = new.subs(z, iz)
    return [
        Eq(new, 2 * w - old + g * (old - w) + c * w.dz2),
        Eq(point, point + (c * src).subs(z, iz)),
    ]


def forward_operator(
    u: TimeFunction,
    coef: tuple[Function, Function],
    q: Function,
    d2u: TimeFunction | None,
    rec: Function | None,
    iz: int,
    dz: float,
    dt: float,
    ck: tuple[TimeFunction, TimeFunction] | None = None,
    name: str = "planewave_forward",
) -> Operator:
    """``U[t+1]`` from the source ``q[t]/Δz`` at depth ``iz``; traces ``rec[t+1] = U[t+1, :, iz]``.

    ``u``: ``BLOCK + 2`` rolling levels. Every ``BLOCK``-th step (``t ≡ 0``) writes
    ``D[j]`` for ``j = t−BLOCK+1 … t`` into slot ``j + BLOCK`` of ``d2u`` (so run to a
    multiple of BLOCK; a modulo buffer wraps the slot). ``ck``
    (:func:`checkpoint_functions`): at ``t ≡ 0 (mod S)`` store ``U[t]``, ``U[t+1]``.
    ``d2u``, ``rec`` or ``ck`` ``None``: that output is not written.
    """
    time = u.grid.time_dim
    t, b, z = u.dimensions
    eqs = _step(u, u.forward, u.backward, coef, q / dz, iz)
    if rec is not None:
        eqs.append(Eq(rec[time + 1, b], u.forward.subs(z, iz)))
    if ck is not None:
        eqs += [Eq(ck[0], u), Eq(ck[1], u.forward)]
    if d2u is not None:
        blk = _every(time, 0, "tfwd")
        td = d2u.dimensions[0]  # `time` if saved, the modulo `t` if a buffer
        for k in range(BLOCK):
            d2 = u.subs(t, t + 1 - k) - 2 * u.subs(t, t - k) + u.subs(t, t - 1 - k)
            d2 = d2 * (1.0 / dt**2)
            eqs.append(Eq(d2u.subs(td, td - k + BLOCK), d2, implicit_dims=(blk,)))
    return Operator(eqs, name=name)


def checkpoint_functions(grid, segment: int, count: int) -> tuple[TimeFunction, TimeFunction]:
    """``(C0, C1)`` ``[count, rows, depth]`` (no halos): ``C0[s] = U[sS]``, ``C1[s] = U[sS+1]``.

    Written by :func:`forward_operator` at ``t = sS`` (``S = segment``; ``s ≥ 1``:
    ``C0[0] = C1[0] = 0`` are the zero initial levels, never written).
    """
    cd = ConditionalDimension(name="tck", parent=grid.time_dim, factor=segment)
    kw = dict(grid=grid, time_order=0, space_order=0, save=count, time_dim=cd)
    return tuple(TimeFunction(name=n, **kw) for n in ("ck0", "ck1"))


def gradient_operator(
    v: TimeFunction,
    coef: tuple[Function, Function],
    res: Function,
    grad: Function,
    d2u: TimeFunction,
    iz: int,
    name: str = "planewave_adjoint",
) -> Operator:
    """Adjoint recursion fed by ``res`` at depth ``iz``; ``grad −= Σ_j V[j] D[j]``.

    ``v``: ``BLOCK + 2`` rolling levels; iteration ``t`` computes ``V[t−1]``; at
    ``t ≡ 2`` the block ``j = t−1 … t+BLOCK−2`` is imaged (``D[j]`` in slot ``j + BLOCK``).
    """
    time = v.grid.time_dim
    t = v.dimensions[0]
    eqs = _step(v, v.backward, v.forward, coef, res, iz)
    blk = _every(time, 2, "tadj")
    td = d2u.dimensions[0]  # `time` if saved, the modulo `t` if a buffer
    img = sum(v.subs(t, t - 1 + k) * d2u.subs(td, td - 1 + k + BLOCK) for k in range(BLOCK))
    eqs.append(Eq(grad, grad - img, implicit_dims=(blk,)))
    return Operator(eqs, name=name)


def segment_adjoint_operator(
    v: TimeFunction,
    coef: tuple[Function, Function],
    res: Function,
    grad: Function,
    useg: TimeFunction,
    iz: int,
    dt: float,
) -> Operator:
    """:func:`gradient_operator` imaging with ``D[j] = (U[j+1] − 2U[j] + U[j−1])/Δt²``
    formed from ``useg`` (``S + 2`` modulo levels holding ``U[sS] … U[(s+1)S+1]`` of
    the segment being imaged), not read from a saved ``D``: a block of ``BLOCK`` steps
    reads ``BLOCK + 2`` cached planes of ``U``, as many as it read of ``D``."""
    t = v.dimensions[0]
    eqs = _step(v, v.backward, v.forward, coef, res, iz)
    blk = _every(v.grid.time_dim, 2, "tadj")
    img = 0
    for k in range(BLOCK):
        j = t - 1 + k
        d2 = useg.subs(t, j + 1) - 2 * useg.subs(t, j) + useg.subs(t, j - 1)
        img += v.subs(t, j) * (d2 * (1.0 / dt**2))
    eqs.append(Eq(grad, grad - img, implicit_dims=(blk,)))
    return Operator(eqs, name="planewave_segment_adjoint")


def born_operator(
    du: TimeFunction,
    coef: tuple[Function, Function],
    da: Function,
    d2u: TimeFunction,
    rec: Function,
    iz: int,
) -> Operator:
    """``δU[t+1]`` of the same scheme driven by ``−δA D[t]``; traces ``rec[t+1]`` at ``iz``."""
    time = d2u.dimensions[0]
    _, b, z = du.dimensions
    g, c = coef
    drive = -da * d2u.subs(time, time + BLOCK)
    eq = Eq(du.forward, 2 * du - du.backward + g * (du.backward - du) + c * (du.dz2 + drive))
    return Operator([eq, Eq(rec[time + 1, b], du.forward.subs(z, iz))], name="planewave_born")
