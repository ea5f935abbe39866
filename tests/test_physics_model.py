"""Model grids: the neutral contract, AcousticModel and PlaneWaveModel; units, damping,
padding, validation."""

import numpy as np
import pytest
import torch

from devito_uq.errors import (
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidModelError,
    InvalidShapeError,
)
from devito_uq.physics import (
    AcousticModel,
    Model,
    PlaneWaveModel,
    PlaneWaveModeling,
    Survey,
    squared_slowness,
    velocity,
)
from devito_uq.physics.stencil import critical_dt


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
    with pytest.raises(InvalidArgumentError, match="nbl=-2 must be an integer >= 0"):
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


def test_error_model_array_shape_in_pad():
    model = AcousticModel((11, 11), (10.0, 10.0), nbl=2)
    with pytest.raises(InvalidShapeError, match=r"shape \[11, 10\]; expected \[11, 11\]"):
        model.pad(np.ones((11, 10)))


# --------------------------------------------------------------- the contract
class _TwiceAsFast(Model):
    """A stand-in third physics: any 2D grid whose scheme is stable at half the step."""

    dims = (2,)

    def critical_dt(self, vmax):
        return 0.5 * critical_dt(vmax, self.spacing, self.space_order)


def test_survey_accepts_any_physics_model_and_uses_its_stability_limit():
    model = _TwiceAsFast((21, 11), (10.0, 10.0), nbl=4, space_order=4)
    survey = Survey.surface(model, nshots=1, nreceivers=5, t1=100.0, f0_hz=10.0, vmax=2.0)
    acoustic = AcousticModel((21, 11), (10.0, 10.0), nbl=4, space_order=4)
    assert survey.dt == pytest.approx(0.5 * acoustic.critical_dt(2.0), rel=1e-12)
    survey.check_inside(model)
    assert repr(model).startswith("_TwiceAsFast(shape=(21, 11)")


def test_model_is_abstract_without_a_stability_limit():
    with pytest.raises(TypeError, match="critical_dt"):
        Model((5, 5), (10.0, 10.0))


def test_planewave_model_limit_and_damping_of_its_modeling():
    op = PlaneWaveModeling([0.0, 0.2], nz=30, dz=2.0, nbl=5, damping=0.3, space_order=6)
    assert isinstance(op.model, PlaneWaveModel) and op.model.shape == (30,)
    assert op.model.critical_dt(2.5) == critical_dt(2.5, (2.0,), 6)
    ramp = op.model.damping()
    assert ramp.shape == (40,) and ramp[0] == ramp[-1] == 0.3 and not ramp[5:35].any()


def test_error_survey_with_a_non_model():
    survey = Survey([[50.0, 10.0]], [[10.0, 10.0]], t1=50.0, dt=1.0, f0_hz=10.0)
    with pytest.raises(InvalidArgumentError, match="model must be a Model; got dict"):
        survey.check_inside({"shape": (5, 5)})


def test_error_planewave_model_shape():
    with pytest.raises(InvalidArgumentError, match=r"shape=\(5, 5\) must have 1 entries"):
        PlaneWaveModel((5, 5), (2.0, 2.0))
