"""ImageFlow (devito_uq.flows.image): a 2D multiscale flow over any grid, by augmentation."""

import math

import pytest
import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.flows import Flow, Glow, ImageFlow
from devito_uq.inference import GaussianPrior, VariationalPosterior

KINDS = ("hint", "glow")


def _image_flow(shape, kind="hint", levels=2, seed=0, perturb=0.0):
    """A small ImageFlow in float64; ``perturb`` > 0 moves every parameter off its
    identity-like initialization so that the padding depends on the model."""
    torch.manual_seed(seed)
    q = ImageFlow(shape, kind, levels, steps=2, hidden=8, memory_frugal=False).double()
    q.net.skip_data_init()
    if perturb:
        with torch.no_grad():
            for p in q.parameters():
                p.add_(perturb * torch.randn_like(p))
    return q


def _normal_log_prob(x):
    x = x.reshape(x.shape[0], -1)
    return -0.5 * x.pow(2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


@pytest.mark.parametrize("kind", KINDS)
def test_samples_on_odd_grid_have_model_shape(kind):
    q = _image_flow((13, 7), kind)
    assert q.padded_shape == (16, 8) and q.n_padded == 16 * 8 - 13 * 7
    m, log_q = q.rsample_and_log_prob(3)
    assert m.shape == (3, 13, 7) and log_q.shape == (3,)
    assert q.sample(2).shape == (2, 13, 7) and q.rsample(1).shape == (1, 13, 7)
    assert q.log_prob(m.detach(), n_pad=2).shape == (3,)
    assert "shape=(13, 7), padded_shape=(16, 8)" in repr(q) and f"kind='{kind}'" in repr(q)


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_and_surrogate_on_padded_grid(kind):
    """rsample_and_log_prob is net.inverse on the padded grid, cropped, with
    log q̃ = log q(u) − log r(ε) where log q(u) comes from the forward pass."""
    q = _image_flow((13, 7), kind, perturb=0.05)
    torch.manual_seed(1)
    m, log_q = q.rsample_and_log_prob(4)
    torch.manual_seed(1)
    z = torch.randn(4, *q.latent_shape, dtype=torch.float64)
    u, _ = q.net.inverse(z)
    torch.testing.assert_close(q.crop(u), m)
    z2, logdet = q.net(u)
    torch.testing.assert_close(z2, z, rtol=1e-9, atol=1e-9)
    eps = u[:, 0, 13:, :].reshape(4, -1), u[:, 0, :13, 7:].reshape(4, -1)
    log_r = _normal_log_prob(torch.cat(eps, 1))
    torch.testing.assert_close(log_q, _normal_log_prob(z) + logdet - log_r)
    # augment puts m back in place and the padding where the mask says
    torch.testing.assert_close(q.augment(m, u), u)


@pytest.mark.parametrize("kind", KINDS)
def test_divisible_grid_is_the_plain_flow(kind):
    q = _image_flow((8, 4), kind, perturb=0.05)
    assert q.padded_shape == (8, 4) and q.n_padded == 0
    plain = Flow(q.net, (1, 8, 4))
    torch.manual_seed(2)
    m, log_q = q.rsample_and_log_prob(3)
    torch.manual_seed(2)
    m1, log_q1 = plain.rsample_and_log_prob(3)
    torch.testing.assert_close(m, m1[:, 0])
    torch.testing.assert_close(log_q, log_q1)
    mm = torch.randn(5, 8, 4, dtype=torch.float64)
    torch.testing.assert_close(q.log_prob(mm, n_pad=1), plain.log_prob(mm[:, None]))


@pytest.mark.parametrize("kind", KINDS)
def test_orthogonal_net_gives_exact_marginal(kind):
    """At initialization the network is orthogonal, so q(m, ε) = N(m) N(ε): the surrogate
    and a one-sample log_prob are the exact log N(m; 0, I), padding or not."""
    q = _image_flow((13, 7), kind)
    m, log_q = q.rsample_and_log_prob(4)
    torch.testing.assert_close(log_q, _normal_log_prob(m))
    mm = 2 * torch.randn(3, 13, 7, dtype=torch.float64)
    torch.testing.assert_close(q.log_prob(mm, n_pad=1), _normal_log_prob(mm))


def test_log_prob_estimate_matches_quadrature_of_the_padding():
    """Grid 1×2 padded to 2×2: two padded pixels, so log q(m) = log ∫ q(m, ε) dε is a 2D
    integral done by the trapezoid rule; the importance-sampling estimate converges to it."""
    q = _image_flow((1, 2), "hint", levels=1, seed=3, perturb=0.1)
    m = torch.tensor([[[0.3, -0.8]], [[1.2, 0.5]]], dtype=torch.float64)
    h, lim = 0.04, 9.0
    t = torch.arange(-lim, lim + h / 2, h, dtype=torch.float64)
    e1, e2 = torch.meshgrid(t, t, indexing="ij")
    eps = torch.stack([e1.reshape(-1), e2.reshape(-1)], 1)  # [K, 2]
    exact = []
    with torch.no_grad():
        for mb in m:
            u = torch.cat([mb.expand(len(eps), 2), eps], 1).reshape(-1, 1, 2, 2)
            z, logdet = q.net(u)
            log_joint = (_normal_log_prob(z) + logdet).reshape(len(t), len(t))
            edge = torch.cat([log_joint[0], log_joint[-1], log_joint[:, 0], log_joint[:, -1]])
            assert float(edge.max() - log_joint.max()) < -30  # the box holds the mass
            exact.append(torch.logsumexp(log_joint.reshape(-1), 0) + 2 * math.log(h))
        exact = torch.stack(exact)
        # the padding depends on m here, so one-sample weights vary (the test has teeth)
        log_w = torch.stack([q.log_prob(m, n_pad=1) for _ in range(200)])
        assert float(log_w.std(0).min()) > 0.05
        assert bool((log_w.mean(0) < exact).all())  # Jensen: E log w <= log q(m)
        torch.manual_seed(4)
        est = q.log_prob(m, n_pad=100000)
    torch.testing.assert_close(est, exact, rtol=0, atol=1e-2)


def test_log_prob_is_differentiable_in_m():
    q = _image_flow((5, 3), "glow", levels=1, perturb=0.05)
    m = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    q.log_prob(m, n_pad=3).sum().backward()
    assert m.grad is not None and bool(torch.isfinite(m.grad).all())
    assert float(m.grad.abs().sum()) > 0


def test_vi_recovers_isotropic_gaussian_on_odd_grid():
    """VariationalPosterior trains an ImageFlow on a 5×3 grid (9 padded pixels) by the
    surrogate log q̃; the marginal of m must match N(μ, 0.5²)."""
    torch.manual_seed(0)
    mean = torch.linspace(-1.0, 1.0, 15).reshape(5, 3)
    q = ImageFlow((5, 3), "hint", levels=1, steps=2, hidden=16, memory_frugal=False)
    vi = VariationalPosterior(q, prior=GaussianPrior(mean, covariance=0.25))
    vi.fit(300, batch_size=64, lr=1e-2, lr_schedule="cosine", progress=False)
    s = vi.summary(4000)
    assert s.mean.shape == (5, 3)
    assert float((s.mean - mean).abs().max()) < 0.1
    assert float((s.std / 0.5 - 1).abs().max()) < 0.15


def test_state_dict_round_trip():
    q = _image_flow((6, 5), "hint", perturb=0.05)
    q2 = _image_flow((6, 5), "hint", seed=9)
    q2.load_state_dict(q.state_dict())
    mm = torch.randn(2, 6, 5, dtype=torch.float64)
    torch.manual_seed(5)
    a = q.log_prob(mm, n_pad=4)
    torch.manual_seed(5)
    torch.testing.assert_close(q2.log_prob(mm, n_pad=4), a)
    assert "pad_mask" not in q.state_dict()


def test_errors_name_the_values_and_the_fix():
    with pytest.raises(InvalidArgumentError, match=r"shape=\(13,\) must have 2 entries"):
        ImageFlow((13,))
    with pytest.raises(InvalidArgumentError, match=r"shape\[1\]=0 must be an integer >= 1"):
        ImageFlow((13, 0))
    with pytest.raises(InvalidArgumentError, match=r"kind='real-nvp' must be one of"):
        ImageFlow((8, 8), kind="real-nvp")
    with pytest.raises(
        InvalidArgumentError, match=r"levels=3 would pad the grid \(13, 3\) to \(16, 8\).*<= 2"
    ):
        ImageFlow((13, 3), levels=3)
    with pytest.raises(InvalidArgumentError, match=r"leaf_size=4 applies to kind='hint'"):
        ImageFlow((8, 8), kind="glow", leaf_size=4)
    q = ImageFlow((5, 3), levels=1, steps=1, hidden=4)
    with pytest.raises(InvalidShapeError, match=r"expects \[batch, \*\(5, 3\)\], got \(2, 1, 5, 3"):
        q.log_prob(torch.randn(2, 1, 5, 3))
    with pytest.raises(InvalidArgumentError, match=r"n_pad=0 must be an integer >= 1"):
        q.log_prob(torch.randn(2, 5, 3), n_pad=0)
    # the plain network's message names the nearest valid sizes and ImageFlow
    with pytest.raises(
        InvalidShapeError,
        match=r"divisible by 4, got \(6, 10\); crop the input to \(4, 8\) or pad it to "
        r"\(8, 12\), or use devito_uq.flows.ImageFlow",
    ):
        Glow(1, levels=2, steps=1, hidden=4)(torch.randn(1, 1, 6, 10))
