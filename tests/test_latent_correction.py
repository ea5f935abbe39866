"""The latent correction with a triangular (correlated) scale, on a correlated Gaussian.

The frozen "amortized" flow is affine with the issue's faults: marginal stds 0.75× the
exact ones, no correlations, a shifted mean. The exact posterior is a correlated
Gaussian (closed form), so every error is measured against the truth.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from devito_uq.errors import InvalidArgumentError
from devito_uq.flows import Flow
from devito_uq.flows.invertible import InvertibleModule
from devito_uq.inference import (
    ConditionedFlow,
    GaussianPrior,
    LatentCorrection,
    VariationalPosterior,
)

D = 4
SIGMA = torch.tensor([1.0, 0.5, 2.0, 1.5], dtype=torch.float64)
MEAN = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64)
# AR(1) correlations 0.8: the exact posterior's dependence
CORR = torch.tensor([[0.8 ** abs(i - j) for j in range(D)] for i in range(D)], dtype=torch.float64)
COV = SIGMA[:, None] * CORR * SIGMA[None, :]


class _Affine(InvertibleModule):
    """``m = shift + B z`` with ``B`` lower triangular (frozen flow of the test)."""

    def __init__(self, shift, matrix):
        super().__init__()
        self.shift, self.matrix = nn.Parameter(shift), nn.Parameter(matrix)

    def _logdet(self, n):
        return torch.log(torch.diagonal(self.matrix)).sum().expand(n)

    def _forward(self, m, c):
        z = torch.linalg.solve_triangular(self.matrix, (m - self.shift).T, upper=False).T
        return z, -self._logdet(m.shape[0])

    def _inverse(self, z, c):
        return self.shift + z @ self.matrix.T, self._logdet(z.shape[0])


def _amortized():
    """Stds 0.75×, independent coordinates, mean off by 0.5 std."""
    shift = MEAN + 0.5 * SIGMA * torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    net = _Affine(shift, torch.diag(0.75 * SIGMA))
    return ConditionedFlow(Flow(net, (D,)), torch.zeros(1, 1, dtype=torch.float64))


def _errors(samples):
    s = samples.double().numpy()
    sd = s.std(0)
    corr = np.corrcoef(s.T)
    off = ~np.eye(D, dtype=bool)
    return {
        "mean": float(np.linalg.norm((s.mean(0) - MEAN.numpy()) / SIGMA.numpy()) / math.sqrt(D)),
        "std": float(np.abs(sd / SIGMA.numpy() - 1).mean()),
        "corr": float(np.abs(corr - CORR.numpy())[off].max()),
        "std_ratio": (float((sd / SIGMA.numpy()).min()), float((sd / SIGMA.numpy()).max())),
    }


def _correct(scale):
    lc = LatentCorrection(_amortized(), scale=scale)
    vi = VariationalPosterior(lc, prior=GaussianPrior(MEAN, covariance=COV))
    vi.fit(1500, batch_size=128, lr=2e-2, lr_schedule="cosine", seed=0, progress=False)
    torch.manual_seed(1)
    return lc, _errors(vi.sample(20000))


def test_triangular_correction_fixes_mean_std_and_correlation_without_overshoot():
    torch.manual_seed(1)
    before = _errors(_amortized().sample(20000))
    _, diag = _correct("diagonal")
    _, tri = _correct("triangular")
    print(f"\nbefore {before}\ndiagonal {diag}\ntriangular {tri}")
    assert before["std"] > 0.2 and before["corr"] > 0.5 and before["mean"] > 0.3  # real faults
    for key in ("mean", "std", "corr"):
        assert tri[key] < before[key] / 4, (key, before[key], tri[key])
    lo, hi = tri["std_ratio"]
    assert 0.95 < lo and hi < 1.05  # no marginal overshoots
    assert tri["corr"] < 0.05 and tri["std"] < 0.05 and tri["mean"] < 0.05
    assert diag["corr"] > 0.5  # a diagonal scale cannot correct the dependence


def test_triangular_correction_starts_at_the_amortized_flow_and_has_the_exact_density():
    cf = _amortized()
    lc = LatentCorrection(cf, scale="triangular")
    assert [p.shape for p in lc.parameters()] == [(D,), (D,), (D, D)]
    x = MEAN + SIGMA * torch.randn(16, D, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(lc.log_prob(x), cf.log_prob(x), atol=1e-12, rtol=0)
        g = torch.Generator().manual_seed(2)
        lc.mu.copy_(torch.randn(D, generator=g, dtype=torch.float64))
        lc.log_scale.copy_(0.3 * torch.randn(D, generator=g, dtype=torch.float64))
        lc.lower.copy_(torch.randn(D, D, generator=g, dtype=torch.float64))
        x, lq = lc.rsample_and_log_prob(64)
        torch.testing.assert_close(lc.log_prob(x), lq, atol=1e-10, rtol=0)
        # Closed form: m = shift + B(μ + S ε) is N(shift + Bμ, B S Sᵀ Bᵀ).
        b, s = cf.flow.net.matrix, lc.factor()
        assert torch.equal(s, torch.tril(s)) and torch.allclose(s.diagonal(), lc.log_scale.exp())
        ref = torch.distributions.MultivariateNormal(
            cf.flow.net.shift + b @ lc.mu, scale_tril=b @ s
        )
        torch.testing.assert_close(lq, ref.log_prob(x), atol=1e-10, rtol=0)
    assert LatentCorrection(cf).factor() is None and LatentCorrection(cf).lower is None


def test_latent_correction_rejects_bad_scales():
    with pytest.raises(InvalidArgumentError, match="scale='full'"):
        LatentCorrection(_amortized(), scale="full")
    big = ConditionedFlow(
        Flow(_Affine(torch.zeros(5000), torch.eye(5000)), (5000,)), torch.zeros(1, 1)
    )
    with pytest.raises(InvalidArgumentError, match="D=5000 latent entries exceed 4096"):
        LatentCorrection(big, scale="triangular")
