"""The local (frame-diagonal) symbol: a tight frame, PSD, exact for what it models, and
converging to a stationary convolution as its windows grow."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference.local_symbol import LocalSymbol, local_symbol, tight_windows

SHAPE = (37, 23)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n,hop", [(37, 4), (23, 6), (8, 8), (5, 2)])
def test_windows_square_to_one(n, hop):
    total = torch.zeros(n, dtype=torch.float64)
    for start, values in tight_windows(n, hop):
        total[start : start + values.numel()] += values**2
    torch.testing.assert_close(total, torch.ones_like(total))


def test_unit_symbol_is_the_identity_and_a_constant_is_estimated_exactly():
    z = torch.randn(3, *SHAPE, dtype=torch.float64, generator=_gen(0))
    est = local_symbol(z, 2.5 * z, hop=5)
    torch.testing.assert_close(est.symbols, torch.full_like(est.symbols, 2.5))
    torch.testing.assert_close(est.matvec(z), 2.5 * z)


def test_operator_is_symmetric_positive_semidefinite():
    probe = local_symbol(torch.randn(2, *SHAPE, dtype=torch.float64), torch.zeros(2, *SHAPE))
    a = torch.rand(probe.symbols.shape, dtype=torch.float64, generator=_gen(1))
    dense = LocalSymbol(SHAPE, probe.hop, probe.pad, a).dense()
    torch.testing.assert_close(dense, dense.T)
    assert float(torch.linalg.eigvalsh(dense).min()) > -1e-10


def _smoothing(v: torch.Tensor) -> torch.Tensor:
    """A stationary PSD operator: convolution with a Gaussian of 1.5 cells, applied twice
    (``C Cᵀ``, zero boundary)."""
    x = torch.arange(-5, 6, dtype=torch.float64)
    k = torch.exp(-0.5 * (x[:, None] ** 2 + x[None, :] ** 2) / 1.5**2)
    k = (k / k.sum())[None, None]
    once = F.conv2d(v.unsqueeze(1), k, padding=5)
    return F.conv2d(once, k, padding=5).squeeze(1)


def test_a_stationary_operator_is_recovered_better_as_windows_grow():
    """The frame multiplier weights the kernel at lag d by Σ_j w_j(x)w_j(x+d) < 1: its
    error shrinks as windows grow against the kernel's reach (≈ 8 cells here), not with
    more probes (the estimate itself is exact for a stationary operator)."""
    v = torch.randn(8, *SHAPE, dtype=torch.float64, generator=_gen(2))
    hv = _smoothing(v)
    errors = {}
    for hop, probes in ((4, 8), (12, 8)):
        z = torch.randn(probes, *SHAPE, dtype=torch.float64, generator=_gen(3))
        est = local_symbol(z, _smoothing(z), hop=hop)
        errors[hop] = float(((est.matvec(v) - hv).norm(dim=(1, 2)) / hv.norm(dim=(1, 2))).mean())
    assert errors[12] < 0.25, errors
    assert errors[12] < 0.5 * errors[4], errors


def test_bad_input_is_refused():
    z = torch.randn(2, *SHAPE, dtype=torch.float64)
    with pytest.raises(InvalidShapeError, match="probes and products"):
        local_symbol(z, z[:1])
    with pytest.raises(InvalidArgumentError, match="hop=1"):
        local_symbol(z, z, hop=1)
    with pytest.raises(InvalidArgumentError, match="finite"):
        local_symbol(z, z * float("nan"))
    est = local_symbol(z, z)
    with pytest.raises(InvalidShapeError, match="symbols must be"):
        LocalSymbol(SHAPE, est.hop, est.pad, est.symbols[:1])
    with pytest.raises(InvalidShapeError, match="v must be"):
        est.matvec(z[0])
