r"""Acoustic wave-equation operators written with Devito's DSL.

The constant-density acoustic wave equation with a damping absorbing layer,

.. math::
    m\,\partial_t^2 u - \nabla^2 u + \eta\,\partial_t u = q,

(``m = 1/v²`` in s²/km², ``η`` the damping profile, time in ms, space in m), is
discretised with a 2nd-order leapfrog in time and a ``space_order`` Laplacian.
Four factories build the (not yet compiled) Devito ``Operator`` objects, as
Devito's ``examples/seismic/acoustic/operators.py`` does; :class:`AcousticSolver`
compiles each once. The fields may carry a leading batch axis named ``b`` (the batched
solver, :mod:`.batched`): the Laplacian skips it, and ``subs`` then gives the spacings
of both grids:

* :func:`forward_operator` — nonlinear modeling ``F(m) q`` (optionally saving ``u``:
  every step, or every ``factor``-th step through a ``ConditionalDimension``);
* :func:`adjoint_operator` — ``Fᵀ`` with respect to the source (receiver injection,
  backward in time, source-side interpolation);
* :func:`born_operator` — Born modeling ``J(m₀) δm`` (source ``−δm ∂²_t u₀``);
* :func:`gradient_operator` — ``J(m₀)ᵀ δd``: the adjoint-state gradient
  ``−Σ_t u[t] ∂²_t v[t]`` with ``δd`` injected at the receivers.
"""

from __future__ import annotations

from typing import Any

from devito import Eq, Function, Grid, Inc, Operator, SparseTimeFunction, TimeFunction, solve

__all__ = ["forward_operator", "adjoint_operator", "born_operator", "gradient_operator"]


def _laplace(field: TimeFunction) -> Any:
    """Laplacian over the physical axes (a batched field's batch axis ``b`` excluded)."""
    dims = [d for d in field.space_dimensions if d.name != "b"]
    if len(dims) == len(field.space_dimensions):
        return field.laplace
    return sum(getattr(field, f"d{d.name}2") for d in dims)


def _wave_update(field: TimeFunction, m: Function, damp: Function, forward: bool, q: Any = 0):
    """Leapfrog update of ``m u_tt − Δu + η u_t = q`` (``q`` only used by Born)."""
    target = field.forward if forward else field.backward
    udt = field.dt if forward else field.dt.T
    pde = m * field.dt2 - _laplace(field) + damp * udt - q
    return Eq(target, solve(pde, target))


def forward_operator(
    grid: Grid,
    m: Function,
    damp: Function,
    u: TimeFunction,
    src: SparseTimeFunction,
    rec: SparseTimeFunction,
    usave: TimeFunction | None = None,
    subs: dict | None = None,
) -> Operator:
    """Nonlinear modeling: inject ``src`` into ``u``, record ``u`` at ``rec``.

    ``u`` is either a 3-slot buffer or a full ``save`` buffer; ``usave`` (with a
    ``ConditionalDimension`` time index) stores every k-th step when given.
    """
    s = grid.stepping_dim.spacing
    eqs = [_wave_update(u, m, damp, forward=True)]
    eqs += src.inject(field=u.forward, expr=src * s**2 / m)
    eqs += rec.interpolate(expr=u)
    if usave is not None:
        eqs.append(Eq(usave, u))
    return Operator(eqs, subs=subs or grid.spacing_map, name="Forward")


def adjoint_operator(
    grid: Grid,
    m: Function,
    damp: Function,
    v: TimeFunction,
    rec: SparseTimeFunction,
    srca: SparseTimeFunction,
    subs: dict | None = None,
) -> Operator:
    """Adjoint of :func:`forward_operator` w.r.t. the source: inject ``rec``, record at ``srca``."""
    s = grid.stepping_dim.spacing
    eqs = [_wave_update(v, m, damp, forward=False)]
    eqs += rec.inject(field=v.backward, expr=rec * s**2 / m)
    eqs += srca.interpolate(expr=v)
    return Operator(eqs, subs=subs or grid.spacing_map, name="Adjoint")


def born_operator(
    grid: Grid,
    m: Function,
    damp: Function,
    dm: Function,
    u: TimeFunction,
    du: TimeFunction,
    src: SparseTimeFunction,
    rec: SparseTimeFunction,
    subs: dict | None = None,
) -> Operator:
    """Born modeling ``J(m₀) δm``: background ``u`` and scattered ``du`` in one time loop."""
    s = grid.stepping_dim.spacing
    eqs = [_wave_update(u, m, damp, forward=True)]
    eqs += src.inject(field=u.forward, expr=src * s**2 / m)
    eqs.append(_wave_update(du, m, damp, forward=True, q=-dm * u.dt2))
    eqs += rec.interpolate(expr=du)
    return Operator(eqs, subs=subs or grid.spacing_map, name="Born")


def gradient_operator(
    grid: Grid,
    m: Function,
    damp: Function,
    grad: Function,
    usaved: TimeFunction,
    v: TimeFunction,
    rec: SparseTimeFunction,
    factor: int = 1,
    subs: dict | None = None,
) -> Operator:
    """``J(m₀)ᵀ δd``: adjoint wavefield ``v`` from receiver injection, ``grad −= k·u ∂²_t v``.

    ``usaved`` is the full saved forward wavefield (``factor == 1``) or the
    subsampled one (time index a ``ConditionalDimension`` of factor k, so the
    update only runs on the stored steps).
    """
    s = grid.stepping_dim.spacing
    eqs = [_wave_update(v, m, damp, forward=False)]
    eqs += rec.inject(field=v.backward, expr=rec * s**2 / m)
    if usaved.grid is grad.grid:
        eqs.append(Inc(grad, -factor * usaved * v.dt2))
    else:
        # A batched image from one shared saved wavefield: two grids in one expression,
        # which Devito's reduction analysis of ``Inc`` refuses; the update is the same.
        eqs.append(Eq(grad, grad - factor * usaved * v.dt2))
    return Operator(eqs, subs=subs or grid.spacing_map, name="Gradient")
