"""The bounded change of variables m = g(x) (devito_uq.inference.parameterization)."""

import math

import pytest
import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference import Parameterization

_CASES = {
    "none": {},
    "both": {"lower": 1.5, "upper": 4.5},
    "lower": {"lower": 1.0},
    "upper": {"upper": 5.0},
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_parameterization_round_trip_and_logdet(case):
    torch.manual_seed(5)
    ref = torch.linspace(2.0, 4.0, 4, dtype=torch.float64)
    scale = torch.tensor([0.3, 0.5, 1.0, 2.0], dtype=torch.float64)
    g = Parameterization(ref, scale=scale, **_CASES[case])
    x = 3.0 * torch.randn(6, 4, dtype=torch.float64)
    m, logdet = g(x)
    torch.testing.assert_close(g.inverse(m), x, rtol=1e-5, atol=1e-6)  # sigmoid tails
    # log|det J| against the autograd Jacobian of one sample.
    jac = torch.autograd.functional.jacobian(lambda v: g(v.unsqueeze(0))[0][0], x[0])
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jac)[1])
    # g(0) = reference and g'(0) = scale: near the reference the map is affine.
    m0, ld0 = g(torch.zeros(1, 4, dtype=torch.float64))
    torch.testing.assert_close(m0[0], ref)
    torch.testing.assert_close(ld0[0], torch.log(scale).sum())
    if "lower" in _CASES[case]:
        assert bool((m > _CASES[case]["lower"]).all())
    if "upper" in _CASES[case]:
        assert bool((m < _CASES[case]["upper"]).all())


def test_parameterization_density_integrates_to_one():
    # q_m(m) = N(x; 0, I) / |det J_g(x)| must integrate to 1 over the box: checks the
    # change of variables that enters the VI objective and the Langevin target.
    g = Parameterization(torch.tensor([0.3, 0.6], dtype=torch.float64), 0.4, lower=0.0, upper=1.0)
    t = (torch.arange(400, dtype=torch.float64) + 0.5) / 400
    mm = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    x = g.inverse(mm)
    log_q = -0.5 * (x**2).sum(1) - math.log(2 * math.pi) - g(x)[1]
    assert float(log_q.exp().sum() / 400**2) == pytest.approx(1.0, abs=1e-3)


def test_parameterization_errors():
    ref = torch.ones(3)
    with pytest.raises(InvalidArgumentError, match="lower bound must lie below the reference"):
        Parameterization(ref, lower=1.0)
    with pytest.raises(InvalidArgumentError, match="upper bound must lie above the reference"):
        Parameterization(ref, upper=torch.tensor([2.0, 0.5, 2.0]))
    with pytest.raises(InvalidArgumentError, match=r"scale must be finite and positive.*got 0.0"):
        Parameterization(ref, scale=0.0)
    with pytest.raises(InvalidShapeError, match=r"scale of shape \(2,\) does not broadcast"):
        Parameterization(ref, scale=torch.ones(2))
    with pytest.raises(InvalidShapeError, match=r"latent x must be \[batch, \*\(3,\)\]"):
        Parameterization(ref)(torch.zeros(3))
    g = Parameterization(ref, lower=0.0, upper=2.0)
    with pytest.raises(InvalidArgumentError, match="model value 2.5 violates the upper bound 2.0"):
        g.inverse(torch.tensor([[1.0, 2.5, 1.0]]))
