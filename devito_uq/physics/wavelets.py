"""Source wavelets: Ricker (Devito's convention) and the AVP band-pass wavelet.

Units: time in ms, frequencies in Hz (converted to kHz where Devito's formulas use ms).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from devito_uq.errors import InvalidArgumentError, InvalidSurveyError
from devito_uq.validation import (
    check_positive_int,
    check_positive_scalar,
    check_scalar,
    check_tuple,
)

__all__ = ["ricker", "bandpass_wavelet", "load_wavelet", "resample_wavelet", "shot_wavelets"]


#: Largest wavelet file read (bytes): a signature of 10⁶ samples in text is ~25 MB.
MAX_WAVELET_BYTES = 64 * 2**20


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

    Parameters
    ----------
    nt : int
        Number of time samples of the output.
    dt : float
        Time step in ms.
    corners : tuple of 4 float
        Increasing corner frequencies in Hz.
    half_length : float
        Half length of the filter in ms (its centre time).

    Returns
    -------
    numpy.ndarray
        ``[nt]`` float64 wavelet.

    Raises
    ------
    InvalidArgumentError
        On corners not increasing or at/above the Nyquist frequency of ``dt``.
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


def resample_wavelet(w: np.ndarray, t0: float, dt: float, axis: Any) -> np.ndarray:
    """Wavelets ``w [k, nw]`` sampled at ``t0 + j·dt`` (ms) → ``[k, axis.nt]`` on ``axis``.

    Windowed-sinc interpolation (:func:`~devito_uq.physics.resample.resampling_matrix`);
    the wavelet is zero outside its samples. A wavelet that starts before ``axis.t0``
    is refused (its beginning would be cut off): start the solve earlier.
    """
    from devito_uq.physics.resample import TimeAxis, resampling_matrix

    t0 = check_scalar("wavelet_t0", t0)
    dt = check_positive_scalar("wavelet_dt", dt)
    if t0 < axis.t0 - 1e-6 * axis.dt:
        raise InvalidSurveyError(
            f"wavelet_t0={t0:g} ms is before the solve's first time {axis.t0:g} ms; "
            f"start the solve at t0 <= {t0:g} ms (Survey.for_data does)"
        )
    # Pad with zeros so that the source axis covers the whole target axis.
    extra = max(0, int(np.ceil((axis.t1 - (t0 + dt * (w.shape[1] - 1))) / dt)) + 1)
    wp = np.concatenate([w, np.zeros((w.shape[0], extra))], axis=1)
    mat = resampling_matrix(TimeAxis(t0, dt, wp.shape[1]), axis)
    return wp @ mat.T


def shot_wavelets(
    wavelet: Any, nshots: int, axis: Any, wavelet_dt: float | None = None, wavelet_t0: float = 0.0
) -> np.ndarray:
    """A user wavelet as one wavelet per shot on the solver axis, ``[shot, axis.nt]``.

    Parameters
    ----------
    wavelet : array ``[time]`` or ``[shot, time]``
        On ``axis`` (``wavelet_dt`` None), or sampled at ``wavelet_t0 + k·wavelet_dt``
        (ms) and resampled onto ``axis`` (:func:`resample_wavelet`).
    nshots : int
        Number of shots (a single wavelet is shared by all).
    axis : TimeAxis
        The solver's time axis.
    wavelet_dt, wavelet_t0 : float, optional
        Sampling (ms) of ``wavelet`` when it is not on ``axis``.

    Raises
    ------
    InvalidSurveyError
        On a wrong shape or NaN / infinite samples (naming the shape expected).
    """
    w = np.asarray(wavelet, dtype=np.float64)
    if w.ndim == 1:
        w = w[None, :]
    if wavelet_dt is not None:
        if w.ndim != 2 or w.shape[0] not in (1, nshots) or w.shape[1] < 2:
            raise InvalidSurveyError(
                f"wavelet has shape {list(np.shape(wavelet))}; expected [time] or "
                f"[{nshots}, time] samples at wavelet_dt"
            )
        if not np.all(np.isfinite(w)):
            raise InvalidSurveyError("wavelet contains NaN or infinite values")
        w = resample_wavelet(w, wavelet_t0, wavelet_dt, axis)
    elif w.ndim != 2 or w.shape[1] != axis.nt or w.shape[0] not in (1, nshots):
        raise InvalidSurveyError(
            f"wavelet has shape {list(np.shape(wavelet))}; expected [{axis.nt}] "
            f"or [{nshots}, {axis.nt}] (time samples of the survey)"
        )
    if not np.all(np.isfinite(w)):
        raise InvalidSurveyError("wavelet contains NaN or infinite values")
    return np.ascontiguousarray(np.broadcast_to(w, (nshots, axis.nt)))


def load_wavelet(
    path: str | os.PathLike, dt: float | None = None
) -> tuple[np.ndarray, float, float]:
    """Read a wavelet file → ``(samples [nw], dt ms, t0 ms)`` for ``Survey(wavelet_dt=…)``.

    * ``.npy``: a 1D array of samples; ``dt`` (ms) must be given, ``t0 = 0``.
    * text (whitespace or comma separated, ``#`` comments): one column of samples
      (``dt`` required, ``t0 = 0``) or two columns ``time_ms amplitude`` (regular
      times; ``dt`` and ``t0`` from the first column, a ``dt`` given must agree).
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidArgumentError(f"wavelet file {str(path)!r} is not a readable file")
    if path.stat().st_size > MAX_WAVELET_BYTES:  # a source signature is kilobytes
        raise InvalidArgumentError(
            f"wavelet file {str(path)!r} holds {path.stat().st_size} bytes, more than "
            f"{MAX_WAVELET_BYTES} for a source signature; is it the right file?"
        )
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            text = path.read_text().replace(",", " ")
            rows = [ln.split("#")[0].split() for ln in text.splitlines()]
            arr = np.array([[float(x) for x in r] for r in rows if r], dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"cannot read wavelet file {str(path)!r}: {exc}") from exc
    arr = np.asarray(arr, dtype=np.float64)
    t0 = 0.0
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2 and arr.shape[1] == 2 and arr.shape[0] >= 2:
        times, arr = arr[:, 0], arr[:, 1]
        steps = np.diff(times)
        if steps[0] <= 0 or np.ptp(steps) > 1e-6 * steps[0]:
            raise InvalidArgumentError(f"wavelet file {str(path)!r}: times are not regular")
        if dt is not None and abs(check_positive_scalar("dt", dt) - steps[0]) > 1e-6 * steps[0]:
            raise InvalidArgumentError(
                f"dt={dt} ms disagrees with the file's time step {steps[0]:g} ms ({str(path)!r})"
            )
        t0, dt = float(times[0]), float(steps[0])
    if arr.ndim != 1 or arr.size < 2:
        raise InvalidArgumentError(
            f"wavelet file {str(path)!r} holds shape {list(arr.shape)}; expected samples [time] "
            "or two columns (time ms, amplitude)"
        )
    if dt is None:
        raise InvalidArgumentError(f"wavelet file {str(path)!r} has no times: give dt (ms)")
    if not np.all(np.isfinite(arr)):
        raise InvalidArgumentError(f"wavelet file {str(path)!r} contains NaN or infinite values")
    return arr, check_positive_scalar("dt", dt), t0
