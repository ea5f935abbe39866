"""Posterior summaries and the effective sample size (devito_uq.inference.summary)."""

import math

import pytest
import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference import effective_sample_size, summarize


def test_summary_statistics():
    torch.manual_seed(6)
    s = 2.0 + 3.0 * torch.randn(200000, 2, dtype=torch.float64)
    summ = summarize(s)
    torch.testing.assert_close(
        summ.mean, torch.full((2,), 2.0, dtype=torch.float64), atol=0.03, rtol=0
    )
    torch.testing.assert_close(
        summ.std, torch.full((2,), 3.0, dtype=torch.float64), atol=0.03, rtol=0
    )
    lo, hi = summ.credible_interval(0.9)
    torch.testing.assert_close(
        lo, torch.full((2,), 2 - 1.6449 * 3, dtype=torch.float64), atol=0.05, rtol=0
    )
    torch.testing.assert_close(
        hi, torch.full((2,), 2 + 1.6449 * 3, dtype=torch.float64), atol=0.05, rtol=0
    )
    assert summ.quantiles.shape == (3, 2) and summ.n_samples == 200000
    with pytest.raises(InvalidArgumentError, match=r"quantile level 0.25 was not computed"):
        summ.quantile(0.25)
    with pytest.raises(InvalidShapeError, match=r"got \(1, 2\)"):
        summarize(torch.zeros(1, 2))


def test_effective_sample_size_iid_and_ar1():
    torch.manual_seed(7)
    t, c = 4000, 8
    iid = torch.randn(t, c, 1, dtype=torch.float64)
    assert float(effective_sample_size(iid)[0]) == pytest.approx(t * c, rel=0.2)
    rho = 0.9
    x = torch.zeros(t, c, 1, dtype=torch.float64)
    x[0] = torch.randn(c, 1, dtype=torch.float64) / math.sqrt(1 - rho**2)
    for k in range(1, t):
        x[k] = rho * x[k - 1] + torch.randn(c, 1, dtype=torch.float64)
    expected = t * c * (1 - rho) / (1 + rho)  # AR(1): τ = (1 + ρ)/(1 − ρ)
    assert float(effective_sample_size(x)[0]) == pytest.approx(expected, rel=0.25)
