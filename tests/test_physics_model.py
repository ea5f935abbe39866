"""AcousticModel and Survey: geometry, units, stable time step, padding adjoint, validation."""

import numpy as np
import pytest
import torch

from devito_uq.errors import (
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidModelError,
    InvalidShapeError,
    InvalidSurveyError,
)
from devito_uq.physics import AcousticModel, Survey, ricker, squared_slowness, velocity


def test_critical_dt_matches_devito_coefficient():
    from examples.seismic import Model

    for so, shape in [(4, (11, 11)), (8, (11, 11)), (8, (7, 7, 7))]:
        ref = Model(
            vp=np.full(shape, 2.5, dtype=np.float32),
            origin=(0.0,) * len(shape),
            spacing=(10.0,) * len(shape),
            shape=shape,
            space_order=so,
            nbl=4,
            bcs="damp",
        )
        mine = AcousticModel(shape, (10.0,) * len(shape), nbl=4, space_order=so)
        assert mine.cfl_coefficient == pytest.approx(ref._cfl_coeff, rel=1e-12)
        # Devito rounds its dt to 4 significant digits.
        assert mine.critical_dt(2.5) == pytest.approx(float(ref.critical_dt), rel=5e-4)


def test_damping_matches_devito_profile():
    from examples.seismic import Model

    ref = Model(
        vp=np.full((15, 12), 2.0),
        origin=(0.0, 0.0),
        spacing=(10.0, 5.0),
        shape=(15, 12),
        space_order=4,
        nbl=6,
        bcs="damp",
        dtype=np.float64,
    )
    mine = AcousticModel((15, 12), (10.0, 5.0), nbl=6, space_order=4, dtype=np.float64)
    np.testing.assert_allclose(mine.damping(), ref.damp.data, rtol=1e-12, atol=1e-14)
    assert np.all(mine.damping()[6:-6, 6:-6] == 0)


def test_pad_adjoint_is_adjoint_of_pad():
    model = AcousticModel((9, 7), (10.0, 10.0), nbl=3)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(model.shape)
    y = rng.standard_normal(model.padded_shape)
    lhs = np.sum(model.pad(x) * y)
    rhs = np.sum(x * model.pad_adjoint(y))
    assert abs(lhs - rhs) / abs(lhs) < 1e-13
    np.testing.assert_array_equal(model.pad(x)[3:-3, 3:-3], x)


def test_velocity_slowness_round_trip_numpy_and_torch():
    v = np.array([1.5, 2.0, 4.5])
    np.testing.assert_allclose(velocity(squared_slowness(v)), v, rtol=1e-15)
    vt = torch.tensor(v, requires_grad=True)
    m = squared_slowness(vt)
    m.sum().backward()
    np.testing.assert_allclose(vt.grad.numpy(), -2 / v**3, rtol=1e-14)


def test_ricker_peak_and_devito_convention():
    t = np.linspace(0, 400, 4001)
    w = ricker(t, 10.0)
    # Peak (value 1) at the delay 1/f0 = 100 ms.
    assert t[np.argmax(w)] == pytest.approx(100.0)
    assert w.max() == pytest.approx(1.0)
    spectrum = np.abs(np.fft.rfft(w))
    freqs = np.fft.rfftfreq(t.size, (t[1] - t[0]) * 1e-3)
    assert freqs[np.argmax(spectrum)] == pytest.approx(10.0, abs=0.3)


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


# ----------------------------------------------------------------------- errors
def test_error_model_shape():
    with pytest.raises(InvalidArgumentError, match=r"shape=\(5,\) must have 2 or 3 entries"):
        AcousticModel((5,), (10.0,))


def test_error_model_spacing():
    with pytest.raises(InvalidArgumentError, match=r"spacing=\(10.0, -1.0\) must be positive"):
        AcousticModel((5, 5), (10.0, -1.0))


def test_error_model_space_order():
    with pytest.raises(InvalidArgumentError, match="space_order=3 must be an even integer"):
        AcousticModel((5, 5), (10.0, 10.0), space_order=3)


def test_error_model_nbl():
    with pytest.raises(InvalidArgumentError, match="nbl=-2 must be a non-negative integer"):
        AcousticModel((5, 5), (10.0, 10.0), nbl=-2)


def test_error_unsupported_dtype():
    with pytest.raises(InvalidDtypeError, match="dtype=float16 is not supported"):
        AcousticModel((5, 5), (10.0, 10.0), dtype=np.float16)


@pytest.mark.parametrize(
    "bad, shown", [(-1.0, "-1.0"), (0.0, "0.0"), (np.nan, "nan"), (np.inf, "inf")]
)
def test_error_non_physical_velocity(bad, shown):
    v = np.full((3, 3), 2.0)
    v[1, 2] = bad
    with pytest.raises(InvalidModelError, match=rf"velocity .* got {shown} at index \(1, 2\)"):
        squared_slowness(v)


def test_error_critical_dt_vmax():
    with pytest.raises(InvalidArgumentError, match="vmax=0.0 must be finite and positive"):
        AcousticModel((5, 5), (10.0, 10.0)).critical_dt(0.0)


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


def test_error_model_array_shape_in_pad():
    model = AcousticModel((11, 11), (10.0, 10.0), nbl=2)
    with pytest.raises(InvalidShapeError, match=r"shape \[11, 10\]; expected \[11, 11\]"):
        model.pad(np.ones((11, 10)))
