r"""Affine couplings and their conditioner networks.

A coupling splits its input into a conditioning part :math:`x_a` (passed through) and a
transformed part :math:`x_b`:

.. math::
    y_b = x_b \odot e^{\log s} + t, \qquad (\log s, t) = \mathrm{net}(x_a, c),
    \qquad \log s = a \tanh(r / a),

with the raw log-scale :math:`r` soft-clamped by ``clamp`` :math:`a` (Ardizzone et al.
2019), so :math:`\log|\det \partial y/\partial x| = \sum \log s`. :class:`CouplingBase`
implements the forward and inverse passes and the fused rebuild-and-recompute used by
memory-frugal backprop once, for every way of choosing :math:`x_a` and :math:`x_b`
(:class:`AffineCoupling`: two channel halves; HINT: the disjoint ranges of one depth of
its recursion, see :mod:`devito_uq.flows.hint`).

The conditioner is a residual network whose last layer starts at zero, so a coupling is
the identity at initialization (Kingma & Dhariwal 2018).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.flows.invertible import InvertibleModule, check_input, check_ndim, sum_but_batch
from devito_uq.validation import check_positive_int, check_positive_scalar

__all__ = [
    "Conditioner",
    "GroupedLinear",
    "CouplingBase",
    "AffineCoupling",
    "ConditionalAffineCoupling",
    "with_condition",
]


class GroupedLinear(nn.Module):
    """``groups`` independent Linear maps on contiguous slices of ``[batch, groups·in]``,
    computed as one batched matrix product (a grouped 1×1 convolution on a length-1 axis
    was several times slower on the CPU). Initialized like :class:`torch.nn.Linear`."""

    def __init__(self, groups: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.groups, self.in_features, self.out_features = groups, in_features, out_features
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(groups, out_features))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        h = x.reshape(n, self.groups, self.in_features).transpose(0, 1)  # [g, n, in]
        out = torch.baddbmm(self.bias.unsqueeze(1), h, self.weight)  # [g, n, out]
        return out.transpose(0, 1).reshape(n, self.groups * self.out_features)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, in={self.in_features}, out={self.out_features}"


class Conditioner(nn.Module):
    """Residual conditioner network whose last layer starts at zero.

    ``h1 = act(in(x))``, ``h2 = h1 + act(mid(h1))``, ``out = last(h2)`` with ``last``
    zero-initialized (weights and bias), so a coupling using it starts as the identity.
    Vectors use Linear layers; signals and images use convolutions with kernel 3 for ``in``
    and ``last`` and 1 for ``mid`` (Glow's conditioner with a residual middle layer).
    SiLU keeps the map smooth (Taylor tests, stable second-order behaviour).

    With ``groups`` > 1, ``groups`` independent conditioners run as one grouped convolution
    (channel counts are per group; input and output channels are grouped contiguously);
    for vectors as one batched matrix product (:class:`GroupedLinear`).
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden: int, ndim: int, groups: int = 1
    ) -> None:
        super().__init__()
        check_positive_int("hidden", hidden)
        self.ndim = check_ndim(ndim)
        g = groups
        if ndim == 0 and g == 1:
            self.inp = nn.Linear(in_channels, hidden)
            self.mid = nn.Linear(hidden, hidden)
            self.last = nn.Linear(hidden, out_channels)
        elif ndim == 0:
            self.inp = GroupedLinear(g, in_channels, hidden)
            self.mid = GroupedLinear(g, hidden, hidden)
            self.last = GroupedLinear(g, hidden, out_channels)
        else:
            conv = nn.Conv2d if ndim == 2 else nn.Conv1d
            self.inp = conv(g * in_channels, g * hidden, 3, padding=1, groups=g)
            self.mid = conv(g * hidden, g * hidden, 1, groups=g)
            self.last = conv(g * hidden, g * out_channels, 3, padding=1, groups=g)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.inp, nn.Linear):
            # the functional form skips three module calls (a launch-bound step)
            h = F.silu(F.linear(x, self.inp.weight, self.inp.bias))
            h = h + F.silu(F.linear(h, self.mid.weight, self.mid.bias))
            return F.linear(h, self.last.weight, self.last.bias)
        h = F.silu(self.inp(x))
        h = h + F.silu(self.mid(h))
        return self.last(h)


def with_condition(xa: torch.Tensor, c: torch.Tensor | None, cond_channels: int, who: str):
    """Concatenate the condition to the conditioner input along channels.

    ``c`` is ``[batch, cond_channels]`` (broadcast over space) or
    ``[batch, cond_channels, *spatial]`` matching ``xa``'s spatial shape.
    """
    if cond_channels == 0:
        return xa
    if c is None:
        raise InvalidArgumentError(f"{who} is conditional and needs a condition tensor, got None")
    if c.shape[0] != xa.shape[0] or c.shape[1] != cond_channels:
        raise InvalidShapeError(
            f"{who}: condition must be [{xa.shape[0]}, {cond_channels}, ...], got {tuple(c.shape)}"
        )
    if c.dim() == 2 and xa.dim() > 2:
        c = c.view(*c.shape, *([1] * (xa.dim() - 2))).expand(-1, -1, *xa.shape[2:])
    elif c.shape[2:] != xa.shape[2:]:
        raise InvalidShapeError(
            f"{who}: condition spatial shape {tuple(c.shape[2:])} does not match "
            f"the input's {tuple(xa.shape[2:])}"
        )
    return torch.cat([xa, c.to(xa.dtype)], dim=1)


class CouplingBase(InvertibleModule):
    """Bounded affine coupling (module docstring) over an abstract split of the channels.

    Subclasses say which channels condition and which are transformed: ``_cond_input(v)``
    (the conditioner's input), ``_take_b(v)`` and ``_put_b(v, b)`` (read and replace the
    transformed part, out of place), ``_add_cond_grad(g_v, g_a)`` (add the gradient of the
    conditioner input back onto the channels it came from) and ``_raw(a, c)`` (the
    conditioner output split into raw log-scale and shift, each shaped like ``_take_b``).
    """

    def __init__(self, clamp: float) -> None:
        super().__init__()
        self.clamp = check_positive_scalar("clamp", clamp)

    def _scale_shift(self, a, c, sign: float = 1.0):
        """``(sign · log s, t)``; ``sign=-1`` gives the inverse pass ``-log s`` in the same
        multiplication, which saves two elementwise operations there."""
        raw_s, t = self._raw(a, c)
        return torch.tanh(raw_s / self.clamp) * (sign * self.clamp), t

    def _check(self, v):
        check_input(v, type(self).__name__, self.channels, self.ndim)

    def _forward(self, x, c=None):
        self._check(x)
        log_s, t = self._scale_shift(self._cond_input(x), c)
        b = torch.addcmul(t, self._take_b(x), torch.exp(log_s))
        return self._put_b(x, b), sum_but_batch(log_s)

    def _inverse(self, y, c=None):
        self._check(y)
        neg_log_s, t = self._scale_shift(self._cond_input(y), c, -1.0)
        b = (self._take_b(y) - t) * torch.exp(neg_log_s)
        return self._put_b(y, b), sum_but_batch(neg_log_s)

    def _recompute(self, out, c, inverse):
        """Fused rebuild + recompute for memory-frugal backprop (see
        ``InvertibleModule._recompute``): the conditioner runs once, on a leaf copy of the
        (unchanged) conditioning channels; its output both rebuilds the transformed part
        and carries the graph for the gradients."""
        self._check(out)
        a = self._cond_input(out).detach().requires_grad_(True)
        sign = -1.0 if inverse else 1.0  # the recomputed pass: inverse when the chain is
        ls, t = self._scale_shift(a, c, sign)  # ls = sign · log s
        with torch.no_grad():
            b = self._take_b(out)
            b = b * torch.exp(-ls) + t if inverse else (b - t) * torch.exp(-ls)
            inp = self._put_b(out, b)
        leaf = inp.detach().requires_grad_(True)
        b_in = self._take_b(leaf)
        if inverse:
            b_out = (b_in - t) * torch.exp(ls)
        else:
            b_out = torch.addcmul(t, b_in, torch.exp(ls))
        ld = sum_but_batch(ls)

        def assemble(grads):
            return self._add_cond_grad(grads[0], grads[1])

        return inp, [leaf, a], self._put_b(leaf, b_out), ld, assemble


class AffineCoupling(CouplingBase):
    r"""Glow/RealNVP affine coupling over channels.

    :math:`x = (x_a, x_b)`, :math:`y_a = x_a`,
    :math:`y_b = x_b \odot e^{\log s(x_a)} + t(x_a)`, with
    :math:`\log s = a\tanh(r/a)` bounded. ``x_a`` holds the first ``channels // 2``
    channels. Shapes ``[batch, channels, *spatial]`` (``[batch, n]`` for ``ndim=0``).
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        ndim: int = 0,
        cond_channels: int = 0,
        clamp: float = 2.0,
    ) -> None:
        super().__init__(clamp)
        self.channels = check_positive_int("channels", channels)
        if channels < 2:
            raise InvalidShapeError(f"a coupling needs at least 2 channels, got {channels}")
        self.ndim = check_ndim(ndim)
        self.cond_channels = cond_channels
        self.na = channels // 2
        self.nb = channels - self.na
        self.net = Conditioner(self.na + cond_channels, 2 * self.nb, hidden, ndim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # state dicts written before CouplingBase kept the conditioner under ``map.net``
        old = prefix + "map.net."
        for key in [k for k in state_dict if k.startswith(old)]:
            state_dict[prefix + "net." + key[len(old) :]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _cond_input(self, v):
        return v[:, : self.na]

    def _take_b(self, v):
        return v[:, self.na :]

    def _put_b(self, v, b):
        return torch.cat([v[:, : self.na], b], dim=1)

    def _add_cond_grad(self, g_v, g_a):
        return torch.cat([g_v[:, : self.na] + g_a, g_v[:, self.na :]], dim=1)

    def _raw(self, a, c):
        raw = self.net(with_condition(a, c, self.cond_channels, type(self).__name__))
        return raw[:, : self.nb], raw[:, self.nb :]

    def extra_repr(self) -> str:
        return f"{self.channels}, ndim={self.ndim}"


class ConditionalAffineCoupling(AffineCoupling):
    """:class:`AffineCoupling` whose conditioner also reads a condition tensor ``c``
    (``[batch, cond_channels]`` or ``[batch, cond_channels, *spatial]``)."""

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        hidden: int = 64,
        ndim: int = 0,
        clamp: float = 2.0,
    ) -> None:
        check_positive_int("cond_channels", cond_channels)
        super().__init__(channels, hidden, ndim, cond_channels, clamp)
