"""Solver-to-data time-axis resampling: accuracy on a band-limited signal, exact adjoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devito_uq.errors import InvalidArgumentError, InvalidSurveyError
from devito_uq.physics.resample import TimeAxis, check_band, resample_traces, resampling_matrix


def _ricker(t, f0_hz, delay):
    r = np.pi * f0_hz / 1000.0 * (t - delay)
    return (1 - 2 * r**2) * np.exp(-(r**2))


def test_band_limited_signal_is_interpolated_accurately():
    """A 15 Hz Ricker on a 0.37 ms solver axis starting at -20 ms, read at 2 ms from a
    100 ms recording delay: the resampled trace equals the analytic one."""
    solver = TimeAxis(t0=-20.0, dt=0.37, nt=4000)
    data = TimeAxis(t0=100.0, dt=2.0, nt=500)
    trace = _ricker(solver.times, 15.0, delay=400.0)
    out = resampling_matrix(solver, data) @ trace
    exact = _ricker(data.times, 15.0, delay=400.0)
    assert np.max(np.abs(out - exact)) < 1e-5 * np.max(np.abs(exact))
    # Linear interpolation would be ~1e-3 here: the test can tell the two apart.
    linear = np.interp(data.times, solver.times, trace)
    assert np.max(np.abs(linear - exact)) > 10 * np.max(np.abs(out - exact))


def test_dot_test_float64():
    """<R x, y> = <x, Rᵀ y> through torch's autograd of resample_traces."""
    solver = TimeAxis(0.0, 0.5, 301)
    data = TimeAxis(3.0, 2.0, 70)
    mat = torch.from_numpy(resampling_matrix(solver, data))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, solver.nt, 5, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randn(2, 3, data.nt, 5, dtype=torch.float64, generator=g)
    rx = resample_traces(x, mat)
    (rty,) = torch.autograd.grad(rx, x, y)
    lhs, rhs = float((rx * y).sum().detach()), float((x * rty).sum().detach())
    assert abs(lhs - rhs) / abs(lhs) < 1e-13


def test_identity_and_exact_samples():
    axis = TimeAxis(0.0, 1.0, 50)
    np.testing.assert_array_equal(resampling_matrix(axis, axis), np.eye(50))
    # Every 4th solver sample: the data take the samples themselves, no interpolation.
    mat = resampling_matrix(TimeAxis(0.0, 0.5, 401), TimeAxis(0.0, 2.0, 101))
    expect = np.zeros((101, 401))
    expect[np.arange(101), 4 * np.arange(101)] = 1.0
    np.testing.assert_allclose(mat, expect, atol=1e-15)


def test_times_before_the_solve_read_zero_and_after_are_refused():
    solver = TimeAxis(0.0, 0.5, 201)  # 0 … 100 ms
    early = resampling_matrix(solver, TimeAxis(-50.0, 2.0, 10))  # -50 … -32 ms
    assert np.abs(early).max() == 0.0
    with pytest.raises(InvalidSurveyError, match="data axis ends at 102 ms but the solve ends"):
        resampling_matrix(solver, TimeAxis(0.0, 2.0, 52))


def test_band_check_and_bad_axes():
    check_band(60.0, TimeAxis(0.0, 4.0, 10))  # Nyquist 125 Hz
    with pytest.raises(InvalidSurveyError, match="300 Hz is at or above the Nyquist .*250 Hz"):
        check_band(300.0, TimeAxis(0.0, 2.0, 10))
    with pytest.raises(InvalidArgumentError, match="dt=0.0 must be finite and positive"):
        TimeAxis(0.0, 0.0, 10)
    with pytest.raises(InvalidArgumentError, match="nt=2.5 must be an integer"):
        TimeAxis(0.0, 1.0, 2.5)
