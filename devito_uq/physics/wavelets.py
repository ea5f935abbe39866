"""Source wavelets: Ricker (Devito's convention) and the AVP band-pass wavelet.

Units: time in ms, frequencies in Hz (converted to kHz where Devito's formulas use ms).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from devito_uq.errors import InvalidArgumentError
from devito_uq.validation import check_positive_int, check_positive_scalar, check_tuple

__all__ = ["ricker", "bandpass_wavelet"]


def ricker(time: np.ndarray, f0_hz: float, delay: float | None = None) -> np.ndarray:
    """Ricker wavelet with peak frequency ``f0_hz`` (Hz) on ``time`` (ms).

    .. math:: w(t) = (1 - 2 r^2) e^{-r^2}, \\quad r = \\pi f_0 (t - t_d)

    with ``f0`` in kHz and the delay ``t_d = 1/f0`` ms unless given (Devito's
    ``RickerSource`` convention, amplitude 1).
    """
    f0 = float(f0_hz) / 1000.0
    td = 1.0 / f0 if delay is None else float(delay)
    r = np.pi * f0 * (np.asarray(time, dtype=np.float64) - td)
    return (1.0 - 2.0 * r**2) * np.exp(-(r**2))


def bandpass_wavelet(
    nt: int,
    dt: float,
    corners: Sequence[float] = (5.0, 30.0, 50.0, 80.0),
    half_length: float = 40.0,
) -> np.ndarray:
    """Zero-phase trapezoidal band-pass wavelet with a Hann taper, ``[nt]``.

    The trapezoid rises linearly from ``corners[0]`` to ``corners[1]`` Hz, is flat
    to ``corners[2]`` and falls to zero at ``corners[3]`` Hz. Its impulse response
    (``2·half_length`` ms long, Hann-tapered) is centred at ``t = half_length`` ms
    and zero-padded to ``nt`` samples, as in the original AVP experiment.

    Args:
        nt: number of time samples of the output.
        dt: time step in ms.
        corners: four increasing corner frequencies in Hz.
        half_length: half length of the filter in ms (its centre time).
    """
    nt = check_positive_int("nt", nt)
    dt = check_positive_scalar("dt", dt)
    f1, f2, f3, f4 = check_tuple("corners", corners, 4, positive=True)
    if not f1 < f2 <= f3 < f4:
        raise InvalidArgumentError(f"corners={tuple(corners)} must be increasing (f1<f2<=f3<f4)")
    nyq = 500.0 / dt
    if f4 >= nyq:
        raise InvalidArgumentError(
            f"corners={tuple(corners)}: highest corner {f4} Hz is at or above Nyquist {nyq} Hz"
        )
    half = int(round(check_positive_scalar("half_length", half_length) / dt))
    n = 2 * half + 1
    if n > nt:
        raise InvalidArgumentError(
            f"half_length={half_length} ms needs {n} samples but nt={nt} is shorter"
        )
    freqs = np.fft.fftfreq(n, d=dt * 1e-3)  # Hz
    af = np.abs(freqs)
    spec = np.interp(af, [f1, f2, f3, f4], [0.0, 1.0, 1.0, 0.0], left=0.0, right=0.0)
    filt = np.fft.fftshift(np.real(np.fft.ifft(spec)))  # centred at index `half`
    filt *= np.hanning(n)
    out = np.zeros(nt)
    out[:n] = filt
    return out
