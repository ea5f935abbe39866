"""Source wavelets: Ricker (Devito convention) and the AVP band-pass wavelet."""

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


def test_ricker_peak_and_devito_convention():
    t = np.linspace(0, 400, 4001)
    w = ricker(t, 10.0)
    # Peak (value 1) at the delay 1/f0 = 100 ms.
    assert t[np.argmax(w)] == pytest.approx(100.0)
    assert w.max() == pytest.approx(1.0)
    spectrum = np.abs(np.fft.rfft(w))
    freqs = np.fft.rfftfreq(t.size, (t[1] - t[0]) * 1e-3)
    assert freqs[np.argmax(spectrum)] == pytest.approx(10.0, abs=0.3)
