"""ConditionalImageFlow and the summary networks (devito_uq.flows.conditional, summary_nets)."""

import copy
import math

import pytest
import torch

from devito_uq.errors import DevitoUQError, InvalidArgumentError, InvalidShapeError
from devito_uq.flows import (
    ConditionalHINT,
    ConditionalImageFlow,
    Flow,
    ImageSummary,
    TraceSummary,
)

KINDS = ("hint", "glow")
GRID = (5, 3)  # odd sizes: levels=2 pads it to (8, 4)


def _flow(kind, shape=GRID, levels=2, cond_channels=2, summary=None, perturb=0.05, seed=0):
    """A small float64 ConditionalImageFlow whose parameters are moved off their
    identity-like initialization (zero last conditioner layers would hide the condition)."""
    torch.manual_seed(seed)
    q = ConditionalImageFlow(
        shape,
        cond_channels,
        kind,
        levels,
        steps=2,
        hidden=8,
        summary=summary,
        memory_frugal=False,
    ).double()
    q.net.skip_data_init()
    with torch.no_grad():
        for p in q.parameters():
            p.add_(perturb * torch.randn_like(p))
    return q


def _normal_log_prob(x):
    x = x.reshape(x.shape[0], -1)
    return -0.5 * x.pow(2).sum(1) - 0.5 * x.shape[1] * math.log(2 * math.pi)


def _cond(b, q, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, q.cond_channels, *q.shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_round_trip_and_surrogate(kind):
    q = _flow(kind)
    assert q.padded_shape == (8, 4) and q.latent_shape == (16, 2, 1)
    # condition pyramid: 2 + 1 (padding indicator) channels, squeezed once per level
    assert q.net.cond_shapes == [(12, 4, 2), (48, 2, 1)] and q.net.cond_size == 192
    c = _cond(1, q)
    assert q.sample(3, c).shape == (3, 5, 3)
    torch.manual_seed(3)
    m, log_q = q.rsample_and_log_prob(4, c)
    assert m.shape == (4, 5, 3) and log_q.shape == (4,)
    torch.manual_seed(3)
    z = torch.randn(4, *q.latent_shape, dtype=torch.float64)
    p = q.prepare_condition(c, 4).expand(4, -1)
    u, _ = q.net.inverse(z, p)
    torch.testing.assert_close(q.crop(u), m)
    z2, logdet = q.net(u, p)
    torch.testing.assert_close(z2, z, rtol=1e-10, atol=1e-10)
    log_r = _normal_log_prob(u.reshape(4, -1)[:, q.pad_mask.reshape(-1)])
    torch.testing.assert_close(log_q, _normal_log_prob(z) + logdet - log_r)
    # from_latent is the same map, and log_prob with one padding draws that padding's term
    m3, log_det = q.from_latent(z, c)
    torch.testing.assert_close(m3, m)
    torch.testing.assert_close(_normal_log_prob(z) - log_det, log_q)
    assert q.log_prob(m.detach(), c.expand(4, -1, -1, -1), n_pad=3).shape == (4,)
    assert "cond_channels=2" in repr(q) and f"kind='{kind}'" in repr(q)


@pytest.mark.parametrize("kind", KINDS)
def test_logdet_matches_autograd_jacobian(kind):
    q = _flow(kind)
    p = q.prepare_condition(_cond(1, q), 1).detach()
    u = torch.randn(1, 1, 8, 4, dtype=torch.float64)
    with torch.no_grad():
        z, ld = q.net(u, p)
        _, ldi = q.net.inverse(z, p)
    jf = torch.autograd.functional.jacobian(lambda v: q.net(v.view(u.shape), p)[0].reshape(-1), u)
    ji = torch.autograd.functional.jacobian(
        lambda v: q.net.inverse(v.view(z.shape), p)[0].reshape(-1), z
    )
    _, lf = torch.linalg.slogdet(jf.reshape(32, 32))
    _, li = torch.linalg.slogdet(ji.reshape(32, 32))
    assert abs(float(ld)) > 0.1  # not a volume-preserving map: the check has teeth
    assert abs(float(lf - ld)) < 1e-9 and abs(float(li - ldi)) < 1e-9


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("direction", ["log_prob", "sample"])
def test_frugal_gradients_equal_plain(kind, direction):
    """Memory-frugal and plain backprop give the same gradients for every parameter (the
    flow's and the summary's) and for the condition."""
    summary = ImageSummary(2, 3, hidden=4, depth=2)
    plain = _flow(kind, summary=summary)
    frugal = copy.deepcopy(plain)
    frugal.net.memory_frugal = True
    grads = []
    for q in (plain, frugal):
        c = _cond(2, q).requires_grad_(True)
        torch.manual_seed(5)
        if direction == "log_prob":
            m = torch.randn(2, *GRID, dtype=torch.float64)
            loss = -q.log_prob(m, c, n_pad=2).sum()
        else:
            m, log_q = q.rsample_and_log_prob(2, c)
            loss = (m.pow(2).sum((1, 2)) + log_q * m[:, 0, 0]).sum()
        p = q.prepare_condition(c, 2)
        u = torch.randn(2, 1, 8, 4, dtype=torch.float64)
        assert ("Frugal" in type(q.net(u, p)[0].grad_fn).__name__) == (q is frugal)
        params = list(q.parameters())
        grads.append(torch.autograd.grad(loss, [c, *params]))
    assert len(grads[0]) == 1 + len(list(plain.parameters()))
    for gp, gf in zip(*grads):
        assert float(gp.norm()) > 0
        assert float((gf - gp).norm()) <= 1e-8 * float(gp.norm())


@pytest.mark.parametrize("kind", KINDS)
def test_condition_reaches_every_level(kind):
    q = _flow(kind)
    c = _cond(2, q)
    p = q.prepare_condition(c, 2).requires_grad_(True)
    u = torch.randn(2, 1, 8, 4, dtype=torch.float64)
    z, ld = q.net(u, p)
    (g,) = torch.autograd.grad((z * torch.randn_like(z)).sum() + ld.sum(), p)
    offset = 0
    for shape in q.net.cond_shapes:
        size = math.prod(shape)
        assert float(g[:, offset : offset + size].abs().max()) > 1e-6, shape
        offset += size
    # each level of the pyramid is an orthogonal squeeze of the padded condition
    norms = p.detach().split([math.prod(s) for s in q.net.cond_shapes], dim=1)
    total = c.pow(2).sum((1, 2, 3)) + q.n_padded  # + the indicator channel
    for level in norms:
        torch.testing.assert_close(level.pow(2).sum(1), total)
    # and the samples move with the condition (same latent)
    zz = torch.randn(2, *q.latent_shape, dtype=torch.float64)
    with torch.no_grad():
        m1, _ = q.from_latent(zz, c)
        m2, _ = q.from_latent(zz, c + 1)
    assert float((m1 - m2).abs().max()) > 1e-3


def test_condition_with_summary_changes_samples_and_gets_gradient():
    summary = ImageSummary(1, 4, hidden=6, depth=2)
    q = _flow("hint", cond_channels=1, summary=summary)
    assert q.features == 4 and q.net.cond_channels == 5
    c = _cond(1, q).requires_grad_(True)
    m, log_q = q.rsample_and_log_prob(3, c)
    (m.sum() + log_q.sum()).backward()
    assert float(c.grad.abs().sum()) > 0
    assert all(float(p.grad.abs().sum()) > 0 for p in summary.parameters())


def test_divisible_grid_has_no_indicator_channel_and_exact_log_prob():
    q = _flow("glow", shape=(8, 4), cond_channels=1)
    assert q.n_padded == 0 and q.net.cond_channels == 1
    c = _cond(3, q)
    m = torch.randn(3, 8, 4, dtype=torch.float64)
    torch.testing.assert_close(q.log_prob(m, c, n_pad=1), q.log_prob(m, c, n_pad=5))


def test_state_dict_round_trip():
    q = _flow("hint", summary=ImageSummary(2, 2, hidden=4, depth=1))
    q2 = _flow("hint", summary=ImageSummary(2, 2, hidden=4, depth=1), seed=7)
    c = _cond(2, q)
    m = torch.randn(2, *GRID, dtype=torch.float64)
    torch.manual_seed(1)
    a = q.log_prob(m, c, n_pad=2)
    q2.load_state_dict(q.state_dict())
    torch.manual_seed(1)
    torch.testing.assert_close(q2.log_prob(m, c, n_pad=2), a)
    assert any(k.startswith("summary.") for k in q.state_dict())


def test_learns_a_conditional_gaussian():
    """m = 0.8·c + 0.3·ε pixelwise, c ~ N(0, I): maximum likelihood on pairs (the loss
    −log q(m, ε | c) + log r(ε), one padding draw) must make the conditional mean follow
    c and the spread match 0.3, for conditions not seen in training."""
    torch.manual_seed(0)
    q = ConditionalImageFlow((5, 3), 1, "hint", levels=2, steps=2, hidden=16)  # 17 padded
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 400, eta_min=1e-3)
    for _ in range(400):
        c = torch.randn(64, 1, 5, 3)
        m = 0.8 * c[:, 0] + 0.3 * torch.randn(64, 5, 3)
        loss = -q.log_prob(m, c, n_pad=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        for seed in (11, 12):
            c = torch.randn(1, 1, 5, 3, generator=torch.Generator().manual_seed(seed))
            s = q.sample(4000, c)
            assert float((s.mean(0) - 0.8 * c[0, 0]).abs().max()) < 0.1
            assert float((s.std(0) / 0.3 - 1).abs().max()) < 0.15


def test_errors_name_the_values():
    q = _flow("hint")
    m = torch.randn(2, *GRID, dtype=torch.float64)
    with pytest.raises(
        InvalidArgumentError, match=r"needs a condition \[1 or 2, 2, 5, 3\], got None"
    ):
        q.log_prob(m)
    with pytest.raises(InvalidShapeError, match=r"must be \[1 or 4, 2, 5, 3\], got \(4, 1, 5, 3\)"):
        q.sample(4, torch.randn(4, 1, 5, 3))
    with pytest.raises(InvalidShapeError, match=r"got \(3, 2, 5, 3\)"):
        q.sample(4, torch.randn(3, 2, 5, 3))
    with pytest.raises(InvalidArgumentError, match=r"must be a torch.Tensor.*got list"):
        q.sample(1, [0.0])
    with pytest.raises(InvalidShapeError, match=r"expects \[batch, \*\(5, 3\)\], got \(2, 3, 5\)"):
        q.log_prob(torch.randn(2, 3, 5), _cond(2, q))
    with pytest.raises(InvalidShapeError, match=r"from_latent expects \[n, \*\(16, 2, 1\)\]"):
        q.from_latent(torch.randn(2, 16, 1, 2), _cond(2, q))
    with pytest.raises(InvalidShapeError, match=r"packed condition pyramid \[2, 192\].*\(2, 3\)"):
        q.net(torch.randn(2, 1, 8, 4, dtype=torch.float64), torch.randn(2, 3))
    with pytest.raises(InvalidArgumentError, match=r"needs a condition, got None"):
        q.net(torch.randn(2, 1, 8, 4, dtype=torch.float64))
    with pytest.raises(InvalidArgumentError, match=r"cond_channels=0 must be an integer >= 1"):
        ConditionalImageFlow((5, 3), 0)
    with pytest.raises(InvalidArgumentError, match=r"kind='nvp' must be one of"):
        ConditionalImageFlow((5, 3), 1, kind="nvp", levels=1)
    with pytest.raises(InvalidArgumentError, match=r"ConditionalImageFlow: levels=3 would pad"):
        ConditionalImageFlow((13, 3), 1, levels=3)
    with pytest.raises(InvalidArgumentError, match=r"leaf_size=4 applies to kind='hint'"):
        ConditionalImageFlow((8, 8), 1, kind="glow", leaf_size=4)
    with pytest.raises(InvalidShapeError, match=r"summary must map \[b, 1, 5, 3\].*got \(1, 15\)"):
        ConditionalImageFlow((5, 3), 1, levels=1, summary=torch.nn.Flatten())
    with pytest.raises(InvalidArgumentError, match=r"summary must be a torch.nn.Module, got str"):
        ConditionalImageFlow((5, 3), 1, levels=1, summary="cnn")


# -- summary networks -----------------------------------------------------------------------
def test_image_summary_shapes_and_receptive_field():
    torch.manual_seed(0)
    s = ImageSummary(2, 3, hidden=4, depth=3, dilations=(1, 2, 3)).double()
    assert s.receptive_field() == 3 + 2 * 6
    x = torch.randn(2, 2, 31, 29, dtype=torch.float64, requires_grad=True)
    assert s(x).shape == (2, 3, 31, 29)
    # at initialization the blocks are the identity: a 3×3 receptive field
    (g,) = torch.autograd.grad(s(x)[0, :, 15, 14].sum(), x)
    assert torch.nonzero(g[0].abs().sum(0)).amax(0).tolist() == [16, 15]
    with torch.no_grad():
        for p in s.pointwise.parameters():
            p.add_(0.3 * torch.randn_like(p))
    (g,) = torch.autograd.grad(s(x)[0, :, 15, 14].sum(), x)
    support = torch.nonzero(g[0].abs().sum(0) > 0)
    side = (support.amax(0) - support.amin(0) + 1).tolist()
    assert side == [s.receptive_field()] * 2 and float(g[1].abs().max()) == 0
    # every parameter learns, with the same gradients when blocks are recomputed
    grads = []
    for frugal in (False, True):
        s.memory_frugal = frugal
        grads.append(torch.autograd.grad(s(x).pow(2).sum(), [x, *s.parameters()]))
    for gp, gf in zip(*grads):
        assert float(gp.abs().sum()) > 0
        torch.testing.assert_close(gf, gp, rtol=1e-12, atol=0)


def test_trace_summary_shapes_gradients_and_conditional_hint():
    torch.manual_seed(0)
    s = TraceSummary(7, 801, 6, hidden=8)
    assert s.lengths == (99, 11)
    d = torch.randn(5, 7, 801, requires_grad=True)
    f = s(d)
    assert f.shape == (5, 6)
    f = f.detach()
    # one time sample moves the features: the time axis is not pooled away
    d2 = d.detach().clone()
    d2[0, 3, 400] += 1.0
    f2 = s(d2).detach()
    assert float((f2[0] - f[0]).abs().max()) > 1e-4
    assert float((f2[1:] - f[1:]).abs().max()) == 0
    # trained jointly with a vector conditional HINT, frugal backprop included
    q = Flow(ConditionalHINT(10, 6, steps=2, hidden=8, memory_frugal=True), (10,))
    with torch.no_grad():  # off the identity-like start, where log q ignores the condition
        for p in q.parameters():
            p.add_(0.05 * torch.randn_like(p))
    loss = -q.log_prob(torch.randn(5, 10), s(d)).mean()
    loss.backward()
    assert float(d.grad.abs().sum()) > 0
    assert all(float(p.grad.abs().sum()) > 0 for p in s.parameters())
    assert TraceSummary(3, 10, 2, stride=2, length=4).lengths == (4,)


def test_summary_errors_name_the_values():
    with pytest.raises(InvalidShapeError, match=r"ImageSummary expects \[b, 2, \*, \*\], got"):
        ImageSummary(2, 3)(torch.randn(1, 3, 4, 4))
    with pytest.raises(InvalidArgumentError, match=r"dilations=\(1,\) must have 2 entries"):
        ImageSummary(2, 3, depth=2, dilations=(1,))
    with pytest.raises(InvalidShapeError, match=r"TraceSummary expects \[b, 7, 801\].*\(2, 801\)"):
        TraceSummary(7, 801, 4)(torch.randn(2, 801))
    with pytest.raises(InvalidArgumentError, match=r"floating tensor.*torch.int64"):
        TraceSummary(7, 801, 4)(torch.zeros(2, 7, 801, dtype=torch.long))
    with pytest.raises(DevitoUQError, match=r"stride=1 must be an integer >= 2"):
        TraceSummary(7, 801, 4, stride=1)
