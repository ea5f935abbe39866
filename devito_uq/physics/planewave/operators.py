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
``SparseTimeFunction``\ s (interpolation at the last row read the halo); the
wavelet enters through a depth mask times a time series, and the kernel copies
the receiver sample of each row into a small trace buffer every step.

Discretisation (2nd order in time, ``space_order`` in depth; :math:`A = m - p^2`):

.. math::
    B\,u^{n+1} = (2A/\Delta t^2 + L)\,u^n - E\,u^{n-1} + q^n e_s/\Delta z, \quad
    B = A/\Delta t^2 + \eta/(2\Delta t),\ E = A/\Delta t^2 - \eta/(2\Delta t),

with the coefficients ``c1 = 2A/Δt²/B``, ``c2 = E/B``, ``c3 = 1/B`` set per call.
Time indexing: ``U[j] = u^{j−1}`` (``U[0] = U[1] = 0``); iteration ``time`` writes
``U[t+1]``. The adjoint runs the same scheme backward, ``V[j] = λ^{j−1}``.

Memory traffic sets the speed (``benchmarks/results/bench_planewave.md``): ``u`` and
``λ`` live in three rolling time levels (a few hundred kB, cache resident), and the
one saved array is ``D[t] = ∂²_t U[t] = (U[t+1] − 2U[t] + U[t−1])/Δt²``
``[nt+1, rows, depth]`` without halo, written by the forward and read one plane per
step by the adjoint and the Born operator — the only quantity either needs from the
forward (the former kernel saved ``U`` with halos and re-formed ``∂²_t U`` from three
planes). Same expressions, so results agree with it to the last bit or so.

Factories (as Devito's ``examples/seismic/*/operators.py``), compiled once by
:class:`~devito_uq.physics.planewave.solver.PlaneWaveSolver`:

* :func:`forward_operator` — ``u`` from the source ``q``, saving ``D`` and the traces;
* :func:`gradient_operator` — adjoint wavefield from the residual at the receiver and
  the imaging condition ``grad −= λ D`` (``∂⟨r, d⟩/∂A``);
* :func:`born_operator` — ``δu`` from ``−δA D``, the exact derivative of the forward
  recursion, and its traces.
"""

from __future__ import annotations

from devito import ConditionalDimension, Eq, Function, Operator, SubDomain, TimeFunction
from devito.symbolics import CondEq
from sympy import Mod

__all__ = ["BLOCK", "forward_operator", "gradient_operator", "born_operator"]

#: Time steps per block: the forward writes ``D`` and the adjoint reads it in blocks of
#: this many planes from a ``BLOCK + 2``-level rolling ``u`` / ``λ`` (measured best of 4/8/16).
BLOCK = 8


def _every(time, phase: int, name: str) -> ConditionalDimension:
    """Iterations with ``time ≡ phase (mod BLOCK)``."""
    return ConditionalDimension(
        name=name, parent=time, condition=CondEq(Mod(time, BLOCK), phase % BLOCK)
    )


def _update(w: TimeFunction, new, old, c, src) -> Eq:
    """``new = c1 w − c2 old + c3 (∂²_z w + src)`` (``new``/``old``: the next/previous level)."""
    c1, c2, c3 = c
    return Eq(new, c1 * w - c2 * old + c3 * (w.dz2 + src))


class _Depth(SubDomain):
    """All rows at the one depth index ``iz`` (the source/receiver depth)."""

    name = "surface"

    def __init__(self, iz: int, grid) -> None:
        self.iz = iz
        super().__init__(grid=grid)

    def define(self, dimensions):
        b, z = dimensions
        return {b: b, z: ("middle", self.iz, self.grid.shape[1] - self.iz - 1)}


def forward_operator(
    u: TimeFunction,
    c: tuple[Function, Function, Function],
    q: Function,
    d2u: Function,
    rec: Function,
    iz: int,
    dz: float,
    dt: float,
) -> Operator:
    r"""``U[t+1] = c1 U[t] − c2 U[t−1] + c3 (∂²_z U[t] + δ_{z,iz} q[t]/Δz)``, traces, ``D``.

    ``u``: ``BLOCK + 2`` rolling levels; ``rec[t+1, b] = U[t+1, b, iz]``; every
    ``BLOCK``-th step (``t ≡ 0``) writes ``D[j] = (U[j+1] − 2U[j] + U[j−1])/Δt²`` for
    ``j = t−BLOCK+1 … t`` into slots ``j + BLOCK`` of ``d2u`` (run to a multiple of BLOCK).
    """
    time = d2u.dimensions[0]
    t, _, z = u.dimensions
    c1, c2, c3 = c
    # The sweep over depth without the source term (one load and FMA per sample fewer),
    # then the source sample again with it: the same expression there as a masked sweep.
    eq = Eq(u.forward, c1 * u - c2 * u.backward + c3 * u.dz2)
    at = _Depth(iz, u.grid)
    src = Eq(u.forward, c1 * u - c2 * u.backward + c3 * (u.dz2 + q / dz), subdomain=at)
    rec_eq = Eq(rec[time + 1, u.dimensions[1]], u.forward.subs(z, iz))
    blk = _every(time, 0, "tfwd")
    saves = [
        Eq(
            d2u.subs(time, time - k + BLOCK),
            (u.subs(t, t + 1 - k) - 2 * u.subs(t, t - k) + u.subs(t, t - 1 - k)) * (1.0 / dt**2),
            implicit_dims=(blk,),
        )
        for k in range(BLOCK)
    ]
    return Operator([eq, src, rec_eq, *saves], name="planewave_forward")


def gradient_operator(
    v: TimeFunction,
    c: tuple[Function, Function, Function],
    res: Function,
    grad: Function,
    d2u: Function,
    iz: int,
) -> Operator:
    """Adjoint recursion fed by ``res`` at depth ``iz`` and ``grad −= Σ_j V[j] D[j]``.

    ``v``: ``BLOCK + 2`` rolling levels; iteration ``t`` computes ``V[t−1]``; at
    ``t ≡ 2`` the block ``j = t−1 … t+BLOCK−2`` is imaged (``D[j]`` in slot ``j + BLOCK``).
    """
    time = d2u.dimensions[0]
    t, b, z = v.dimensions
    c1, c2, c3 = c
    adj = Eq(v.backward, c1 * v - c2 * v.forward + c3 * v.dz2)
    at = _Depth(iz, v.grid)
    src = Eq(v.backward, c1 * v - c2 * v.forward + c3 * (v.dz2 + res), subdomain=at)
    blk = _every(time, 2, "tadj")
    img = sum(v.subs(t, t - 1 + k) * d2u.subs(time, time - 1 + k + BLOCK) for k in range(BLOCK))
    return Operator(
        [adj, src, Eq(grad, grad - img, implicit_dims=(blk,))], name="planewave_adjoint"
    )


def born_operator(
    du: TimeFunction,
    c: tuple[Function, Function, Function],
    da: Function,
    d2u: Function,
    rec: Function,
    iz: int,
) -> Operator:
    """``δU[t+1] = c1 δU[t] − c2 δU[t−1] + c3 (∂²_z δU[t] − δA D[t])`` and its traces."""
    time = d2u.dimensions[0]
    _, b, z = du.dimensions
    c1, c2, c3 = c
    d = d2u.subs(time, time + BLOCK)
    eq = Eq(du.forward, c1 * du - c2 * du.backward + c3 * (du.dz2 - da * d))
    return Operator([eq, Eq(rec[time + 1, b], du.forward.subs(z, iz))], name="planewave_born")
