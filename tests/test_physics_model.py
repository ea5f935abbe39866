"""AcousticModel: geometry, units, damping profile, padding, validation."""

import numpy as np
import pytest
import torch

from devito_uq.errors import (
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidModelError,
    InvalidShapeError,
)
from devito_uq.physics import AcousticModel, squared_slowness, velocity


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
