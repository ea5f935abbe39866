"""The path-derivative ("sticking the landing") estimator of VariationalPosterior
(devito_uq.inference.path_gradient): zero variance at the exact posterior, unbiased
elsewhere, same loss value, checked identity."""

import copy

import pytest
import torch

from devito_uq.errors import CheckpointError, InvalidArgumentError
from devito_uq.flows import HINT, Flow
from devito_uq.inference import GaussianPrior, VariationalPosterior
from devito_uq.inference.path_gradient import frozen_log_prob


def _flow(n=6, seed=0, perturb=0.3):
    """A HINT flow whose couplings are not the identity (random weights)."""
    torch.manual_seed(seed)
    flow = Flow(HINT(n, steps=2, hidden=16, memory_frugal=False).skip_data_init(), (n,))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(perturb * torch.randn_like(p))
    return flow.double()


def _grads(vi, estimator, batch, draws, seed=0):
    """``[draws, n_params]`` flat gradients of ``loss_terms(batch)["loss"]``."""
    torch.manual_seed(seed)
    out = []
    for _ in range(draws):
        vi.flow.zero_grad()
        vi.loss_terms(batch, estimator=estimator)["loss"].backward()
        out.append(torch.cat([p.grad.reshape(-1) for p in vi.flow.parameters()]))
    return torch.stack(out)


def _exact_target(flow):
    """A posterior equal to ``flow``'s density: ``−log p = −log q_frozen_copy``."""
    frozen = copy.deepcopy(flow).requires_grad_(False)
    return lambda m: -frozen.log_prob(m)


def test_path_gradient_vanishes_at_the_exact_posterior():
    """q = p (a non-Gaussian flow fitting its own density): the path estimator is zero for
    every draw, while the reparameterization gradient (score term) is not."""
    flow = _flow()
    vi = VariationalPosterior(flow, _exact_target(flow))
    path = _grads(vi, "path", batch=4, draws=8)
    plain = _grads(vi, "reparameterization", batch=4, draws=8)
    assert float(path.abs().max()) < 1e-10
    assert float(plain.std(0).max()) > 1e-2


def test_path_gradient_vanishes_for_a_gaussian_it_represents():
    """A Gaussian posterior that the flow is exactly (identity coupling, random ActNorm and
    LU mixing: an affine map ``m = A z + b``, so ``N(b, A Aᵀ)``): the
    path gradient is zero for every draw, the plain one is noisy; and off the posterior
    the path gradient is not zero."""
    n = 5
    torch.manual_seed(1)
    flow = Flow(HINT(n, steps=1, hidden=8, memory_frugal=False).skip_data_init(), (n,)).double()
    for name, p in flow.named_parameters():
        if name.startswith(("net.layers.0.", "net.layers.1.")):  # ActNorm, LU mixing
            with torch.no_grad():
                p.add_(0.5 * torch.randn_like(p))
    zero = torch.zeros(1, n, dtype=torch.float64)
    with torch.no_grad():
        b = flow.net.inverse(zero)[0][0]
    a = torch.autograd.functional.jacobian(lambda z: flow.net.inverse(z[None])[0][0], zero[0])
    assert float((a - torch.eye(n, dtype=torch.float64)).abs().max()) > 0.1  # not trivial
    vi = VariationalPosterior(flow, prior=GaussianPrior(b, covariance=a @ a.T))
    path = _grads(vi, "path", batch=4, draws=6)
    plain = _grads(vi, "reparameterization", batch=4, draws=6)
    assert float(path.abs().max()) < 1e-10
    assert float(plain.std(0).max()) > 1e-2
    vi = VariationalPosterior(flow, prior=GaussianPrior(b + 0.3, covariance=a @ a.T))
    assert float(_grads(vi, "path", batch=4, draws=1).abs().max()) > 1e-2


def test_path_gradient_is_unbiased():
    """Away from the posterior both estimators have the same mean (within 4 standard
    errors of the difference) and the same loss value."""
    flow = _flow(n=4, seed=2)
    prior = GaussianPrior(torch.full((4,), 0.5, dtype=torch.float64), covariance=0.3**2)
    vi = VariationalPosterior(flow, prior=prior)
    path = _grads(vi, "path", batch=64, draws=30, seed=5)
    plain = _grads(vi, "reparameterization", batch=64, draws=30, seed=6)
    diff = path.mean(0) - plain.mean(0)
    se = (path.var(0) / 30 + plain.var(0) / 30).sqrt()
    big = se > 0  # parameters with a gradient at all
    assert float((diff[big].abs() / se[big]).max()) < 4.5
    assert float(path.mean(0).norm()) > 10 * float(se.norm()) / 30**0.5  # a real signal
    torch.manual_seed(0)
    a = vi.loss_terms(8, estimator="path")
    torch.manual_seed(0)
    b = vi.loss_terms(8)
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_frozen_log_prob_matches_and_leaves_parameters_alone():
    flow = _flow(n=4, seed=3)
    x = flow.sample(5).requires_grad_(True)
    lp = frozen_log_prob(flow, x)
    torch.testing.assert_close(lp, flow.log_prob(x))
    lp.sum().backward()
    assert x.grad is not None and float(x.grad.abs().max()) > 0
    assert all(p.grad is None for p in flow.parameters())
    assert all(isinstance(p, torch.nn.Parameter) for p in flow.parameters())  # restored


def test_estimator_is_checked_and_part_of_the_checkpoint(tmp_path):
    flow = _flow(n=4, seed=4)
    prior = GaussianPrior(torch.zeros(4, dtype=torch.float64), covariance=1.0)
    vi = VariationalPosterior(flow, prior=prior)
    with pytest.raises(InvalidArgumentError, match="estimator='score'"):
        vi.fit(2, batch_size=4, estimator="score", progress=False)
    with pytest.raises(InvalidArgumentError, match="estimator='score'"):
        vi.loss_terms(4, estimator="score")
    with pytest.raises(InvalidArgumentError, match="nn.Module"):
        frozen_log_prob(object(), torch.zeros(1, 4))
    kw = dict(batch_size=4, checkpoint_path=tmp_path / "c.pt", progress=False)
    vi.fit(3, estimator="path", **kw)
    assert vi.history["loss"] and len(vi.history["loss"]) == 3
    with pytest.raises(CheckpointError, match="estimator='path'"):
        vi.fit(4, **kw)
