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
wavelet enters through a depth mask times a time series, and traces are read
straight out of the saved wavefield.

Discretisation (2nd order in time, ``space_order`` in depth; :math:`A = m - p^2`):

.. math::
    B\,u^{n+1} = (2A/\Delta t^2 + L)\,u^n - E\,u^{n-1} + q^n e_s/\Delta z, \quad
    B = A/\Delta t^2 + \eta/(2\Delta t),\ E = A/\Delta t^2 - \eta/(2\Delta t),

with the coefficients ``c1 = 2A/Δt²/B``, ``c2 = E/B``, ``c3 = 1/B`` set per call.
Time indexing: ``U[j] = u^{j−1}`` (``U[0] = U[1] = 0``); iteration ``time`` writes
``U[time+1]``. The adjoint runs the same scheme backward, ``V[j] = λ^{j−1}``.

Factories (as Devito's ``examples/seismic/*/operators.py``), compiled once by
:class:`~devito_uq.physics.planewave.solver.PlaneWaveSolver`:

* :func:`forward_operator` — ``u`` from the source ``q``;
* :func:`gradient_operator` — adjoint wavefield from the residual at the receiver and
  the imaging condition ``grad −= λ ∂²_t u`` (``∂⟨r, d⟩/∂A``);
* :func:`born_operator` — ``δu`` from ``−δA ∂²_t u``, the exact derivative of the
  forward recursion (needs the saved ``u``).
"""

from __future__ import annotations

from devito import Eq, Function, Operator, TimeFunction

__all__ = ["forward_operator", "gradient_operator", "born_operator"]


def forward_operator(
    u: TimeFunction, c: tuple[Function, Function, Function], smask: Function, q: Function
) -> Operator:
    """``U[t+1] = c1 U[t] − c2 U[t−1] + c3 (∂²_z U[t] + smask·q[t])``."""
    c1, c2, c3 = c
    eq = Eq(u.forward, c1 * u - c2 * u.backward + c3 * (u.dz2 + smask * q))
    return Operator([eq], name="planewave_forward")


def gradient_operator(
    u: TimeFunction,
    v: TimeFunction,
    c: tuple[Function, Function, Function],
    rmask: Function,
    res: Function,
    grad: Function,
    dt: float,
) -> Operator:
    """Adjoint recursion fed by ``rmask·res`` and ``grad −= V[t−1] ∂²_t U[t]``."""
    c1, c2, c3 = c
    adj = Eq(v.backward, c1 * v - c2 * v.forward + c3 * (v.dz2 + rmask * res))
    d2u = (u - 2 * u.backward + u.backward.backward) * (1.0 / dt**2)
    img = Eq(grad, grad - v.backward * d2u)
    return Operator([adj, img], name="planewave_adjoint")


def born_operator(
    u: TimeFunction,
    du: TimeFunction,
    c: tuple[Function, Function, Function],
    da: Function,
    dt: float,
) -> Operator:
    """``δU[t+1] = c1 δU[t] − c2 δU[t−1] + c3 (∂²_z δU[t] − δA ∂²_t U)`` over the saved ``U``."""
    c1, c2, c3 = c
    d2u = (u.forward - 2 * u + u.backward) * (1.0 / dt**2)
    eq = Eq(du.forward, c1 * du - c2 * du.backward + c3 * (du.dz2 - da * d2u))
    return Operator([eq], name="planewave_born")
