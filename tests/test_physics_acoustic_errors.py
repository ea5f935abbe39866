"""Bad input to the torch modules: one test per message, raised before any compile or solve."""

import numpy as np
import pytest
import torch

from devito_uq.errors import (
    DevitoUQError,
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidModelError,
    InvalidShapeError,
    InvalidSurveyError,
    StabilityError,
)
from devito_uq.physics import AcousticModel, AcousticModeling, BornModeling, Survey, total_compiles

SHAPE = (21, 17)


@pytest.fixture
def parts():
    # A geometry no other test uses: any compile would show in total_compiles().
    model = AcousticModel(SHAPE, (7.0, 7.0), nbl=3, space_order=2, dtype=np.float64)
    survey = Survey(
        [[70.0, 14.0], [100.0, 14.0]],
        [[7.0, 7.0], [63.0, 7.0], [133.0, 7.0]],
        t1=50.0,
        dt=model.critical_dt(3.0),
        f0_hz=20.0,
    )
    m = torch.full(SHAPE, 1 / 2.0**2, dtype=torch.float64)
    start = total_compiles()
    yield model, survey, m
    assert total_compiles() == start, "an error path compiled an operator"


def test_error_not_a_tensor(parts):
    model, survey, m = parts
    with pytest.raises(InvalidArgumentError, match="m must be a torch.Tensor; got ndarray"):
        AcousticModeling(model, survey)(m.numpy())


def test_error_half_precision(parts):
    model, survey, m = parts
    with pytest.raises(InvalidDtypeError, match=r"m.dtype=torch.float16 is not supported"):
        AcousticModeling(model, survey)(m.half())


def test_error_integer_tensor(parts):
    model, survey, m = parts
    with pytest.raises(InvalidDtypeError, match=r"m.dtype=torch.int64 is not supported"):
        AcousticModeling(model, survey)(m.long())


def test_error_model_tensor_shape(parts):
    model, survey, m = parts
    with pytest.raises(InvalidShapeError, match=r"m has shape \[21, 16\]; expected \[21, 17\]"):
        AcousticModeling(model, survey)(m[:, :16])


def test_error_batched_model_tensor_shape(parts):
    model, survey, m = parts
    with pytest.raises(
        InvalidShapeError, match=r"m has shape \[2, 20, 17\]; expected \[\*, 21, 17\]"
    ):
        AcousticModeling(model, survey)(torch.ones(2, 20, 17, dtype=torch.float64))


def test_error_model_tensor_ndim(parts):
    model, survey, m = parts
    with pytest.raises(InvalidShapeError, match=r"m has shape \[357\]; expected \[21, 17\] or"):
        AcousticModeling(model, survey)(m.reshape(-1))


def test_error_empty_batch(parts):
    model, survey, m = parts
    with pytest.raises(InvalidShapeError, match=r"m has an empty batch"):
        AcousticModeling(model, survey)(torch.ones(0, *SHAPE, dtype=torch.float64))


@pytest.mark.parametrize("bad", [-0.1, 0.0, float("nan"), float("inf")])
def test_error_non_physical_squared_slowness(parts, bad):
    model, survey, m = parts
    m = m.clone()
    m[4, 5] = bad
    with pytest.raises(
        InvalidModelError, match=rf"squared slowness m .* got {bad} at index \(4, 5\)"
    ):
        AcousticModeling(model, survey)(m)


def test_error_time_step_over_stability_limit(parts):
    model, survey, m = parts
    fast = m.clone()
    fast[10, 10] = 1 / 4.0**2  # 4 km/s > the 3 km/s the survey's dt was chosen for
    with pytest.raises(StabilityError, match=r"dt=.* ms exceeds the stable limit .* 4 km/s"):
        AcousticModeling(model, survey)(fast)


def test_error_source_outside_domain(parts):
    model, _, _ = parts
    survey = Survey([[70.0, 200.0]], [[7.0, 7.0]], t1=50.0, dt=1.0, f0_hz=20.0)
    with pytest.raises(
        InvalidSurveyError, match=r"source of shot 0 at \[70.0, 200.0\] m is outside"
    ):
        AcousticModeling(model, survey)


def test_error_receiver_outside_domain(parts):
    model, _, _ = parts
    survey = Survey([[70.0, 14.0]], [[7.0, 7.0], [-1.0, 7.0]], t1=50.0, dt=1.0, f0_hz=20.0)
    with pytest.raises(InvalidSurveyError, match=r"receiver 1 of shot 0 at \[-1.0, 7.0\] m"):
        BornModeling(model, survey, np.full(SHAPE, 0.25))


def test_error_empty_shot_selection(parts):
    model, survey, m = parts
    with pytest.raises(InvalidSurveyError, match=r"shots=\[\] selects no shot"):
        AcousticModeling(model, survey)(m, shots=[])


def test_error_shot_out_of_range(parts):
    model, survey, m = parts
    with pytest.raises(InvalidSurveyError, match="shot index 2 is out of range for a survey of 2"):
        AcousticModeling(model, survey)(m, shots=[2])


def test_error_trace_mask_shape(parts):
    model, survey, m = parts
    with pytest.raises(InvalidSurveyError, match=r"trace_mask has shape \[2, 2\]"):
        Survey(
            survey.src_positions,
            [survey.rec_positions[0], survey.rec_positions[0][:2]],
            t1=50.0,
            dt=survey.dt,
            f0_hz=20.0,
            trace_mask=np.ones((2, 2), dtype=bool),
        )


def test_error_subsampling_factor(parts):
    model, survey, _ = parts
    with pytest.raises(InvalidArgumentError, match="subsample=0 must be an integer >= 1"):
        AcousticModeling(model, survey, subsample=0)


def test_error_model_argument_type(parts):
    _, survey, _ = parts
    with pytest.raises(InvalidArgumentError, match="model must be an AcousticModel; got dict"):
        AcousticModeling({}, survey)


def test_error_born_background_shape(parts):
    model, survey, _ = parts
    with pytest.raises(InvalidShapeError, match=r"m0 has shape \[21, 3\]; expected \[21, 17\]"):
        BornModeling(model, survey, np.ones((21, 3)))


def test_error_born_background_values(parts):
    model, survey, _ = parts
    m0 = np.full(SHAPE, 0.25)
    m0[0, 0] = -1.0
    with pytest.raises(InvalidModelError, match=r"background squared slowness m0 .* -1.0"):
        BornModeling(model, survey, m0)


def test_error_born_perturbation_not_finite(parts):
    model, survey, m = parts
    dm = torch.zeros(SHAPE, dtype=torch.float64)
    dm[1, 1] = float("inf")
    with pytest.raises(InvalidArgumentError, match=r"dm contains inf at index \(1, 1\)"):
        BornModeling(model, survey, m)(dm)


def test_errors_are_devito_uq_errors():
    assert issubclass(StabilityError, DevitoUQError) and issubclass(StabilityError, ValueError)
    assert issubclass(InvalidDtypeError, TypeError)
