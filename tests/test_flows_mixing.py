"""The vector LU mixing's autograd Functions (devito_uq.flows.mixing) against the autograd
formulation they replace: float64 gradcheck and gradgradcheck in both directions, and
outputs, log-determinants and gradients equal to the reference at sizes where the packed
gradient is assembled block by block (n above the leaf size, odd splits)."""

from __future__ import annotations

import copy

import pytest
import torch

from devito_uq.flows import HINT, Flow, InvertibleConv1x1, mixing
from devito_uq.flows.hint import _LevelCoupling

FUNCS = {
    "forward": (mixing.lu_mix_forward, mixing.autograd_forward),
    "inverse": (mixing.lu_mix_inverse, mixing.autograd_inverse),
}


def _layer_args(n, seed=0, diag=0.0):
    """(x, lu, log_s, sign, perm_index, perm_inverse) of a perturbed float64 layer; ``diag``
    is written on lu's unused diagonal (it must not matter)."""
    torch.manual_seed(seed)
    layer = InvertibleConv1x1(n).double()
    with torch.no_grad():
        layer.lu.add_(0.3 / n**0.5 * torch.randn_like(layer.lu))
        layer.lu.diagonal().fill_(diag)
        layer.log_s.add_(0.2 * torch.randn_like(layer.log_s))
    x = torch.randn(3, n, dtype=torch.float64)
    args = [t.detach().clone() for t in (x, layer.lu, layer.log_s)]
    for t in args:
        t.requires_grad_(True)
    return (*args, layer.sign, layer.perm_index, layer.perm_inverse)


@pytest.mark.parametrize("direction", FUNCS)
def test_gradcheck(direction):
    fn, _ = FUNCS[direction]
    args = _layer_args(6, diag=0.7)
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)  # create_graph: the reference's graph


@pytest.mark.parametrize("direction", FUNCS)
@pytest.mark.parametrize("n", [7, 128, 300, 517])
def test_matches_autograd_reference(direction, n):
    """n = 300 and 517 split the packed gradient into blocks, unevenly at 517."""
    fn, ref = FUNCS[direction]
    args = _layer_args(n, seed=n, diag=3.0)
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(3, n, generator=g, dtype=torch.float64)
    gld = torch.randn(3, generator=g, dtype=torch.float64)
    grads = []
    outs = []
    for f in (fn, ref):
        y, ld = f(*args)
        outs.append((y, ld))
        grads.append(torch.autograd.grad((y, ld), args[:3], (gy, gld)))
    (y, ld), (yr, ldr) = outs
    assert torch.allclose(y, yr, rtol=0, atol=1e-12) and torch.allclose(ld, ldr, atol=1e-12)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-10 * b.abs().max())
    g_lu = grads[0][1]
    assert torch.count_nonzero(torch.diagonal(g_lu)) == 0  # the unused diagonal
    assert torch.count_nonzero(torch.tril(g_lu, -1)) > 0 and torch.count_nonzero(
        torch.triu(g_lu, 1)
    )


@pytest.mark.parametrize("direction", FUNCS)
def test_only_requested_gradients(direction):
    """Inputs that need no gradient get none (and the rest still match the reference)."""
    fn, ref = FUNCS[direction]
    x, lu, log_s, *rest = _layer_args(9)
    x = x.detach()
    for f in (fn, ref):
        y, ld = f(x, lu, log_s, *rest)
        g = torch.autograd.grad(y.square().sum() + ld.sum(), (lu, log_s))
        if f is fn:
            first = g
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(first, g))


def test_layer_gradients_match_reference_in_a_flow(monkeypatch):
    """A whole HINT flow (float64) with the Functions forced on (short vectors run the
    autograd formulation by default) against the same flow with the autograd mixing."""
    monkeypatch.setattr(mixing, "FUNCTION_MIN_SIZE", 2)
    torch.manual_seed(0)
    flow = Flow(HINT(12, steps=2, hidden=8), (12,)).double()
    with torch.no_grad():
        flow.rsample_and_log_prob(16)  # ActNorm initialization
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref = copy.deepcopy(flow)
    for m in ref.modules():
        if isinstance(m, InvertibleConv1x1):
            m._forward = _reference_method(m, mixing.autograd_forward)
            m._inverse = _reference_method(m, mixing.autograd_inverse)
    out = []
    for f in (flow, ref):
        torch.manual_seed(5)
        x, log_q = f.rsample_and_log_prob(4)
        loss = x.pow(2).sum() + log_q.sum() + f.log_prob(x.detach() + 0.1).sum()
        out.append((x, log_q, torch.autograd.grad(loss, list(f.parameters()))))
    (x, lq, g), (xr, lqr, gr) = out
    assert torch.allclose(x, xr, atol=1e-12) and torch.allclose(lq, lqr, atol=1e-12)
    for a, b in zip(g, gr):
        assert torch.allclose(a, b, atol=1e-11)


@pytest.mark.parametrize("n", [mixing.FUNCTION_MIN_SIZE - 1, mixing.FUNCTION_MIN_SIZE])
def test_layer_runs_the_function_on_long_vectors(n):
    layer = InvertibleConv1x1(n)
    x = torch.randn(2, n)
    y, ld = layer(x)
    xr, ldr = layer.inverse(y)
    names = type(y.grad_fn).__name__ + type(xr.grad_fn).__name__
    long = n >= mixing.FUNCTION_MIN_SIZE
    assert ("_LUForwardBackward" in names and "_LUInverseBackward" in names) == long
    assert torch.allclose(xr, x, atol=1e-4) and torch.allclose(ld, -ldr)


def _reference_method(layer, reference):
    def run(v, c=None):
        return reference(v, layer.lu, layer.log_s, layer.sign, layer.perm_index, layer.perm_inverse)

    return run


class _Reshaped(_LevelCoupling):
    """The tiled reshape path even for one node (the path before the slice shortcut)."""

    @property
    def whole(self):
        return False


def test_hint_one_node_slices_match_the_reshape_split():
    torch.manual_seed(0)
    fast = _LevelCoupling(8, [(0, 8)], 8, 0, 0, 2.0).double()
    slow = _Reshaped(8, [(0, 8)], 8, 0, 0, 2.0).double()
    assert fast.whole and not slow.whole and slow.tiled
    with torch.no_grad():
        for p in fast.net.parameters():
            p.normal_()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(3, 8, dtype=torch.float64)
    for f in ("forward", "inverse"):
        (ya, la), (yb, lb) = getattr(fast, f)(x), getattr(slow, f)(x)
        assert torch.equal(ya, yb) and torch.equal(la, lb)
        assert ((ya - x).norm() / x.norm()) > 1e-2
    # memory-frugal recomputation: rebuilt input and gradient assembly
    a, b = fast._recompute(x, None, False), slow._recompute(x, None, False)
    assert torch.equal(a[0], b[0]) and ((a[0] - x).norm() / x.norm()) > 1e-2
    g = [torch.randn(3, 8, dtype=x.dtype), torch.randn(3, 4, dtype=x.dtype)]
    assert torch.equal(a[4](g), b[4](g))
