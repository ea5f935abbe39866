"""Acquisition geometry: shots, receivers, the solver's and the data's time axes, wavelet.

Units: coordinates in m, times in ms, peak frequency in Hz (kHz inside, as Devito uses ms).

Two time axes
-------------
The *solver axis* (``t0``, ``dt``, ``nt``) is where the wave equation steps: ``dt``
must satisfy the CFL rule. The *data axis* (``Survey.data_axis``, a
:class:`~devito_uq.physics.resample.TimeAxis`) is where the observed traces live —
e.g. a SEG-Y interval of 2–4 ms and a recording delay. By default both are the same (no
resampling); otherwise the operators resample their traces onto the data axis with
:func:`~devito_uq.physics.resample.resampling_matrix` (its transpose in backward).
:meth:`Survey.for_data` builds a survey for a given data axis and picks the solver axis: a
stable ``dt`` that divides the data interval, starting early enough for the wavelet (a
negative time shift) and for the data's first sample.

Dead and missing traces
-----------------------
Shots may have different receiver counts. Data of a shot selection is then the
dense array ``[shot, time, max_receivers]`` padded with zeros, and
:meth:`Survey.mask` gives the per-trace mask ``[shot, receiver]`` (True: a live
trace that is data). ``trace_mask`` marks dead traces of existing receivers (e.g.
SEG-Y ``TraceIdentificationCode`` 2). Masked traces are not data: the operators
return zeros there and send no residual back from them, and a likelihood must count
only ``mask.sum() · nt_data`` observations (:func:`pad_traces` turns a list of
per-shot arrays into the padded array and its mask).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from devito_uq.errors import InvalidArgumentError, InvalidSurveyError
from devito_uq.physics.model import Model, check_model
from devito_uq.physics.resample import TimeAxis, check_band, resampling_matrix
from devito_uq.physics.stencil import time_axis_length
from devito_uq.physics.wavelets import ricker, shot_wavelets
from devito_uq.validation import (
    check_allocation,
    check_int,
    check_positive_int,
    check_positive_scalar,
)

__all__ = ["Survey", "Shot", "pad_traces"]

# A Ricker of peak f0 is below 1e-3 of its peak beyond 1/f0 from its centre.
_RICKER_HALF_SPAN = 1.0
# ... and below 1e-2 of its peak beyond 0.853/f0.
_RICKER_CUT = 0.853


@dataclass(frozen=True)
class Shot:
    """One shot: source ``[dim]`` (m), receivers ``[receiver, dim]`` (m), wavelet ``[time]``."""

    src_position: np.ndarray
    rec_positions: np.ndarray
    wavelet: np.ndarray


def _err(msg: str) -> InvalidSurveyError:
    return InvalidSurveyError(msg)


def pad_traces(traces: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per-shot arrays ``[time, receiver_s]`` → ``(data [shot, time, max_rec], mask [shot,
    max_rec])``: zero-padded data and True where a receiver exists."""
    arrs = [np.asarray(t, dtype=np.float64) for t in traces]
    if not arrs or any(a.ndim != 2 for a in arrs) or len({a.shape[0] for a in arrs}) != 1:
        shapes = [list(a.shape) for a in arrs]
        raise _err(f"traces have shapes {shapes}; expected one [time, receiver] array per shot")
    nmax = max(a.shape[1] for a in arrs)
    data = np.zeros((len(arrs), arrs[0].shape[0], nmax))
    mask = np.zeros((len(arrs), nmax), dtype=bool)
    for i, a in enumerate(arrs):
        data[i, :, : a.shape[1]] = a
        mask[i, : a.shape[1]] = True
    return data, mask


class Survey:
    """Source and receiver positions per shot, time axes and the source wavelet.

    Parameters
    ----------
    src_positions : array ``[shot, dim]``
        One point source per shot, coordinates in m.
    rec_positions : array ``[receiver, dim]`` or sequence of such arrays
        Receivers shared by every shot, or one array per shot (counts may differ).
    t1 : float
        Last time (ms) of the solve.
    dt : float
        Time step (ms) of the wave-equation solve; must not exceed
        :meth:`Model.critical_dt <devito_uq.physics.model.Model.critical_dt>` of the
        physics for the velocities modelled.
    t0 : float
        First time (ms) of the solve, default 0 (may be negative: the source fires at 0).
    f0_hz : float, optional
        Peak frequency (Hz) of a Ricker wavelet; must lie below the Nyquist frequency
        of ``dt`` and of the data axis.
    delay : float, optional
        Centre time (ms) of the Ricker (default ``1/f0``, Devito's convention); ``0``
        or negative shifts the wavelet before the shot time (needs ``t0`` early enough).
    wavelet : array ``[time]`` or ``[shot, time]``, optional
        User wavelet instead of a Ricker: on the solver axis, or on its own axis
        ``wavelet_t0 + k·wavelet_dt`` (ms) when ``wavelet_dt`` is given (then resampled
        onto the solver axis; see :func:`~devito_uq.physics.wavelets.load_wavelet`).
    data_axis : TimeAxis, optional
        Time axis of the observed data (default: the solver axis).
    trace_mask : bool array ``[shot, max_receivers]``, optional
        False marks dead traces (see the module docstring).

    Notes
    -----
    The solver axis (:func:`~devito_uq.physics.stencil.time_axis_length`) has
    ``nt = ceil((t1 - t0)/dt - 1e-6) + 1`` samples at ``t0 + k·dt``: it covers ``t1``
    as Devito's ``TimeAxis`` does, and is robust to round-off in ``t1``.
    """

    def __init__(
        self,
        src_positions: Any,
        rec_positions: Any,
        t1: float,
        dt: float,
        t0: float = 0.0,
        f0_hz: float | None = None,
        wavelet: Any = None,
        delay: float | None = None,
        wavelet_dt: float | None = None,
        wavelet_t0: float = 0.0,
        data_axis: TimeAxis | None = None,
        trace_mask: Any = None,
    ) -> None:
        src = np.asarray(src_positions, dtype=np.float64)
        if src.ndim == 1:
            src = src[None, :]
        if src.ndim != 2 or src.shape[1] not in (2, 3):
            raise _err(f"src_positions has shape {list(src.shape)}; expected [shot, dim]")
        if src.shape[0] == 0:
            raise _err("src_positions is empty: a survey needs at least one shot")
        if not np.all(np.isfinite(src)):
            raise _err("src_positions contains NaN or infinite values")
        self.src_positions = src
        self.dim = src.shape[1]
        self.nshots = src.shape[0]

        if isinstance(rec_positions, np.ndarray) or (
            isinstance(rec_positions, Sequence)
            and len(rec_positions) > 0
            and np.ndim(rec_positions[0]) == 1
        ):
            recs = [np.asarray(rec_positions, dtype=np.float64)] * self.nshots
        else:
            recs = [np.asarray(r, dtype=np.float64) for r in rec_positions]
        if len(recs) != self.nshots:
            raise _err(
                f"rec_positions has {len(recs)} arrays for {self.nshots} shots; "
                "give one [receiver, dim] array per shot or one shared array"
            )
        for i, r in enumerate(recs):
            if r.ndim != 2 or r.shape[1] != self.dim:
                raise _err(
                    f"rec_positions for shot {i} has shape {list(r.shape)}; "
                    f"expected [receiver, {self.dim}]"
                )
            if r.shape[0] == 0:
                raise _err(f"rec_positions for shot {i} is empty: each shot needs a receiver")
            if not np.all(np.isfinite(r)):
                raise _err(f"rec_positions for shot {i} contains NaN or infinite values")
        self.rec_positions = recs

        try:
            t0, t1, dt = float(t0), float(t1), float(dt)
        except (TypeError, ValueError) as exc:
            raise _err(f"t0={t0!r}, t1={t1!r}, dt={dt!r} must be numbers") from exc
        if not (np.isfinite(dt) and dt > 0):
            raise _err(f"dt={dt!r} ms must be finite and positive")
        if not (np.isfinite(t0) and np.isfinite(t1)) or t1 <= t0:
            raise _err(f"t1={t1!r} ms must be finite and after t0={t0!r} ms")
        steps = (t1 - t0) / dt
        # Size check before any time array exists: a huge t1 would allocate wavelets
        # [shot, nt] here and traces and saved wavefields of nt steps in the solver.
        check_allocation(
            f"a time axis of {steps:.6g} steps (t0={t0:g}, t1={t1:g}, dt={dt:g} ms)",
            int(min(steps, 2.0**62) + 2) * 8 * (self.nshots + 2),
        )
        self.t0, self.dt = t0, dt
        self.nt = time_axis_length(t0, t1, dt)
        if self.nt < 3:
            raise _err(f"time axis t0={t0}, t1={t1}, dt={dt} ms has {self.nt} samples; need 3")
        self.t1 = t0 + dt * (self.nt - 1)
        if data_axis is not None and not isinstance(data_axis, TimeAxis):
            raise _err(f"data_axis must be a TimeAxis; got {type(data_axis).__name__}")
        self.data_axis = self.solver_axis if data_axis is None else data_axis
        same = self.data_axis.same_as(self.solver_axis)
        if not same:  # a dense [nt_data, nt] float64 matrix (a huge vmax: a tiny dt, huge nt)
            check_allocation("a resampling matrix", self.data_axis.nt * self.nt * 8)
        # None when the axes coincide: the operators then skip resampling entirely.
        self._resampling = None if same else resampling_matrix(self.solver_axis, self.data_axis)
        self.wavelet = self._make_wavelet(f0_hz, wavelet, delay, wavelet_dt, wavelet_t0)
        self.trace_mask = self._make_mask(trace_mask)

    def _make_wavelet(self, f0_hz, wavelet, delay, wavelet_dt, wavelet_t0) -> np.ndarray:
        if (f0_hz is None) == (wavelet is None):
            raise _err("give exactly one of f0_hz (Ricker peak frequency, Hz) and wavelet")
        if wavelet is None:
            try:
                f0 = float(f0_hz)
            except (TypeError, ValueError) as exc:
                raise _err(f"f0_hz={f0_hz!r} must be a number") from exc
            if not (np.isfinite(f0) and f0 > 0):
                raise _err(f"f0_hz={f0_hz!r} must be finite and positive")
            check_band(f0, self.solver_axis, f"Ricker peak f0_hz={f0:g}: the")
            check_band(f0, self.data_axis, f"Ricker peak f0_hz={f0:g} (data axis): the")
            self.f0_hz: float | None = f0
            td = 1000.0 / f0 if delay is None else float(delay)
            if not np.isfinite(td):
                raise _err(f"delay={delay!r} ms must be finite")
            # Refuse a Ricker cut where it is still above 1 % of its peak (|r| < 2.68,
            # t − td > −0.853/f0); Devito's own t0 = 0, td = 1/f0 cuts at 1e-3.
            start = td - _RICKER_HALF_SPAN * 1000.0 / f0
            if td - self.t0 < _RICKER_CUT * 1000.0 / f0:
                raise _err(
                    f"the Ricker centred at delay={td:g} ms is cut off by the solve's "
                    f"t0={self.t0:g} ms (above 1% of its peak there); use t0 <= {start:g} ms "
                    "(Survey.for_data does)"
                )
            self.delay: float | None = td
            w = ricker(self.time, f0, td)
            return np.ascontiguousarray(np.broadcast_to(w, (self.nshots, self.nt)))
        self.f0_hz, self.delay = None, None
        return shot_wavelets(wavelet, self.nshots, self.solver_axis, wavelet_dt, wavelet_t0)

    def _make_mask(self, trace_mask: Any) -> np.ndarray:
        nmax = max(self.nreceivers)
        exists = np.arange(nmax)[None, :] < np.array(self.nreceivers)[:, None]
        if trace_mask is None:
            return exists
        tm = np.asarray(trace_mask)
        if tm.dtype != bool or tm.shape != (self.nshots, nmax):
            raise _err(
                f"trace_mask has shape {list(tm.shape)} and dtype {tm.dtype}; expected bool "
                f"[{self.nshots}, {nmax}] (shot, receiver)"
            )
        return tm & exists

    # ---------------------------------------------------------------- accessors
    @property
    def time(self) -> np.ndarray:
        """Time samples (ms) of the solver axis, ``[time]``."""
        return self.t0 + self.dt * np.arange(self.nt)

    @property
    def solver_axis(self) -> TimeAxis:
        """The solver's time axis (``t0``, ``dt``, ``nt``)."""
        return TimeAxis(self.t0, self.dt, self.nt)

    @property
    def nt_data(self) -> int:
        """Samples per trace of the data (``data_axis.nt``)."""
        return self.data_axis.nt

    def resampling(self) -> np.ndarray | None:
        """``[nt_data, nt]`` solver→data resampling matrix (float64), ``None`` if the axes
        coincide."""
        return self._resampling

    def mask(self, shots: Any = None) -> np.ndarray:
        """Per-trace mask ``[shot, max_receivers]`` of the selected shots (True: live data)."""
        idx = self.select(shots)
        m = self.trace_mask[idx]
        return m[:, : max(self.nreceivers[s] for s in idx)]

    @property
    def nreceivers(self) -> list[int]:
        """Receiver count of each shot."""
        return [r.shape[0] for r in self.rec_positions]

    @property
    def shared_receivers(self) -> bool:
        """True when every shot has the same number of receivers (data is a dense array)."""
        return len(set(self.nreceivers)) == 1

    def shot(self, i: int) -> Shot:
        """The geometry and wavelet of shot ``i``."""
        return Shot(self.src_positions[i], self.rec_positions[i], self.wavelet[i])

    def __len__(self) -> int:
        return self.nshots

    def __repr__(self) -> str:
        return (
            f"Survey(nshots={self.nshots}, nreceivers={self.nreceivers[0]}"
            f"{'' if self.shared_receivers else '…'}, t0={self.t0}, t1={self.t1}, "
            f"dt={self.dt}, nt={self.nt})"
        )

    def select(self, shots: Any = None) -> list[int]:
        """Validated list of shot indices (all shots for ``None``)."""
        if shots is None:
            return list(range(self.nshots))
        if isinstance(shots, (int, np.integer)) and not isinstance(shots, bool):
            shots = [int(shots)]
        if isinstance(shots, (bool, np.bool_, str, bytes, float)):
            raise _err(f"shots={shots!r} must be a shot index or a list of shot indices")
        try:
            # check_int refuses True, 0.9 and 1.0: a selection is never truncated.
            items = shots if isinstance(shots, (list, tuple)) else np.asarray(shots).reshape(-1)
            if isinstance(items, np.ndarray) and items.dtype == bool:
                raise _err(f"shots={shots!r} is a boolean array; give shot indices")
            idx = [check_int(f"shots[{i}]", s) for i, s in enumerate(items)]
        except (TypeError, ValueError, InvalidArgumentError) as exc:
            raise _err(f"shots={shots!r} must be shot indices (integers): {exc}") from exc
        if len(idx) == 0:
            raise _err("shots=[] selects no shot; give at least one index")
        for s in idx:
            if s < 0 or s >= self.nshots:
                raise _err(f"shot index {s} is out of range for a survey of {self.nshots} shots")
        return idx

    def check_inside(self, model: Model) -> None:
        """Raise unless every source and receiver lies inside ``model``, any physics'
        :class:`~devito_uq.physics.model.Model`: :class:`InvalidArgumentError` for another
        type, :class:`InvalidSurveyError` for other dimensions or a point outside."""
        check_model(model)
        if self.dim != model.dim:
            raise _err(f"survey is {self.dim}D but the model is {model.dim}D")
        lo = np.array(model.domain_min)
        hi = np.array(model.domain_max)
        tol = 1e-6 * np.array(model.spacing)
        for i, s in enumerate(self.src_positions):
            if np.any(s < lo - tol) or np.any(s > hi + tol):
                raise _err(
                    f"source of shot {i} at {s.tolist()} m is outside the model "
                    f"[{lo.tolist()}, {hi.tolist()}] m"
                )
        for i, r in enumerate(self.rec_positions):
            out = np.any((r < lo - tol) | (r > hi + tol), axis=1)
            if out.any():
                j = int(np.argmax(out))
                raise _err(
                    f"receiver {j} of shot {i} at {r[j].tolist()} m is outside the model "
                    f"[{lo.tolist()}, {hi.tolist()}] m"
                )

    # ------------------------------------------------------------------ helpers
    @classmethod
    def for_data(
        cls,
        model: Model,
        src_positions: Any,
        rec_positions: Any,
        data_axis: TimeAxis,
        vmax: float,
        f0_hz: float | None = None,
        delay: float | None = None,
        wavelet: Any = None,
        wavelet_dt: float | None = None,
        wavelet_t0: float = 0.0,
        trace_mask: Any = None,
    ) -> Survey:
        """A survey whose data live on ``data_axis``; the solver axis is chosen here.

        The solver step is the largest ``data_axis.dt / n`` (``n`` a whole number) not
        above ``model.critical_dt(vmax)`` (the physics' limit) for ``vmax`` (km/s, the fastest
        velocity the survey will be evaluated at); the solver starts on the data's
        sample grid at or before the first data sample, the shot time 0 and the start
        of the wavelet (a Ricker's ``delay − 1/f0``, or ``wavelet_t0``), and ends at
        the last data sample. Data samples then fall on solver samples.
        """
        if not isinstance(data_axis, TimeAxis):
            raise _err(f"data_axis must be a TimeAxis; got {type(data_axis).__name__}")
        check_model(model, error=InvalidSurveyError)
        vmax = check_positive_scalar("vmax", vmax)
        dtc = model.critical_dt(vmax)
        dt = data_axis.dt / math.ceil(data_axis.dt / dtc - 1e-9)
        if f0_hz is not None:
            f0 = check_positive_scalar("f0_hz", f0_hz)
            centre = 1000.0 / f0 if delay is None else float(delay)
            start = centre - _RICKER_HALF_SPAN * 1000.0 / f0
        else:
            start = float(wavelet_t0)
        first = min(data_axis.t0, start, 0.0)
        k = math.ceil((data_axis.t0 - first) / dt - 1e-9)
        return cls(
            src_positions,
            rec_positions,
            t1=data_axis.t1,
            dt=dt,
            t0=data_axis.t0 - k * dt,
            f0_hz=f0_hz,
            wavelet=wavelet,
            delay=delay,
            wavelet_dt=wavelet_dt,
            wavelet_t0=wavelet_t0,
            data_axis=data_axis,
            trace_mask=trace_mask,
        )

    @classmethod
    def surface(
        cls,
        model: Model,
        nshots: int,
        nreceivers: int,
        t1: float,
        f0_hz: float,
        dt: float | None = None,
        vmax: float | None = None,
        src_depth: float | None = None,
        rec_depth: float | None = None,
        t0: float = 0.0,
    ) -> Survey:
        """A regular surface survey over a 2D model.

        ``nshots`` sources evenly spread across x (one at the centre when
        ``nshots == 1``) and ``nreceivers`` receivers spanning the whole x range,
        shared by every shot. Depths default to two grid cells below the top
        (source) and one cell (receivers). Give ``dt`` (ms), or ``vmax`` (km/s) to
        use the model's critical time step for that velocity (a sharp bound: give a
        ``vmax`` above the fastest model the survey will be evaluated at).
        """
        check_model(model, error=InvalidSurveyError)
        if model.dim != 2:
            raise _err(f"Survey.surface builds 2D surveys; the model is {model.dim}D")
        nshots = check_positive_int("nshots", nshots)
        nreceivers = check_positive_int("nreceivers", nreceivers)
        if dt is None:
            if vmax is None:
                raise _err("Survey.surface needs dt (ms) or vmax (km/s) to set the time step")
            dt = model.critical_dt(vmax)
        (x0, z0), (x1, _) = model.domain_min, model.domain_max
        hz = model.spacing[1]
        sd = z0 + 2 * hz if src_depth is None else float(src_depth)
        rd = z0 + hz if rec_depth is None else float(rec_depth)
        if nshots == 1:
            xs = np.array([(x0 + x1) / 2])
        else:
            xs = np.linspace(x0, x1, nshots + 2)[1:-1]
        src = np.stack([xs, np.full(nshots, sd)], axis=1)
        xr = np.linspace(x0, x1, nreceivers)
        rec = np.stack([xr, np.full(nreceivers, rd)], axis=1)
        return cls(src, rec, t1=t1, dt=dt, t0=t0, f0_hz=f0_hz)
