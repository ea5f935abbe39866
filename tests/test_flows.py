"""One battery over every invertible layer and network of devito_uq.flows.

Each case builds a module, an input ``x`` and (for conditional modules) a condition ``c``.
Checks: round trip in both directions (float64 and float32), logdet against slogdet of the
autograd Jacobian in both directions, memory-frugal against plain-autograd gradients, every
parameter gets a gradient, state_dict round trip, Taylor tests in the input and in the
parameters, the CUDA path, and input validation.
"""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from checks import slopes, taylor_test
from conftest import cuda_or_skip

from devito_uq.errors import InvalidArgumentError, InvalidDtypeError, InvalidShapeError
from devito_uq.flows import (
    FRUGAL_THRESHOLD_BYTES,
    HINT,
    ActNorm,
    AffineCoupling,
    ConditionalAffineCoupling,
    ConditionalHINT,
    ConditionalHINTCoupling,
    Flow,
    Glow,
    HaarSqueeze,
    HINTCoupling,
    InvertibleConv1x1,
    InvertibleSequential,
    MultiscaleHINT,
    Split,
    Squeeze,
    default_leaf_size,
)
from devito_uq.flows.hint import _LevelCoupling

B = 3  # batch of every case

# name -> (factory, x shape without batch, c shape without batch or None)
CASES = {
    "actnorm-vec": (lambda: ActNorm(5, 0), (5,), None),
    "actnorm-1d": (lambda: ActNorm(3, 1), (3, 6), None),
    "actnorm-2d": (lambda: ActNorm(2, 2), (2, 3, 3), None),
    "conv1x1-vec": (lambda: InvertibleConv1x1(6, 0), (6,), None),
    "conv1x1-1d": (lambda: InvertibleConv1x1(3, 1), (3, 5), None),
    "conv1x1-2d": (lambda: InvertibleConv1x1(4, 2), (4, 3, 3), None),
    "affine-vec2": (lambda: AffineCoupling(2, 8, 0), (2,), None),
    "affine-vec5": (lambda: AffineCoupling(5, 8, 0), (5,), None),
    "affine-1d": (lambda: AffineCoupling(3, 8, 1), (3, 6), None),
    "affine-2d": (lambda: AffineCoupling(4, 8, 2), (4, 3, 3), None),
    "cond-affine-vec": (lambda: ConditionalAffineCoupling(4, 3, 8, 0), (4,), (3,)),
    "cond-affine-2d-spatial": (lambda: ConditionalAffineCoupling(2, 2, 8, 2), (2, 3, 3), (2, 3, 3)),
    "hint-coupling-vec2": (lambda: HINTCoupling(2, 8, 0), (2,), None),
    "hint-coupling-vec9": (lambda: HINTCoupling(9, 8, 0, leaf_size=2), (9,), None),
    "hint-coupling-1d": (lambda: HINTCoupling(6, 8, 1, leaf_size=3), (6, 4), None),
    "hint-coupling-2d": (lambda: HINTCoupling(5, 8, 2, leaf_size=2), (5, 2, 2), None),
    "cond-hint-coupling-vec": (
        lambda: ConditionalHINTCoupling(7, 2, 8, 0, leaf_size=2),
        (7,),
        (2,),
    ),
    "cond-hint-coupling-1d": (
        lambda: ConditionalHINTCoupling(5, 2, 8, 1, leaf_size=2),
        (5, 4),
        (2,),
    ),
    "haar-1d": (lambda: HaarSqueeze(1), (2, 6), None),
    "haar-2d": (lambda: HaarSqueeze(2), (2, 4, 6), None),
    "squeeze-1d": (lambda: Squeeze(1), (2, 6), None),
    "squeeze-2d": (lambda: Squeeze(2), (2, 4, 6), None),
    "split": (lambda: Split(AffineCoupling(3, 8, 1), 3), (5, 4), None),
    "hint-vec2": (lambda: HINT(2, steps=2, hidden=8), (2,), None),
    "hint-vec7": (lambda: HINT(7, steps=2, hidden=8), (7,), None),
    "hint-vec16": (lambda: HINT(16, steps=2, hidden=8), (16,), None),
    "hint-vec16-leaf4": (lambda: HINT(16, steps=1, hidden=8, leaf_size=4), (16,), None),
    "hint-2d-leaf2": (lambda: HINT(4, steps=1, hidden=8, ndim=2, leaf_size=2), (4, 2, 2), None),
    "hint-vec33": (lambda: HINT(33, steps=1, hidden=8, leaf_size=3), (33,), None),
    "hint-1d": (lambda: HINT(3, steps=2, hidden=8, ndim=1), (3, 5), None),
    "cond-hint-vec": (lambda: ConditionalHINT(6, 3, steps=2, hidden=8), (6,), (3,)),
    "cond-hint-1d": (lambda: ConditionalHINT(4, 2, steps=2, hidden=8, ndim=1), (4, 3), (2,)),
    "multiscale-hint-1d": (lambda: MultiscaleHINT(1, 2, 2, 8, ndim=1), (1, 16), None),
    "multiscale-hint-2d": (lambda: MultiscaleHINT(1, 2, 1, 8, ndim=2), (1, 8, 4), None),
    "cond-multiscale-hint-2d": (
        lambda: MultiscaleHINT(2, 1, 2, 8, ndim=2, cond_channels=3),
        (2, 4, 2),
        (3,),
    ),
    "glow-2d": (lambda: Glow(1, levels=2, steps=2, hidden=8), (1, 8, 4), None),
    "glow-1d": (lambda: Glow(2, levels=2, steps=2, hidden=8, ndim=1), (2, 8), None),
    "sequential": (
        lambda: InvertibleSequential(
            ActNorm(4, 1), InvertibleConv1x1(4, 1), AffineCoupling(4, 8, 1)
        ),
        (4, 5),
        None,
    ),
}
NAMES = list(CASES)
WITH_PARAMS = [n for n in NAMES if "haar" not in n and "squeeze" not in n]


def build(name, dtype=torch.float64, seed=0, perturb=0.05):
    """Module wrapped in a frugal chain, initialized on x and perturbed off the identity."""
    factory, xshape, cshape = CASES[name]
    torch.manual_seed(seed)
    layer = factory()
    net = layer if isinstance(layer, InvertibleSequential) else InvertibleSequential(layer)
    net = net.to(dtype)
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(B, *xshape, generator=g, dtype=dtype) * 1.5 + 0.3
    c = None if cshape is None else torch.randn(B, *cshape, generator=g, dtype=dtype)
    with torch.no_grad():
        net(x, c)  # data-dependent ActNorm initialization
        for p in net.parameters():
            p.add_(perturb * torch.randn(p.shape, generator=g, dtype=dtype))
    return net, x, c


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def loss_of(y, ld):
    """A VI-like loss depending on y and logdet, with a cross term and a fixed linear term
    (ActNorm's data-dependent init makes ½‖y‖² − logdet stationary on its own)."""
    flat = y.reshape(y.shape[0], -1)
    w = torch.sin(torch.arange(flat.shape[1], dtype=y.dtype, device=y.device))
    return 0.5 * (y**2).sum() - ld.sum() + (flat[:, 0] * ld).sum() + (flat * w).sum()


# -- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_round_trip(name, dtype, tol):
    net, x, c = build(name, dtype)
    with torch.no_grad():
        y, ld = net(x, c)
        xr, ldi = net.inverse(y, c)
        assert ld.shape == (B,) and ldi.shape == (B,)
        assert rel(xr, x) < tol
        assert torch.allclose(ld, -ldi, atol=tol * (1 + ld.abs().max().item()))
        # the other direction, from a latent that is not the image of x
        z = torch.randn_like(y)
        xz, _ = net.inverse(z, c)
        zr, _ = net(xz, c)
        assert rel(zr, z) < tol
        # the network is not the identity (the checks above could not pass trivially)
        if name in WITH_PARAMS or "haar" in name:
            assert rel(y.reshape(x.shape), x) > 1e-3


# -- logdet against the autograd Jacobian --------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_logdet_matches_slogdet(name):
    net, x, c = build(name)
    net.memory_frugal = False
    c1 = None if c is None else c[:1]
    with torch.no_grad():
        y, ld = net(x[:1], c1)
        _, ldi = net.inverse(y, c1)

    def fwd(v):
        return net(v.reshape(x[:1].shape), c1)[0].reshape(-1)

    def inv(v):
        return net.inverse(v.reshape(y.shape), c1)[0].reshape(-1)

    jf = torch.autograd.functional.jacobian(fwd, x[:1].reshape(-1), vectorize=True)
    ji = torch.autograd.functional.jacobian(inv, y.reshape(-1), vectorize=True)
    sf, lf = torch.linalg.slogdet(jf)
    si, li = torch.linalg.slogdet(ji)
    assert sf != 0 and si != 0
    assert abs(lf.item() - ld.item()) < 1e-8 * (1 + abs(lf.item()))
    assert abs(li.item() - ldi.item()) < 1e-8 * (1 + abs(li.item()))


# -- memory-frugal backprop -------------------------------------------------------------------
def _grads(net, x, c, frugal, inverse):
    net.memory_frugal = frugal
    xv = x.clone().requires_grad_(True)
    cv = None if c is None else c.clone().requires_grad_(True)
    if inverse:
        out, ld = net.inverse(xv, cv)
    else:
        out, ld = net(xv, cv)
    inputs = [xv] + ([cv] if cv is not None else []) + list(net.parameters())
    return torch.autograd.grad(loss_of(out, ld), inputs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_frugal_gradients_equal_plain(name, inverse):
    net, x, c = build(name)
    if inverse:
        with torch.no_grad():
            x = net(x, c)[0]
    gf = _grads(net, x, c, True, inverse)
    gp = _grads(net, x, c, False, inverse)
    for a, b in zip(gf, gp):
        assert (a - b).norm() <= 1e-5 * b.norm() + 1e-14


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_every_parameter_gets_a_gradient(name):
    net, x, c = build(name)
    net.zero_grad()
    y, ld = net(x, c)
    loss_of(y, ld).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def _saved_numel(net, x):
    """Number of tensor entries autograd saves for backward during one forward pass."""
    total = [0]

    def pack(t):
        total[0] += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, ld = net(x)
    return total[0]


def test_frugal_saved_memory_does_not_grow_with_depth():
    x = torch.randn(4, 1, 16, 16)
    saved = {}
    for steps in (1, 4):
        for frugal in (True, False):
            torch.manual_seed(0)
            net = Glow(1, levels=2, steps=steps, hidden=8, memory_frugal=frugal)
            saved[steps, frugal] = _saved_numel(net, x)
    # frugal keeps only the output (and is depth independent); plain autograd grows ~linearly
    assert saved[1, True] == saved[4, True] <= 2 * x.numel()
    assert saved[4, False] > 3 * saved[1, False] > 3 * saved[1, True]


def test_frugal_with_actnorm_initialization_and_no_grad():
    torch.manual_seed(0)
    a = HINT(6, steps=3, hidden=8).double()
    b = copy.deepcopy(a)
    b.memory_frugal = False
    x = torch.randn(16, 6, dtype=torch.float64) * 3 + 1
    # first call initializes ActNorm inside a training pass, in the inverse direction
    ya, lda = a.inverse(x)
    yb, ldb = b.inverse(x)
    assert torch.allclose(ya, yb) and torch.allclose(lda, ldb)
    ga = torch.autograd.grad(loss_of(ya, lda), list(a.parameters()))
    gb = torch.autograd.grad(loss_of(yb, ldb), list(b.parameters()))
    for u, v in zip(ga, gb):
        assert (u - v).norm() <= 1e-5 * v.norm() + 1e-14
    # initialized in the inverse direction: the rebuilt x is standardized by the first ActNorm
    with torch.no_grad():
        y, ld = a(x)
        assert y.grad_fn is None and ld.grad_fn is None
    assert bool(a.layers[0].initialized)


def test_frugal_backward_refuses_parameters_changed_in_place():
    net = HINT(4, steps=1, hidden=8, memory_frugal=True)
    y, ld = net(torch.randn(8, 4))
    with torch.no_grad():
        next(net.parameters()).add_(0.1)
    with pytest.raises(RuntimeError, match="modified in place after the forward pass"):
        (y.sum() + ld.sum()).backward()


# -- state_dict -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", WITH_PARAMS)
def test_state_dict_round_trip(name):
    net, x, c = build(name)
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    other, _, _ = build(name, seed=7, perturb=0.2)
    with torch.no_grad():
        assert rel(other(x, c)[0], net(x, c)[0]) > 1e-6
        buf.seek(0)
        other.load_state_dict(torch.load(buf))
        y0, l0 = net(x, c)
        y1, l1 = other(x, c)
    assert torch.equal(y0, y1) and torch.equal(l0, l1)
    # the repr names every layer of the chain (and the same architecture prints the same)
    text = repr(other)
    assert text == repr(net)
    assert all(f"({i}): {type(layer).__name__}(" in text for i, layer in enumerate(net.layers))


def test_whole_network_pickles():
    """torch.save of the module itself (not its state_dict) keeps working: no lambdas or
    local functions in hooks or attributes."""
    net, x, c = build("glow-2d")
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    other = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert torch.equal(other(x, c)[0], net(x, c)[0])


# -- Taylor tests -------------------------------------------------------------------------------
def _assert_taylor(h, e1, e2):
    # e2 decaying as h² is the gradient check (a wrong gradient leaves an O(h) term); e1 must
    # be first order and larger than e2 at the smallest step.
    s1, s2 = slopes(h, e1), slopes(h, e2)
    assert np.mean(s2) == pytest.approx(2, abs=0.2), (e1, e2)
    assert s1[-1] < 1.5 and e2[-1] < 0.5 * e1[-1], (e1, e2)


@pytest.mark.parametrize("name", NAMES)
def test_taylor_in_input(name):
    net, x, c = build(name)

    def f(v):
        y, ld = net(v, c)
        return loss_of(y, ld)

    dx = torch.randn_like(x)
    _assert_taylor(*taylor_test(f, x, dx, h0=1e-3, steps=4))


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_taylor_in_parameters(name):
    net, x, c = build(name)
    params = list(net.parameters())
    p0 = [p.detach().clone() for p in params]
    dp = [torch.randn_like(p) for p in params]
    net.zero_grad()
    y, ld = net(x, c)
    f0 = loss_of(y, ld)
    f0.backward()
    gdp = sum((p.grad * d).sum() for p, d in zip(params, dp)).item()
    hs, e1, e2 = [], [], []
    for k in range(4):
        h = 1e-4 * 0.5**k
        with torch.no_grad():
            for p, a, d in zip(params, p0, dp):
                p.copy_(a + h * d)
            fh = loss_of(*net(x, c)).item()
        hs.append(h)
        e1.append(abs(fh - f0.item()))
        e2.append(abs(fh - f0.item() - h * gdp))
    _assert_taylor(np.array(hs), np.array(e1), np.array(e2))


# -- Flow -------------------------------------------------------------------------------------
def test_flow_log_prob_consistent_with_rsample():
    torch.manual_seed(0)
    q = Flow(HINT(5, steps=2, hidden=8), (5,)).double()
    m, log_q = q.rsample_and_log_prob(7)
    assert m.shape == (7, 5) and log_q.shape == (7,)
    assert torch.allclose(q.log_prob(m), log_q, atol=1e-10)
    # differentiable in the parameters (reparameterized)
    grads = torch.autograd.grad(log_q.sum() + m.sum(), list(q.parameters()), allow_unused=True)
    assert all(g is not None for g in grads)
    assert q.sample(4).shape == (4, 5) and q.sample(4).grad_fn is None


def test_flow_multiscale_and_conditional():
    torch.manual_seed(0)
    q = Flow(Glow(1, levels=2, steps=1, hidden=8), (1, 8, 8)).double()
    assert q.latent_shape == (16, 2, 2)
    m, log_q = q.rsample_and_log_prob(3)
    assert m.shape == (3, 1, 8, 8)
    assert torch.allclose(q.log_prob(m), log_q, atol=1e-9)
    qc = Flow(ConditionalHINT(4, 2, steps=2, hidden=8), (4,)).double()
    d = torch.randn(1, 2, dtype=torch.float64)
    m, log_q = qc.rsample_and_log_prob(5, d)
    assert torch.allclose(qc.log_prob(m, d), log_q, atol=1e-10)


def test_flow_state_dict_round_trip():
    torch.manual_seed(0)
    q = Flow(HINT(4, steps=2, hidden=8), (4,))
    q.sample(8)  # initializes ActNorm
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    q2 = Flow(HINT(4, steps=2, hidden=8), (4,))
    q2.load_state_dict(torch.load(buf))
    m = torch.randn(6, 4)
    assert torch.equal(q.log_prob(m), q2.log_prob(m))


def test_actnorm_data_init_standardizes_and_floors_constant_channels():
    x = torch.randn(64, 4, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5, 0.0]) + 2
    act = ActNorm(4).double()
    y, ld = act(x)
    assert torch.allclose(y[:, :3].mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(y[:, :3].std(0, unbiased=False), torch.ones(3, dtype=torch.float64))
    # the constant channel is scaled by 1 / (1e-3 · largest std), not by 1 / eps
    assert act.log_scale[3].item() == pytest.approx(
        -math.log(1e-3 * x[:, 1].std(unbiased=False).item() + 1e-6)
    )
    assert torch.isfinite(ld).all()


def test_skip_data_init_keeps_actnorm_identity():
    torch.manual_seed(0)
    net = HINT(3, steps=1, hidden=8).skip_data_init()
    x = torch.randn(5, 3) * 4 + 2
    y, ld = net.layers[0](x)  # the ActNorm
    assert torch.equal(y, x) and torch.equal(ld, torch.zeros(5))


def test_flow_standard_normal_at_initialization():
    # identity-close init: rotation mixing, identity couplings, ActNorm fitted to N(0, I)
    torch.manual_seed(0)
    q = Flow(HINT(8, steps=2, hidden=8), (8,)).double()
    m = q.sample(4000)
    assert m.mean(0).abs().max() < 0.1
    assert (torch.cov(m.T) - torch.eye(8, dtype=torch.float64)).abs().max() < 0.12


def test_hint_fits_correlated_gaussian_by_reverse_kl():
    """HINT over a 16-vector learns a Gaussian whose first and last entries are strongly
    anticorrelated (DESIGN.md: 1D flows must couple distant samples)."""
    torch.manual_seed(0)
    n = 16
    i = torch.arange(n, dtype=torch.float32)
    v = torch.stack([2 * torch.cos(math.pi * i / (n - 1)), torch.exp(-(((i - n / 2) / 3) ** 2))], 1)
    scale = torch.linspace(0.5, 2, n)
    cov = (0.1 * torch.eye(n) + v @ v.T) * scale[:, None] * scale[None]
    mean = torch.linspace(-1, 1, n)
    prec = torch.linalg.inv(cov)

    def log_p(m):
        d = m - mean
        return -0.5 * ((d @ prec) * d).sum(1)

    q = Flow(HINT(n, steps=2, hidden=32), (n,))
    steps = 400
    opt = torch.optim.Adam(q.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        m, log_q = q.rsample_and_log_prob(128)
        loss = (log_q - log_p(m)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    m = q.sample(20000)
    c = torch.cov(m.T)

    def corr(a):
        return a / torch.sqrt(torch.diag(a)[:, None] * torch.diag(a)[None])

    assert corr(cov)[0, -1] < -0.95
    assert rel(c, cov) < 0.15
    assert abs(corr(c)[0, -1] - corr(cov)[0, -1]) < 0.02
    assert (m.mean(0) - mean).norm() < 0.2 * mean.norm()


def test_conditional_hint_learns_amortized_gaussian_posterior():
    """ConditionalHINT trained on joint samples (m, d) of a linear-Gaussian model by maximum
    likelihood reproduces the closed-form posterior p(m | d) for unseen d."""
    torch.manual_seed(0)
    a = torch.tensor([[1.0, 0.5], [-0.3, 0.8]])
    sigma = 0.5
    post_cov = torch.linalg.inv(torch.eye(2) + a.T @ a / sigma**2)
    q = Flow(ConditionalHINT(2, 2, steps=4, hidden=32), (2,))
    steps = 400
    opt = torch.optim.Adam(q.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        m = torch.randn(256, 2)
        d = m @ a.T + sigma * torch.randn(256, 2)
        loss = -q.log_prob(m, d).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    for d0 in ([1.0, -1.0], [-2.0, 0.5]):
        d0 = torch.tensor([d0])
        m = q.sample(20000, d0)
        post_mean = post_cov @ a.T @ d0[0] / sigma**2
        assert (m.mean(0) - post_mean).abs().max() < 0.06
        assert (torch.cov(m.T) - post_cov).abs().max() < 0.02


# -- speed-motivated paths agree with the plain definitions ----------------------------------
def test_default_leaf_size_is_one_coupling_per_step():
    for n in (2, 3, 40, 128, 1024):
        assert default_leaf_size(n) == n
    net = HINT(40, steps=2, hidden=8)
    couplings = [m for m in net.layers if isinstance(m, HINTCoupling)]
    assert [len(c.layers) for c in couplings] == [1, 1] and couplings[0].leaf_size == 40
    # an explicit leaf size still builds the recursion: 40 -> 20 -> 10 -> 5 (4 depths)
    assert len(HINT(40, steps=1, hidden=8, leaf_size=5).layers[2].layers) == 4


def test_conv1x1_vector_path_matches_dense_weight():
    torch.manual_seed(3)
    layer = InvertibleConv1x1(7).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))  # the unused diagonal of lu too: must not matter
    x = torch.randn(5, 7, dtype=torch.float64)
    y, _ = layer(x)
    assert torch.allclose(y, x @ layer.weight().T, atol=1e-12)
    xr, _ = layer.inverse(y)
    assert torch.allclose(xr, y @ layer.weight_inverse().T, atol=1e-12)


def test_conv1x1_loads_state_dicts_with_separate_factors():
    """Checkpoints written before the factors shared one ``lu`` matrix still load."""
    torch.manual_seed(3)
    layer = InvertibleConv1x1(5).double()
    with torch.no_grad():
        layer.lu.add_(0.3 * torch.randn_like(layer.lu))
    old = {k: v for k, v in layer.state_dict().items() if k != "lu"}
    old["lower"] = torch.tril(layer.lu, -1).detach() + 7 * torch.triu(torch.ones(5, 5))
    old["upper"] = torch.triu(layer.lu, 1).detach() - 5 * torch.tril(torch.ones(5, 5))
    old["lower_mask"] = torch.tril(torch.ones(5, 5), -1)
    other = InvertibleConv1x1(5).double()
    other.load_state_dict(old)  # strict: no missing or unexpected keys
    x = torch.randn(4, 5, dtype=torch.float64)
    assert torch.allclose(other(x)[0], layer(x)[0], atol=1e-12)


def test_glow_loads_state_dicts_with_the_old_coupling_layout():
    net, x, c = build("glow-1d")
    old = {k.replace(".net.", ".map.net."): v for k, v in net.state_dict().items()}
    assert any(".map.net." in k for k in old)
    other, _, _ = build("glow-1d", seed=7, perturb=0.2)
    other.load_state_dict(old)  # strict
    with torch.no_grad():
        assert torch.equal(other(x, c)[0], net(x, c)[0])


def test_hint_tiled_split_matches_padded_indexing():
    """The reshape split used when halves tile the channels equals the general gather."""
    torch.manual_seed(0)
    fast = _LevelCoupling(8, [(0, 4), (4, 8)], 8, 0, 0, 2.0).double()
    slow = copy.deepcopy(fast)
    slow.tiled = False
    assert fast.tiled
    with torch.no_grad():
        for p in fast.net.parameters():
            p.normal_()
        slow.load_state_dict(fast.state_dict())
    x = torch.randn(3, 8, dtype=torch.float64)
    for f in ("forward", "inverse"):
        (ya, la), (yb, lb) = getattr(fast, f)(x), getattr(slow, f)(x)
        assert torch.allclose(ya, yb, atol=1e-13) and torch.allclose(la, lb, atol=1e-13)
        assert rel(ya, x) > 1e-2


def test_auto_frugal_follows_the_measured_activation_size():
    torch.manual_seed(0)
    x = torch.randn(32, 1, 8, 8)
    saved = {}
    for mode in (True, False, "auto"):
        torch.manual_seed(0)
        net = Glow(1, levels=2, steps=2, hidden=8, memory_frugal=mode)
        saved[mode] = _saved_numel(net, x)
    assert net.frugal_threshold_bytes == FRUGAL_THRESHOLD_BYTES
    assert saved["auto"] == saved[False] > 3 * saved[True]  # a few kB: plain
    # the estimate (fixed + batch · per sample, from batches of 1 and 2, parameters and
    # repeats excluded) is within 20 % of every float32 entry autograd saved for batch 32
    ((fixed, per_sample),) = net._saved_bytes.values()
    assert abs(fixed + per_sample * 32 - 4 * saved[False]) < 0.2 * 4 * saved[False]
    # over the threshold the same network turns frugal, and its gradients do not change
    g_plain = torch.autograd.grad(loss_of(*net(x)), list(net.parameters()))
    net.frugal_threshold_bytes = 4 * saved[False] // 2
    assert _saved_numel(net, x) == saved[True]
    g_auto = torch.autograd.grad(loss_of(*net(x)), list(net.parameters()))
    for a, b in zip(g_auto, g_plain):
        assert (a - b).norm() <= 1e-4 * b.norm() + 1e-10
    # below the threshold for a smaller batch: plain again
    assert _saved_numel(net, x[:4]) > 3 * _saved_numel(Glow(1, 2, 2, 8, memory_frugal=True), x[:4])


# -- CUDA -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["hint-vec7", "cond-hint-vec", "glow-2d", "multiscale-hint-1d"])
def test_cuda_path(name):
    dev = cuda_or_skip()
    net, x, c = build(name)
    ref = _grads(net, x, c, True, False)
    net = net.to(dev)
    x = x.to(dev)
    c = None if c is None else c.to(dev)
    with torch.no_grad():
        y, _ = net(x, c)
        assert y.device.type == "cuda"
        assert rel(net.inverse(y, c)[0], x) < 1e-8
    for a, b in zip(_grads(net, x, c, True, False), ref):
        assert rel(a.cpu(), b) < 1e-6


# -- input validation -------------------------------------------------------------------------
def test_errors_construction():
    with pytest.raises(InvalidShapeError, match="at least 2 channels, got 1"):
        HINT(1)
    with pytest.raises(InvalidArgumentError, match="steps=0 must be an integer >= 1"):
        HINT(4, steps=0)
    with pytest.raises(InvalidArgumentError, match="hidden=0 must be an integer >= 1"):
        HINT(4, hidden=0)
    with pytest.raises(InvalidArgumentError, match="memory_frugal='yes' must be True, False"):
        HINT(4, memory_frugal="yes")
    with pytest.raises(InvalidArgumentError, match="ndim must be 0 \\(vectors\\), 1 or 2, got 3"):
        ActNorm(4, ndim=3)
    with pytest.raises(InvalidArgumentError, match="leaf_size=1 must be an integer >= 2"):
        HINTCoupling(4, leaf_size=1)
    with pytest.raises(InvalidArgumentError, match="leaf_size=2.5 must be an integer"):
        HINT(4, leaf_size=2.5)
    with pytest.raises(InvalidArgumentError, match="clamp=-1.0 must be finite and positive"):
        AffineCoupling(4, clamp=-1)
    with pytest.raises(InvalidArgumentError, match="at least one layer"):
        InvertibleSequential()
    with pytest.raises(InvalidArgumentError, match="Glow: ndim must be 1 or 2, got 0"):
        Glow(1, ndim=0)
    with pytest.raises(InvalidArgumentError, match="net must be an InvertibleModule, got Linear"):
        Flow(torch.nn.Linear(2, 2), (2,))
    with pytest.raises(InvalidShapeError, match="latent_shape \\(3,\\) must have as many"):
        Flow(HINT(4), (4,), latent_shape=(3,))


def test_errors_inputs():
    net = HINT(4, steps=1, hidden=8)
    with pytest.raises(InvalidShapeError, match="expects 4 channels .* got shape \\(2, 5\\)"):
        net(torch.randn(2, 5))
    with pytest.raises(InvalidShapeError, match="HINT expects \\[batch, n\\], got shape"):
        net(torch.randn(2, 4, 1))
    with pytest.raises(InvalidDtypeError, match="must be floating point, got torch.int64"):
        net(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(InvalidArgumentError, match="HINT is not conditional"):
        net(torch.randn(2, 4), torch.randn(2, 2))
    cond = ConditionalHINT(4, 2, steps=1, hidden=8)
    with pytest.raises(InvalidArgumentError, match="needs a condition, got None"):
        cond(torch.randn(2, 4))
    with pytest.raises(
        InvalidShapeError, match="condition must be \\[2, 2, ...\\], got \\(2, 3\\)"
    ):
        cond(torch.randn(2, 4), torch.randn(2, 3))
    glow = Glow(1, levels=2, steps=1, hidden=8)
    with pytest.raises(InvalidShapeError, match="divisible by 4, got \\(6, 8\\)"):
        glow(torch.randn(1, 1, 6, 8))
    with pytest.raises(InvalidShapeError, match="Glow.inverse expects 16 channels"):
        glow.inverse(torch.randn(1, 1, 8, 8))
    with pytest.raises(InvalidShapeError, match="HaarSqueeze: .* divisible by 2, got \\(5,\\)"):
        HaarSqueeze(1)(torch.randn(1, 2, 5))
    with pytest.raises(InvalidShapeError, match="Squeeze.inverse needs channels divisible by 4"):
        Squeeze(2).inverse(torch.randn(1, 3, 2, 2))
    q = Flow(net, (4,))
    with pytest.raises(InvalidArgumentError, match="n=0 must be an integer >= 1"):
        q.sample(0)
    with pytest.raises(InvalidShapeError, match="log_prob expects \\[batch, \\*\\(4,\\)\\]"):
        q.log_prob(torch.randn(3, 5))


def test_log_prob_refuses_nan_models_and_foreign_devices():
    """A NaN model would give a NaN log-density that silently poisons a loss; a meta
    tensor cannot be evaluated. Both are named."""
    from devito_uq.errors import DevitoUQError
    from devito_uq.flows import HINT, Flow

    flow = Flow(HINT(6, steps=1, hidden=8), (6,))
    m = torch.zeros(2, 6)
    m[1, 4] = float("nan")
    with pytest.raises(DevitoUQError, match="m contains nan at index"):
        flow.log_prob(m)
    with pytest.raises(DevitoUQError, match="meta"):
        flow.log_prob(torch.empty(2, 6, device="meta"))
