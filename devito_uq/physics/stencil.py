r"""The one stability (CFL) rule and the one time-axis rule of every physics.

Both physics use a 2nd-order leapfrog in time and the centred ``space_order``
second-derivative stencil on ``±space_order/2`` points (Devito's ``u.laplace`` and
``u.dz2``). A von Neumann analysis of

.. math:: m\,(u^{n+1} - 2u^n + u^{n-1})/\Delta t^2 = \textstyle\sum_d D_d^2 u^n

gives stability for :math:`\Delta t^2 \lambda_{\max} / m \le 4`, where the largest
eigenvalue of :math:`-\sum_d D_d^2` is :math:`\sum|c_k| \sum_d 1/h_d^2` (the centred
weights :math:`c_k` alternate in sign, so the symbol peaks at the Nyquist wavenumber):

.. math:: \Delta t \le \frac{2}{v_{\max}\sqrt{\sum_k|c_k|\,\sum_d h_d^{-2}}},

which for equal spacing is :math:`\sqrt{4/(\mathrm{dim}\sum|c_k|)}\;h/v_{\max}`.
Damping (:math:`\eta\,\partial_t u`, η ≥ 0) only adds stability.

Devito's ``examples/seismic`` ``Model._cfl_coeff`` uses the weights over ``±space_order``
points (sympy's ``finite_diff_weights(2, range(-so, so+1), 0)``), a wider stencil than
the one the operators apply; its coefficient is smaller, so its time step is safe but
conservative. Courant numbers ``dt·vmax/h`` in 2D, here vs Devito: order 2 → 0.7071 vs
0.6124 (−13 %), order 4 → 0.6124 vs 0.5546 (−9.4 %), order 8 → 0.5546 vs 0.5189
(−6.4 %), order 16 → 0.5189 vs 0.4963 (−4.4 %). (Devito's value at order ``so`` is this
module's at order ``2·so``.)

Time axis: ``nt = ceil((t1 − t0)/dt − 1e-6) + 1`` samples at ``t0 + k·dt``, so the
axis reaches at least ``t1`` (as Devito's ``TimeAxis``) and a ``t1`` that is a whole
number of steps up to round-off (``t1 = t0 + (n−1)·dt`` computed in floating point)
gives exactly ``n`` samples.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from devito_uq.errors import InvalidArgumentError
from devito_uq.validation import check_int

__all__ = [
    "MAX_SPACE_ORDER",
    "check_space_order",
    "second_derivative_weights",
    "critical_dt",
    "time_axis_length",
]

#: Largest supported space order (the Vandermonde solve stays well conditioned).
MAX_SPACE_ORDER = 16

# Tolerance of the time-axis rule, in steps: absorbs round-off in (t1 − t0)/dt.
_TIME_AXIS_TOL = 1e-6


def check_space_order(value: Any) -> int:
    """``value`` as an even integer in 2 … 16 (the one check of ``space_order``)."""
    so = check_int("space_order", value, minimum=2, maximum=MAX_SPACE_ORDER)
    if so % 2:
        raise InvalidArgumentError(f"space_order={value!r} must be an even integer >= 2")
    return so


@functools.cache
def second_derivative_weights(space_order: int) -> tuple[float, ...]:
    """Centred weights ``c_{-r} … c_r`` (``r = space_order/2``) of ``∂²`` times ``h²``.

    Solved from the Taylor conditions (Vandermonde system), the same weights as
    Fornberg's algorithm; e.g. order 2 → (1, −2, 1).
    """
    half = space_order // 2
    offs = np.arange(-half, half + 1, dtype=np.float64)
    rhs = np.zeros(len(offs))
    rhs[2] = 2.0  # Σ c_k k^j / j! = δ_{j2}
    return tuple(float(w) for w in np.linalg.solve(np.vander(offs, increasing=True).T, rhs))


def critical_dt(vmax: float, spacing: Sequence[float], space_order: int) -> float:
    """Largest stable leapfrog time step (ms) for largest velocity ``vmax`` (km/s).

    ``spacing`` in m, one entry per dimension (m / (km/s) = ms); see the module docstring.
    """
    vmax = float(vmax)
    if not math.isfinite(vmax) or vmax <= 0:
        raise InvalidArgumentError(f"vmax={vmax!r} must be finite and positive")
    wsum = sum(abs(c) for c in second_derivative_weights(int(space_order)))
    return 2.0 / (vmax * math.sqrt(wsum * sum(1.0 / h**2 for h in spacing)))


def time_axis_length(t0: float, t1: float, dt: float) -> int:
    """Number of samples ``nt`` of the time axis ``t0, t0 + dt, …`` covering ``t1``."""
    return int(math.ceil((t1 - t0) / dt - _TIME_AXIS_TOL)) + 1
