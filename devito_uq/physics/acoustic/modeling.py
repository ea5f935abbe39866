r"""torch modules around the Devito acoustic operators.

``F = AcousticModeling(model, survey)`` maps squared slowness ``m`` (s²/km²) to
shot records; ``loss.backward()`` runs the adjoint-state gradient:

.. math::
    \frac{\partial \ell}{\partial m} = J(m)^\top \frac{\partial \ell}{\partial d},
    \qquad J(m)^\top \delta d = -\sum_t u[t]\,\partial_t^2 v[t],

with ``v`` the adjoint wavefield driven by the incoming gradient injected at the
receivers. ``BornModeling(model, survey, m0)`` is the linear map ``δm ↦ J(m0) δm``;
its backward is ``J(m0)ᵀ``.

Shapes: ``m`` ``[nx, nz]`` → data ``[shot, time, receiver]``; ``m``
``[batch, nx, nz]`` → ``[batch, shot, time, receiver]``. ``time`` is the survey's
*data* axis (``survey.nt_data`` samples): when it differs from the solver axis the
traces are resampled, ``d = R d_solver`` with ``R = survey.resampling()``, and backward
applies ``Rᵀ`` to the residual before injecting it (exact adjoint). When the axes
coincide nothing is resampled. ``receiver`` is the largest receiver count of the
selected shots; missing receivers and dead traces (``survey.mask(shots)`` False) are
zero in the output and receive no residual (see :mod:`devito_uq.physics.survey`).

The solves run on the CPU (Devito's C backend). A CUDA tensor is copied to the
host for the solve and the result (and its gradient) copied back to its device.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from devito_uq.physics import batching
from devito_uq.physics.acoustic.checks import (
    check_geometry,
    check_input,
    check_solver_memory,
    check_stability,
    receiver_count,
)
from devito_uq.physics.acoustic.model import AcousticModel
from devito_uq.physics.convert import DataAxis, to_numpy, to_tensor
from devito_uq.physics.solver import cached_solvers, get_solver, new_owner
from devito_uq.physics.survey import Survey
from devito_uq.validation import (
    check_dtype,
    check_finite,
    check_finite_positive,
    check_nonnegative_int,
    check_positive_int,
    check_shape,
)

__all__ = ["AcousticModeling", "BornModeling", "check_stability", "BATCH_SIZE"]

#: Default models per Devito kernel call for a batched input (measured in
#: ``benchmarks/bench_batched.py``: per-sample throughput of Born forward + adjoint).
BATCH_SIZE = 8


def _solver(model: AcousticModel, dtype: type) -> Any:
    """The shared acoustic solver (importing it, and Devito, on first use)."""
    from devito_uq.physics.acoustic.solver import AcousticSolver

    return get_solver(AcousticSolver, model, dtype)


def _batched(model: AcousticModel, dtype: type, batch: int) -> Any:
    """The shared batched solver for ``batch`` models (:mod:`.batched`)."""
    from devito_uq.physics.acoustic.batched import BatchedAcousticSolver

    return get_solver(BatchedAcousticSolver, model, dtype, batch)


def _work(model: AcousticModel, nt: int) -> int:
    """Cell-steps of one solve: padded grid cells × time steps (:func:`.batching.plan`
    counts them per model of a call: times the call's shots)."""
    return int(np.prod(model.padded_shape)) * int(nt)


def _release_owners(owners: dict) -> None:
    """Drop the pooled wavefields of ``owners`` (a garbage-collected module's tokens) from
    every cached solver (the pool is the :class:`~devito_uq.physics.solver.Solver` base's)."""
    tokens = list(owners.values())
    for solver in cached_solvers() if tokens else ():
        solver.release_owners(tokens)


class _AcousticFunction(torch.autograd.Function):
    """Nonlinear modeling; backward = adjoint-state gradient (one solve pair per shot)."""

    @staticmethod
    def forward(
        ctx, m: torch.Tensor, module: AcousticModeling, shots: list[int], need_grad: bool
    ) -> torch.Tensor:
        batched = m.dim() == module.model.dim + 1
        dtype = check_dtype("m.dtype", m.dtype)
        solver = _solver(module.model, dtype)
        solver.max_wavefield_bytes = module.max_wavefield_bytes
        survey = module.survey
        mb = to_numpy(m if batched else m[None], dtype)
        one = solver.wavefield_nbytes(survey.nt) if need_grad else None
        size = batching.chunk_size(module.batch_size, one, module.max_wavefield_bytes)
        kind = "fwd-save" if need_grad else "fwd"
        size = size if module.subsample == 1 else 1
        work = _work(module.model, survey.nt) * len(shots)
        calls = batching.plan(mb.shape[0], size, solver.small_chunks, kind, work)
        if any(k > 1 for _, k in calls):
            return _AcousticFunction._forward_batched(ctx, m, module, shots, need_grad, calls)
        items = [(b, i, s) for b in range(mb.shape[0]) for i, s in enumerate(shots)]
        factor = module.subsample
        # Keep the forward wavefields of the last items that fit in the pool: backward
        # visits items in reverse, so these are used first, before being overwritten.
        keep = solver.wavefield_capacity(survey.nt, factor) if need_grad else 0
        if factor == 1 and solver.wavefield_nbytes(survey.nt) > module.max_wavefield_bytes:
            keep = 0  # over budget: backward checkpoints (AcousticSolver.jacobian_adjoint)
        owners = [new_owner() for _ in items]  # one per (model, shot) wavefield
        nrec = receiver_count(survey, shots)
        axis = DataAxis(survey, shots, dtype)
        out = np.zeros((mb.shape[0], len(shots), axis.nt, nrec), dtype=dtype)
        for k, (b, i, s) in enumerate(items):
            buf = None
            if k >= len(items) - keep:
                buf = solver.acquire_wavefield(survey.nt, factor, owner=owners[k])
            tr = solver.forward(mb[b], survey.shot(s), survey.dt, buf)
            out[b, i, :, : tr.shape[1]] = axis.to_data(tr, i)
        ctx.axis = axis
        ctx.module, ctx.shots, ctx.owners, ctx.items = module, shots, owners, items
        ctx.batched, ctx.dtype, ctx.device = batched, dtype, m.device
        ctx.save_for_backward(m)
        return to_tensor(out if batched else out[0], m.device)

    @staticmethod
    def _forward_batched(ctx, m, module, shots: list[int], need_grad: bool, calls: list):
        """Forward by ``calls`` (:func:`~devito_uq.physics.batching.plan`): batched kernels
        of ``k`` models (a short chunk padded with copies of its last model), or one call
        per model; the wavefields saved for backward."""
        dtype = check_dtype("m.dtype", m.dtype)
        batched = m.dim() == module.model.dim + 1
        survey, budget = module.survey, module.max_wavefield_bytes
        solver = _solver(module.model, dtype)
        mb = to_numpy(m if batched else m[None], dtype)
        items = [(c, k, i, s) for c, k in calls for i, s in enumerate(shots)]
        owners = [new_owner() for _ in items]
        nrec = receiver_count(survey, shots)
        axis = DataAxis(survey, shots, dtype)
        out = np.zeros((mb.shape[0], len(shots), axis.nt, nrec), dtype=dtype)
        # A single model's wavefield over budget is not stored: backward checkpoints it.
        save_one = need_grad and solver.wavefield_nbytes(survey.nt) <= budget
        for (c, k, i, s), owner in zip(items, owners):
            if k == 1:
                buf = solver.acquire_wavefield(survey.nt, owner=owner) if save_one else None
                tr = solver.forward(mb[c.start], survey.shot(s), survey.dt, buf)
                out[c.start, i, :, : tr.shape[1]] = axis.to_data(tr, i)
                continue
            bs = _batched(module.model, dtype, k)
            bs.max_wavefield_bytes = budget
            buf = bs.acquire_wavefield(survey.nt, owner=owner) if need_grad else None
            tr = bs.forward(batching.pad_rows(mb[c], k, True), survey.shot(s), survey.dt, buf)
            for j in range(c.stop - c.start):
                out[c.start + j, i, :, : tr.shape[2]] = axis.to_data(tr[j], i)
        ctx.axis, ctx.chunks = axis, items
        ctx.module, ctx.shots, ctx.owners, ctx.items = module, shots, owners, None
        ctx.batched, ctx.dtype, ctx.device = batched, dtype, m.device
        ctx.save_for_backward(m)
        return to_tensor(out if batched else out[0], m.device)

    @staticmethod
    def _backward_batched(ctx, mb: np.ndarray, gb: np.ndarray) -> np.ndarray:
        survey = ctx.module.survey
        solver = _solver(ctx.module.model, ctx.dtype)
        grad = np.zeros_like(mb)
        for (c, k, i, s), owner in zip(reversed(ctx.chunks), reversed(ctx.owners)):
            shot = survey.shot(s)
            if k == 1:  # the pooled wavefield, or recomputed (checkpointed over budget)
                buf = solver.find_wavefield(owner)
                r = ctx.axis.to_solver(gb[c.start, i], i)
                grad[c.start] += solver.jacobian_adjoint(mb[c.start], shot, survey.dt, r, buf)
                if buf is not None:
                    buf.owner = None
                continue
            bs = _batched(ctx.module.model, ctx.dtype, k)
            mc = batching.pad_rows(mb[c], k, True)
            buf = bs.find_wavefield(owner)
            if buf is None:  # evicted: recompute the chunk's wavefields
                buf = bs.acquire_wavefield(survey.nt, owner=owner)
                bs.forward(mc, shot, survey.dt, buf)
            r = np.stack([ctx.axis.to_solver(gb[b, i], i) for b in range(c.start, c.stop)])
            g = bs.gradient(mc, shot, survey.dt, batching.pad_rows(r, k, False), buf)
            grad[c] += g[: c.stop - c.start]
            buf.owner = None  # free for reuse
        return grad

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        # a NaN upstream gradient would come back as a NaN model gradient with no word
        check_finite("grad_out", grad_out)
        (m,) = ctx.saved_tensors
        module = ctx.module
        survey = module.survey
        solver = _solver(module.model, ctx.dtype)
        mb = to_numpy(m if ctx.batched else m[None], ctx.dtype)
        gb = to_numpy(grad_out if ctx.batched else grad_out[None], ctx.dtype)
        if ctx.items is None:
            grad = _AcousticFunction._backward_batched(ctx, mb, gb)
            g = to_tensor(grad if ctx.batched else grad[0], ctx.device)
            return g, None, None, None
        grad = np.zeros_like(mb)
        for (b, i, s), owner in zip(reversed(ctx.items), reversed(ctx.owners)):
            buf = solver.find_wavefield(owner)
            r = ctx.axis.to_solver(gb[b, i], i)
            grad[b] += solver.jacobian_adjoint(
                mb[b], survey.shot(s), survey.dt, r, wavefield=buf, factor=module.subsample
            )
            if buf is not None:
                buf.owner = None  # free for reuse
        g = to_tensor(grad if ctx.batched else grad[0], ctx.device)
        return g, None, None, None  # m; module, shots, need_grad are not tensors


class AcousticModeling(nn.Module):
    """Nonlinear acoustic modeling ``d = F(m)`` as a differentiable torch module.

    Parameters
    ----------
    model : AcousticModel
        Grid geometry, absorbing layer and space order.
    survey : ~devito_uq.physics.survey.Survey
        Shots, receivers, time axis (``dt`` is the solver's time step) and wavelet.
    subsample : int, optional
        Memory-saving gradient: store the forward wavefield every ``subsample``-th
        time step (1 = full storage, the default and exact adjoint). Storage falls by
        the factor; the gradient becomes approximate: relative error 1.4e-4 at 2 and
        6.5e-2 at 6 on the 10 Hz benchmark (``benchmarks/results/bench_acoustic.md``).
        Keep ``subsample · dt · f_peak`` below about 0.08.
    max_wavefield_bytes : int
        Memory for saved forward wavefields kept between forward and backward (default
        1 GiB). Shots beyond it are recomputed in backward; a single wavefield larger
        than it switches the gradient to optimal checkpointing (revolve, exact) with
        as many snapshots as fit.
    batch_size : int
        Models of a batched input solved per Devito kernel call (default
        :data:`BATCH_SIZE`; 1 = one call per model). A saving forward uses fewer when
        their wavefields would exceed ``max_wavefield_bytes``; ``subsample > 1``
        always solves one model per call. One kernel size per process: a short last
        chunk is padded up to it or solved one model per call
        (:func:`~devito_uq.physics.batching.plan`).

    Notes
    -----
    Call ``F(m, shots=None)``: ``m`` ``[nx, nz]`` → ``[shot, time, receiver]``; ``m``
    ``[batch, nx, nz]`` → ``[batch, shot, time, receiver]``. ``shots`` selects shot
    indices (default all). float32 and float64 inputs each use their own compiled
    operators; output has the input's dtype and device.
    """

    def __init__(
        self,
        model: AcousticModel,
        survey: Survey,
        subsample: int = 1,
        max_wavefield_bytes: int = 2**30,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        super().__init__()
        check_geometry(model, survey)
        self.model = model
        self.survey = survey
        self.subsample = check_positive_int("subsample", subsample)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.max_wavefield_bytes = check_nonnegative_int("max_wavefield_bytes", max_wavefield_bytes)
        check_solver_memory(model, survey, model.dtype)

    def forward(self, m: torch.Tensor, shots: Any = None) -> torch.Tensor:
        """Shot records for squared slowness ``m`` (s²/km²); see the class docstring."""
        check_input("m", m, self.model)
        check_finite_positive("squared slowness m", m.detach())
        check_stability(self.model, self.survey, m.detach())
        idx = self.survey.select(shots)
        receiver_count(self.survey, idx)
        # Grad mode is off inside Function.forward: decide here whether backward can
        # come, so that no_grad calls skip the (slower) wavefield-saving forward.
        need_grad = torch.is_grad_enabled() and m.requires_grad
        return _AcousticFunction.apply(m, self, idx, need_grad)

    def extra_repr(self) -> str:
        return f"{self.model!r}, {self.survey!r}, subsample={self.subsample}"


class _BornFunction(torch.autograd.Function):
    """Born modeling ``J(m0) δm``; backward ``J(m0)ᵀ``."""

    @staticmethod
    def forward(ctx, dm: torch.Tensor, module: BornModeling, shots: list[int]) -> torch.Tensor:
        batched = dm.dim() == module.model.dim + 1
        dtype = check_dtype("dm.dtype", dm.dtype)
        solver = _solver(module.model, dtype)
        survey = module.survey
        m0 = module.m0_numpy.astype(dtype)
        db = to_numpy(dm if batched else dm[None], dtype)
        nrec = receiver_count(survey, shots)
        axis = DataAxis(survey, shots, dtype)
        out = np.zeros((db.shape[0], len(shots), axis.nt, nrec), dtype=dtype)
        size = batching.chunk_size(module.batch_size, None, module.max_wavefield_bytes)
        work = _work(module.model, survey.nt) * len(shots)
        calls = batching.plan(db.shape[0], size, solver.small_chunks, "born", work)
        for c, k in calls:
            if k == 1:
                for i, s in enumerate(shots):
                    tr = solver.jacobian(m0, db[c.start], survey.shot(s), survey.dt)
                    out[c.start, i, :, : tr.shape[1]] = axis.to_data(tr, i)
                continue
            bs, dc = _batched(module.model, dtype, k), batching.pad_rows(db[c], k, False)
            for i, s in enumerate(shots):
                tr = bs.jacobian(m0, dc, survey.shot(s), survey.dt)
                for j in range(c.stop - c.start):
                    out[c.start + j, i, :, : tr.shape[2]] = axis.to_data(tr[j], i)
        ctx.calls = calls  # backward solves the same chunks with the same kernels
        ctx.axis, ctx.module, ctx.shots, ctx.batched = axis, module, shots, batched
        ctx.dtype, ctx.device, ctx.nbatch = dtype, dm.device, db.shape[0]
        return to_tensor(out if batched else out[0], dm.device)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        # a NaN upstream gradient would come back as a NaN model gradient with no word
        check_finite("grad_out", grad_out)
        module = ctx.module
        survey = module.survey
        solver = _solver(module.model, ctx.dtype)
        solver.max_wavefield_bytes = module.max_wavefield_bytes
        m0 = module.m0_numpy.astype(ctx.dtype)
        gb = to_numpy(grad_out if ctx.batched else grad_out[None], ctx.dtype)
        grad = np.zeros((ctx.nbatch, *module.model.shape), dtype=ctx.dtype)
        for i, s in enumerate(ctx.shots):
            # The background wavefield of m0 never changes: keep it pooled across calls.
            owner = module._owner(ctx.dtype, s)
            buf = solver.find_wavefield(owner)
            if solver.wavefield_nbytes(survey.nt) > module.max_wavefield_bytes:
                for b in range(ctx.nbatch):  # over budget: checkpointed, one model a call
                    r = ctx.axis.to_solver(gb[b, i], i)
                    grad[b] += solver.jacobian_adjoint(m0, survey.shot(s), survey.dt, r)
                continue
            if buf is None:
                buf = solver.acquire_wavefield(survey.nt, 1, owner=owner)
                solver.forward(m0, survey.shot(s), survey.dt, wavefield=buf)
            for c, k in ctx.calls:
                if k == 1:
                    r = ctx.axis.to_solver(gb[c.start, i], i)
                    grad[c.start] += solver.jacobian_adjoint(
                        m0, survey.shot(s), survey.dt, r, wavefield=buf
                    )
                    continue
                bs = _batched(module.model, ctx.dtype, k)
                r = np.stack([ctx.axis.to_solver(gb[b, i], i) for b in range(c.start, c.stop)])
                r = batching.pad_rows(r, k, False)
                g = bs.jacobian_adjoint(m0, survey.shot(s), survey.dt, r, buf)
                grad[c] += g[: c.stop - c.start]
        g = to_tensor(grad if ctx.batched else grad[0], ctx.device)
        return g, None, None  # dm, module (not a tensor), shots (not a tensor)


class BornModeling(nn.Module):
    """Born (linearised) modeling ``δd = J(m0) δm`` as a linear torch module.

    ``m0`` (``[nx, nz]``, s²/km², tensor or array) is the background squared
    slowness, validated once here. Call ``J(dm, shots=None)``: ``dm`` ``[nx, nz]`` →
    ``[shot, time, receiver]`` (batched ``[batch, nx, nz]`` → ``[batch, shot, time,
    receiver]``). Backward applies ``J(m0)ᵀ`` (exact), reusing the background
    wavefields of ``m0`` while they fit in ``max_wavefield_bytes`` (LRU; released with
    the module; one larger than it: revolve checkpointing). ``batch_size``
    perturbations share one kernel call (default :data:`BATCH_SIZE`; 1 = one each).

    Parameters
    ----------
    model : AcousticModel
        Grid geometry, absorbing layer and space order.
    survey : ~devito_uq.physics.survey.Survey
        Shots, receivers, time axis (``dt`` is the solver's time step) and wavelet.
    m0 : tensor or array ``[nx, nz]``
        Background squared slowness (s²/km²).
    max_wavefield_bytes : int
        Memory for the background wavefields kept for backward (default 1 GiB).
    batch_size : int
        Perturbations per Devito kernel call (default :data:`BATCH_SIZE`; a short last
        chunk as in :class:`AcousticModeling`).
    """

    def __init__(
        self,
        model: AcousticModel,
        survey: Survey,
        m0: Any,
        max_wavefield_bytes: int = 2**30,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        super().__init__()
        check_geometry(model, survey)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.max_wavefield_bytes = check_nonnegative_int("max_wavefield_bytes", max_wavefield_bytes)
        check_solver_memory(model, survey, model.dtype)  # before m0 is validated or copied
        m0n = m0.detach().cpu().numpy() if isinstance(m0, torch.Tensor) else np.asarray(m0)
        check_shape("m0", m0n.shape, model.shape)
        check_finite_positive("background squared slowness m0", m0n)
        check_stability(model, survey, m0n)
        self.model = model
        self.survey = survey
        self.m0_numpy = np.array(m0n, dtype=np.float64)
        self._owners: dict[tuple, object] = {}
        # Release this module's pinned background wavefields when it is collected (the
        # finalizer holds the token dict, not the module, so it does not keep it alive).
        weakref.finalize(self, _release_owners, self._owners)

    def _owner(self, dtype: type, shot: int) -> object:
        """The owner token of the pooled background wavefield of ``m0`` for one shot."""
        return self._owners.setdefault((np.dtype(dtype).name, shot), new_owner())

    def forward(self, dm: torch.Tensor, shots: Any = None) -> torch.Tensor:
        """Born data for the perturbation ``dm`` (s²/km²); see the class docstring."""
        check_input("dm", dm, self.model)
        check_finite("dm", dm.detach())
        idx = self.survey.select(shots)
        receiver_count(self.survey, idx)
        return _BornFunction.apply(dm, self, idx)

    def extra_repr(self) -> str:
        return f"{self.model!r}, {self.survey!r}"
