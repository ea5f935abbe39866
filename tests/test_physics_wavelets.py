"""Source wavelets: Ricker (Devito convention) and the AVP band-pass wavelet."""

import numpy as np
import pytest

from devito_uq.errors import InvalidArgumentError
from devito_uq.physics import bandpass_wavelet, ricker


def test_ricker_peak_and_devito_convention():
    t = np.linspace(0, 400, 4001)
    w = ricker(t, 10.0)
    # Peak (value 1) at the delay 1/f0 = 100 ms.
    assert t[np.argmax(w)] == pytest.approx(100.0)
    assert w.max() == pytest.approx(1.0)
    spectrum = np.abs(np.fft.rfft(w))
    freqs = np.fft.rfftfreq(t.size, (t[1] - t[0]) * 1e-3)
    assert freqs[np.argmax(spectrum)] == pytest.approx(10.0, abs=0.3)


def test_wavelet_band_and_centre():
    dt, nt = 0.5, 801
    w = bandpass_wavelet(nt, dt)
    assert int(np.argmax(np.abs(w))) == 80  # centred at half_length = 40 ms
    spec = np.abs(np.fft.rfft(w))
    f = np.fft.rfftfreq(nt, d=dt * 1e-3)
    passband = spec[(f > 32) & (f < 48)].mean()
    assert spec[f > 120].max() < 0.05 * passband
    assert spec[(f > 32) & (f < 48)].min() > 0.8 * passband


def test_error_wavelet_corners():
    with pytest.raises(InvalidArgumentError, match=r"must be increasing"):
        bandpass_wavelet(801, 0.5, corners=(30, 5, 50, 80))


def test_load_wavelet_refuses_an_oversized_file_unread(tmp_path, monkeypatch):
    """A wavelet path that names some huge file (a SEG-Y, a dump) is refused by its size,
    before a line of it is read."""
    from devito_uq.errors import InvalidArgumentError
    from devito_uq.physics import wavelets

    path = tmp_path / "w.txt"
    path.write_text("0 0\n1 1\n2 0\n")
    monkeypatch.setattr(wavelets, "MAX_WAVELET_BYTES", 8)
    with pytest.raises(InvalidArgumentError, match="more than 8 for a source signature"):
        wavelets.load_wavelet(path, 1.0)
