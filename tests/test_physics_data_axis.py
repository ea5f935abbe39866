"""Data on their own time axis (resampling inside the operators), wavelets, dead traces."""

import numpy as np
import pytest
import torch
from checks import dot_test, slopes, taylor_test

from devito_uq.errors import (
    InsufficientMemoryError,
    InvalidArgumentError,
    InvalidSurveyError,
    StabilityError,
)
from devito_uq.physics import AcousticModel, AcousticModeling, BornModeling, Survey, ricker
from devito_uq.physics.resample import TimeAxis
from devito_uq.physics.survey import pad_traces
from devito_uq.physics.wavelets import load_wavelet

SHAPE = (41, 31)
SPACING = (5.0, 5.0)


@pytest.fixture(scope="module")
def model():
    return AcousticModel(SHAPE, SPACING, nbl=10, space_order=4, dtype=np.float64)


def geometry(nshots=2, nrec=9):
    src = np.stack([np.linspace(50, 150, nshots), np.full(nshots, 10.0)], 1)
    rec = np.stack([np.linspace(0, 200, nrec), np.full(nrec, 5.0)], 1)
    return src, rec


def m_layered():
    v = np.full(SHAPE, 2.0)
    v[:, SHAPE[1] // 2 :] = 2.4
    return torch.tensor(1.0 / v**2)


def smooth(scale=0.02):
    x = np.linspace(-1, 1, SHAPE[0])[:, None]
    z = np.linspace(-1, 1, SHAPE[1])[None, :]
    return torch.tensor(scale * np.exp(-((x - 0.1) ** 2 + (z - 0.2) ** 2) / 0.1))


def test_same_axis_gives_identical_numbers(model):
    src, rec = geometry()
    dt = model.critical_dt(2.5)
    a = Survey(src, rec, t1=150.0, dt=dt, f0_hz=15.0)
    b = Survey(src, rec, t1=150.0, dt=dt, f0_hz=15.0, data_axis=a.solver_axis)
    assert b.resampling() is None
    m = m_layered()
    torch.testing.assert_close(AcousticModeling(model, a)(m), AcousticModeling(model, b)(m))


def test_2ms_data_with_100ms_delay_match_a_fine_model(model):
    src, rec = geometry()
    data_axis = TimeAxis(100.0, 2.0, 51)  # 100 … 200 ms
    # dt = 2 ms is far above the CFL limit (~1.2 ms): the solver picks its own step.
    with pytest.raises(StabilityError, match="exceeds the stable limit"):
        AcousticModeling(model, Survey(src, rec, t1=200.0, dt=2.0, f0_hz=15.0))(m_layered())
    s = Survey.for_data(model, src, rec, data_axis, vmax=2.5, f0_hz=15.0)
    assert s.dt <= model.critical_dt(2.5) and s.nt_data == 51 and s.t0 <= 0.0
    d = AcousticModeling(model, s)(m_layered())
    assert d.shape == (2, 51, 9)
    fine = Survey(src, rec, t1=200.0, dt=0.125, f0_hz=15.0)
    ref = AcousticModeling(model, fine)(m_layered())[:, 800::16]  # samples at 100, 102, … ms
    assert ref.shape == d.shape
    err = torch.linalg.norm(d - ref) / torch.linalg.norm(ref)
    assert err < 0.03, err


def test_negative_time_shift_and_wavelet_files(model, tmp_path):
    src, rec = geometry()
    data_axis = TimeAxis(0.0, 2.0, 76)
    cut = r"delay=0 ms is cut off by the solve's t0=0 ms .* use t0 <= -66.6667"
    with pytest.raises(InvalidSurveyError, match=cut):
        Survey(src, rec, t1=150.0, dt=0.5, f0_hz=15.0, delay=0.0)
    s = Survey.for_data(model, src, rec, data_axis, vmax=2.5, f0_hz=15.0, delay=0.0)
    assert s.t0 <= -1000.0 / 15.0
    k = int(np.argmax(s.wavelet[0]))
    assert abs(s.time[k]) < s.dt  # peak at the shot time
    # The same zero-phase Ricker from files with their own 0.25 ms sampling and t0.
    tw = np.arange(-80.0, 80.0 + 1e-9, 0.25)
    w = ricker(tw, 15.0, 0.0)
    np.save(tmp_path / "w.npy", w)
    np.savetxt(tmp_path / "w.txt", np.stack([tw, w], 1))
    for name, dt in (("w.npy", 0.25), ("w.txt", None)):
        samples, wdt, wt0 = load_wavelet(tmp_path / name, dt=dt)
        if name == "w.npy":
            wt0 = -80.0
        sf = Survey.for_data(
            model, src, rec, data_axis, vmax=2.5, wavelet=samples, wavelet_dt=wdt, wavelet_t0=wt0
        )
        assert sf.t0 <= -80.0 and sf.dt == s.dt
        np.testing.assert_allclose(sf.wavelet[0], ricker(sf.time, 15.0, 0.0), atol=2e-4)
    with pytest.raises(InvalidArgumentError, match="has no times: give dt"):
        load_wavelet(tmp_path / "w.npy")


def test_born_dot_test_with_resampling(model):
    src, rec = geometry()
    # A data axis that does not fall on solver samples exercises the windowed sinc.
    s = Survey(src, rec, t1=150.0, dt=0.9, f0_hz=15.0, data_axis=TimeAxis(7.3, 1.7, 80))
    assert s.resampling() is not None and s.resampling().shape == (80, s.nt)
    J = BornModeling(model, s, m_layered())
    x = torch.randn(SHAPE, dtype=torch.float64)
    y = torch.randn(2, 80, 9, dtype=torch.float64)

    def adjoint(yy):
        xx = torch.zeros(SHAPE, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(J(xx), xx, yy)
        return g

    assert dot_test(J, adjoint, x, y) < 1e-10


def test_taylor_test_with_resampling(model):
    src, rec = geometry()
    s = Survey(src, rec, t1=150.0, dt=0.9, f0_hz=15.0, data_axis=TimeAxis(7.3, 1.7, 80))
    F = AcousticModeling(model, s)
    d = F(m_layered()).detach()
    m0 = torch.full(SHAPE, 1.0 / 2.0**2, dtype=torch.float64)

    def misfit(m):
        return 0.5 * torch.sum((F(m) - d) ** 2)

    h, e1, e2 = taylor_test(misfit, m0, smooth(), h0=0.125, steps=5)
    assert np.all(np.abs(slopes(h, e1) - 1) < 0.1), slopes(h, e1)
    assert np.all(np.abs(slopes(h, e2) - 2) < 0.1), slopes(h, e2)


def test_data_axis_refusals(model):
    src, rec = geometry()
    with pytest.raises(InvalidSurveyError, match="data axis ends at 300 ms but the solve ends"):
        Survey(src, rec, t1=150.0, dt=0.9, f0_hz=15.0, data_axis=TimeAxis(0.0, 2.0, 151))
    with pytest.raises(InvalidSurveyError, match="Nyquist frequency 125 Hz of a 4 ms"):
        Survey(src, rec, t1=150.0, dt=0.5, f0_hz=130.0, data_axis=TimeAxis(0.0, 4.0, 30))
    with pytest.raises(InvalidSurveyError, match="data_axis must be a TimeAxis"):
        Survey(src, rec, t1=150.0, dt=0.5, f0_hz=15.0, data_axis=(0.0, 4.0, 30))


# ------------------------------------------------------------ dead / missing traces
def test_unequal_receiver_counts_are_padded_and_masked(model):
    src, rec = geometry()
    dt = model.critical_dt(2.5)
    s = Survey(src, [rec, rec[:5]], t1=120.0, dt=dt, f0_hz=15.0)
    np.testing.assert_array_equal(s.mask(), [[True] * 9, [True] * 5 + [False] * 4])
    F = AcousticModeling(model, s)
    m = m_layered().requires_grad_(True)
    d = F(m)
    assert d.shape == (2, s.nt, 9) and torch.all(d[1, :, 5:] == 0)
    # The padded shot equals the shot modelled alone with its own 5 receivers.
    alone = Survey(src[1:], rec[:5], t1=120.0, dt=dt, f0_hz=15.0)
    torch.testing.assert_close(d[1, :, :5], AcousticModeling(model, alone)(m.detach())[0])
    # Residuals in the padding reach nothing: the gradient ignores them.
    w = torch.randn_like(d)
    (g1,) = torch.autograd.grad(d, m, w)
    w2 = w.clone()
    w2[1, :, 5:] = 1e3
    (g2,) = torch.autograd.grad(F(m), m, w2)
    torch.testing.assert_close(g1, g2)
    data, mask = pad_traces([np.ones((4, 3)), np.ones((4, 1))])
    assert data.shape == (2, 4, 3) and mask.tolist() == [[True] * 3, [True, False, False]]


def test_dead_trace_mask_born_dot_test(model):
    src, rec = geometry()
    live = np.ones((2, 9), dtype=bool)
    live[0, 3] = live[1, [0, 8]] = False
    s = Survey(src, rec, t1=120.0, dt=0.9, f0_hz=15.0, trace_mask=live)
    np.testing.assert_array_equal(s.mask(), live)
    np.testing.assert_array_equal(s.mask([1]), live[1:])
    J = BornModeling(model, s, m_layered())
    x = torch.randn(SHAPE, dtype=torch.float64)
    d = J(x)
    assert torch.all(d[0, :, 3] == 0) and torch.all(d[1, :, [0, 8]] == 0)
    assert torch.any(d[0, :, 2] != 0)
    y = torch.randn(2, s.nt, 9, dtype=torch.float64)

    def adjoint(yy):
        xx = torch.zeros(SHAPE, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(J(xx), xx, yy)
        return g

    assert dot_test(J, adjoint, x, y) < 1e-10


def test_an_absurd_vmax_is_refused_before_its_resampling_matrix_is_built():
    """vmax = 10⁶ km/s makes the stable step tiny: the dense solver-to-data matrix
    (tens of GiB) is refused by size, not attempted (a MemoryError is not an answer)."""
    model = AcousticModel((31, 21), (10.0, 10.0), nbl=10, space_order=4)
    src = np.array([[150.0, 10.0]])
    rec = np.stack([np.linspace(0.0, 300.0, 11), np.full(11, 10.0)], axis=1)
    with pytest.raises(InsufficientMemoryError, match="resampling matrix"):
        Survey.for_data(model, src, rec, TimeAxis(0.0, 2.0, 501), vmax=1e6, f0_hz=15.0)
