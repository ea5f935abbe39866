"""Acoustic-specific checks: source-side adjoint, Born vs finite differences, pooled and
subsampled wavefields, the Devito reference, memory, dtypes, per-shot receivers. The
shared dot, Taylor, batch, no-recompile and CUDA checks: tests/test_physics_battery.py."""

import numpy as np
import pytest
import torch
from checks import dot_test

from devito_uq.physics import (
    AcousticModel,
    AcousticModeling,
    AcousticSolver,
    BornModeling,
    Survey,
    get_solver,
    total_compiles,
)

SHAPE = (41, 41)
SPACING = (10.0, 10.0)


def layered_velocity(shape=SHAPE):
    v = np.full(shape, 2.0)
    v[:, shape[1] // 2 :] = 2.5
    return v


@pytest.fixture(scope="module")
def setup():
    model = AcousticModel(SHAPE, SPACING, nbl=10, space_order=4, dtype=np.float64)
    # vmax above the true 2.5 km/s: the CFL bound is sharp, and the finite-difference
    # tests perturb the model on both sides.
    survey = Survey.surface(model, nshots=2, nreceivers=11, t1=300.0, f0_hz=15.0, vmax=2.6)
    m_true = torch.tensor(1.0 / layered_velocity() ** 2)
    m0 = torch.full(SHAPE, 1.0 / 2.0**2, dtype=torch.float64)
    return model, survey, m_true, m0


def smooth_perturbation(shape=SHAPE, scale=0.02):
    x = np.linspace(-1, 1, shape[0])[:, None]
    z = np.linspace(-1, 1, shape[1])[None, :]
    return torch.tensor(scale * np.exp(-((x - 0.1) ** 2 + (z - 0.2) ** 2) / 0.1))


# ----------------------------------------------------------------- adjoints
def test_source_injection_receiver_interpolation_dot_test(setup):
    model, survey, m_true, _ = setup
    solver = get_solver(AcousticSolver, model)
    rng = np.random.default_rng(3)
    shot = survey.shot(1)
    q = rng.standard_normal(survey.nt)
    y = rng.standard_normal((survey.nt, 11))
    mm = m_true.numpy()
    fq = solver.forward(mm, shot, survey.dt, wavelet=q)
    fty = solver.adjoint(mm, shot, survey.dt, y)
    lhs, rhs = np.sum(fq * y), np.sum(q * fty)
    assert abs(lhs - rhs) / abs(lhs) < 1e-6


def test_born_dot_test_batched_with_shot_selection(setup):
    model, survey, m_true, _ = setup
    J = BornModeling(model, survey, m_true)
    x = torch.randn(2, *SHAPE, dtype=torch.float64)
    y = torch.randn(2, 1, survey.nt, 11, dtype=torch.float64)

    def adjoint(yy):
        xx = torch.zeros(2, *SHAPE, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(J(xx, shots=[1]), xx, yy)
        return g

    assert dot_test(lambda xx: J(xx, shots=[1]), adjoint, x, y) < 1e-6


def test_born_is_derivative_of_forward(setup):
    """J δm against a central finite difference of F (exact linearisation of the scheme)."""
    model, survey, m_true, _ = setup
    F = AcousticModeling(model, survey)
    J = BornModeling(model, survey, m_true)
    dm = smooth_perturbation()
    h = 1e-4
    fd = (F(m_true + h * dm) - F(m_true - h * dm)) / (2 * h)
    jd = J(dm)
    assert torch.linalg.norm(fd - jd) / torch.linalg.norm(jd) < 1e-5


def test_forward_backward_equals_born_adjoint(setup):
    model, survey, m_true, _ = setup
    F = AcousticModeling(model, survey)
    J = BornModeling(model, survey, m_true)
    y = torch.randn(2, survey.nt, 11, dtype=torch.float64)
    m = m_true.clone().requires_grad_(True)
    (g_f,) = torch.autograd.grad(F(m), m, y)
    dm = torch.zeros(SHAPE, dtype=torch.float64, requires_grad=True)
    (g_j,) = torch.autograd.grad(J(dm), dm, y)
    torch.testing.assert_close(g_f, g_j, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- gradients
def test_gradcheck_tiny_grid():
    model = AcousticModel((12, 10), (10.0, 10.0), nbl=4, space_order=4, dtype=np.float64)
    survey = Survey(
        [[55.0, 20.0]], [[10.0, 10.0], [75.0, 15.0], [100.0, 60.0]], t1=120.0, dt=2.0, f0_hz=25.0
    )
    F = AcousticModeling(model, survey)
    m = (
        torch.full((12, 10), 0.25, dtype=torch.float64) + 0.02 * torch.rand(12, 10)
    ).requires_grad_()
    assert torch.autograd.gradcheck(F, (m,), eps=1e-6, atol=1e-8, rtol=1e-5, fast_mode=True)


def test_shot_selection_and_zero_gradient_at_the_data_model(setup):
    """Shots selected give their rows of the full data; no residual, no gradient.
    (Batches against single calls: tests/test_physics_battery.py.)"""
    model, survey, m_true, _ = setup
    F = AcousticModeling(model, survey)
    d = F(m_true).detach()
    torch.testing.assert_close(F(m_true, shots=[1])[0], d[1], rtol=0, atol=0)
    m = m_true.clone().requires_grad_(True)
    (0.5 * torch.sum((F(m) - d) ** 2)).backward()
    assert torch.count_nonzero(m.grad) == 0


def test_recomputed_wavefields_give_the_same_gradient(setup):
    """A pool too small to keep every shot's wavefield recomputes them in backward."""
    model, survey, m_true, m0 = setup
    y = torch.randn(2, survey.nt, 11, dtype=torch.float64)
    grads = []
    for budget in (2**30, 0):
        F = AcousticModeling(model, survey, max_wavefield_bytes=budget)
        m = m0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F(m), m, y)
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_two_forwards_before_backward_keep_gradients_right(setup):
    model, survey, m_true, m0 = setup
    F = AcousticModeling(model, survey)
    y = torch.randn(2, survey.nt, 11, dtype=torch.float64)
    a = m0.clone().requires_grad_(True)
    b = m_true.clone().requires_grad_(True)
    da, db = F(a), F(b)  # the second call overwrites pooled buffers of the same size
    (ga,) = torch.autograd.grad(da, a, y)
    (gb,) = torch.autograd.grad(db, b, y)
    a2 = m0.clone().requires_grad_(True)
    (ga2,) = torch.autograd.grad(F(a2), a2, y)
    torch.testing.assert_close(ga, ga2, rtol=0, atol=0)
    assert not torch.allclose(ga, gb)


def test_subsampled_gradient_accuracy_and_memory(setup):
    model, survey, m_true, m0 = setup
    d = AcousticModeling(model, survey)(m_true).detach()
    full = AcousticModeling(model, survey)
    half = AcousticModeling(model, survey, subsample=2)
    grads = []
    for F in (full, half):
        m = m0.clone().requires_grad_(True)
        (0.5 * torch.sum((F(m) - d) ** 2)).backward()
        grads.append(m.grad)
    rel = torch.linalg.norm(grads[1] - grads[0]) / torch.linalg.norm(grads[0])
    assert rel < 1e-2
    solver = get_solver(AcousticSolver, model)
    assert solver.wavefield_nbytes(survey.nt, 2) < 0.51 * solver.wavefield_nbytes(survey.nt, 1)


# --------------------------------------------------------------- reference
def test_forward_matches_devito_reference_solver():
    """F against examples.seismic's AcousticWaveSolver on the same set-up (float32)."""
    from examples.seismic import AcquisitionGeometry
    from examples.seismic import Model as RefModel
    from examples.seismic.acoustic import AcousticWaveSolver

    v = layered_velocity().astype(np.float32)
    ref_model = RefModel(
        vp=v, origin=(0.0, 0.0), spacing=SPACING, shape=SHAPE, space_order=4, nbl=10, bcs="damp"
    )
    src = np.array([[200.0, 20.0]])
    rec = np.stack([np.linspace(0, 400, 11), np.full(11, 10.0)], axis=1)
    geom = AcquisitionGeometry(ref_model, rec, src, t0=0.0, tn=300.0, f0=0.015, src_type="Ricker")
    ref_rec, _, _ = AcousticWaveSolver(ref_model, geom, space_order=4).forward(time_m=1)

    model = AcousticModel(SHAPE, SPACING, nbl=10, space_order=4)
    survey = Survey(src, rec, t1=geom.tn, dt=float(ref_model.critical_dt), f0_hz=15.0)
    d = AcousticModeling(model, survey)(torch.tensor(1.0 / v**2))[0].numpy()
    assert d.dtype == np.float32 and survey.nt == geom.nt
    ref = ref_rec.data
    # Devito's reference loop stops one step earlier and leaves its last sample at 0.
    err = np.abs(d[:-1] - ref[:-1]).max() / np.abs(ref).max()
    assert err < 1e-5


# ----------------------------------------------------------------- caching
def test_errors_raise_before_any_compile(setup):
    model, survey, m_true, _ = setup
    F = AcousticModeling(model, survey)
    before = total_compiles()
    bad = m_true.clone()
    bad[3, 4] = float("nan")
    with pytest.raises(ValueError):
        F(bad.to(torch.float32))  # float32: no float32 operator compiled for this model yet
    assert total_compiles() == before


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_memory_does_not_grow_over_100_gradient_calls():
    model = AcousticModel((31, 31), SPACING, nbl=8, space_order=4, dtype=np.float64)
    survey = Survey.surface(model, nshots=1, nreceivers=8, t1=200.0, f0_hz=15.0, vmax=2.0)
    F = AcousticModeling(model, survey)
    d = torch.zeros(1, survey.nt, 8, dtype=torch.float64)
    m = torch.full((31, 31), 0.25, dtype=torch.float64, requires_grad=True)

    def step():
        m.grad = None
        (0.5 * torch.sum((F(m) - d) ** 2)).backward()
        with torch.no_grad():
            m.mul_(1.0 + 1e-4)  # a new model every call, as in an inversion

    for _ in range(10):
        step()
    start = _rss_bytes()
    for _ in range(100):
        step()
    growth = _rss_bytes() - start
    assert growth < 2 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 100 gradient calls"


def test_float32_default_dtype_and_output_dtype(setup):
    model, survey, m_true, _ = setup
    model32 = AcousticModel(SHAPE, SPACING, nbl=10, space_order=4)
    F = AcousticModeling(model32, survey)
    d32 = F(m_true.to(torch.float32))
    d64 = F(m_true)
    assert d32.dtype == torch.float32 and d64.dtype == torch.float64
    rel = torch.linalg.norm(d32.double() - d64) / torch.linalg.norm(d64)
    assert rel < 1e-4


def test_repeated_shots_and_per_shot_receivers(setup):
    model, survey, m_true, m0 = setup
    recs = [
        survey.rec_positions[0],
        survey.rec_positions[0] * np.array([0.9, 1.0]) + np.array([5.0, 20.0]),
    ]
    per_shot = Survey(survey.src_positions, recs, t1=300.0, dt=survey.dt, f0_hz=15.0)
    F = AcousticModeling(model, per_shot)
    d = F(m_true)
    for s in range(2):
        one = Survey(survey.src_positions[s], recs[s], t1=300.0, dt=survey.dt, f0_hz=15.0)
        torch.testing.assert_close(d[s], AcousticModeling(model, one)(m_true)[0], rtol=0, atol=0)
    m = m0.clone().requires_grad_(True)
    dd = F(m, shots=[1, 1])
    torch.testing.assert_close(dd[0], dd[1], rtol=0, atol=0)
    dd.sum().backward()
    m1 = m0.clone().requires_grad_(True)
    F(m1, shots=[1]).sum().backward()
    torch.testing.assert_close(m.grad, 2 * m1.grad, rtol=1e-12, atol=1e-14)
