"""One battery over every physics operator of devito_uq.physics (as Devito's test_adjoint.py).

Each case is one operator ``d = op(x)`` (a torch module) at a point ``x``, with its
linearisation at ``x`` (the operator itself for the linear Born maps). Checks, in
float64: the dot test of the linearisation against the autograd backward (the
adjoint-state gradient), the Taylor test of a misfit (slopes 1 and 2), a batch equal
to single calls (data and gradients), no operator compiled again for new model values
(``total_compiles``, the solver registry's counter), and the CUDA path (input device
kept; skipped with its reason on CPU-only machines).

A new physics adds a setup function returning :class:`Case` and one line per operator
in :data:`CASES`. Physics-specific checks (references against Devito's
``examples.seismic`` or a former kernel, shot selection, subsampling, checkpointing,
threads) stay in ``test_physics_<physics>.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from checks import dot_test, slopes, taylor_test
from conftest import cuda_or_skip

from devito_uq.physics import (
    AcousticModel,
    AcousticModeling,
    BornModeling,
    PlaneWaveBornModeling,
    PlaneWaveModeling,
    Survey,
    bandpass_wavelet,
    ray_parameters_from_angles,
    total_compiles,
)


@dataclass
class Case:
    """One operator of one physics, ready for the battery.

    ``build(s)`` makes the operator with its background (Born) or nothing (nonlinear)
    scaled by ``s``; ``linearized(op, x)`` the linear map ``δx ↦ J(x) δx`` of ``op`` at
    ``x`` ``[*model_shape]``; ``x`` and ``dx`` (same shape) the point and direction;
    ``x_obs`` the model of the Taylor test's data and ``h0`` its first step;
    ``dot_tol`` the dot test's tolerance (float64; measured 6e-14 … 6e-16).
    """

    build: Callable[[float], torch.nn.Module]
    linearized: Callable[[torch.nn.Module, torch.Tensor], Callable]
    x: torch.Tensor
    dx: torch.Tensor
    x_obs: torch.Tensor
    h0: float
    dot_tol: float


# ---------------------------------------------------------------------------- acoustic
def _acoustic(born: bool, batch_size: int = 2) -> Case:
    shape = (41, 41)
    model = AcousticModel(shape, (10.0, 10.0), nbl=10, space_order=4, dtype=np.float64)
    # vmax above the largest 2.5 km/s: the CFL bound is sharp and the tests perturb m.
    survey = Survey.surface(model, nshots=2, nreceivers=11, t1=300.0, f0_hz=15.0, vmax=2.6)
    v = np.full(shape, 2.0)
    v[:, shape[1] // 2 :] = 2.5
    m = torch.tensor(1.0 / v**2)
    xg = np.linspace(-1, 1, shape[0])[:, None]
    zg = np.linspace(-1, 1, shape[1])[None, :]
    smooth = torch.tensor(0.02 * np.exp(-((xg - 0.1) ** 2 + (zg - 0.2) ** 2) / 0.1))
    if born:
        return Case(
            build=lambda s: BornModeling(model, survey, m * s, batch_size=batch_size),
            linearized=lambda op, x: op,
            x=smooth,
            dx=smooth + 0.5 * smooth.flip(0),
            x_obs=torch.zeros(shape, dtype=torch.float64),
            h0=0.1,
            dot_tol=1e-13,
        )
    return Case(
        build=lambda s: AcousticModeling(model, survey, batch_size=batch_size),
        linearized=lambda op, x: BornModeling(model, survey, x),
        x=torch.full(shape, 0.25, dtype=torch.float64),
        dx=smooth,
        x_obs=m,
        h0=1.0,
        dot_tol=1e-12,
    )


# -------------------------------------------------------------------------- plane wave
def _planewave(born: bool) -> Case:
    nz = 40
    p = ray_parameters_from_angles([10.0, 20.0, 30.0], v_min=2.0)
    # Short record and thin layers keep each solve well under a millisecond.
    wavelet = bandpass_wavelet(121, 0.5, half_length=15.0)
    op = PlaneWaveModeling(p, nz=nz, dz=3.048, t1=60.0, dt=0.5, wavelet=wavelet, nbl=20)
    z = torch.arange(nz, dtype=torch.float64)
    m = torch.where(z < nz // 2, 1 / 2.4**2, 1 / 2.0**2) + 0.01 * torch.sin(z / 5.0)
    dm = 0.02 * torch.sin(z / 3.0 + 1.0)
    if born:
        return Case(
            build=lambda s: PlaneWaveBornModeling(op, m * s),
            linearized=lambda born_op, x: born_op,
            x=dm,
            dx=dm + 0.01 * torch.cos(z / 4.0),
            x_obs=torch.zeros(nz, dtype=torch.float64),
            h0=0.1,
            dot_tol=1e-13,
        )
    return Case(
        build=lambda s: op,
        linearized=lambda pw, x: lambda d: pw.jacobian(x, d),
        x=m,
        dx=0.02 * torch.cos(z / 4.0),
        x_obs=m + dm,
        h0=0.05,
        dot_tol=1e-13,
    )


CASES = {
    "acoustic-forward": lambda: _acoustic(born=False),
    "acoustic-born": lambda: _acoustic(born=True),
    # One Devito call per model (the default cases solve a batch in one batched kernel).
    "acoustic-forward-singles": lambda: _acoustic(born=False, batch_size=1),
    "acoustic-born-singles": lambda: _acoustic(born=True, batch_size=1),
    "planewave-forward": lambda: _planewave(born=False),
    "planewave-born": lambda: _planewave(born=True),
}
NAMES = list(CASES)
_BUILT: dict[str, Case] = {}


@pytest.fixture(params=NAMES)
def case(request) -> Case:
    """The case, built once per test session (the operators share compiled solvers)."""
    if request.param not in _BUILT:
        _BUILT[request.param] = CASES[request.param]()
    return _BUILT[request.param]


def _batch(case: Case) -> torch.Tensor:
    """Two models ``[2, *shape]``: ``x`` and ``x`` moved along ``dx``."""
    return torch.stack([case.x, case.x + 0.5 * case.dx])


def _gradient(op: torch.nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``∂⟨w, op(x)⟩/∂x`` by the operator's backward (the adjoint-state solve)."""
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(op(x), x, w)
    return g


# ------------------------------------------------------------------------------ battery
def test_dot_test(case):
    """⟨J δx, y⟩ = ⟨δx, Jᵀ y⟩, J the linearisation at x, Jᵀ the autograd backward."""
    op = case.build(1.0)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        y = torch.randn(op(case.x).shape, generator=gen, dtype=torch.float64)
    lin = case.linearized(op, case.x)
    err = dot_test(lin, lambda yy: _gradient(op, case.x, yy), case.dx, y)
    assert err < case.dot_tol


def test_taylor_test(case):
    """The misfit gradient is right: Taylor slopes 1 (no gradient) and 2 (with it)."""
    op = case.build(1.0)
    with torch.no_grad():
        d = op(case.x_obs)

    def misfit(x):
        return 0.5 * torch.sum((op(x) - d) ** 2)

    h, e1, e2 = taylor_test(misfit, case.x, case.dx, h0=case.h0, steps=6)
    s1, s2 = slopes(h, e1), slopes(h, e2)
    assert np.all(np.abs(s1 - 1) < 0.1), s1
    assert np.all(np.abs(s2 - 2) < 0.1), s2


def test_batch_equals_single_calls(case):
    """Each model of a batch gives its own data and gradient, as if called alone."""
    op = case.build(1.0)
    xb = _batch(case)
    with torch.no_grad():
        db = op(xb)
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(db.shape, generator=gen, dtype=torch.float64)
    gb = _gradient(op, xb, w)
    for i in range(xb.shape[0]):
        with torch.no_grad():
            di = op(xb[i])
        torch.testing.assert_close(db[i], di, rtol=0, atol=1e-12 * float(di.abs().max()))
        gi = _gradient(op, xb[i], w[i])
        torch.testing.assert_close(gb[i], gi, rtol=1e-10, atol=1e-12 * float(gi.abs().max()))


def test_no_recompilation_on_new_model_values(case):
    """Forward and gradient at new model values (and a new Born background) reuse every
    compiled operator: only a new geometry, dtype or batch size compiles."""
    xb = _batch(case)
    op = case.build(1.0)
    _gradient(op, xb, torch.ones_like(op(xb)))  # compiles what the case needs, once
    before = total_compiles()
    op = case.build(1.02)
    y = op(xb * 1.01)
    _gradient(op, xb * 0.99, torch.ones_like(y))
    assert total_compiles() == before


def test_cuda_input_gives_cuda_output(case):
    """A CUDA input gives CUDA data and a CUDA gradient, equal to the CPU results."""
    device = cuda_or_skip()
    op = case.build(1.0)
    x = case.x.to(device).requires_grad_(True)
    d = op(x)
    assert d.device == x.device
    d.sum().backward()
    assert x.grad.device == x.device
    torch.testing.assert_close(d.detach().cpu(), op(case.x).detach(), rtol=0, atol=0)
    torch.testing.assert_close(x.grad.cpu(), _gradient(op, case.x, torch.ones_like(d.cpu())))


def test_nan_upstream_gradient_and_foreign_device_refused(case):
    """A NaN upstream gradient is named before any adjoint solve (it would come back as a
    NaN model gradient without a word); a tensor on a device Devito cannot reach (meta) is
    refused by name before anything is compiled."""
    from devito_uq.errors import DevitoUQError

    op = case.build(1.0)
    x = case.x.clone().requires_grad_(True)
    d = op(x)
    bad = torch.ones_like(d)
    bad.view(-1)[3] = float("nan")
    with pytest.raises(DevitoUQError, match="grad_out contains nan"):
        d.backward(bad)
    with pytest.raises(DevitoUQError, match="meta"):
        op(torch.empty(case.x.shape, dtype=case.x.dtype, device="meta"))
