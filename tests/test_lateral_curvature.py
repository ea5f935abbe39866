"""The laterally stationary Hessian: exact for what it models, converging as its probes
grow, symmetric PSD whatever it is given, and a noise whose covariance is itself."""

from __future__ import annotations

import pytest
import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference.lateral_curvature import lateral_stationary_hessian

NX, NZ = 24, 6
REACH = 3  # half-width (traces) of the generator g; the kernel K reaches 2·REACH


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _stationary_dense(scale: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``S T S`` with ``T(x, x') = K(x − x')``, ``K(d) = Σ_e g(e + d) g(e)ᵀ``: the restriction
    to the line of a PSD block-Toeplitz operator (``T = G Gᵀ`` on the infinite line)."""
    g = torch.randn(2 * REACH + 1, NZ, NZ, dtype=torch.float64, generator=_gen(seed))
    kernel = {}
    for d in range(-2 * REACH, 2 * REACH + 1):
        kernel[d] = sum(
            g[e + d + REACH] @ g[e + REACH].T
            for e in range(-REACH, REACH + 1)
            if -REACH <= e + d <= REACH
        )
    t = torch.zeros(NX, NZ, NX, NZ, dtype=torch.float64)
    for x in range(NX):
        for xp in range(NX):
            if abs(x - xp) <= 2 * REACH:
                t[x, :, xp, :] = kernel[x - xp]
    s = scale.flatten()
    return s[:, None] * t.reshape(NX * NZ, -1) * s[None, :]


def _apply(dense: torch.Tensor):
    def apply(v):
        return (v.reshape(v.shape[0], -1) @ dense).reshape(v.shape)

    return apply


def _dense_of(op) -> torch.Tensor:
    n = NX * NZ
    return op(torch.eye(n, dtype=torch.float64).reshape(n, NX, NZ)).reshape(n, n)


def test_a_laterally_stationary_operator_is_recovered_to_round_off():
    depth_scale = torch.linspace(3.0, 0.5, NZ, dtype=torch.float64)
    h = _stationary_dense(depth_scale.expand(NX, NZ))
    for probes in (0, 8):
        op = lateral_stationary_hessian(_apply(h), (NX, NZ), probes=probes, smooth=(3, 0))
        assert op.products == 2 * NZ + probes + 4  # two node traces by default
        torch.testing.assert_close(_dense_of(op), h, rtol=0, atol=1e-10 * float(h.abs().max()))
        assert op.check_error < 1e-10


def test_a_lateral_illumination_change_is_learned_from_the_probes():
    """The node trace alone assumes the illumination of the centre everywhere; the probed
    diagonal (control variate, no smoothing here) converges to the exact one as the probes
    grow: 0.35 → 0.09 → 0.013 → 0.003 → 0.0003 at 0, 2, 8, 32, 128 probes."""
    x = torch.arange(NX, dtype=torch.float64)
    # 1.6 at the centre, ~1 at the ends
    taper = 1.0 + 0.6 * torch.cos(torch.pi * (x - NX // 2) / NX)
    scale = taper[:, None] * torch.linspace(2.0, 1.0, NZ, dtype=torch.float64)[None, :]
    h = _stationary_dense(scale)
    v = torch.randn(16, NX, NZ, dtype=torch.float64, generator=_gen(3))
    hv = _apply(h)(v)
    err = {}
    for probes in (0, 2, 8, 32, 128):
        op = lateral_stationary_hessian(_apply(h), (NX, NZ), probes=probes, smooth=(0, 0))
        rel = (op(v) - hv).flatten(1).norm(dim=1) / hv.flatten(1).norm(dim=1)
        err[probes] = float(rel.mean())
    assert err[0] > 0.2
    assert err[128] < err[32] < err[8] < err[2] < err[0]
    assert err[128] < 1e-3


def test_symmetric_positive_semidefinite_whatever_it_is_given():
    a = torch.randn(NX * NZ, NX * NZ, dtype=torch.float64, generator=_gen(4))
    sym = a + a.T  # indefinite
    op = lateral_stationary_hessian(_apply(sym), (NX, NZ), probes=4)
    dense = _dense_of(op)
    torch.testing.assert_close(dense, dense.T, rtol=0, atol=1e-12 * float(dense.abs().max()))
    op2 = lateral_stationary_hessian(_apply(sym), (NX, NZ), probes=0)
    dense2 = _dense_of(op2)
    assert float(torch.linalg.eigvalsh(0.5 * (dense2 + dense2.T)).min()) > -1e-10 * float(
        dense2.abs().max()
    )
    assert op2.clipped > 0.05  # the indefinite input's negative part was removed, and counted
    torch.testing.assert_close(op2.diagonal().flatten(), dense2.diagonal())


def test_several_traces_inform_no_more_than_each():
    """The harmonic mean of the traces' symbols: a direction is informed only as far as
    every trace's kernel says (Loewner order: below their arithmetic mean), and one trace
    repeated is itself."""
    h = _stationary_dense(torch.ones(NX, NZ, dtype=torch.float64))
    left = _dense_of(lateral_stationary_hessian(_apply(h), (NX, NZ), nodes=[7], probes=0))
    torch.testing.assert_close(
        left, _dense_of(lateral_stationary_hessian(_apply(h), (NX, NZ), nodes=[7, 16], probes=0))
    )
    # another kernel (another "dip") on the right half, no coupling across the middle
    half = (torch.arange(NX) < NX // 2).double()[:, None].expand(NX, NZ).flatten()
    other = _stationary_dense(torch.ones(NX, NZ, dtype=torch.float64), seed=1)

    def unit(a):  # unit diagonal: every variant then has the same scale S = 1
        d = a.diagonal().rsqrt()
        return d[:, None] * a * d[None, :]

    h, other = unit(h), unit(other)
    bent = half[:, None] * h * half[None, :] + (1 - half)[:, None] * other * (1 - half)[None, :]
    one = {
        n: _dense_of(lateral_stationary_hessian(_apply(bent), (NX, NZ), nodes=[n], probes=0))
        for n in (7, 16)
    }
    both = _dense_of(lateral_stationary_hessian(_apply(bent), (NX, NZ), nodes=[7, 16], probes=0))
    gap = torch.linalg.eigvalsh(0.5 * (one[7] + one[16]) - both)
    assert float(gap.min()) > -1e-9 * float(both.abs().max())
    assert float(gap.max()) > 1e-3 * float(both.abs().max())


def test_noise_has_the_operator_as_covariance():
    h = _stationary_dense(torch.ones(NX, NZ, dtype=torch.float64))
    op = lateral_stationary_hessian(_apply(h), (NX, NZ), probes=0, check=0)
    draws = op.noise(40_000, generator=_gen(5)).flatten(1)
    cov = draws.T @ draws / draws.shape[0]
    dense = _dense_of(op)
    assert float((cov - dense).norm() / dense.norm()) < 0.05


def test_bad_input_is_refused_before_any_product():
    calls = []

    def apply(v):
        calls.append(v.shape)
        return v

    with pytest.raises(InvalidArgumentError, match="node=30"):
        lateral_stationary_hessian(apply, (NX, NZ), nodes=[30])
    with pytest.raises(InvalidArgumentError, match="distinct"):
        lateral_stationary_hessian(apply, (NX, NZ), nodes=[3, 3])
    with pytest.raises(InvalidArgumentError, match="probes"):
        lateral_stationary_hessian(apply, (NX, NZ), probes=-1)
    assert calls == []
    with pytest.raises(InvalidShapeError, match="apply returned"):
        lateral_stationary_hessian(lambda v: v[:, :-1], (NX, NZ))
