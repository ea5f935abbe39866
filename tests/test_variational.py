"""VariationalPosterior (devito_uq.inference.variational) with a real HINT flow: closed-form
posteriors, the ring mixture, resume, divergence."""

import math
import random

import numpy as np
import pytest
import torch
from conftest import cuda_or_skip

from devito_uq.errors import CheckpointError, InvalidArgumentError, TrainingDivergedError
from devito_uq.flows import HINT, Flow
from devito_uq.inference import (
    GaussianPrior,
    Parameterization,
    RingMixture,
    VariationalPosterior,
    linear_gaussian_problem,
)
from devito_uq.inference.problems import (
    ring_kl_estimate,
    ring_mode_fractions,
    ring_modes_covered,
)


def _flow(n, steps=2, hidden=32, seed=0):
    torch.manual_seed(seed)
    # memory_frugal=False: these flows are small; keeping activations is ~2.5× faster.
    return Flow(HINT(n, steps=steps, hidden=hidden, memory_frugal=False), (n,))


def test_vi_linear_gaussian_matches_closed_form():
    """Mean: ‖mean − μ‖/‖μ‖ ≤ 5 %. Std: max over the 32 coordinates of |std − σ|/σ ≤ 10 %."""
    p = linear_gaussian_problem(n=32, singular_values=(0.1, 8.0), seed=0)
    mu, sd = p.posterior_mean, p.posterior_std
    # The problem is correlated enough to tell a full-covariance fit from a mean-field
    # one: the conditional stds 1/sqrt(P_ii) miss the marginal ones by far more than 10 %.
    precision = torch.linalg.inv(p.posterior_covariance)
    assert float((1 / precision.diagonal().sqrt() / sd).max()) < 0.8
    vi = VariationalPosterior(_flow(32), p.likelihood(), p.prior)
    vi.fit(400, batch_size=32, lr=3e-3, lr_schedule="cosine", clip_grad=100.0, progress=False)
    s = vi.summary(20000)
    assert float((s.mean.double() - mu).norm() / mu.norm()) < 0.05
    assert float(((s.std.double() - sd).abs() / sd).max()) < 0.10
    # The loss is KL(q‖p) − log Z with Z the evidence of exp(−misfit − prior), known in
    # closed form here: the KL estimate must be small and not negative (beyond MC noise).
    d = p.data.reshape(-1).double()
    log_z = (
        0.5 * 32 * math.log(2 * math.pi)
        - 0.5 * torch.logdet(precision)
        + 0.5 * mu @ precision @ mu
        - 0.5 * (d @ d) / p.sigma**2
    )
    with torch.no_grad():
        kl = float(vi.loss_terms(20000)["loss"]) + float(log_z)
    assert -0.02 < kl < 0.4
    assert len(vi.history["loss"]) == 400
    assert set(vi.history) >= {"loss", "misfit", "prior", "neg_entropy", "lr", "iteration"}


def test_vi_bounded_parameterization_targets_density_of_m():
    """Truncated Gaussian in the box (0, 1)²: the flow lives on x, the posterior on m; with
    the Jacobian of g in the objective the fitted moments match the truncated normal's."""
    from scipy.stats import truncnorm

    loc, scale = torch.tensor([0.2, 0.7]), torch.tensor([0.3, 0.4])
    prior = GaussianPrior(loc, covariance=scale**2)
    g = Parameterization(torch.tensor([0.3, 0.6]), scale=0.3, lower=0.0, upper=1.0)
    vi = VariationalPosterior(_flow(2, steps=4, hidden=32), prior=prior, parameterization=g)
    vi.fit(600, batch_size=128, lr=3e-3, lr_schedule="cosine", progress=False)
    s = vi.summary(20000)
    a, b = (0 - loc) / scale, (1 - loc) / scale
    mean = torch.tensor(truncnorm.mean(a, b, loc=loc, scale=scale), dtype=torch.float32)
    std = torch.tensor(truncnorm.std(a, b, loc=loc, scale=scale), dtype=torch.float32)
    torch.testing.assert_close(s.mean, mean, atol=0.01, rtol=0)
    torch.testing.assert_close(s.std, std, rtol=0.05, atol=0)
    assert float(s.quantiles.min()) > 0.0 and float(s.quantiles.max()) < 1.0
    # log_prob(m) is the density of m: compare with the normalized truncated normal.
    m = torch.tensor([[0.25, 0.65], [0.5, 0.4]])
    exact = torch.tensor(truncnorm.logpdf(m.numpy(), a, b, loc=loc, scale=scale).sum(1))
    with torch.no_grad():
        torch.testing.assert_close(vi.log_prob(m), exact.float(), atol=0.1, rtol=0)
    # As the prior of a next inversion: R = −log q, with gradients for VI / Langevin.
    mg = m.clone().requires_grad_(True)
    r = vi.as_prior().negative_log(mg)
    (grad,) = torch.autograd.grad(r.sum(), mg)
    torch.testing.assert_close(r.detach(), -vi.log_prob(m).detach())
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0


def _resume_setup(tmp_path, name, device="cpu"):
    p = linear_gaussian_problem(n=8, n_shots=4, rows_per_shot=2, seed=1)
    # Stochastic shot subsets: the likelihood's own generator must also be restored.
    lik = p.likelihood(shot_batch=2, seed=5).to(device)
    vi = VariationalPosterior(_flow(8, seed=7).to(device), lik, p.prior.to(device))
    kwargs = dict(
        iterations=20,
        batch_size=4,
        lr=1e-2,
        lr_schedule="cosine",
        clip_grad=5.0,
        checkpoint_path=tmp_path / name,
        checkpoint_every=10,
        seed=3,
        progress=False,
    )
    return vi, kwargs


def _device(name):
    return cuda_or_skip() if name == "cuda" else torch.device("cpu")


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_resume_is_bit_identical(tmp_path, device):
    device = _device(device)
    ref, kw = _resume_setup(tmp_path, "a.pt", device)
    ref.fit(**kw)

    first, kw = _resume_setup(tmp_path, "b.pt", device)

    def interrupt(iteration, terms):
        if iteration == 13:  # killed after the checkpoint at 10, before the one at 20
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.fit(**kw, callback=interrupt)
    # A fresh object with a differently initialized flow resumes from the file.
    torch.manual_seed(123)
    flow = _flow(8, seed=99).to(device)
    resumed = VariationalPosterior(flow, first.likelihood, first.prior)
    resumed.likelihood.generator.manual_seed(42)  # scrambled; must come from the checkpoint
    resumed.fit(**kw)
    # fit says where it started: the checkpoint at 10, not the interruption at 13.
    assert ref.resumed_from == 0 and resumed.resumed_from == 10
    for (name, a), (_, b) in zip(ref.flow.state_dict().items(), resumed.flow.state_dict().items()):
        assert torch.equal(a, b), name
    assert resumed.history == ref.history
    assert resumed.iteration == 20


class _GlobalNoise:
    """Likelihood that adds draws of numpy's and Python's global generators to its value."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, m):
        jitter = np.random.standard_normal(m.shape[0]) + random.random()
        return self.inner(m) + torch.as_tensor(1e-2 * jitter, dtype=m.dtype)


def test_resume_restores_numpy_and_python_generators(tmp_path):
    """A likelihood that draws from numpy's and Python's global generators still resumes
    bit for bit: the checkpoint holds their states."""
    p = linear_gaussian_problem(n=8, n_shots=4, rows_per_shot=2, seed=1)

    def fit(name, **kw):
        vi = VariationalPosterior(_flow(8, seed=7), _GlobalNoise(p.likelihood()), p.prior)
        kw = dict(batch_size=4, lr=1e-2, checkpoint_path=tmp_path / name) | kw
        vi.fit(12, checkpoint_every=5, seed=3, progress=False, **kw)
        return vi

    np.random.seed(0)
    random.seed(0)
    ref = fit("a.pt")

    def interrupt(iteration, terms):
        if iteration == 7:  # after the checkpoint at 5
            raise KeyboardInterrupt

    np.random.seed(0)
    random.seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit("b.pt", callback=interrupt)
    np.random.seed(99)  # scrambled: the states must come from the checkpoint
    random.seed(99)
    resumed = fit("b.pt")
    assert resumed.resumed_from == 5
    assert resumed.history == ref.history


def test_vi_and_mala_on_gpu():
    """Flow, likelihood and prior on the GPU: same closed-form bounds as on the CPU."""
    from devito_uq.inference import MALA

    dev = cuda_or_skip()
    p = linear_gaussian_problem(n=32, singular_values=(0.1, 8.0), seed=0)
    lik, prior = p.likelihood().to(dev), p.prior.to(dev)
    mu, sd = p.posterior_mean, p.posterior_std
    vi = VariationalPosterior(_flow(32).to(dev), lik, prior)
    vi.fit(400, batch_size=32, lr=3e-3, lr_schedule="cosine", clip_grad=100.0, progress=False)
    s = vi.summary(20000)
    assert s.mean.device.type == "cuda"
    assert float((s.mean.cpu().double() - mu).norm() / mu.norm()) < 0.05
    assert float(((s.std.cpu().double() - sd).abs() / sd).max()) < 0.10
    mala = MALA(lik, prior, step_size=1e-3)
    r = mala.run(
        1000,
        n_chains=200,
        x0=torch.zeros(1, 32, device=dev),
        burn_in=300,
        thin=5,
        seed=0,
        progress=False,
    )
    m = r.summary()
    assert float((m.mean.double() - mu).norm() / mu.norm()) < 0.05
    assert float(((m.std.double() - sd).abs() / sd).max()) < 0.10


def test_resume_refuses_other_run(tmp_path):
    vi, kw = _resume_setup(tmp_path, "c.pt")
    kw["iterations"] = 10
    vi.fit(**kw)
    kw["seed"] = 4
    with pytest.raises(CheckpointError, match=r"c\.pt.*belongs to another run: it has seed=3"):
        vi.fit(**kw)


class _NaNAfter:
    """Likelihood that turns NaN from its ``k``-th call on."""

    def __init__(self, inner, k):
        self.inner, self.k, self.calls = inner, k, 0

    def __call__(self, m):
        self.calls += 1
        out = self.inner(m)
        return out * math.nan if self.calls >= self.k else out


def test_nan_loss_raises_and_keeps_checkpoint(tmp_path):
    p = linear_gaussian_problem(n=8, n_shots=4, rows_per_shot=2, seed=1)
    vi = VariationalPosterior(_flow(8), _NaNAfter(p.likelihood(), 8), p.prior)
    path = tmp_path / "ck.pt"
    saved = {}

    def snapshot(iteration, terms):
        if iteration == 5:
            saved["bytes"] = path.read_bytes()

    with pytest.raises(TrainingDivergedError, match=r"iteration 8: loss is nan.*ck\.pt.*kept"):
        vi.fit(
            20,
            batch_size=4,
            checkpoint_path=path,
            checkpoint_every=5,
            progress=False,
            callback=snapshot,
        )
    assert path.read_bytes() == saved["bytes"]


def test_vi_errors():
    p = linear_gaussian_problem(n=4, n_shots=2, rows_per_shot=2)
    with pytest.raises(InvalidArgumentError, match="flow must provide sample"):
        VariationalPosterior(torch.nn.Linear(2, 2), p.likelihood())
    flow = _flow(4)
    with pytest.raises(InvalidArgumentError, match="got neither"):
        VariationalPosterior(flow)
    with pytest.raises(InvalidArgumentError, match="prior must provide negative_log"):
        VariationalPosterior(flow, prior=lambda m: m)
    vi = VariationalPosterior(flow, p.likelihood(), p.prior)
    with pytest.raises(InvalidArgumentError, match=r"iterations=0 must be an integer >= 1"):
        vi.fit(0)
    with pytest.raises(InvalidArgumentError, match=r"lr=-1.0 must be finite and positive"):
        vi.fit(1, lr=-1)
    with pytest.raises(InvalidArgumentError, match=r"lr_schedule='linear' must be one of"):
        vi.fit(1, lr_schedule="linear")
    with pytest.raises(InvalidArgumentError, match=r"clip_grad=0.0 must be finite and positive"):
        vi.fit(1, clip_grad=0)
    with pytest.raises(InvalidArgumentError, match=r"temper_start=0.0 must lie in \(0, 1\]"):
        vi.fit(1, temper_start=0.0)
    with pytest.raises(InvalidArgumentError, match=r"batch_size=True must be an integer"):
        vi.fit(1, batch_size=True)


def test_vi_covers_every_mode_of_the_ring():
    """The seed talk's toy (examples/toy2d_ring.py), 500 instead of 1500 iterations: every
    mode holds 0.5–1.5 of its 1/20 share and KL(q‖p) < 0.05 nats."""
    target = RingMixture()
    flow = _flow(2, steps=8, hidden=64)
    vi = VariationalPosterior(flow, prior=target)
    vi.fit(500, batch_size=256, lr=2e-3, lr_schedule="cosine", clip_grad=10.0, progress=False)
    kl, se = ring_kl_estimate(vi.flow, target, 10000)
    assert kl < 0.05 and se < 0.01
    assert ring_modes_covered(ring_mode_fractions(vi.sample(10000)))
