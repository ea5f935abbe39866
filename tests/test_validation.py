"""The shared argument checks (devito_uq.validation): every helper accepts numpy and 0-d
tensor scalars, refuses bool, NaN, inf and non-integral integers, and names the value."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from devito_uq.errors import (
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidModelError,
    InvalidShapeError,
)
from devito_uq.validation import (
    as_float_array,
    check_bool,
    check_choice,
    check_device,
    check_dtype,
    check_finite,
    check_finite_positive,
    check_in_range,
    check_int,
    check_int_tuple,
    check_nonnegative_int,
    check_nonnegative_scalar,
    check_positive_int,
    check_positive_scalar,
    check_scalar,
    check_shape,
    check_tuple,
    first_bad_index,
)

# Every scalar spelling a user may hold for the value 0.5 (and 3 for integers).
HALF = [0.5, np.float32(0.5), np.float64(0.5), np.array(0.5), torch.tensor(0.5)]
THREE = [3, np.int32(3), np.int64(3), np.array(3), torch.tensor(3)]
FLOAT_CHECKS = [check_scalar, check_positive_scalar, check_nonnegative_scalar]


@pytest.mark.parametrize("check", FLOAT_CHECKS)
@pytest.mark.parametrize("value", HALF, ids=lambda v: type(v).__name__)
def test_float_checks_accept_every_scalar_form(check, value):
    out = check("sigma", value)
    assert out == 0.5 and type(out) is float


@pytest.mark.parametrize("check", FLOAT_CHECKS)
@pytest.mark.parametrize(
    "value,shown",
    [
        (True, "True"),
        (np.bool_(False), "(np.False_|False)"),
        (torch.tensor(True), "True"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        ("0.5", "'0.5'"),
    ],
)
def test_float_checks_refuse_non_numbers(check, value, shown):
    with pytest.raises(InvalidArgumentError, match=rf"^sigma={shown} "):
        check("sigma", value)


def test_float_checks_refuse_arrays_and_their_sign():
    with pytest.raises(InvalidArgumentError, match=r"sigma must be a number; got a tensor of"):
        check_positive_scalar("sigma", torch.tensor([0.5]))
    with pytest.raises(InvalidArgumentError, match=r"sigma must be a number; got an array of"):
        check_scalar("sigma", np.array([0.5, 1.0]))
    with pytest.raises(InvalidArgumentError, match=r"sigma=0.0 must be finite and positive"):
        check_positive_scalar("sigma", np.float32(0.0))
    with pytest.raises(InvalidArgumentError, match=r"lag=-1.0 must be finite and non-neg"):
        check_nonnegative_scalar("lag", torch.tensor(-1.0))
    assert check_nonnegative_scalar("lag", 0) == 0.0
    assert check_scalar("snr_db", -3) == -3.0


def test_check_in_range_bounds():
    assert check_in_range("p", np.float32(0.5), 0.0, 1.0) == 0.5
    assert check_in_range("p", 0, 0.0, 1.0) == 0.0  # closed by default
    assert check_in_range("p", torch.tensor(1.0), 0.0, 1.0) == 1.0
    with pytest.raises(InvalidArgumentError, match=r"p=0.0 must lie in \(0, 1\]"):
        check_in_range("p", 0.0, 0.0, 1.0, low_open=True)
    with pytest.raises(InvalidArgumentError, match=r"p=1.0 must lie in \[0, 1\)"):
        check_in_range("p", 1.0, 0.0, 1.0, high_open=True)
    with pytest.raises(InvalidArgumentError, match=r"p=nan must lie in \[0, 1\]"):
        check_in_range("p", math.nan, 0.0, 1.0)
    with pytest.raises(InvalidArgumentError, match=r"p=inf must lie in \[0, 1\]"):
        check_in_range("p", math.inf, 0.0, 1.0)
    with pytest.raises(InvalidArgumentError, match=r"p=True must be a number, not a bool"):
        check_in_range("p", True, 0.0, 1.0)


INT_CHECKS = [check_int, check_positive_int, check_nonnegative_int]


@pytest.mark.parametrize("check", INT_CHECKS)
@pytest.mark.parametrize("value", THREE, ids=lambda v: type(v).__name__)
def test_int_checks_accept_every_integer_form(check, value):
    out = check("n", value)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("check", INT_CHECKS)
@pytest.mark.parametrize(
    "value,shown",
    [
        (3.0, "3.0"),
        (3.7, "3.7"),
        (np.float64(3.0), "np.float64\\(3.0\\)|3.0"),
        (torch.tensor(3.0), "tensor\\(3.\\)"),
        (True, "True"),
        (np.bool_(True), "np.True_|True"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        ("3", "'3'"),
    ],
)
def test_int_checks_refuse_non_integers(check, value, shown):
    with pytest.raises(InvalidArgumentError, match=rf"^n=({shown}) must be an integer"):
        check("n", value)


def test_int_bounds():
    assert check_int("k", -4) == -4
    assert check_int("k", 4, minimum=4, maximum=4) == 4
    with pytest.raises(InvalidArgumentError, match=r"k=5 must be an integer <= 4"):
        check_int("k", np.int64(5), maximum=4)
    with pytest.raises(InvalidArgumentError, match=r"n=0 must be an integer >= 1"):
        check_positive_int("n", 0)
    with pytest.raises(InvalidArgumentError, match=r"n=-1 must be an integer >= 0"):
        check_nonnegative_int("n", torch.tensor(-1))
    assert check_nonnegative_int("n", 0) == 0


def test_check_choice():
    assert check_choice("method", "adam", ("lbfgs", "adam")) == "adam"
    with pytest.raises(InvalidArgumentError, match=r"method='newton' must be one of"):
        check_choice("method", "newton", ("lbfgs", "adam"))
    with pytest.raises(InvalidArgumentError, match=r"mode=True must be one of \(1, 2\)"):
        check_choice("mode", True, (1, 2))  # True == 1 in Python; still refused
    with pytest.raises(InvalidArgumentError, match=r"mode=\[1\] must be one of"):
        check_choice("mode", [1], ({1},))  # unhashable against a set: no TypeError leaks


def test_check_bool():
    assert check_bool("adapt", True) is True
    assert check_bool("adapt", np.bool_(False)) is False
    for bad in (1, 0.0, "no", None):
        with pytest.raises(InvalidArgumentError, match=rf"adapt={bad!r} must be True or False"):
            check_bool("adapt", bad)


def test_check_dtype():
    for spelling in ("float32", np.float32, np.dtype("float32"), torch.float32):
        assert check_dtype("dtype", spelling) is np.float32
    assert check_dtype("dtype", torch.float64) is np.float64
    with pytest.raises(InvalidDtypeError, match=r"dtype=float16 is not supported"):
        check_dtype("dtype", "float16")
    with pytest.raises(InvalidDtypeError, match=r"dtype=torch.int32 is not supported"):
        check_dtype("dtype", torch.int32)
    with pytest.raises(InvalidDtypeError, match=r"dtype='single-ish' is not a dtype"):
        check_dtype("dtype", "single-ish")


def test_check_shape():
    check_shape("data", torch.Size([3, 4]), (3, None))
    with pytest.raises(InvalidShapeError, match=r"data has shape \[3, 4\]; expected \[2, \*\]"):
        check_shape("data", (3, 4), (2, None))
    with pytest.raises(InvalidShapeError, match=r"data has shape \[3\]; expected \[3, \*\]"):
        check_shape("data", (3,), (3, None))


def test_check_tuple():
    out = check_tuple("corners", [5, np.float32(30.0), torch.tensor(50.0), 80.0], 4, True)
    assert out == (5.0, 30.0, 50.0, 80.0) and all(type(v) is float for v in out)
    with pytest.raises(InvalidArgumentError, match=r"corners=\(5.0, 30.0\) must have 4 entries"):
        check_tuple("corners", (5.0, 30.0), 4)
    with pytest.raises(InvalidArgumentError, match=r"corners\[1\]=nan must be finite"):
        check_tuple("corners", (5.0, math.nan), 2)
    with pytest.raises(InvalidArgumentError, match=r"corners\[0\]=True must be a number"):
        check_tuple("corners", (True, 1.0), 2)
    with pytest.raises(InvalidArgumentError, match=r"corners=\(-1.0, 2.0\) must be positive"):
        check_tuple("corners", (-1.0, 2.0), 2, positive=True)
    with pytest.raises(InvalidArgumentError, match=r"corners='5,30' must be a sequence of 2"):
        check_tuple("corners", "5,30", 2)


def test_check_int_tuple():
    assert check_int_tuple("shape", (np.int64(3), torch.tensor(4)), (2, 3), minimum=1) == (3, 4)
    assert check_int_tuple("shape", torch.Size([2, 2, 2]), (2, 3)) == (2, 2, 2)
    with pytest.raises(InvalidArgumentError, match=r"shape\[1\]=4.5 must be an integer"):
        check_int_tuple("shape", (3, 4.5), 2)
    with pytest.raises(InvalidArgumentError, match=r"shape\[0\]=0 must be an integer >= 1"):
        check_int_tuple("shape", (0, 4), 2, minimum=1)
    with pytest.raises(InvalidArgumentError, match=r"shape=\(3,\) must have 2 or 3 entries"):
        check_int_tuple("shape", (3,), (2, 3))
    with pytest.raises(InvalidArgumentError, match=r"shape=\[True, 2\]|shape\[0\]=True"):
        check_int_tuple("shape", [True, 2], 2)
    with pytest.raises(InvalidArgumentError, match=r"shape=3 must be a sequence of integers"):
        check_int_tuple("shape", 3, 1)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_check_finite_names_the_first_offender(kind):
    arr = np.ones((3, 4))
    arr[1, 2], arr[2, 0] = np.nan, np.inf
    value = arr if kind == "numpy" else torch.from_numpy(arr)
    with pytest.raises(InvalidArgumentError, match=r"model contains nan at index \(1, 2\)"):
        check_finite("model", value)
    with pytest.raises(InvalidShapeError, match="model contains"):
        check_finite("model", value, error=InvalidShapeError)
    check_finite("model", np.ones(3) if kind == "numpy" else torch.ones(3))
    check_finite("model", np.zeros(0))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_check_finite_positive_names_the_first_offender(kind):
    arr = np.full((2, 3), 2.0)
    arr[1, 1] = 0.0
    value = arr if kind == "numpy" else torch.from_numpy(arr)
    with pytest.raises(InvalidModelError, match=r"vp must be finite and positive.*0.0 at"):
        check_finite_positive("vp", value)
    arr[1, 1] = np.inf
    value = arr if kind == "numpy" else torch.from_numpy(arr)
    with pytest.raises(InvalidModelError, match=r"got inf at index \(1, 1\)"):
        check_finite_positive("vp", value)
    check_finite_positive("vp", np.full(4, 1e-30))


def test_as_float_array():
    out = as_float_array("depth", torch.tensor([1, 2, 3], dtype=torch.int32), ndim=1)
    assert out.dtype == np.float64 and out.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(InvalidShapeError, match=r"depth has shape \[3\]; expected 2 dim"):
        as_float_array("depth", [1.0, 2.0, 3.0], ndim=2)
    with pytest.raises(InvalidArgumentError, match=r"depth contains nan at index \(1,\)"):
        as_float_array("depth", [1.0, math.nan])
    with pytest.raises(InvalidArgumentError, match=r"depth is not a numeric array: 'abc'"):
        as_float_array("depth", "abc")


def test_first_bad_index():
    bad = np.zeros((2, 3), dtype=bool)
    bad[1, 0] = bad[1, 2] = True
    assert first_bad_index(bad) == (1, 0)
    assert first_bad_index(torch.from_numpy(bad)) == (1, 0)


def test_check_allocation_names_what_and_the_size():
    from devito_uq.errors import InsufficientMemoryError
    from devito_uq.validation import available_memory, check_allocation, format_bytes

    check_allocation("grid", 10, available=100)
    check_allocation("tiny", 2**20, available=10, minimum=2**26)  # below the floor: unchecked
    with pytest.raises(InsufficientMemoryError, match=r"grid needs 1.0 KiB \(1024 bytes\)"):
        check_allocation("grid", 1024, available=100)
    assert issubclass(InsufficientMemoryError, MemoryError)
    assert available_memory() is None or available_memory() > 0
    assert format_bytes(3 * 2**30) == "3.0 GiB" and format_bytes(12) == "12 B"


def test_check_device_refuses_meta_and_other_backends():
    assert check_device("m", torch.zeros(2)) == torch.device("cpu")
    assert check_device("device", "cuda:0") == torch.device("cuda", 0)
    with pytest.raises(InvalidArgumentError, match="m is on the 'meta' device"):
        check_device("m", torch.zeros(2, device="meta"))
    with pytest.raises(InvalidArgumentError, match="device is on the 'mps' device"):
        check_device("device", "mps")
    with pytest.raises(InvalidArgumentError, match="device='gpu9' is not a torch device"):
        check_device("device", "gpu9")
