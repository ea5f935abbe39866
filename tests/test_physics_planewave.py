"""Plane-wave-specific checks: arrival times, solve counts, errors, the Born module, the
former kernel, row threads, checkpointing. The shared dot, Taylor, batch, no-recompile and
CUDA checks: tests/test_physics_battery.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from checks import dot_test, slopes

from devito_uq.errors import (
    InvalidArgumentError,
    InvalidDtypeError,
    InvalidModelError,
    InvalidShapeError,
    StabilityError,
)
from devito_uq.physics import (
    PlaneWaveBornModeling,
    PlaneWaveModeling,
    bandpass_wavelet,
    ray_parameters_from_angles,
)
from devito_uq.physics.stencil import critical_dt

NZ, DZ = 40, 3.048


def _layered(batch: int = 1, dtype=torch.float64) -> torch.Tensor:
    """Two-layer squared slowness (2.4 / 2.0 km/s) plus smooth per-sample perturbations."""
    z = torch.arange(NZ, dtype=torch.float64)
    base = torch.where(z < NZ // 2, 1 / 2.4**2, 1 / 2.0**2)
    out = [base + 0.01 * k * torch.sin(z / 5.0 + k) for k in range(batch)]
    return torch.stack(out).to(dtype)


@pytest.fixture(scope="module")
def op() -> PlaneWaveModeling:
    p = ray_parameters_from_angles([10.0, 20.0, 30.0], v_min=2.0)
    # Short record and thin layers keep each solve well under a millisecond.
    wavelet = bandpass_wavelet(121, 0.5, half_length=15.0)
    return PlaneWaveModeling(p, nz=NZ, dz=DZ, t1=60.0, dt=0.5, wavelet=wavelet, nbl=20)


def test_born_matches_finite_difference(op):
    m = _layered(1)[0]
    dm = 0.01 * torch.randn_like(m)
    h = 1e-4
    fd = (op(m + h * dm) - op(m - h * dm)) / (2 * h)
    jdm = op.jacobian(m, dm)
    assert torch.linalg.norm(fd - jdm) / torch.linalg.norm(jdm) < 1e-6


def test_float32_close_to_float64(op):
    m = _layered(2)
    d64 = op(m)
    d32 = op(m.float())
    assert d32.dtype == torch.float32
    assert torch.linalg.norm(d32.double() - d64) / torch.linalg.norm(d64) < 1e-4


def test_direct_arrival_time_homogeneous():
    """A reflection off one interface arrives at 2·h·√(m − p²) after the wavelet centre.

    In 1D the pressure at the source is the time integral of the wavelet, so the
    zero-phase pulse shows up in the time derivative of the trace.
    """
    nz, dz, depth_idx = 200, 2.0, 100
    v1, v2 = 2.0, 3.0
    p = np.array([0.0, 0.25])
    op = PlaneWaveModeling(p, nz=nz, dz=dz, t1=300.0, dt=0.25, nbl=40)
    m = torch.full((nz,), 1 / v1**2, dtype=torch.float64)
    m_ref = m.clone()
    m[depth_idx:] = 1 / v2**2
    refl = op(m) - op(m_ref)  # remove the direct wave: only the reflection is left
    h = depth_idx * dz
    for i, pi in enumerate(p):
        t_expect = 2 * h * math.sqrt(1 / v1**2 - pi**2) + 40.0
        rate = torch.diff(refl[i])
        t_peak = float(op.times[torch.argmax(rate.abs())]) + 0.5 * op.dt
        assert abs(t_peak - t_expect) < 3.0, (pi, t_peak, t_expect)


def test_solve_count_is_per_module(op):
    """Equal modules share one compiled solver; each still counts only its own solves."""
    p = ray_parameters_from_angles([10.0, 20.0, 30.0], v_min=2.0)
    wavelet = bandpass_wavelet(121, 0.5, half_length=15.0)
    twin = PlaneWaveModeling(p, nz=NZ, dz=DZ, t1=60.0, dt=0.5, wavelet=wavelet, nbl=20)
    m = _layered(2, torch.float32)
    with torch.no_grad():
        op(m)
        before = op.n_solves
        twin(m)
        twin(m)
    assert twin._solver(2, np.float32) is op._solver(2, np.float32)
    assert twin.n_solves == 2 * 2 * 3 and op.n_solves == before


def test_backward_after_interleaved_forward(op):
    """The saved wavefield buffer is shared: a forward in between must not corrupt a gradient."""
    m1, m2 = _layered(2), _layered(2) * 1.05
    w = torch.randn(2, 3, op.nt, dtype=torch.float64)
    x = m1.clone().requires_grad_(True)
    y = op(x)
    op(m2)  # overwrites the wavefield of m1
    (g,) = torch.autograd.grad(y, x, w)
    x2 = m1.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(op(x2), x2, w)
    assert torch.equal(g, g_ref)


# ------------------------------------------------------------------ errors


def test_error_evanescent(op):
    m = _layered(1)[0]
    m[7] = 0.05  # v = 4.47 km/s > 1/p for p = sin 30°/2.0 = 0.25 s/km
    with pytest.raises(InvalidModelError, match=r"p=0.25 s/km is evanescent where m=0.05 "):
        op(m)


def test_error_nonpositive_model(op):
    m = _layered(1)[0]
    m[3] = -1.0
    with pytest.raises(InvalidModelError, match=r"got -1.0 at index \(3,\)"):
        op(m)


def test_error_nan_model(op):
    m = _layered(1)[0]
    m[5] = float("nan")
    with pytest.raises(InvalidModelError, match=r"got nan at index \(5,\)"):
        op(m)


def test_error_shape(op):
    with pytest.raises(InvalidShapeError, match=r"m has shape \[2, 39\]; expected \[batch, 40\]"):
        op(torch.ones(2, 39, dtype=torch.float64))


def test_error_dtype(op):
    with pytest.raises(InvalidDtypeError, match=r"m.dtype=torch.float16 is not supported"):
        op(torch.ones(NZ, dtype=torch.float16))


def test_error_unstable_dt():
    wavelet = bandpass_wavelet(21, 0.5, half_length=4.0)
    op = PlaneWaveModeling([0.0], nz=NZ, dz=1.0, t1=10.0, dt=0.5, wavelet=wavelet, nbl=5)
    with pytest.raises(StabilityError, match=r"dt=0.5 ms exceeds the stability limit 0.433 ms"):
        op(torch.full((NZ,), 0.25, dtype=torch.float64))  # v = 2 km/s, dz = 1 m
    assert critical_dt(2.0, (1.0,), 4) == pytest.approx(2 * 0.5 / math.sqrt(16 / 3))


def test_error_negative_ray_parameter():
    with pytest.raises(InvalidArgumentError, match=r"ray_parameters=\[-0.1\] must be"):
        PlaneWaveModeling([-0.1], nz=NZ, dz=DZ)


def test_error_wavelet_length():
    with pytest.raises(InvalidShapeError, match=r"wavelet has 10 samples; expected nt=801"):
        PlaneWaveModeling([0.1], nz=NZ, dz=DZ, wavelet=np.ones(10))


def test_error_angles():
    with pytest.raises(InvalidArgumentError, match=r"angles_deg=\[95.0\] must be"):
        ray_parameters_from_angles([95.0], 2.0)


# ------------------------------------------------------------------ Born module
def test_born_module_adjoint_equals_forward_gradient(op):
    """J(m0)ᵀ through the Born module = the autograd gradient of F at m0."""
    m0 = _layered(1)[0]
    y = torch.randn(3, op.nt, dtype=torch.float64)
    x = m0.clone().requires_grad_(True)
    (g_f,) = torch.autograd.grad(op(x), x, y)
    dm = torch.zeros(NZ, dtype=torch.float64, requires_grad=True)
    (g_j,) = torch.autograd.grad(PlaneWaveBornModeling(op, m0)(dm), dm, y)
    torch.testing.assert_close(g_j, g_f, rtol=1e-10, atol=1e-12 * float(g_f.abs().max()))


def test_born_module_taylor_and_jacobian_method(op):
    """‖F(m0 + h δm) − F(m0) − h J δm‖ falls as h² (J is the exact linearisation)."""
    m0 = _layered(1)[0]
    dm = 0.01 * torch.sin(torch.arange(NZ, dtype=torch.float64) / 4.0)
    J = PlaneWaveBornModeling(op, m0)
    jd = J(dm)
    torch.testing.assert_close(jd, op.jacobian(m0, dm), rtol=1e-12, atol=0.0)
    f0 = op(m0)
    hs = np.array([0.4, 0.2, 0.1, 0.05])
    errs = np.array([float(torch.linalg.norm(op(m0 + h * dm) - f0 - h * jd)) for h in hs])
    s2 = slopes(hs, errs)
    assert np.all(np.abs(s2 - 2) < 0.1), s2


def test_born_module_reuses_background_wavefield(op):
    m0 = _layered(1)[0]
    J = PlaneWaveBornModeling(op, m0)
    dm = torch.randn(NZ, dtype=torch.float64, requires_grad=True)
    d = J(dm)
    before = op.n_solves
    d.sum().backward()  # background still owned by J: only the adjoint solve runs
    assert op.n_solves - before == 3
    op(m0 * 1.01)  # another forward takes the buffer: the next backward recomputes it
    before = op.n_solves
    g_first = dm.grad.clone()
    dm.grad = None
    J(dm).sum().backward()
    assert op.n_solves - before == 3 + 3 + 3  # forward (background), Born, adjoint
    torch.testing.assert_close(dm.grad, g_first, rtol=0, atol=0)


def test_error_born_module_arguments(op):
    with pytest.raises(InvalidArgumentError, match="modeling must be a PlaneWaveModeling"):
        PlaneWaveBornModeling(object(), _layered(1)[0])
    J = PlaneWaveBornModeling(op, _layered(1)[0])
    with pytest.raises(InvalidShapeError, match=r"dm has shape \[39\]; expected"):
        J(torch.zeros(39, dtype=torch.float64))
    bad = torch.zeros(NZ, dtype=torch.float64)
    bad[2] = float("nan")
    with pytest.raises(InvalidArgumentError, match=r"dm contains nan at index \(2,\)"):
        J(bad)


# ------------------------------------------------------------- reference kernel
def _former_kernel(op: PlaneWaveModeling, m: np.ndarray, r: np.ndarray, dm: np.ndarray, dtype):
    """Traces, ``Jᵀr`` and ``J δm`` from the former formulation, rebuilt here as reference.

    That kernel saved ``u`` with halos for all ``nt + 1`` steps, injected with depth
    masks, read traces out of the saved field, formed ``∂²_t u`` from three saved
    planes in the adjoint and the Born operator, and set its coefficients with the
    plain float64 formulas below. Shapes: ``m, dm [batch, nz]``, ``r [batch, p, nt]``.
    """
    from devito import Eq, Function, Operator, TimeFunction

    from devito_uq.physics import padding

    batch, npar = m.shape[0], op.ray_parameters.numel()
    s = op._solver(batch, dtype)  # its grid and dimensions; every buffer here is new
    rows, nze, nt, nbl, dt, dz = s.rows, s.nz_ext, s.nt, s.nbl, s.dt, s.dz
    grid, time = s.grid, s.grid.time_dim
    bdim, zdim = grid.dimensions
    so = s.space_order
    u = TimeFunction(name="ru", grid=grid, time_order=2, space_order=so, save=nt + 1)
    du = TimeFunction(name="rdu", grid=grid, time_order=2, space_order=so, save=nt + 1)
    v = TimeFunction(name="rv", grid=grid, time_order=2, space_order=so)
    c1, c2, c3, grad, da = (Function(name=f"r{n}", grid=grid, space_order=0) for n in "123gd")
    zfun = dict(dimensions=(zdim,), shape=(nze,), dtype=dtype, space_order=0)
    smask, rmask = Function(name="rsm", **zfun), Function(name="rrm", **zfun)
    q = Function(name="rq", dimensions=(time,), shape=(nt + 1,), dtype=dtype, space_order=0)
    res = Function(
        name="rres", dimensions=(time, bdim), shape=(nt + 1, rows), dtype=dtype, space_order=0
    )
    p2, wavelet, damping = op._inputs(dtype)
    m_ext = padding.extend(m.astype(np.float64), nbl, axes=(-1,))
    a = (m_ext[:, None, :] - p2[None, :, None]).reshape(rows, nze)
    eta = damping[None, :] / (2.0 * dt)
    bb = a / dt**2 + eta
    c1.data[:] = 2.0 * a / dt**2 / bb
    c2.data[:] = (a / dt**2 - eta) / bb
    c3.data[:] = 1.0 / bb
    smask.data[:], rmask.data[:] = 0.0, 0.0
    smask.data[nbl], rmask.data[nbl] = 1.0 / dz, 1.0
    q.data[0], q.data[1:] = 0.0, wavelet
    res.data[0], res.data[1:] = 0.0, r.reshape(rows, nt).T
    dm_ext = padding.extend(dm.astype(np.float64), nbl, axes=(-1,))
    da.data[:] = np.repeat(dm_ext[:, None, :], npar, axis=1).reshape(rows, nze)
    u.data[:], du.data[:], v.data[:], grad.data[:] = 0.0, 0.0, 0.0, 0.0

    fwd = Eq(u.forward, c1 * u - c2 * u.backward + c3 * (u.dz2 + smask * q))
    Operator([fwd]).apply(time_m=1, time_M=nt - 1)
    adj = Eq(v.backward, c1 * v - c2 * v.forward + c3 * (v.dz2 + rmask * res))
    d2u = (u - 2 * u.backward + u.backward.backward) * (1.0 / dt**2)
    Operator([adj, Eq(grad, grad - v.backward * d2u)]).apply(time_m=2, time_M=nt)
    d2u_born = (u.forward - 2 * u + u.backward) * (1.0 / dt**2)
    born = Eq(du.forward, c1 * du - c2 * du.backward + c3 * (du.dz2 - da * d2u_born))
    Operator([born]).apply(time_m=1, time_M=nt - 1)

    def traces(f):
        return np.array(f.data[1:, :, nbl].T).reshape(batch, npar, nt)

    g = np.asarray(grad.data).reshape(batch, npar, nze).sum(axis=1)
    return traces(u), padding.extend_adjoint(g, nbl, axes=(-1,)), traces(du)


@pytest.mark.parametrize("t1", [60.0, 31.5])  # nt − 1 a multiple of the time block, and not
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_former_kernel(t1, dtype):
    """Forward, gradient and Born agree with the former saved-``u`` kernel to round-off.

    Float64 closes to ~1e-13. In float32 the two differ by reordered sums only (1e-6 …
    2e-5 of the largest value), less than the former float32 kernel's own distance to
    float64 (1e-5 … 1e-4 on these problems).
    """
    p = ray_parameters_from_angles([0.0, 15.0, 30.0], v_min=2.0)
    nt = round(t1 / 0.5) + 1
    wavelet = bandpass_wavelet(nt, 0.5, half_length=10.0)
    op = PlaneWaveModeling(p, nz=NZ, dz=DZ, t1=t1, dt=0.5, wavelet=wavelet, nbl=12)
    tdtype = torch.float64 if dtype is np.float64 else torch.float32
    m = _layered(2, tdtype)
    gen = torch.Generator().manual_seed(3)
    r = torch.randn(2, 3, op.nt, generator=gen, dtype=torch.float64).to(tdtype)
    dm = 0.01 * torch.randn(m.shape, generator=gen, dtype=torch.float64).to(tdtype)
    x = m.clone().requires_grad_(True)
    d = op(x)
    (g,) = torch.autograd.grad(d, x, r)
    jdm = op.jacobian(m, dm)
    d_ref, g_ref, jdm_ref = _former_kernel(op, m.numpy(), r.numpy(), dm.numpy(), dtype)
    tol = 1e-12 if dtype is np.float64 else 5e-5
    for new, ref in ((d, d_ref), (g, g_ref), (jdm, jdm_ref)):
        new = new.detach().double().numpy()
        assert np.abs(new - ref).max() <= tol * np.abs(ref).max()


def test_hugepage_hint_zeroes_only_the_aligned_interior():
    from devito_uq.physics.planewave import hugepages

    buf = np.ones(3 << 20, dtype=np.float32)  # 12 MiB
    applied = hugepages.advise(buf)
    huge, addr = 2 << 20, buf.ctypes.data
    start = (-addr) % huge // 4  # the aligned part: elements [start, stop)
    stop = ((addr + buf.nbytes) // huge * huge - addr) // 4
    if applied:
        assert stop - start >= 4 * huge // 4 and buf[start:stop].max() == 0.0
        assert np.all(buf[:start] == 1.0) and np.all(buf[stop:] == 1.0)  # the ends kept
    else:  # not Linux, or no madvise: untouched
        assert buf.min() == 1.0
    small = np.ones(1 << 10, dtype=np.float32)
    assert not hugepages.advise(small) and small.min() == 1.0


@pytest.mark.parametrize("threads", [2, 3, 5])
def test_rows_split_over_threads_are_bit_identical(op, threads):
    """Rows (model × ray parameter) are independent 1D solves: split over threads they
    give exactly the one-thread traces, gradient and Born traces (a row left out or run
    twice with other bounds would not)."""
    from devito_uq.threads import set_solver_threads

    m = _layered(3, torch.float32)  # 9 rows: uneven parts for 2 and 5 threads
    dm = 0.01 * torch.randn(3, NZ)
    born = PlaneWaveBornModeling(op, m[0])

    def solve():
        x = m.clone().requires_grad_(True)
        d = op(x)
        (d * d.detach().roll(1, -1)).sum().backward()
        return d.detach(), x.grad, born(dm)

    before = set_solver_threads(1)
    try:
        reference = solve()
        set_solver_threads(threads)
        for a, b in zip(reference, solve()):
            assert torch.equal(a, b)
    finally:
        set_solver_threads(before)


def test_row_split_bounds_cover_every_row_once():
    from devito_uq.physics.solver import _Call, _split_values

    names = ["u", "b_M", "b_m", "time_M"]
    call = _Call(None, ["U", 8, 0, 100], {}, {})
    parts = _split_values(call, names, "b", 3)
    rows = [(v[2], v[1]) for v in parts]
    assert rows == [(0, 2), (3, 5), (6, 8)]
    assert all(v[0] == "U" and v[3] == 100 for v in parts)  # other arguments untouched
    assert [(v[2], v[1]) for v in _split_values(call, names, "b", 20)] == [
        (i, i) for i in range(9)
    ]  # never more parts than rows


# ---------------------------------------------------------- checkpointed adjoint
def _solver_inputs(t1: float, batch: int, dtype):
    """A modeling (for its inputs), models ``[batch, NZ]`` and a residual, as numpy."""
    p = ray_parameters_from_angles([0.0, 15.0, 30.0], v_min=2.0)
    nt = round(t1 / 0.5) + 1
    wavelet = bandpass_wavelet(nt, 0.5, half_length=10.0)
    op = PlaneWaveModeling(p, nz=NZ, dz=DZ, t1=t1, dt=0.5, wavelet=wavelet, nbl=12)
    m = _layered(batch).numpy().astype(dtype)
    r = np.random.default_rng(5).standard_normal((batch, 3, op.nt)).astype(dtype)
    return op, m, r


def _planewave_solver(op, batch, dtype, segment):
    from devito_uq.physics.planewave.solver import PlaneWaveSolver

    args = (batch, 3, NZ, op.nbl, op.nt, op.dt, op.dz, op.space_order, dtype)
    return PlaneWaveSolver(*args, segment=segment)


# t1 = 32: nt − 1 = 64 steps, a multiple of every segment length; 60: 120 steps, a
# multiple of BLOCK = 8 but not of 16 or 64; 31.5: 63 steps, not a multiple of BLOCK.
@pytest.mark.parametrize("t1", [32.0, 60.0, 31.5])
@pytest.mark.parametrize("segment", [8, 16, 64])
def test_checkpointed_adjoint_equals_full_d_adjoint(t1, segment):
    """Recomputing ``u`` segment by segment from checkpoints gives the full-``D``
    adjoint's gradient to 1e-12 in float64 (the same recursion: a wrong restore level,
    a segment boundary off by one step or a missing last segment would not), with the
    forward reused or recomputed, and the same traces and Born traces."""
    from devito_uq.physics.solver import new_owner

    dtype = np.float64
    op, m, r = _solver_inputs(t1, 2, dtype)
    inputs = op._inputs(dtype)
    dm = 0.01 * np.cos(np.arange(NZ) / 3.0)[None].repeat(2, axis=0)
    out = {}
    for seg in (0, segment):
        s = _planewave_solver(op, 2, dtype, seg)
        tok = new_owner()
        d = s.forward(m, *inputs, owner=tok)
        g = s.jacobian_adjoint(m, *inputs, r, owner=tok)
        g_again = s.jacobian_adjoint(m, *inputs, r, owner=None)  # forward recomputed
        out[seg] = d, g, g_again, s.jacobian(m, dm, *inputs)
    (d0, g0, _, j0), (d1, g1, g1b, j1) = out[0], out[segment]
    assert np.abs(g0).max() > 0
    np.testing.assert_array_equal(d1, d0)  # the forward recursion is the same code
    for g in (g1, g1b):
        assert np.abs(g - g0).max() <= 1e-12 * np.abs(g0).max()
    np.testing.assert_array_equal(j1, j0)


def test_checkpointed_adjoint_float32_threads_and_solve_count():
    """Float32: within round-off of the full-``D`` adjoint; rows split over 2 and 3
    threads give bit-identical gradients; one adjoint counts one solve per row (its
    recomputed forward included), a recomputed forward one more per row."""
    from devito_uq.physics.solver import new_owner
    from devito_uq.threads import set_solver_threads

    dtype = np.float32
    op, m, r = _solver_inputs(60.0, 3, dtype)  # 9 rows: uneven parts
    inputs = op._inputs(dtype)
    full, ckpt = (_planewave_solver(op, 3, dtype, seg) for seg in (0, 16))
    grads = {}
    before = set_solver_threads(1)
    try:
        for threads in (1, 2, 3):
            set_solver_threads(threads)
            for name, s in (("full", full), ("ckpt", ckpt)):
                tok = new_owner()
                s.forward(m, *inputs, owner=tok)
                n0 = s.n_solves
                grads[name, threads] = s.jacobian_adjoint(m, *inputs, r, owner=tok)
                assert s.n_solves - n0 == 9
        n0 = ckpt.n_solves
        ckpt.jacobian_adjoint(m, *inputs, r, owner=new_owner())
        assert ckpt.n_solves - n0 == 18
    finally:
        set_solver_threads(before)
    g0, g1 = grads["full", 1], grads["ckpt", 1]
    assert np.abs(g1 - g0).max() <= 1e-5 * np.abs(g0).max()
    for threads in (2, 3):
        np.testing.assert_array_equal(grads["ckpt", threads], g1)


def test_checkpointed_modeling_dot_test_and_born_reuse(monkeypatch):
    """Through the torch modules with checkpointing on (``SEGMENT``): the dot test
    closes to machine precision and the Born module's backward reuses its background
    (checkpoints written by Born's full forward)."""
    from devito_uq.physics.planewave import solver as pws

    monkeypatch.setattr(pws, "SEGMENT", 16)
    op, m, _ = _solver_inputs(31.5, 2, np.float64)
    m = torch.from_numpy(m)
    assert op._solver(2, np.float64).segment == 16
    dm = 0.01 * torch.randn_like(m)
    dd = torch.randn(2, 3, op.nt, dtype=torch.float64)

    def adjoint(y):
        x = m.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(op(x), x, y)
        return g

    assert dot_test(lambda x: op.jacobian(m, x), adjoint, dm, dd) < 1e-12
    J = PlaneWaveBornModeling(op, m[0])
    x = dm.clone().requires_grad_(True)
    d = J(x)
    before = op.n_solves
    d.sum().backward()
    assert op.n_solves - before == 3 * 2  # the adjoint only: 2 models × 3 p


@pytest.mark.parametrize("segment", [-8, 12, 2.5])
def test_error_segment_length(segment):
    from devito_uq.physics.planewave.solver import PlaneWaveSolver

    with pytest.raises(InvalidArgumentError, match="segment"):
        PlaneWaveSolver.cache_key(1, 1, NZ, 4, 21, 0.5, DZ, 4, np.float32, segment=segment)
