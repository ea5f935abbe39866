"""The one model extension into the absorbing layer and its adjoint (physics.padding)."""

import numpy as np
import pytest

from devito_uq.physics.padding import extend, extend_adjoint


@pytest.mark.parametrize(
    "shape, nbl, axes",
    [((9, 7), 3, None), ((4, 11), 5, (-1,)), ((2, 3, 6, 5), 2, (2, 3)), ((6,), 4, None)],
)
def test_extend_dot_test(shape, nbl, axes):
    """⟨E x, y⟩ = ⟨x, Eᵀ y⟩ to round-off, for batch axes left alone and any padded set."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    ex = extend(x, nbl, axes)
    y = rng.standard_normal(ex.shape)
    lhs, rhs = np.sum(ex * y), np.sum(x * extend_adjoint(y, nbl, axes))
    assert abs(lhs - rhs) / abs(lhs) < 1e-13
    assert extend_adjoint(y, nbl, axes).shape == x.shape


def test_extend_replicates_edges_and_adjoint_folds_them():
    x = np.array([[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(extend(x, 2, (-1,)), [[1, 1, 1, 2, 3, 3, 3]])
    g = np.array([[1.0, 10.0, 100.0, 1000.0, 1e4, 1e5, 1e6]])
    np.testing.assert_array_equal(extend_adjoint(g, 2, (-1,)), [[111.0, 1000.0, 1110000.0]])
    np.testing.assert_array_equal(extend_adjoint(g, 0, (-1,)), g)
