"""The one CFL rule and the one time-axis rule (devito_uq.physics.stencil)."""

import math

import numpy as np
import pytest

from devito_uq.errors import InvalidArgumentError
from devito_uq.physics import AcousticModel, AcousticSolver, PlaneWaveSolver, Survey, get_solver
from devito_uq.physics.stencil import (
    check_space_order,
    critical_dt,
    second_derivative_weights,
    time_axis_length,
)


def test_weights_are_the_centred_second_derivative():
    np.testing.assert_allclose(second_derivative_weights(2), [1.0, -2.0, 1.0], atol=1e-14)
    np.testing.assert_allclose(
        second_derivative_weights(4), [-1 / 12, 4 / 3, -5 / 2, 4 / 3, -1 / 12], atol=1e-13
    )
    for so in (2, 4, 8, 16):
        w = np.array(second_derivative_weights(so))
        k = np.arange(-(so // 2), so // 2 + 1)
        x = 0.3 * k  # exact on quadratics: f = x² has f'' = 2 (times h² = 0.09)
        assert np.sum(w * x**2) == pytest.approx(2 * 0.09, rel=1e-10)


def test_coefficient_against_devito_examples():
    """Devito's Model uses the ±so stencil: its coefficient at order so is ours at 2·so."""
    from examples.seismic import Model

    for so, shape in [(4, (11, 11)), (8, (11, 11)), (4, (7, 7, 7))]:
        ref = Model(
            vp=np.full(shape, 2.5, dtype=np.float32),
            origin=(0.0,) * len(shape),
            spacing=(10.0,) * len(shape),
            shape=shape,
            space_order=so,
            nbl=4,
            bcs="damp",
        )
        h = (1.0,) * len(shape)
        assert critical_dt(1.0, h, 2 * so) == pytest.approx(ref._cfl_coeff, rel=1e-9)
        mine = AcousticModel(shape, (10.0,) * len(shape), nbl=4, space_order=so)
        assert mine.critical_dt(2.5) > 1.04 * float(ref.critical_dt)  # less conservative


def test_unequal_spacing_and_1d_form():
    # 1D: dt = 2 h / (v sqrt(Σ|c|)); order 4 has Σ|c| = 16/3.
    assert critical_dt(2.0, (1.0,), 4) == pytest.approx(2 * 0.5 / math.sqrt(16 / 3))
    # Σ_d 1/h_d²: (10, 5) m is as restrictive as sqrt(1/(1/100 + 1/25)) m in 1D.
    h1 = 1.0 / math.sqrt(1 / 100 + 1 / 25)
    assert critical_dt(3.0, (10.0, 5.0), 8) == pytest.approx(critical_dt(3.0, (h1,), 8))


@pytest.mark.parametrize("so", [2, 8])
def test_acoustic_scheme_stable_below_and_unstable_above_the_bound(so):
    """0.99 × critical dt stays bounded over 300 steps; 1.02 × blows up (round-off grows).

    Measured: bounded (peak ≈ 23, a closed undamped box) up to 1.00 ×, 1e24 at 1.01 ×;
    Devito's more conservative coefficient would leave 1.02 × stable and fail this test.
    """
    model = AcousticModel((21, 21), (10.0, 10.0), nbl=0, space_order=so, dtype=np.float64)
    solver = get_solver(AcousticSolver, model)
    m = np.full(model.shape, 0.25)  # 2 km/s
    peaks = {}
    for factor in (0.99, 1.02):
        dt = factor * model.critical_dt(2.0)
        survey = Survey([[100.0, 100.0]], [[50.0, 50.0]], t1=299 * dt, dt=dt, f0_hz=10.0)
        assert survey.nt == 300
        with np.errstate(all="ignore"):
            d = solver.forward(m, survey.shot(0), survey.dt)
        peaks[factor] = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else np.inf
    assert peaks[0.99] < 100.0, peaks
    assert not np.isfinite(peaks[1.02]) or peaks[1.02] > 1e8, peaks


def test_planewave_scheme_stable_below_and_unstable_above_the_bound():
    nz, dz, so, nt = 40, 2.0, 4, 400
    m, p = 0.25, 0.3  # A = m − p² = 0.16: wave speed 2.5 km/s
    limit = critical_dt(1.0 / math.sqrt(m - p**2), (dz,), so)
    peaks = {}
    for factor in (0.99, 1.02):
        solver = get_solver(PlaneWaveSolver, 1, 1, nz, 0, nt, factor * limit, dz, so, np.float64)
        w = np.zeros(nt)
        w[5] = 1.0
        with np.errstate(all="ignore"):
            d = solver.forward(np.full((1, nz), m), np.array([p**2]), w, np.zeros(nz))
        peaks[factor] = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else np.inf
    assert peaks[0.99] < 100.0, peaks
    assert not np.isfinite(peaks[1.02]) or peaks[1.02] > 1e8, peaks


def test_error_critical_dt_vmax():
    with pytest.raises(InvalidArgumentError, match="vmax=0.0 must be finite and positive"):
        AcousticModel((5, 5), (10.0, 10.0)).critical_dt(0.0)


def test_error_space_order():
    with pytest.raises(InvalidArgumentError, match="space_order=3 must be an even integer"):
        check_space_order(3)
    with pytest.raises(InvalidArgumentError, match="space_order=18 must be an integer <= 16"):
        check_space_order(18)


# ------------------------------------------------------------------ time axis
def test_time_axis_covers_t1_like_devito():
    from examples.seismic import TimeAxis

    for t1, dt in [(300.0, 2.219), (1000.0, 2.0757), (10.0, 3.0)]:
        ta = TimeAxis(start=0.0, stop=t1, step=dt)
        assert time_axis_length(0.0, t1, dt) == ta.num
        assert (ta.num - 1) * dt >= t1 > (ta.num - 2) * dt


def test_time_axis_whole_steps_are_robust_to_round_off():
    # t1 a whole number of steps, computed in floating point: exactly n samples, where
    # ceil((t1 − t0 + dt)/dt) (Devito's TimeAxis) can add one.
    for n, dt, t0 in [(801, 0.5, 0.0), (1001, 0.004 * 1000 / 3, 7.1), (64, 0.1, 0.3)]:
        t1 = t0 + dt * (n - 1)
        assert time_axis_length(t0, t1, dt) == n
        assert time_axis_length(t0, t1 * (1 + 1e-13), dt) == n
        assert time_axis_length(t0, t1 + 0.01 * dt, dt) == n + 1  # a real extra step
    t1 = 0.7 * 5  # 6 samples wanted; Devito's ceil((t1 + dt)/dt) gives 7 to round-off
    assert math.ceil((t1 + 0.7) / 0.7) == 7
    assert time_axis_length(0.0, t1, 0.7) == 6
