"""Survey: time axis, geometry helpers, validation."""

import numpy as np
import pytest

from devito_uq.errors import (
    InvalidSurveyError,
)
from devito_uq.physics import AcousticModel, Survey


def test_survey_time_axis_follows_devito_time_axis():
    from examples.seismic import TimeAxis

    s = Survey([[50.0, 20.0]], [[10.0, 10.0]], t1=300.0, dt=2.219, f0_hz=15.0)
    ta = TimeAxis(start=0.0, stop=300.0, step=2.219)
    assert s.nt == ta.num
    np.testing.assert_allclose(s.time, ta.time_values)


def test_surface_survey_geometry():
    model = AcousticModel((51, 31), (10.0, 10.0), nbl=5)
    s = Survey.surface(model, nshots=3, nreceivers=26, t1=500.0, f0_hz=10.0, vmax=3.0)
    assert s.nshots == 3 and s.nreceivers == [26, 26, 26]
    assert s.dt == pytest.approx(model.critical_dt(3.0))
    np.testing.assert_allclose(s.src_positions[:, 0], [125.0, 250.0, 375.0])
    np.testing.assert_allclose(s.rec_positions[0][[0, -1], 0], [0.0, 500.0])
    s.check_inside(model)


def test_survey_user_wavelets_per_shot_and_shared():
    rec = np.array([[0.0, 0.0], [10.0, 0.0]])
    shared = Survey([[5.0, 5.0], [6.0, 5.0]], rec, t1=10.0, dt=1.0, wavelet=np.arange(11.0))
    np.testing.assert_array_equal(shared.wavelet[1], np.arange(11.0))
    per = Survey(
        [[5.0, 5.0], [6.0, 5.0]], [rec, rec[:1]], t1=10.0, dt=1.0, wavelet=np.ones((2, 11))
    )
    assert per.nreceivers == [2, 1] and not per.shared_receivers


def test_error_survey_no_shots():
    with pytest.raises(InvalidSurveyError, match="src_positions is empty"):
        Survey(np.zeros((0, 2)), [[0.0, 0.0]], t1=10.0, dt=1.0, f0_hz=10.0)


def test_error_survey_empty_receivers():
    with pytest.raises(InvalidSurveyError, match="rec_positions for shot 1 is empty"):
        Survey([[0.0, 0.0], [1.0, 0.0]], [np.ones((2, 2)), np.zeros((0, 2))], 10.0, 1.0, f0_hz=10.0)


def test_error_survey_receiver_arrays_per_shot():
    with pytest.raises(InvalidSurveyError, match="rec_positions has 3 arrays for 2 shots"):
        Survey([[0.0, 0.0], [1.0, 0.0]], [np.ones((2, 2))] * 3, 10.0, 1.0, f0_hz=10.0)


def test_error_survey_dt():
    with pytest.raises(InvalidSurveyError, match="dt=-1.0 ms must be finite and positive"):
        Survey([[0.0, 0.0]], [[0.0, 0.0]], t1=10.0, dt=-1.0, f0_hz=10.0)


def test_error_survey_time_range():
    with pytest.raises(InvalidSurveyError, match="t1=5.0 ms must be finite and after t0=8.0"):
        Survey([[0.0, 0.0]], [[0.0, 0.0]], t1=5.0, dt=1.0, t0=8.0, f0_hz=10.0)


def test_error_survey_wavelet_choice():
    with pytest.raises(InvalidSurveyError, match="exactly one of f0_hz"):
        Survey([[0.0, 0.0]], [[0.0, 0.0]], t1=5.0, dt=1.0)


def test_error_survey_wavelet_shape():
    with pytest.raises(InvalidSurveyError, match=r"wavelet has shape \[7\]; expected \[6\]"):
        Survey([[0.0, 0.0]], [[0.0, 0.0]], t1=5.0, dt=1.0, wavelet=np.ones(7))


def test_error_survey_peak_frequency():
    with pytest.raises(InvalidSurveyError, match="f0_hz=0 must be finite and positive"):
        Survey([[0.0, 0.0]], [[0.0, 0.0]], t1=5.0, dt=1.0, f0_hz=0)


def test_error_source_outside_model():
    model = AcousticModel((11, 11), (10.0, 10.0), nbl=2)
    s = Survey([[50.0, 20.0], [150.0, 20.0]], [[10.0, 10.0]], t1=5.0, dt=1.0, f0_hz=10.0)
    with pytest.raises(
        InvalidSurveyError, match=r"source of shot 1 at \[150.0, 20.0\] m is outside"
    ):
        s.check_inside(model)


def test_error_receiver_outside_model():
    model = AcousticModel((11, 11), (10.0, 10.0), nbl=2)
    rec = [[10.0, 10.0], [20.0, -5.0]]
    s = Survey([[50.0, 20.0]], rec, t1=5.0, dt=1.0, f0_hz=10.0)
    with pytest.raises(InvalidSurveyError, match=r"receiver 1 of shot 0 at \[20.0, -5.0\] m"):
        s.check_inside(model)


def test_error_shot_selection_empty():
    s = Survey([[50.0, 20.0]], [[10.0, 10.0]], t1=5.0, dt=1.0, f0_hz=10.0)
    with pytest.raises(InvalidSurveyError, match=r"shots=\[\] selects no shot"):
        s.select([])


def test_error_shot_selection_out_of_range():
    s = Survey([[50.0, 20.0]], [[10.0, 10.0]], t1=5.0, dt=1.0, f0_hz=10.0)
    with pytest.raises(InvalidSurveyError, match="shot index 3 is out of range for a survey of 1"):
        s.select([0, 3])


def test_error_surface_needs_time_step():
    model = AcousticModel((11, 11), (10.0, 10.0))
    with pytest.raises(InvalidSurveyError, match="needs dt \\(ms\\) or vmax"):
        Survey.surface(model, nshots=1, nreceivers=3, t1=100.0, f0_hz=10.0)
