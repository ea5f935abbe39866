r"""Plane-wave (τ-p) AVP modelling and its Born linearisation as torch modules.

``PlaneWaveModeling`` maps squared slowness ``m [batch, nz]`` (s²/km², first sample at the
surface, source and receiver depth) to traces ``d [batch, p, nt]``, one per ray parameter;
``loss.backward()`` runs the adjoint-state solve. A batch of models × all ray parameters is
one Devito kernel call (:mod:`~devito_uq.physics.planewave.solver`). The gradient is the
exact discrete adjoint of the recursion, so dot tests close to machine precision.
``PlaneWaveBornModeling(op, m0)`` is the linear map ``δm ↦ J(m0) δm`` with backward
``J(m0)ᵀ``, as :class:`~devito_uq.physics.acoustic.modeling.BornModeling` is for the
acoustic physics. The model is extended into the absorbing layers by repeating its
end values (:mod:`devito_uq.physics.padding`), the gradient folded back by the adjoint.
Solves run on the CPU; a CUDA input is copied to the host and results copied back.

References
----------
Rizzuti, Siahkoohi, Witte, Herrmann (2020), Parameterizing uncertainty by
deep invertible networks, an application to reservoir characterization,
SEG Technical Program Expanded Abstracts.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from devito_uq.errors import (
    InvalidArgumentError,
    InvalidModelError,
    InvalidShapeError,
    StabilityError,
)
from devito_uq.physics import stencil
from devito_uq.physics.convert import to_numpy, to_tensor
from devito_uq.physics.planewave.model import PlaneWaveModel
from devito_uq.physics.solver import get_solver, new_owner
from devito_uq.physics.wavelets import bandpass_wavelet
from devito_uq.validation import (
    as_float_array,
    check_allocation,
    check_device,
    check_dtype,
    check_finite,
    check_finite_positive,
    check_int,
    check_nonnegative_int,
    check_positive_scalar,
)

__all__ = ["PlaneWaveModeling", "PlaneWaveBornModeling", "ray_parameters_from_angles"]

#: Original AVP set-up (SEG 2020): 4th-order Laplacian, 50-point absorbing layers,
#: quadratic damping ramp of 1e-4 s/m² (= 0.1 ms/m² in this package's units).
DEFAULT_SPACE_ORDER = 4
DEFAULT_NBL = 50
DEFAULT_DAMPING = 0.1
#: Batch sizes whose solver (kernel + full wavefield) a module keeps (LRU eviction).
MAX_BATCH_SOLVERS = 4


def ray_parameters_from_angles(angles_deg: Sequence[float], v_min: float) -> np.ndarray:
    """Ray parameters ``p = sin θ / v_min`` in s/km, ``[n_angles]``.

    Parameters
    ----------
    angles_deg : sequence of float
        Incidence angles in degrees, each in [0, 90).
    v_min : float
        The slowest velocity in km/s (the largest slowness) that the plane waves
        must still propagate in.

    Returns
    -------
    numpy.ndarray
        ``[n_angles]`` ray parameters (s/km).

    Raises
    ------
    InvalidArgumentError
        On an empty list, an angle outside [0, 90) or a non-positive ``v_min``.
    """
    ang = as_float_array("angles_deg", angles_deg, ndim=1)
    if ang.size == 0 or np.any(ang < 0) or np.any(ang >= 90):
        raise InvalidArgumentError(f"angles_deg={ang.tolist()} must be non-empty, in [0, 90)")
    v_min = check_positive_scalar("v_min", v_min)
    return np.sin(np.deg2rad(ang)) / v_min


class _PlaneWaveFunction(torch.autograd.Function):
    """``m [batch, nz] → traces [batch, p, nt]`` with the adjoint-state backward."""

    @staticmethod
    def forward(ctx, m: torch.Tensor, module: PlaneWaveModeling) -> torch.Tensor:
        dtype = check_dtype("m.dtype", m.dtype)
        solver = module._solver(m.shape[0], dtype)
        owner = new_owner()
        with module._counting(solver):
            out = solver.forward(to_numpy(m, dtype), *module._inputs(dtype), owner=owner)
        ctx.module, ctx.owner, ctx.dtype = module, owner, dtype
        ctx.save_for_backward(m)
        return to_tensor(out, m.device)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        check_finite("grad_out", grad_out)
        (m,) = ctx.saved_tensors
        solver = ctx.module._solver(m.shape[0], ctx.dtype)
        # Recomputes the forward if another call reused the wavefield buffer since.
        with ctx.module._counting(solver):
            g = solver.jacobian_adjoint(
                to_numpy(m, ctx.dtype),
                *ctx.module._inputs(ctx.dtype),
                to_numpy(grad_out, ctx.dtype),
                owner=ctx.owner,
            )
        return to_tensor(g, m.device), None


class _PlaneWaveBornFunction(torch.autograd.Function):
    """``δm [batch, nz] → J(m0) δm [batch, p, nt]``; backward ``J(m0)ᵀ``."""

    @staticmethod
    def forward(ctx, dm: torch.Tensor, module: PlaneWaveBornModeling) -> torch.Tensor:
        dtype = check_dtype("dm.dtype", dm.dtype)
        batch = dm.shape[0]
        solver = module.modeling._solver(batch, dtype)
        m0 = module._background(batch, dtype)
        owner = module._owner(batch, dtype)
        args = module.modeling._inputs(dtype)
        with module.modeling._counting(solver):
            out = solver.jacobian(m0, to_numpy(dm, dtype), *args, owner=owner)
        ctx.module, ctx.dtype, ctx.batch, ctx.device = module, dtype, batch, dm.device
        return to_tensor(out, dm.device)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        check_finite("grad_out", grad_out)
        module = ctx.module
        solver = module.modeling._solver(ctx.batch, ctx.dtype)
        with module.modeling._counting(solver):
            g = solver.jacobian_adjoint(
                module._background(ctx.batch, ctx.dtype),
                *module.modeling._inputs(ctx.dtype),
                to_numpy(grad_out, ctx.dtype),
                owner=module._owner(ctx.batch, ctx.dtype),
            )
        return to_tensor(g, ctx.device), None


class PlaneWaveModeling(torch.nn.Module):
    r"""Plane-wave (τ-p) AVP modelling: ``m [batch, nz] → d [batch, p, nt]``.

    ``d[b, i, n]`` is the pressure trace of ray parameter ``ray_parameters[i]`` at
    time ``n·dt`` ms. An unbatched ``m [nz]`` gives ``d [p, nt]``. A batch of models ×
    all ray parameters is one Devito kernel call, compiled once per (batch size,
    dtype, geometry) and shared by equal modules (``get_solver``). Each solver holds
    kernels and the saved ``∂²_t u`` ``[nt+16…, batch·p, nz+2·nbl]``, so at most
    :data:`MAX_BATCH_SOLVERS` batch sizes are kept per module (and per geometry in the
    registry, ``PlaneWaveSolver.max_cached``); the least recently used is evicted and
    recompiled if needed again (Devito's on-disk JIT cache makes that cheap).

    Parameters
    ----------
    ray_parameters : array ``[p]``
        Ray parameters in s/km (≥ 0).
    nz : int
        Number of depth samples of the model.
    dz : float
        Depth spacing in m.
    t1 : float
        Record length in ms (``nt = ceil(t1/dt − 1e-6) + 1`` samples,
        :func:`~devito_uq.physics.stencil.time_axis_length`).
    dt : float
        Time step in ms (also the data sampling).
    wavelet : array ``[nt]``, optional
        Source time function; default :func:`bandpass_wavelet` with ``corners`` in Hz.
    corners : tuple of 4 float
        Corner frequencies (Hz) of the default wavelet.
    nbl : int
        Absorbing (damping) layer thickness in samples above and below the model.
    damping : float
        Peak damping η (ms/m²) of the quadratic ramp in the layers.
    space_order : int
        Order of the depth stencil (even, 2 … 16).
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
        nbl: int = DEFAULT_NBL,
        damping: float = DEFAULT_DAMPING,
        space_order: int = DEFAULT_SPACE_ORDER,
    ) -> None:
        super().__init__()
        p = as_float_array("ray_parameters", ray_parameters, ndim=1)
        if p.size == 0 or np.any(p < 0):
            raise InvalidArgumentError(
                f"ray_parameters={p.tolist()} must be a non-empty list of values >= 0 (s/km)"
            )
        self.nz = check_int("nz", nz, minimum=2)
        self.dz = check_positive_scalar("dz", dz)
        self.dt = check_positive_scalar("dt", dt)
        t1 = check_positive_scalar("t1", t1)
        if t1 < 2 * self.dt:
            raise InvalidArgumentError(f"t1={t1} ms must span at least two steps of dt={dt} ms")
        self.nt = stencil.time_axis_length(0.0, t1, self.dt)
        self.nbl = check_nonnegative_int("nbl", nbl)
        # Before the wavelet [nt] and the solver's [nt+…, batch·p, nz] saved field exist.
        check_allocation(
            f"a time axis of {t1 / self.dt:.6g} steps (t1={t1:g}, dt={self.dt:g} ms)",
            int(min(t1 / self.dt, 2.0**62) + 2) * 8 * (3 + p.size * (self.nz + 2 * self.nbl)),
        )
        self.space_order = stencil.check_space_order(space_order)
        #: The depth grid (:mod:`devito_uq.physics.planewave.model`): layers, order, the
        #: damping profile and the τ-p stability limit.
        self.model = PlaneWaveModel(
            (self.nz,), (self.dz,), nbl=self.nbl, space_order=self.space_order, damping=damping
        )
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
        self._damping = self.model.damping()
        self._solvers: OrderedDict[tuple, Any] = OrderedDict()
        self._cached_inputs: dict[type, tuple] = {}
        self._n_solves = 0

    def _solver(self, batch: int, dtype: type) -> Any:
        """The shared solver for ``batch`` models in ``dtype`` (Devito loads on first use)."""
        key = (batch, np.dtype(dtype).name)
        if key in self._solvers:
            self._solvers.move_to_end(key)
        else:
            from devito_uq.physics.planewave.solver import PlaneWaveSolver

            self._check_memory(batch, dtype)
            while len(self._solvers) >= MAX_BATCH_SOLVERS:
                self._solvers.popitem(last=False)

            self._solvers[key] = get_solver(
                PlaneWaveSolver,
                batch,
                self.ray_parameters.numel(),
                self.nz,
                self.nbl,
                self.nt,
                self.dt,
                self.dz,
                self.space_order,
                dtype,
            )
        return self._solvers[key]

    def _inputs(self, dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(p², wavelet, damping)`` as the solver takes them."""
        if dtype not in self._cached_inputs:
            p2 = self.ray_parameters.cpu().numpy() ** 2
            self._cached_inputs[dtype] = (
                p2,
                self.wavelet.cpu().numpy().astype(dtype),
                self._damping,
            )
        return self._cached_inputs[dtype]

    def _check_memory(self, batch: int, dtype: type) -> None:
        """Refuse a batch whose solver (saved ``∂²_t u``, rolling levels, traces) cannot fit."""
        from devito_uq.physics.planewave import solver as pws
        from devito_uq.physics.planewave.operators import BLOCK

        rows, nze, so = batch * self.ray_parameters.numel(), self.nz_extended, self.space_order
        nt_run = BLOCK * -(-(self.nt - 1) // BLOCK)  # PlaneWaveSolver.nt_run
        nt_buf = nt_run + 2 * BLOCK  # PlaneWaveSolver.nt_buf
        # saved D (full-D adjoint or Born) and the [time, rows] buffers; u, λ (BLOCK + 2
        # levels) and Born's δu (3 levels) with halos; coefficients, gradient and δA.
        elements = nt_buf * rows * (nze + 3) + (2 * BLOCK + 7) * (rows + so) * (nze + so)
        seg = pws.SEGMENT
        if seg:  # checkpoints (2 levels every S steps) and the segment's S + 2 levels of u
            elements += 2 * (nt_run // seg + 1) * rows * nze + (seg + 2) * (rows + so) * (nze + so)
        check_allocation(
            f"a plane-wave solver for batch={batch} × {self.ray_parameters.numel()} ray "
            f"parameters × {self.nt} steps × {self.nz_extended} depths",
            (elements + 4 * rows * nze) * np.dtype(dtype).itemsize,
        )

    @contextlib.contextmanager
    def _counting(self, solver: Any) -> Iterator[None]:
        """Add the solves ``solver`` runs inside the block to this module's count (solvers
        are shared by equal modules, so their own counters mix several modules)."""
        before = solver.n_solves
        try:
            yield
        finally:
            self._n_solves += solver.n_solves - before

    @property
    def n_solves(self) -> int:
        """Single-(model, p) PDE solves run for this module: forward, adjoint, Born."""
        return self._n_solves

    @property
    def nz_extended(self) -> int:
        """Depth samples including both absorbing layers."""
        return self.nz + 2 * self.nbl

    @property
    def times(self) -> torch.Tensor:
        """``[nt]`` trace times in ms."""
        return torch.arange(self.nt, dtype=torch.float64) * self.dt

    def extra_repr(self) -> str:
        return (
            f"p={self.ray_parameters.numel()}, nz={self.nz}, dz={self.dz}, nt={self.nt}, "
            f"dt={self.dt}, nbl={self.nbl}, space_order={self.space_order}"
        )

    def check_model(self, m: Any, name: str = "m") -> tuple[torch.Tensor, bool, type]:
        """Validate ``m`` (shape, dtype, m > 0, no evanescence, CFL).

        Returns ``(m as [batch, nz], whether the input was unbatched, numpy dtype)``.
        """
        if not isinstance(m, torch.Tensor):
            raise InvalidArgumentError(f"{name} must be a torch.Tensor, got {type(m).__name__}")
        check_device(f"{name}.device", m)
        dtype = check_dtype(f"{name}.dtype", m.dtype)
        squeeze = m.ndim == 1
        mb = m[None] if squeeze else m
        if mb.ndim != 2 or mb.shape[1] != self.nz or mb.shape[0] < 1:
            raise InvalidShapeError(
                f"{name} has shape {list(m.shape)}; expected [batch, {self.nz}] or [{self.nz}]"
            )
        check_finite_positive(f"{name} (squared slowness, s²/km²)", m.detach())
        p_max = float(self.ray_parameters.max())
        m_min = float(mb.detach().min())
        a_min = m_min - p_max**2
        if a_min <= 0:
            idx = tuple(int(i) for i in torch.nonzero(m.detach() == m_min)[0])
            raise InvalidModelError(
                f"ray parameter p={p_max:.6g} s/km is evanescent where m={m_min:.6g} s²/km² "
                f"(v={1 / math.sqrt(m_min):.6g} km/s) at index {idx}: need p < 1/v everywhere"
            )
        # The 1D scheme's wave speed is 1/sqrt(m − p²): the one CFL rule with that vmax.
        limit = self.model.critical_dt(1.0 / math.sqrt(a_min))
        if self.dt > limit:
            raise StabilityError(
                f"dt={self.dt} ms exceeds the stability limit {limit:.4g} ms for "
                f"min(m − p²)={a_min:.4g} s²/km² (dz={self.dz} m, space_order={self.space_order})"
            )
        return mb, squeeze, dtype

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        """Data ``[batch, p, nt]`` (or ``[p, nt]``) for squared slowness ``m``."""
        mb, squeeze, _ = self.check_model(m)
        d = _PlaneWaveFunction.apply(mb, self)
        return d[0] if squeeze else d

    def jacobian(self, m: torch.Tensor, dm: torch.Tensor) -> torch.Tensor:
        """Born data ``J(m) δm``, shaped like ``forward(m)`` (no autograd; see
        :class:`PlaneWaveBornModeling` for the differentiable module).

        ``m`` and ``dm`` have the same shape; each model of a batch is linearised
        about its own ``m``.
        """
        mb, squeeze, dtype = self.check_model(m)
        if not isinstance(dm, torch.Tensor) or dm.shape != m.shape:
            raise InvalidShapeError(
                f"dm has shape {list(getattr(dm, 'shape', []))}; expected {list(m.shape)}"
            )
        check_finite("dm", dm.detach())
        dmb = dm[None] if squeeze else dm
        solver = self._solver(mb.shape[0], dtype)
        dd = solver.jacobian(to_numpy(mb, dtype), to_numpy(dmb, dtype), *self._inputs(dtype))
        out = to_tensor(dd, m.device)
        return out[0] if squeeze else out


class PlaneWaveBornModeling(torch.nn.Module):
    """Born (linearised) plane-wave modelling ``δd = J(m0) δm`` as a linear torch module.

    ``modeling`` is the :class:`PlaneWaveModeling` whose geometry, wavelet and
    damping are used; ``m0`` (``[nz]``, s²/km², tensor or array) the background,
    validated once here. Call ``J(dm)``: ``dm`` ``[nz]`` → ``[p, nt]``, batched
    ``[batch, nz]`` → ``[batch, p, nt]``. Backward applies ``J(m0)ᵀ`` (the exact
    discrete adjoint), reusing the saved background wavefield while no other call
    has overwritten it.
    """

    def __init__(self, modeling: PlaneWaveModeling, m0: Any) -> None:
        super().__init__()
        if not isinstance(modeling, PlaneWaveModeling):
            raise InvalidArgumentError(
                f"modeling must be a PlaneWaveModeling; got {type(modeling).__name__}"
            )
        m0t = torch.as_tensor(as_float_array("m0", m0, ndim=1))
        modeling.check_model(m0t, "m0")
        self.modeling = modeling
        self.m0_numpy = m0t.numpy()
        self._owners: dict[tuple, object] = {}

    def _background(self, batch: int, dtype: type) -> np.ndarray:
        return np.broadcast_to(self.m0_numpy.astype(dtype), (batch, self.modeling.nz))

    def _owner(self, batch: int, dtype: type) -> object:
        """Owner token of the background wavefield of ``m0`` in the ``(batch, dtype)`` solver."""
        return self._owners.setdefault((batch, np.dtype(dtype).name), new_owner())

    def forward(self, dm: torch.Tensor) -> torch.Tensor:
        """Born data for the perturbation ``dm`` (s²/km²); see the class docstring."""
        if not isinstance(dm, torch.Tensor):
            raise InvalidArgumentError(f"dm must be a torch.Tensor, got {type(dm).__name__}")
        check_device("dm.device", dm)
        check_dtype("dm.dtype", dm.dtype)
        squeeze = dm.ndim == 1
        dmb = dm[None] if squeeze else dm
        nz = self.modeling.nz
        if dmb.ndim != 2 or dmb.shape[1] != nz or dmb.shape[0] < 1:
            raise InvalidShapeError(
                f"dm has shape {list(dm.shape)}; expected [batch, {nz}] or [{nz}]"
            )
        check_finite("dm", dm.detach())
        d = _PlaneWaveBornFunction.apply(dmb, self)
        return d[0] if squeeze else d

    def extra_repr(self) -> str:
        return self.modeling.extra_repr()
