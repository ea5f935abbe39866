r"""Batched 1D plane-wave (τ-p) acoustic modelling as a torch module.

For each ray parameter :math:`p` the constant-density acoustic wave equation
reduces, after a plane-wave decomposition, to the 1D equation

.. math::
    (m(z) - p^2)\,\partial_t^2 u - \partial_z^2 u + \eta(z)\,\partial_t u
        = q(t)\,\delta(z - z_s),

with :math:`m = 1/v^2` the squared slowness (s²/km², so that with z in m and t
in ms the equation is dimensionally consistent), :math:`\eta` a damping profile
that is non-zero only in the absorbing layers above and below the model, and
source and receiver at the surface (the first model sample). The trace of one
ray parameter is :math:`u(z_s, t)`; a record is one trace per ray parameter.

A batch of models times all ray parameters is solved by **one** compiled Devito
kernel call: the Devito grid is 2D, its first axis indexes (model, ray
parameter) and carries no derivative, its second axis is depth. Sources and
receivers are not ``SparseTimeFunction``\ s (interpolation at the last batch
index read the halo — ../shared/MEASURED.md); the wavelet enters through a
depth mask times a time series, and the traces are read straight out of the
saved wavefield.

Discretisation (2nd order in time, ``space_order`` in depth; :math:`A = m - p^2`):

.. math::
    B\,u^{n+1} = (2A/\Delta t^2 + L)\,u^n - E\,u^{n-1} + q^n e_s/\Delta z, \quad
    B = A/\Delta t^2 + \eta/(2\Delta t),\ E = A/\Delta t^2 - \eta/(2\Delta t),

and the data are :math:`d^n = u^n(z_s)`, :math:`n = 0 … n_t-1`. The gradient is
the exact discrete adjoint of this recursion (same scheme run backward, fed by
the data residual at the receiver), so dot tests close to machine precision.
The model is extended into the absorbing layers by repeating its end values;
the gradient of those copies flows back to the end samples through torch.

References:
    Rizzuti, Siahkoohi, Witte, Herrmann (2020), Parameterizing uncertainty by
    deep invertible networks, an application to reservoir characterization,
    SEG Technical Program Expanded Abstracts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F_nn

from devito_uq.errors import (
    InvalidArgumentError,
    InvalidModelError,
    InvalidShapeError,
    StabilityError,
)
from devito_uq.physics._validate import (
    as_float_array,
    check_dtype,
    check_finite_positive,
    check_nonnegative_int,
    check_positive_int,
    check_positive_scalar,
    check_tuple,
)

__all__ = [
    "PlaneWaveModeling",
    "plane_wave_modeling",
    "bandpass_wavelet",
    "ray_parameters_from_angles",
    "critical_dt",
]

#: Original AVP set-up (SEG 2020): 4th-order Laplacian, 50-point absorbing layers,
#: quadratic damping ramp of 1e-4 s/m² (= 0.1 ms/m² in this package's units).
DEFAULT_SPACE_ORDER = 4
DEFAULT_ABSORBING = 50
DEFAULT_DAMPING = 0.1


# --------------------------------------------------------------------------- helpers


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


def ray_parameters_from_angles(angles_deg: Sequence[float], v_min: float) -> np.ndarray:
    """Ray parameters ``p = sin θ / v_min`` in s/km, ``[n_angles]``.

    Args:
        angles_deg: incidence angles in degrees, each in [0, 90).
        v_min: the slowest velocity in km/s (the largest slowness) that the
            plane waves must still propagate in.
    """
    ang = as_float_array("angles_deg", angles_deg, ndim=1)
    if ang.size == 0 or np.any(ang < 0) or np.any(ang >= 90):
        raise InvalidArgumentError(f"angles_deg={ang.tolist()} must be non-empty, in [0, 90)")
    v_min = check_positive_scalar("v_min", v_min)
    return np.sin(np.deg2rad(ang)) / v_min


def _laplacian_weight_sum(space_order: int) -> float:
    """Σ|c_k| of the centred second-derivative stencil of ``space_order`` (times dz²)."""
    half = space_order // 2
    # Fornberg weights of the centred stencil solved from the Taylor conditions.
    offs = np.arange(-half, half + 1, dtype=np.float64)
    mat = np.vander(offs, increasing=True).T
    rhs = np.zeros(len(offs))
    rhs[2] = 2.0
    w = np.linalg.solve(mat, rhs)
    return float(np.abs(w).sum())


def critical_dt(a_min: float, dz: float, space_order: int = DEFAULT_SPACE_ORDER) -> float:
    """Largest stable time step in ms for ``A = m − p² ≥ a_min`` (s²/km²), dz in m.

    Von Neumann bound of the leap-frog scheme: ``dt ≤ 2 dz √a_min / √(Σ|c_k|)``
    (the damping term only makes the scheme more stable).
    """
    return 2.0 * dz * math.sqrt(a_min) / math.sqrt(_laplacian_weight_sum(space_order))


# --------------------------------------------------------------------------- kernel


class _Kernel:
    """Compiled Devito operators and their buffers for one (rows, nz, nt, dtype, order).

    Rows index (model, ray parameter). ``forward`` leaves the full wavefield in
    ``self.u`` (``nt + 1`` time levels), which ``gradient`` and ``born`` read.
    """

    def __init__(
        self,
        rows: int,
        nz: int,
        nt: int,
        dt: float,
        dz: float,
        space_order: int,
        dtype: type,
        src_index: int,
        damping: np.ndarray,
    ) -> None:
        # Devito imports are deferred so that importing devito_uq stays cheap.
        from devito import Constant, Eq, Function, Grid, Operator, SpaceDimension, TimeFunction

        self.rows, self.nz, self.nt, self.dtype = rows, nz, nt, dtype
        self.src_index = src_index
        bdim = SpaceDimension("b", spacing=Constant(name="hb", value=1.0, dtype=dtype))
        zdim = SpaceDimension("z", spacing=Constant(name="hz", value=dz, dtype=dtype))
        # Grid derives a spacing extent/(shape-1) that the explicit dimensions override;
        # with a single row that is a harmless 0-division warning.
        with np.errstate(divide="ignore", invalid="ignore"):
            grid = Grid(
                shape=(rows, nz),
                extent=(float(rows - 1), dz * (nz - 1)),
                dimensions=(bdim, zdim),
                dtype=dtype,
            )
        time = grid.time_dim
        so = space_order
        self.u = TimeFunction(name="u", grid=grid, time_order=2, space_order=so, save=nt + 1)
        self.v = TimeFunction(name="v", grid=grid, time_order=2, space_order=so)
        self.a = Function(name="a", grid=grid, space_order=0)
        # Coefficients of the explicit update, fixed per call from A and the damping:
        # c1 = 2A/dt²/B, c2 = E/B, c3 = 1/B (one multiply-add per point and step).
        self.c1 = Function(name="c1", grid=grid, space_order=0)
        self.c2 = Function(name="c2", grid=grid, space_order=0)
        self.c3 = Function(name="c3", grid=grid, space_order=0)
        self.grad = Function(name="grad", grid=grid, space_order=0)
        smask = Function(name="smask", dimensions=(zdim,), shape=(nz,), dtype=dtype, space_order=0)
        rmask = Function(name="rmask", dimensions=(zdim,), shape=(nz,), dtype=dtype, space_order=0)
        smask.data[:] = 0.0
        smask.data[src_index] = 1.0 / dz  # δ(z - z_s) on the grid
        rmask.data[:] = 0.0
        rmask.data[src_index] = 1.0  # adjoint of reading u at z_s
        self.q = Function(name="q", dimensions=(time,), shape=(nt + 1,), dtype=dtype, space_order=0)
        self.res = Function(
            name="res", dimensions=(time, bdim), shape=(nt + 1, rows), dtype=dtype, space_order=0
        )
        u, v = self.u, self.v
        c1, c2, c3 = self.c1, self.c2, self.c3
        # U[j] = u^{j-1}: U[0] = U[1] = 0, iteration `time` writes U[time+1] = u^time.
        fwd = Eq(u.forward, c1 * u - c2 * u.backward + c3 * (u.dz2 + smask * self.q))
        # Adjoint: V[j] = λ^{j-1}; iteration `time` writes V[time-1] fed by r^{time-1}.
        adj = Eq(v.backward, c1 * v - c2 * v.forward + c3 * (v.dz2 + rmask * self.res))
        d2u = (u - 2 * u.backward + u.backward.backward) * (1.0 / dt**2)
        img = Eq(self.grad, self.grad - v.backward * d2u)
        self._op_fwd = Operator([fwd], name="planewave_forward")
        self._op_adj = Operator([adj, img], name="planewave_adjoint")
        self._op_born = None
        self._damping = np.asarray(damping, dtype=np.float64)
        self._dt = dt
        self._dz = dz
        self._so = so
        self._args: dict[str, list] = {}
        #: Id of the model whose wavefield sits in ``self.u`` (None: none).
        self.state: object = None
        #: Single-(row) PDE solves run by this kernel (each call solves ``rows``).
        self.n_solves = 0

    # The kernels are called thousands of times; `Operator.apply` re-derives the
    # arguments every call (~ms of Python, ../shared/MEASURED.md). The Function
    # objects and their buffers never change, so the argument list is built once.
    def _call(self, key: str, op, **kwargs) -> None:
        if key not in self._args:
            args = op.arguments(**kwargs)
            self._args[key] = (op.cfunction, [args[p.name] for p in op.parameters], args)
        cfun, values, _ = self._args[key]
        cfun(*values)

    def set_model(self, a: np.ndarray) -> None:
        """Load ``A = m − p²`` ``[rows, nz]`` and its update coefficients."""
        dt = self._dt
        a = np.asarray(a, dtype=np.float64)
        eta = self._damping[None, :] / (2.0 * dt)
        bb = a / dt**2 + eta
        self.a.data[:] = a
        self.c1.data[:] = 2.0 * a / dt**2 / bb
        self.c2.data[:] = (a / dt**2 - eta) / bb
        self.c3.data[:] = 1.0 / bb

    def forward(self, a: np.ndarray, wavelet: np.ndarray, state: object) -> np.ndarray:
        """Traces ``[rows, nt]`` for ``A`` ``[rows, nz]``; keeps the wavefield."""
        self.set_model(a)
        self.q.data[0] = 0.0
        self.q.data[1:] = wavelet  # iteration `time` injects q^{time-1}
        self.u.data[0:2] = 0.0
        self._call("fwd", self._op_fwd, time_m=1, time_M=self.nt - 1)
        self.state = state
        self.n_solves += self.rows
        return np.array(self.u.data[1:, :, self.src_index].T)

    def gradient(self, residual: np.ndarray) -> np.ndarray:
        """``∂⟨r, d⟩/∂A`` ``[rows, nz]`` for residual ``[rows, nt]`` (after ``forward``)."""
        self.res.data[0] = 0.0
        self.res.data[1:] = residual.T  # iteration `time` injects r^{time-1}
        self.v.data[:] = 0.0
        self.grad.data[:] = 0.0
        self._call("adj", self._op_adj, time_m=2, time_M=self.nt)
        self.n_solves += self.rows
        return np.array(self.grad.data)

    def born(self, a: np.ndarray, da: np.ndarray, wavelet: np.ndarray) -> np.ndarray:
        """Linearised traces ``[rows, nt]`` for a perturbation ``δA`` ``[rows, nz]``."""
        from devito import Eq, Function, Operator, TimeFunction

        if self._op_born is None:
            u = self.u
            self.du = TimeFunction(
                name="du", grid=u.grid, time_order=2, space_order=self._so, save=self.nt + 1
            )
            self.da = Function(name="da", grid=u.grid, space_order=0)
            du = self.du
            # δu^{n+1} has source −δA·(u^{n+1} − 2u^n + u^{n−1})/dt², i.e. the exact
            # derivative of the forward recursion with respect to A.
            d2u = (u.forward - 2 * u + u.backward) * (1.0 / self._dt**2)
            eq = Eq(
                du.forward,
                self.c1 * du - self.c2 * du.backward + self.c3 * (du.dz2 - self.da * d2u),
            )
            self._op_born = Operator([eq], name="planewave_born")
        self.forward(a, wavelet, state=None)
        self.da.data[:] = da
        self.du.data[0:2] = 0.0
        self._op_born.apply(time_m=1, time_M=self.nt - 1)
        self.n_solves += self.rows
        return np.array(self.du.data[1:, :, self.src_index].T)


# --------------------------------------------------------------------------- autograd


class _PlaneWaveFunction(torch.autograd.Function):
    """``A [rows, nz] → traces [rows, nt]`` with the adjoint-state backward."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, kernel: _Kernel, wavelet: np.ndarray) -> torch.Tensor:
        a_np = a.detach().cpu().numpy()
        token = object()
        out = kernel.forward(a_np, wavelet, token)
        ctx.kernel, ctx.wavelet, ctx.token = kernel, wavelet, token
        ctx.save_for_backward(a)
        return torch.from_numpy(out).to(device=a.device)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (a,) = ctx.saved_tensors
        kernel = ctx.kernel
        if kernel.state is not ctx.token:
            # Another forward reused the wavefield buffer since: recompute ours.
            kernel.forward(a.detach().cpu().numpy(), ctx.wavelet, ctx.token)
        res = grad_out.detach().cpu().numpy().astype(kernel.dtype, copy=False)
        g = kernel.gradient(res)
        return torch.from_numpy(g).to(device=a.device), None, None  # kernel, wavelet


def plane_wave_modeling(
    m: torch.Tensor,
    ray_parameters: torch.Tensor,
    kernel: _Kernel,
    wavelet: np.ndarray,
    absorbing: int,
) -> torch.Tensor:
    """Functional form: ``m [batch, nz] → d [batch, p, nt]`` through ``kernel``."""
    batch, nz = m.shape
    npar = ray_parameters.shape[0]
    # Repeat the end values into the absorbing layers (the original set-up); torch
    # sums the gradient of the copies back onto the end samples.
    m_ext = F_nn.pad(m[:, None, :], (absorbing, absorbing), mode="replicate")[:, 0, :]
    a = m_ext[:, None, :] - (ray_parameters**2)[None, :, None]
    d = _PlaneWaveFunction.apply(a.reshape(batch * npar, -1), kernel, wavelet)
    return d.reshape(batch, npar, -1)


# --------------------------------------------------------------------------- module


class PlaneWaveModeling(torch.nn.Module):
    r"""Plane-wave (τ-p) AVP modelling: ``m [batch, nz] → d [batch, p, nt]``.

    ``m`` is squared slowness in s²/km² on ``nz`` samples ``dz`` m apart, the first
    sample at the surface (source and receiver depth). ``d[b, i, n]`` is the
    pressure trace of ray parameter ``ray_parameters[i]`` at time ``n·dt`` ms.
    An unbatched ``m [nz]`` gives ``d [p, nt]``. ``loss.backward()`` runs the
    adjoint-state solve; a batch of models × all ray parameters is one Devito
    kernel call, compiled once per (batch size, dtype) and reused.

    Args:
        ray_parameters: ``[p]`` ray parameters in s/km (≥ 0).
        nz: number of depth samples of the model.
        dz: depth spacing in m.
        t1: record length in ms (``nt = round(t1/dt) + 1`` samples).
        dt: time step in ms (also the data sampling).
        wavelet: ``[nt]`` source time function; default :func:`bandpass_wavelet`
            with ``corners`` in Hz.
        corners: corner frequencies (Hz) of the default wavelet.
        absorbing: damping-layer thickness in samples above and below the model.
        damping: peak damping η (ms/m²) of the quadratic ramp in the layers.
        space_order: order of the depth stencil (even, 2 … 16).
    """

    def __init__(
        self,
        ray_parameters: Sequence[float] | np.ndarray | torch.Tensor,
        nz: int,
        dz: float,
        t1: float = 400.0,
        dt: float = 0.5,
        wavelet: Sequence[float] | np.ndarray | None = None,
        corners: Sequence[float] = (5.0, 30.0, 50.0, 80.0),
        absorbing: int = DEFAULT_ABSORBING,
        damping: float = DEFAULT_DAMPING,
        space_order: int = DEFAULT_SPACE_ORDER,
    ) -> None:
        super().__init__()
        p = as_float_array("ray_parameters", ray_parameters, ndim=1)
        if p.size == 0 or np.any(p < 0):
            raise InvalidArgumentError(
                f"ray_parameters={p.tolist()} must be a non-empty list of values >= 0 (s/km)"
            )
        self.nz = check_positive_int("nz", nz)
        if self.nz < 2:
            raise InvalidArgumentError(f"nz={nz} must be at least 2")
        self.dz = check_positive_scalar("dz", dz)
        self.dt = check_positive_scalar("dt", dt)
        t1 = check_positive_scalar("t1", t1)
        if t1 < 2 * self.dt:
            raise InvalidArgumentError(f"t1={t1} ms must span at least two steps of dt={dt} ms")
        self.nt = int(round(t1 / self.dt)) + 1
        self.absorbing = check_nonnegative_int("absorbing", absorbing)
        self.space_order = check_positive_int("space_order", space_order)
        if self.space_order % 2 or not 2 <= self.space_order <= 16:
            raise InvalidArgumentError(f"space_order={space_order} must be even, 2 … 16")
        if float(damping) < 0 or not math.isfinite(float(damping)):
            raise InvalidArgumentError(f"damping={damping} must be finite and >= 0")
        if wavelet is None:
            wav = bandpass_wavelet(self.nt, self.dt, corners)
        else:
            wav = as_float_array("wavelet", wavelet, ndim=1)
            if wav.shape[0] != self.nt:
                raise InvalidShapeError(
                    f"wavelet has {wav.shape[0]} samples; expected nt={self.nt} "
                    f"(t1={t1} ms at dt={self.dt} ms)"
                )
        self.register_buffer("ray_parameters", torch.as_tensor(p, dtype=torch.float64))
        self.register_buffer("wavelet", torch.as_tensor(wav, dtype=torch.float64))
        ramp = np.zeros(self.nz + 2 * self.absorbing)
        if self.absorbing:
            x = np.linspace(0.0, 1.0, self.absorbing)
            ramp[: self.absorbing] = x[::-1] ** 2
            ramp[self.nz + self.absorbing :] = x**2
        self._damping = float(damping) * ramp
        self._kernels: dict[tuple, _Kernel] = {}
        self._wavelets: dict[type, np.ndarray] = {}

    @property
    def n_solves(self) -> int:
        """Single-(model, p) PDE solves run so far: forward, adjoint and Born, all batches."""
        return sum(k.n_solves for k in self._kernels.values())

    @property
    def nz_extended(self) -> int:
        """Depth samples including both absorbing layers."""
        return self.nz + 2 * self.absorbing

    @property
    def times(self) -> torch.Tensor:
        """``[nt]`` trace times in ms."""
        return torch.arange(self.nt, dtype=torch.float64) * self.dt

    def extra_repr(self) -> str:
        return (
            f"p={self.ray_parameters.numel()}, nz={self.nz}, dz={self.dz}, nt={self.nt}, "
            f"dt={self.dt}, absorbing={self.absorbing}, space_order={self.space_order}"
        )

    # ----------------------------------------------------------------- validation

    def _check(self, m: torch.Tensor) -> tuple[torch.Tensor, bool, type]:
        if not isinstance(m, torch.Tensor):
            raise InvalidArgumentError(f"m must be a torch.Tensor, got {type(m).__name__}")
        dtype = check_dtype("m.dtype", m.dtype)
        squeeze = m.ndim == 1
        mb = m[None] if squeeze else m
        if mb.ndim != 2 or mb.shape[1] != self.nz or mb.shape[0] < 1:
            raise InvalidShapeError(
                f"m has shape {list(m.shape)}; expected [batch, {self.nz}] or [{self.nz}]"
            )
        check_finite_positive("m (squared slowness, s²/km²)", m.detach())
        p_max = float(self.ray_parameters.max())
        m_min = float(mb.detach().min())
        a_min = m_min - p_max**2
        if a_min <= 0:
            idx = tuple(int(i) for i in torch.nonzero(m.detach() == m_min)[0])
            raise InvalidModelError(
                f"ray parameter p={p_max:.6g} s/km is evanescent where m={m_min:.6g} s²/km² "
                f"(v={1 / math.sqrt(m_min):.6g} km/s) at index {idx}: need p < 1/v everywhere"
            )
        limit = critical_dt(a_min, self.dz, self.space_order)
        if self.dt > limit:
            raise StabilityError(
                f"dt={self.dt} ms exceeds the stability limit {limit:.4g} ms for "
                f"min(m − p²)={a_min:.4g} s²/km² (dz={self.dz} m, space_order={self.space_order})"
            )
        return mb, squeeze, dtype

    def _kernel(self, batch: int, dtype: type) -> _Kernel:
        key = (batch, dtype)
        if key not in self._kernels:
            self._kernels[key] = _Kernel(
                rows=batch * self.ray_parameters.numel(),
                nz=self.nz_extended,
                nt=self.nt,
                dt=self.dt,
                dz=self.dz,
                space_order=self.space_order,
                dtype=dtype,
                src_index=self.absorbing,
                damping=self._damping,
            )
            self._wavelets[dtype] = self.wavelet.cpu().numpy().astype(dtype)
        return self._kernels[key]

    # ----------------------------------------------------------------- operators

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        """Data ``[batch, p, nt]`` (or ``[p, nt]``) for squared slowness ``m``."""
        mb, squeeze, dtype = self._check(m)
        kernel = self._kernel(mb.shape[0], dtype)
        p = self.ray_parameters.to(device=m.device, dtype=m.dtype)
        d = plane_wave_modeling(mb, p, kernel, self._wavelets[dtype], self.absorbing)
        return d[0] if squeeze else d

    def jacobian(self, m: torch.Tensor, dm: torch.Tensor) -> torch.Tensor:
        """Born data ``J(m) δm``, shaped like ``forward(m)`` (no autograd).

        ``J`` is the exact derivative of the discrete forward map, so it pairs with
        the autograd gradient in a dot test.
        """
        mb, squeeze, dtype = self._check(m)
        if not isinstance(dm, torch.Tensor) or dm.shape != m.shape:
            raise InvalidShapeError(
                f"dm has shape {list(getattr(dm, 'shape', []))}; expected {list(m.shape)}"
            )
        dmb = dm[None] if squeeze else dm
        kernel = self._kernel(mb.shape[0], dtype)
        npar = self.ray_parameters.numel()
        p2 = (self.ray_parameters**2).cpu().numpy()
        pad = self.absorbing
        m_ext = np.pad(mb.detach().cpu().numpy().astype(np.float64), ((0, 0), (pad, pad)), "edge")
        dm_ext = np.pad(dmb.detach().cpu().numpy().astype(np.float64), ((0, 0), (pad, pad)), "edge")
        a = (m_ext[:, None, :] - p2[None, :, None]).reshape(-1, m_ext.shape[1])
        da = np.repeat(dm_ext[:, None, :], npar, axis=1).reshape(-1, m_ext.shape[1])
        dd = kernel.born(a, da, self._wavelets[dtype])
        out = torch.from_numpy(dd).to(device=m.device).reshape(mb.shape[0], npar, -1)
        return out[0] if squeeze else out
