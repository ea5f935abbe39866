"""Acquisition geometry: shots, receivers, time axis and source wavelet.

Units: coordinates in m, times in ms, peak frequency in Hz (converted to kHz
internally, as Devito's formulas use ms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from devito_uq.errors import InvalidSurveyError
from devito_uq.physics.model import AcousticModel
from devito_uq.physics.stencil import time_axis_length
from devito_uq.physics.wavelets import ricker
from devito_uq.validation import check_positive_int

__all__ = ["Survey", "Shot"]


@dataclass(frozen=True)
class Shot:
    """One shot: source ``[dim]`` (m), receivers ``[receiver, dim]`` (m), wavelet ``[time]``."""

    src_position: np.ndarray
    rec_positions: np.ndarray
    wavelet: np.ndarray


def _err(msg: str) -> InvalidSurveyError:
    return InvalidSurveyError(msg)


class Survey:
    """Source and receiver positions per shot, a time axis and the source wavelet.

    Parameters
    ----------
    src_positions : array ``[shot, dim]``
        One point source per shot, coordinates in m.
    rec_positions : array ``[receiver, dim]`` or sequence of such arrays
        Receivers shared by every shot, or one array per shot (counts may differ).
    t1 : float
        Last recording time (ms).
    dt : float
        Time step (ms) of both the recording and the wave-equation solve; must not
        exceed :meth:`AcousticModel.critical_dt` of the velocities modelled.
    t0 : float
        First time (ms), default 0.
    f0_hz : float, optional
        Peak frequency (Hz) of a Ricker wavelet (Devito's convention, delay 1/f0).
    wavelet : array ``[time]`` or ``[shot, time]``, optional
        User wavelet instead of a Ricker, sampled on the survey's time axis.

    The time axis (:func:`~devito_uq.physics.stencil.time_axis_length`) has
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
        self.t0, self.dt = t0, dt
        self.nt = time_axis_length(t0, t1, dt)
        if self.nt < 3:
            raise _err(f"time axis t0={t0}, t1={t1}, dt={dt} ms has {self.nt} samples; need 3")
        self.t1 = t0 + dt * (self.nt - 1)

        if (f0_hz is None) == (wavelet is None):
            raise _err("give exactly one of f0_hz (Ricker peak frequency, Hz) and wavelet")
        if wavelet is None:
            f0 = float(f0_hz)
            if not (np.isfinite(f0) and f0 > 0):
                raise _err(f"f0_hz={f0_hz!r} must be finite and positive")
            self.f0_hz: float | None = f0
            w = np.broadcast_to(ricker(self.time, f0), (self.nshots, self.nt))
        else:
            self.f0_hz = None
            w = np.asarray(wavelet, dtype=np.float64)
            if w.ndim == 1:
                w = w[None, :]
            if w.ndim != 2 or w.shape[1] != self.nt or w.shape[0] not in (1, self.nshots):
                raise _err(
                    f"wavelet has shape {list(np.shape(wavelet))}; expected [{self.nt}] "
                    f"or [{self.nshots}, {self.nt}] (time samples of the survey)"
                )
            if not np.all(np.isfinite(w)):
                raise _err("wavelet contains NaN or infinite values")
            w = np.broadcast_to(w, (self.nshots, self.nt))
        self.wavelet = np.ascontiguousarray(w)

    # ---------------------------------------------------------------- accessors
    @property
    def time(self) -> np.ndarray:
        """Time samples (ms), ``[time]``."""
        return self.t0 + self.dt * np.arange(self.nt)

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

    # --------------------------------------------------------------- validation
    def select(self, shots: Any = None) -> list[int]:
        """Validated list of shot indices (all shots for ``None``)."""
        if shots is None:
            return list(range(self.nshots))
        if isinstance(shots, (int, np.integer)) and not isinstance(shots, bool):
            shots = [int(shots)]
        try:
            idx = [int(s) for s in np.asarray(shots).reshape(-1)]
        except (TypeError, ValueError) as exc:
            raise _err(f"shots={shots!r} must be shot indices") from exc
        if len(idx) == 0:
            raise _err("shots=[] selects no shot; give at least one index")
        for s in idx:
            if s < 0 or s >= self.nshots:
                raise _err(f"shot index {s} is out of range for a survey of {self.nshots} shots")
        return idx

    def check_inside(self, model: AcousticModel) -> None:
        """Raise :class:`InvalidSurveyError` if a source or receiver lies outside the model."""
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
    def surface(
        cls,
        model: AcousticModel,
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
