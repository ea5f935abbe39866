"""Amortized posteriors (devito_uq.inference.amortized): a conditional HINT trained on
simulated pairs against the exact linear-Gaussian posterior for held-out data; training
checkpoints, resume, validation; the physics-based latent correction."""

import math
import random

import numpy as np
import pytest
import torch

from devito_uq.errors import (
    CheckpointError,
    InvalidArgumentError,
    InvalidShapeError,
    TrainingDivergedError,
)
from devito_uq.flows import ConditionalHINT, Flow
from devito_uq.inference import (
    AmortizedPosterior,
    ConditionedFlow,
    GaussianLikelihood,
    GaussianPrior,
    LatentCorrection,
    Parameterization,
    PosteriorTarget,
    linear_gaussian_problem,
)
from devito_uq.inference.problems import MatrixOperator

N_MODEL, N_DATA, SIGMA = 4, 8, 0.5


def _problem():
    """``A`` [8, 4] (float64) with singular values such that the posterior std is
    0.19–0.33 of the prior's N(0, I): informative data, as in a seismic inversion."""
    p = linear_gaussian_problem(
        n=N_MODEL, n_shots=N_DATA, rows_per_shot=1, sigma=SIGMA,
        singular_values=(2.5, 10.0), seed=0, dtype=torch.float64,
    )  # fmt: skip
    return p.operator.matrix.reshape(N_DATA, N_MODEL).double()


def _pairs(a, n, sigma, seed):
    """``n`` pairs ``m ~ N(0, I)``, ``y = A m + σ ε`` (float32)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, a.shape[1], generator=g, dtype=torch.float64)
    y = m @ a.T + sigma * torch.randn(n, a.shape[0], generator=g, dtype=torch.float64)
    return {"model": m.float(), "condition": y.float()}


def _exact(a, y, sigma):
    """Posterior mean ``[n]`` and covariance ``[n, n]`` of ``m`` given ``y`` (float64)."""
    cov = torch.linalg.inv(a.T @ a / sigma**2 + torch.eye(a.shape[1], dtype=torch.float64))
    return cov @ a.T @ y.double() / sigma**2, cov


def _flow(n, features, steps=4, hidden=32, seed=0):
    torch.manual_seed(seed)
    return Flow(ConditionalHINT(n, features, steps, hidden, memory_frugal=False), (n,))


@pytest.fixture(scope="module")
def trained():
    """The must-show's amortized posterior: 16384 pairs, 1500 Adam steps, in the latent
    of m = 0.5·x (so that the Jacobian of g is part of every density)."""
    a = _problem()
    g = Parameterization(torch.zeros(N_MODEL), scale=0.5)
    post = AmortizedPosterior(_flow(N_MODEL, N_DATA), parameterization=g)
    post.fit(
        _pairs(a, 16384, SIGMA, seed=1),
        1500,
        batch_size=256,
        lr=5e-3,
        validation=_pairs(a, 2048, SIGMA, seed=2),
        validate_every=250,
        progress=False,
    )
    return a, post


def test_linear_gaussian_matches_exact_posterior_on_held_out_data(trained):
    """Issue 13 must-show. For 5 held-out y: mean error ‖μ_a − μ‖/‖μ‖ ≤ 5 % and the std error
    |σ_a − σ|/σ averaged over the coordinates ≤ 10 % (each coordinate also ≤ 15 %)."""
    a, post = trained
    test = _pairs(a, 5, SIGMA, seed=3)
    torch.manual_seed(4)
    rows = []
    for y in test["condition"]:
        mu, cov = _exact(a, y, SIGMA)
        sd = cov.diagonal().sqrt()
        s = post.sample(20000, y).double()
        assert s.shape == (20000, N_MODEL)
        mean_err = float((s.mean(0) - mu).norm() / mu.norm())
        in_std = float(((s.mean(0) - mu).abs() / sd).max())
        std_err = (s.std(0) - sd).abs() / sd
        # log q(m | y) is the density of m (Jacobian of g included): E_q[log q − log p] on
        # q's own samples is KL(q‖p) ≥ 0, small (n·log 0.5 = −2.8 without the Jacobian).
        m = s[:4000].float()
        exact = torch.distributions.MultivariateNormal(mu, cov).log_prob(m.double())
        with torch.no_grad():
            kl = float((post.log_prob(m, y).double() - exact).mean())
        rows.append((mean_err, in_std, float(std_err.mean()), float(std_err.max()), kl))
    print("\nheld-out y: rel. mean err, max |Δμ|/σ, mean/max rel. std err, KL(q‖p) nats")
    for r in rows:
        print("  " + "  ".join(f"{v:.4f}" for v in r))
    assert all(r[0] <= 0.05 for r in rows)
    assert all(r[2] <= 0.10 and r[3] <= 0.15 for r in rows)
    assert all(-0.02 < r[4] < 0.1 for r in rows)
    # Validation: evaluated at 250, 500, ... and the end; the best weights are kept.
    assert post.history["val_iteration"] == [250, 500, 750, 1000, 1250, 1500]
    assert post.best_val_nll == min(post.history["val_nll"])
    assert len(post.history["train_nll"]) == 1500


def test_sample_batched_conditions_and_log_prob_shapes(trained):
    a, post = trained
    y = _pairs(a, 3, SIGMA, seed=5)["condition"]
    torch.manual_seed(0)
    s = post.sample(7, y)
    assert s.shape == (3, 7, N_MODEL)
    torch.manual_seed(0)
    assert torch.equal(s[0], post.sample(7, y[0]))
    lp = post.log_prob(s[1], y[1])
    assert lp.shape == (7,) and bool(torch.isfinite(lp).all())
    torch.testing.assert_close(post.log_prob(s[1], y[1].expand(7, -1)), lp)
    with pytest.raises(InvalidShapeError, match=r"condition has shape \(5,\); expected \[8\]"):
        post.sample(3, torch.zeros(5))
    with pytest.raises(InvalidShapeError, match=r"3 conditions for 7 models"):
        post.log_prob(s[1], y)
    with pytest.raises(InvalidArgumentError, match=r"condition contains nan"):
        post.sample(3, torch.full((8,), math.nan))


def test_save_and_load_into_a_fresh_object(trained, tmp_path):
    a, post = trained
    post.save(tmp_path / "post.pt")
    fresh = AmortizedPosterior(
        _flow(N_MODEL, N_DATA, seed=9), parameterization=Parameterization(torch.zeros(4), 0.5)
    )
    assert fresh.condition_shape is None
    fresh.load(tmp_path / "post.pt")
    assert fresh.condition_shape == (N_DATA,)
    y = _pairs(a, 1, SIGMA, seed=6)["condition"][0]
    m = torch.randn(5, N_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(fresh.log_prob(m, y), post.log_prob(m, y), rtol=0, atol=0)


# --------------------------------------------------------------------------- training mechanics
def _small(seed=0, dropout=True):
    """A tiny posterior whose summary has dropout: training draws from torch's generator,
    so a bit-exact resume must restore it."""
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(4, 6), torch.nn.Tanh()]
    summary = torch.nn.Sequential(*layers, *([torch.nn.Dropout(0.2)] if dropout else []))
    return AmortizedPosterior(_flow(3, 6, steps=2, hidden=16, seed=seed), summary)


def _small_data(n, seed, a=None):
    a = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3) if a is None else a
    return _pairs(a, n, 0.3, seed)


def _fit_kw(path, **kw):
    return (
        dict(
            train=_small_data(200, 0),
            iterations=30,
            batch_size=48,  # 200 is no multiple of 48: batches straddle epochs
            lr=1e-2,
            validation=_small_data(64, 1),
            validate_every=7,
            checkpoint_path=path,
            checkpoint_every=10,
            seed=5,
            clip_grad=10.0,
            progress=False,
        )
        | kw
    )


def test_resume_is_bit_identical(tmp_path):
    ref = _small()
    state = torch.get_rng_state()
    ref.fit(**_fit_kw(tmp_path / "a.pt"))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is left alone
    # ... also on a resume, which restores numpy's and Python's generators inside fit.
    np_state, py_state = np.random.get_state(), random.getstate()
    again = _small()
    again.fit(**_fit_kw(tmp_path / "a.pt"))
    assert again.resumed_from == 30 and torch.equal(torch.get_rng_state(), state)
    assert random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state))

    def interrupt(iteration, values):
        if iteration == 17:  # killed after the checkpoint at 10
            raise KeyboardInterrupt

    first = _small()
    with pytest.raises(KeyboardInterrupt):
        first.fit(**_fit_kw(tmp_path / "b.pt"), callback=interrupt)
    resumed = _small(seed=99)  # other initial weights: they must come from the file
    resumed.fit(**_fit_kw(tmp_path / "b.pt"))
    assert ref.resumed_from == 0 and resumed.resumed_from == 10
    for (k, v), (_, w) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(v, w), k
    assert resumed.history == ref.history
    assert (resumed.best_iteration, resumed.best_val_nll) == (ref.best_iteration, ref.best_val_nll)
    # A different seed trains differently (the seed reaches the batches and the dropout).
    other = _small()
    other.fit(**_fit_kw(tmp_path / "c.pt", seed=6))
    assert other.history["train_nll"] != ref.history["train_nll"]


def test_resume_refuses_another_run(tmp_path):
    post = _small()
    post.fit(**_fit_kw(tmp_path / "a.pt", iterations=10))
    before = (tmp_path / "a.pt").read_bytes()
    with pytest.raises(CheckpointError, match=r"a\.pt.*another run: it has seed=5.*seed=6"):
        post.fit(**_fit_kw(tmp_path / "a.pt", iterations=10, seed=6))
    with pytest.raises(CheckpointError, match=r"train_fingerprint"):
        post.fit(**_fit_kw(tmp_path / "a.pt", iterations=10, train=_small_data(200, 7)))
    with pytest.raises(CheckpointError, match=r"it has no value, this run has noise=0.1"):
        post.fit(**_fit_kw(tmp_path / "a.pt", iterations=10, identity={"noise": 0.1}))
    assert (tmp_path / "a.pt").read_bytes() == before


def test_best_validation_state_is_kept(tmp_path):
    """32 training pairs, 300 steps: the flow overfits, the validation NLL rises again, and
    the weights of its minimum are the ones kept (and the ones ``load`` reads)."""
    post = _small(dropout=False)
    post.fit(**_fit_kw(tmp_path / "a.pt", train=_small_data(32, 0), iterations=300, lr=2e-2))
    val = post.history["val_nll"]
    assert post.best_val_nll == min(val) and post.best_iteration < 300
    assert val[-1] > min(val) + 0.05  # overfitted at the end
    data = _small_data(64, 1)
    with torch.no_grad():
        nll = -post.log_prob(data["model"], data["condition"]).double().mean() / 3
    assert abs(float(nll) - post.best_val_nll) < 1e-5
    again = _small(seed=3, dropout=False).load(tmp_path / "a.pt")
    for (k, v), (_, w) in zip(post.state_dict().items(), again.state_dict().items()):
        assert torch.equal(v, w), k


def test_bad_training_data_refused_before_training(tmp_path):
    post = _small()
    data = _small_data(50, 0)
    bad = {"model": data["model"].clone(), "condition": data["condition"]}
    bad["model"][7, 1] = math.nan
    with pytest.raises(
        InvalidArgumentError, match=r"train\['model'\] contains nan at index \(7, 1\)"
    ):
        post.fit(bad, 5, progress=False)
    with pytest.raises(InvalidShapeError, match=r"train\['model'\] has shape \[50, 4\]"):
        post.fit({"model": torch.zeros(50, 4), "condition": data["condition"]}, 5)
    with pytest.raises(InvalidShapeError, match=r"50 models .* but 49 conditions"):
        post.fit({"model": data["model"], "condition": data["condition"][:49]}, 5)
    with pytest.raises(InvalidArgumentError, match=r"train lacks the fields \['condition'\]"):
        post.fit({"model": data["model"]}, 5)
    val = {"model": data["model"], "condition": torch.zeros(50, 5)}
    with pytest.raises(InvalidShapeError, match=r"validation conditions have shape \[5\]"):
        post.fit(data, 5, validation=val)
    with pytest.raises(InvalidArgumentError, match=r"iterations=0 must be an integer >= 1"):
        post.fit(data, 0)
    with pytest.raises(InvalidArgumentError, match=r"lr_final=0.0 must lie in \(0, 1\]"):
        post.fit(data, 5, lr_final=0.0)
    with pytest.raises(InvalidArgumentError, match=r"device='gpu0' is not a torch device"):
        post.fit(data, 5, device="gpu0")
    bounded = AmortizedPosterior(
        _flow(3, 4, steps=1, hidden=8), parameterization=Parameterization(torch.ones(3), 0.1, 0.0)
    )
    with pytest.raises(InvalidArgumentError, match=r"violates the lower bound"):
        bounded.fit(data, 5, progress=False)
    assert post.iteration == 0 and post.condition_shape is None  # nothing ran


def test_construction_errors():
    with pytest.raises(InvalidArgumentError, match="flow must provide log_prob"):
        AmortizedPosterior(torch.nn.Linear(2, 2))
    with pytest.raises(InvalidShapeError, match=r"parameterization models have shape \(4,\)"):
        AmortizedPosterior(_flow(3, 4), parameterization=Parameterization(torch.zeros(4)))
    post = AmortizedPosterior(_flow(3, 4))
    with pytest.raises(InvalidArgumentError, match="condition shape is unknown"):
        post.sample(3, torch.zeros(4))


def test_divergence_raises_and_keeps_the_checkpoint(tmp_path):
    class Poison(torch.nn.Module):
        """Identity that turns NaN from its 13th call on."""

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, y):
            self.calls += 1
            return y * math.nan if self.calls >= 13 else y

    post = AmortizedPosterior(_flow(3, 4, steps=2, hidden=16), Poison())
    path = tmp_path / "ck.pt"
    snapshot = {}

    def keep(iteration, values):
        if iteration == 10:
            snapshot["bytes"] = path.read_bytes()

    kw = _fit_kw(path, validation=None, callback=keep)
    with pytest.raises(TrainingDivergedError, match=r"iteration 13: loss is nan.*ck\.pt.*kept"):
        post.fit(**kw)
    assert path.read_bytes() == snapshot["bytes"]


# --------------------------------------------------------------------------- latent correction
def test_latent_correction_starts_at_the_amortized_posterior(trained):
    a, post = trained
    y = _pairs(a, 1, SIGMA, seed=7)["condition"][0]
    cf = post.conditioned(y)
    assert isinstance(cf, ConditionedFlow)
    lc = LatentCorrection(cf)
    assert [p.shape for p in lc.parameters()] == [(N_MODEL,), (N_MODEL,)]
    assert all(p.requires_grad for p in post.flow.parameters())  # the original is untouched
    assert not any(p.requires_grad for p in lc.flow.net.net.parameters())
    x = torch.randn(16, N_MODEL)
    with torch.no_grad():
        assert torch.equal(lc.log_prob(x), cf.log_prob(x))  # μ = 0, log s = 0: exact
    torch.manual_seed(3)
    xa, la = cf.rsample_and_log_prob(8)
    torch.manual_seed(3)
    xb, lb = lc.rsample_and_log_prob(8)
    assert torch.equal(xa, xb) and torch.equal(la, lb)
    # Moved off the identity: log_prob of its own samples is the density it sampled with,
    # and it differs from the uncorrected one by the algebra of the module docstring.
    with torch.no_grad():
        lc.mu.copy_(torch.tensor([0.5, -1.0, 0.2, 0.0]))
        lc.log_scale.copy_(torch.tensor([0.3, -0.2, 0.0, 0.7]))
        x, lq = lc.rsample_and_log_prob(64)
        torch.testing.assert_close(lc.log_prob(x), lq, atol=2e-4, rtol=0)
        z, ld = lc.flow.net.net(x, cf.condition.expand(64, -1))  # T(x; y)
        eps = (z - lc.mu) * torch.exp(-lc.log_scale)
        base = -0.5 * eps.pow(2).sum(1) - 0.5 * N_MODEL * math.log(2 * math.pi)
        torch.testing.assert_close(lq, base + ld - lc.log_scale.sum(), atol=2e-4, rtol=0)


def test_correction_moves_a_shifted_posterior_toward_the_exact_one(trained):
    """The amortized flow was trained with σ = 0.5; this survey has σ = 1 (the must-show's
    'double noise' shift): uncorrected, the posterior is too narrow and its mean
    overfits the noise. Reverse KL against the exact target moves μ, log s only."""
    a, post = trained
    sigma = 2 * SIGMA
    y = _pairs(a, 1, sigma, seed=8)["condition"][0]
    mu, cov = _exact(a, y, sigma)
    sd = cov.diagonal().sqrt()
    lik = GaussianLikelihood(MatrixOperator(a.float(), N_DATA), y.reshape(N_DATA, 1), sigma=sigma)
    prior = GaussianPrior(torch.zeros(N_MODEL), covariance=1.0)
    target = PosteriorTarget(lik, prior, post.parameterization)

    def errors(samples):
        s = samples.double()
        return (
            float((s.mean(0) - mu).norm() / mu.norm()),
            float(((s.std(0) - sd).abs() / sd).mean()),
        )

    torch.manual_seed(0)
    before = errors(post.sample(20000, y))
    vi = post.correct(target, y, 400, batch_size=32, lr=2e-2, seed=0, progress=False)
    after = errors(vi.sample(20000))
    print(f"\ncorrection (σ 0.5 → 1): mean err {before[0]:.3f} → {after[0]:.3f}, "
          f"std err {before[1]:.3f} → {after[1]:.3f}")  # fmt: skip
    assert before[1] > 0.2  # the shift is real
    assert after[0] < before[0] / 2 and after[1] < before[1] / 3
    with pytest.raises(InvalidArgumentError, match="only the amortized posterior has"):
        post.correct(PosteriorTarget(lik, prior), y, 1, progress=False)
    other = Parameterization(torch.zeros(N_MODEL), scale=1.0)
    with pytest.raises(InvalidArgumentError, match="differs .* in 'scale'"):
        post.correct(PosteriorTarget(lik, prior, other), y, 1, progress=False)
    wrong = Parameterization(torch.zeros(N_MODEL + 1), scale=0.5)
    with pytest.raises(InvalidShapeError, match=r"target's models have shape \(5,\)"):
        post.correct(PosteriorTarget(lik, prior, wrong), y, 1, progress=False)


def test_correction_of_a_memory_frugal_flow_has_the_same_gradients():
    """The correction layer sits in front of the flow's network: with memory-frugal
    backpropagation (activations rebuilt by inversion) μ and log s get the same gradients."""
    post = _small(dropout=False)
    post.fit(_small_data(64, 0), 5, batch_size=16, progress=False)
    y = _small_data(1, 2)["condition"][0]
    grads = []
    for frugal in (False, True):
        lc = LatentCorrection(post.conditioned(y))
        lc.flow.net.memory_frugal = frugal
        assert lc.flow.net.net.memory_frugal is frugal
        with torch.no_grad():
            lc.mu.copy_(torch.tensor([0.3, -0.2, 0.1]))
            lc.log_scale.fill_(0.2)
        torch.manual_seed(1)
        x, lq = lc.rsample_and_log_prob(8)
        (x.pow(2).sum() + lq.sum()).backward()
        grads.append(torch.cat([lc.mu.grad, lc.log_scale.grad]))
    assert float(grads[0].abs().max()) > 0.1
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-5)
    # The conditioned flow itself is a VI flow too (a per-survey fine-tuning of all weights).
    from devito_uq.inference import VariationalPosterior

    before = [p.detach().clone() for p in post.flow.parameters()]
    vi = VariationalPosterior(post.conditioned(y), prior=GaussianPrior(torch.zeros(3), 1.0))
    vi.fit(3, batch_size=4, progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(before, post.flow.parameters()))


def test_fit_and_resume_on_gpu(tmp_path):
    """Training on CUDA from CPU data: samples on the GPU, resume bit for bit there."""
    from conftest import cuda_or_skip

    dev = cuda_or_skip()
    ref = _small()
    ref.fit(**_fit_kw(tmp_path / "a.pt", device="cuda"))
    assert ref.cond_mean.device.type == "cuda"
    y = _small_data(1, 3)["condition"][0]
    assert ref.sample(5, y).device == dev

    def interrupt(iteration, values):
        if iteration == 17:
            raise KeyboardInterrupt

    first = _small()
    with pytest.raises(KeyboardInterrupt):
        first.fit(**_fit_kw(tmp_path / "b.pt", device="cuda"), callback=interrupt)
    resumed = _small(seed=99)
    resumed.fit(**_fit_kw(tmp_path / "b.pt", device=dev))
    for (k, v), (_, w) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(v, w), k
    assert resumed.history == ref.history


def test_fit_reads_a_sharded_dataset(tmp_path):
    """A ShardedDataset trains exactly like the dict of its pairs; split gives validation."""
    from devito_uq.io import simulate_dataset

    a = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3)

    def shard(index, count, g):
        m = torch.randn(count, 3, generator=g, dtype=torch.float64)
        d = m @ a.T + 0.3 * torch.randn(count, 4, generator=g, dtype=torch.float64)
        return {"model": m.float(), "condition": d.float(), "clean": (m @ a.T).float()}

    ds = simulate_dataset(tmp_path / "d", 100, shard, shard_size=25, progress=False)
    train, val = ds.split(0.25)
    kw = dict(iterations=6, batch_size=16, validate_every=3, progress=False, validation=val)
    one, two = _small(dropout=False), _small(dropout=False)
    one.fit(ds.load(), **kw)
    two.fit(ds, **kw)
    assert one.history == two.history
    three = _small(dropout=False)
    three.fit(train, fields=("model", "clean"), **{**kw, "validation": None})
    assert three.history["train_nll"] != one.history["train_nll"]


def test_image_flow_on_a_padded_grid():
    """The 2D path through the Flow API only: an ImageFlow on a 5×6 grid (padded to 6×6;
    this stand-in ignores its condition) trains with ``log_prob_kwargs={"n_pad": 1}``,
    samples [n, 5, 6], and its latent correction (over the padded latent) starts at it."""
    from devito_uq.flows import ImageFlow

    class Unconditioned(ImageFlow):
        def _condition(self, c, n):
            return None

    torch.manual_seed(0)
    post = AmortizedPosterior(Unconditioned((5, 6), levels=1, steps=1, hidden=8))
    data = {"model": torch.randn(40, 5, 6), "condition": torch.randn(40, 2, 5, 6)}
    post.fit(data, 4, batch_size=8, validation=data, validate_every=2, progress=False,
             log_prob_kwargs={"n_pad": 1})  # fmt: skip
    assert len(post.history["val_nll"]) == 2 and post.condition_shape == (2, 5, 6)
    y = data["condition"][0]
    assert post.sample(3, y).shape == (3, 5, 6)
    cf = post.conditioned(y)
    lc = LatentCorrection(cf)
    assert lc.mu.shape == post.flow.latent_shape == (4, 3, 3)
    torch.manual_seed(3)
    xa, la = cf.rsample_and_log_prob(4)
    torch.manual_seed(3)
    xb, lb = lc.rsample_and_log_prob(4)
    assert xa.shape == (4, 5, 6) and torch.equal(xa, xb) and torch.equal(la, lb)
    with pytest.raises(InvalidArgumentError, match=r"log_prob_kwargs=\[1\] must be a dict"):
        post.fit(data, 1, log_prob_kwargs=[1])


def test_latent_correction_of_a_conditional_image_flow():
    """The correction wraps the network; what ConditionalImageFlow asks of it (the condition
    pyramid) still reaches the trained network, and at μ = 0, s = 1 the density is the
    uncorrected one."""
    from devito_uq.flows import ConditionalImageFlow
    from devito_uq.inference.amortized_correction import ConditionedFlow

    torch.manual_seed(0)
    flow = ConditionalImageFlow((5, 3), 1, kind="hint", levels=1, steps=1, hidden=8)
    flow.net.skip_data_init()  # ActNorm fixed: both copies then hold the same weights
    c = torch.randn(1, 1, 5, 3)
    conditioned = ConditionedFlow(flow, c)
    correction = LatentCorrection(conditioned)
    x, log_q = correction.rsample_and_log_prob(4)
    assert x.shape == (4, 5, 3) and log_q.shape == (4,)
    z = torch.randn(3, *flow.latent_shape)
    with torch.no_grad():
        a, la = flow.from_latent(z, c.expand(3, -1, -1, -1))
        b, lb = correction.flow.from_latent(z, c.expand(3, -1, -1, -1))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(la, lb)
