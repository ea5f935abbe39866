r"""Invertible layers for vectors ``[batch, n]``, 1D signals ``[batch, channel, n]`` and
images ``[batch, channel, h, w]``.

``ndim`` is the number of spatial dimensions: 0 for vectors (the whole vector is the channel
axis, so "1×1 convolutions" are dense n×n mixings), 1 for signals, 2 for images.

Each layer: ``y, logdet = layer(x, c=None)`` and ``x, logdet = layer.inverse(y, c=None)``,
``logdet`` of shape ``[batch]`` (log|det ∂y/∂x| forward, log|det ∂x/∂y| inverse).

Initialization (close to the identity, as in Glow, Kingma & Dhariwal 2018):

- :class:`ActNorm` normalizes its first batch per channel (data-dependent) and then trains
  freely; before that first batch it is the identity.
- :class:`InvertibleConv1x1` starts as a random rotation (orthogonal, logdet 0), so the
  density of a standard normal is unchanged.
- coupling layers end their conditioner with a zero-initialized layer: the coupling is
  exactly the identity at initialization.

Couplings bound the log-scale, :math:`\log s = a \tanh(r / a)` with ``clamp`` :math:`a`
(default 2, so :math:`s \in (e^{-2}, e^{2})`), which keeps inverses well conditioned
(Ardizzone et al. 2019 use the same soft clamp; InvertibleNetworks.jl uses a sigmoid).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.flows.memory import InvertibleModule, InvertibleSequential

__all__ = [
    "ActNorm",
    "InvertibleConv1x1",
    "Conditioner",
    "GroupedLinear",
    "AffineCoupling",
    "ConditionalAffineCoupling",
    "HaarSqueeze",
    "Squeeze",
    "Split",
]


def _check_ndim(ndim: int) -> int:
    if ndim not in (0, 1, 2):
        raise InvalidArgumentError(f"ndim must be 0 (vectors), 1 or 2, got {ndim!r}")
    return int(ndim)


def _check_positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_channels(x: torch.Tensor, channels: int, ndim: int, who: str) -> None:
    if x.dim() != ndim + 2 or x.shape[1] != channels:
        want = ["batch", str(channels)] + ["*"] * ndim
        raise InvalidShapeError(
            f"{who} expects a tensor shaped [{', '.join(want)}], got {tuple(x.shape)}"
        )


def _spatial_size(x: torch.Tensor) -> int:
    return math.prod(x.shape[2:])


def _sum_but_batch(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(dim=1)


class ActNorm(InvertibleModule):
    r"""Per-channel affine map :math:`y = x\,e^{\ell} + b` with data-dependent initialization.

    On its first call, :math:`\ell, b` are set so that the output of that batch has zero
    mean and unit variance per channel (in the inverse direction: so that the rebuilt
    ``x`` does). The ``initialized`` buffer is part of the ``state_dict``.

    Shapes: ``[batch, channels, *spatial]`` with ``ndim`` spatial dimensions.
    """

    def __init__(self, channels: int, ndim: int = 0, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = _check_positive("channels", channels)
        self.ndim = _check_ndim(ndim)
        self.eps = eps
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, p: torch.Tensor) -> torch.Tensor:
        return p.view(1, self.channels, *([1] * self.ndim))

    @torch.no_grad()
    def _initialize(self, v: torch.Tensor, inverse: bool) -> None:
        self.initialized.fill_(True)
        dims = [0] + list(range(2, v.dim()))
        if v.numel() // self.channels < 2:
            return  # one sample per channel: no statistics, stay the identity
        mean = v.mean(dim=dims)
        std = v.std(dim=dims, unbiased=False)
        # A channel that is (nearly) constant in the first batch, e.g. a fixed water layer in
        # a depth profile, would get a huge scale; floor its std relative to the others.
        std = torch.maximum(std, 1e-3 * std.max()) + self.eps
        if inverse:
            # x = (y - b) e^{-l} standardized  <=>  e^{l} = std(y), b = mean(y)
            self.log_scale.copy_(torch.log(std))
            self.bias.copy_(mean)
        else:
            self.log_scale.copy_(-torch.log(std))
            self.bias.copy_(-mean / std)

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        return (self.log_scale.sum() * _spatial_size(x)).expand(x.shape[0])

    def _forward(self, x, c=None):
        _check_channels(x, self.channels, self.ndim, "ActNorm")
        if not self.initialized:
            self._initialize(x, inverse=False)
        y = x * self._view(self.log_scale.exp()) + self._view(self.bias)
        return y, self._logdet(x)

    def _inverse(self, y, c=None):
        _check_channels(y, self.channels, self.ndim, "ActNorm")
        if not self.initialized:
            self._initialize(y, inverse=True)
        x = (y - self._view(self.bias)) * self._view(torch.exp(-self.log_scale))
        return x, -self._logdet(y)

    def extra_repr(self) -> str:
        return f"{self.channels}, ndim={self.ndim}"


class InvertibleConv1x1(InvertibleModule):
    r"""Invertible 1×1 convolution (dense channel mixing) with an LU parameterization.

    :math:`W = P L (U + \mathrm{diag}(\sigma\,e^{s}))` with a fixed permutation :math:`P`,
    unit lower-triangular :math:`L`, strictly upper :math:`U` and fixed signs :math:`\sigma`
    (Kingma & Dhariwal 2018), so :math:`\log|\det W| = \sum s` costs O(C). For vectors
    (``ndim=0``) this is a dense n×n linear map. Initialized as a random rotation.
    """

    def __init__(self, channels: int, ndim: int = 0) -> None:
        super().__init__()
        self.channels = _check_positive("channels", channels)
        self.ndim = _check_ndim(ndim)
        dtype = torch.get_default_dtype()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.to(dtype))
        self.register_buffer("sign", torch.sign(s).to(dtype))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1).to(dtype))
        self.lower = nn.Parameter(lower.to(dtype) * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).to(dtype))

    def _factors(self):
        eye = torch.eye(self.channels, dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * torch.exp(self.log_s))
        return lower, upper

    def weight(self) -> torch.Tensor:
        """The C×C mixing matrix W."""
        lower, upper = self._factors()
        return self.perm @ lower @ upper

    def weight_inverse(self) -> torch.Tensor:
        """W⁻¹ = U⁻¹ L⁻¹ Pᵀ by triangular solves (differentiable)."""
        lower, upper = self._factors()
        linv_pt = torch.linalg.solve_triangular(
            lower, self.perm.T.contiguous(), upper=False, unitriangular=True
        )
        return torch.linalg.solve_triangular(upper, linv_pt, upper=True)

    def _mix(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.ndim == 0:
            return x @ w.T
        if self.ndim == 1:
            return F.conv1d(x, w.unsqueeze(-1))
        return F.conv2d(x, w.view(*w.shape, 1, 1))

    def _logdet(self, x):
        return (self.log_s.sum() * _spatial_size(x)).expand(x.shape[0])

    def _forward(self, x, c=None):
        _check_channels(x, self.channels, self.ndim, "InvertibleConv1x1")
        return self._mix(self.weight(), x), self._logdet(x)

    def _inverse(self, y, c=None):
        _check_channels(y, self.channels, self.ndim, "InvertibleConv1x1")
        return self._mix(self.weight_inverse(), y), -self._logdet(y)

    def extra_repr(self) -> str:
        return f"{self.channels}, ndim={self.ndim}"


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
        _check_positive("hidden", hidden)
        self.ndim = _check_ndim(ndim)
        if ndim == 0 and groups == 1:
            self.inp = nn.Linear(in_channels, hidden)
            self.mid = nn.Linear(hidden, hidden)
            self.last = nn.Linear(hidden, out_channels)
        elif ndim == 0:
            self.inp = GroupedLinear(groups, in_channels, hidden)
            self.mid = GroupedLinear(groups, hidden, hidden)
            self.last = GroupedLinear(groups, hidden, out_channels)
        else:
            conv = nn.Conv2d if ndim == 2 else nn.Conv1d
            k = 1 if ndim == 0 else 3
            g = groups
            self.inp = conv(g * in_channels, g * hidden, k, padding=k // 2, groups=g)
            self.mid = conv(g * hidden, g * hidden, 1, groups=g)
            self.last = conv(g * hidden, g * out_channels, k, padding=k // 2, groups=g)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(x))
        h = h + self.act(self.mid(h))
        return self.last(h)


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


def _with_condition(xa: torch.Tensor, c: torch.Tensor | None, cond_channels: int, who: str):
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


class _AffineMap(nn.Module):
    """Bounded-scale affine transform of ``xb`` conditioned on ``xa`` (and ``c``)."""

    def __init__(self, na, nb, hidden, ndim, cond_channels, clamp):
        super().__init__()
        if not clamp > 0:
            raise InvalidArgumentError(f"clamp must be positive, got {clamp!r}")
        self.nb = nb
        self.clamp = float(clamp)
        self.cond_channels = int(cond_channels)
        self.net = Conditioner(na + self.cond_channels, 2 * nb, hidden, ndim)

    def scale_shift(self, xa, c, who):
        raw = self.net(_with_condition(xa, c, self.cond_channels, who))
        log_s = self.clamp * torch.tanh(raw[:, : self.nb] / self.clamp)
        return log_s, raw[:, self.nb :]

    def forward_b(self, xa, xb, c, who):
        log_s, t = self.scale_shift(xa, c, who)
        return xb * torch.exp(log_s) + t, _sum_but_batch(log_s)

    def inverse_b(self, xa, yb, c, who):
        log_s, t = self.scale_shift(xa, c, who)
        return (yb - t) * torch.exp(-log_s), -_sum_but_batch(log_s)

    def recompute(self, v, c, lo, hi, inverse, who):
        """Fused rebuild + recompute for memory-frugal backprop (see
        ``InvertibleModule._recompute``) of the coupling acting on channels ``[lo, hi)`` of
        ``v`` (``[lo, hi - nb)`` conditioning, ``[hi - nb, hi)`` transformed). The
        conditioner runs once: its output both rebuilds the transformed part and carries
        the graph for the gradients."""
        mid = hi - self.nb
        pre, a, b, post = v[:, :lo], v[:, lo:mid], v[:, mid:hi], v[:, hi:]
        pre, a, post = (u.detach().requires_grad_(True) for u in (pre, a, post))
        log_s, t = self.scale_shift(a, c, who)
        with torch.no_grad():
            rebuilt = b * torch.exp(log_s) + t if inverse else (b - t) * torch.exp(-log_s)
        b_in = rebuilt.requires_grad_(True)
        if inverse:
            b_out, ld = (b_in - t) * torch.exp(-log_s), -_sum_but_batch(log_s)
        else:
            b_out, ld = b_in * torch.exp(log_s) + t, _sum_but_batch(log_s)
        inp = torch.cat([pre, a, rebuilt, post], dim=1).detach()
        return inp, [pre, a, b_in, post], torch.cat([pre, a, b_out, post], dim=1), ld, None


class AffineCoupling(InvertibleModule):
    r"""Glow/RealNVP affine coupling over channels.

    :math:`x = (x_a, x_b)`, :math:`y_a = x_a`,
    :math:`y_b = x_b \odot e^{\log s(x_a)} + t(x_a)`, with
    :math:`\log s = a\tanh(r/a)` bounded. ``x_a`` holds the first ``channels // 2``
    channels (one for ``channels`` = 2 or 3). Identity at initialization.
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        ndim: int = 0,
        cond_channels: int = 0,
        clamp: float = 2.0,
    ) -> None:
        super().__init__()
        self.channels = _check_positive("channels", channels)
        if channels < 2:
            raise InvalidShapeError(f"a coupling needs at least 2 channels, got {channels}")
        self.ndim = _check_ndim(ndim)
        self.na = channels // 2
        self.map = _AffineMap(self.na, channels - self.na, hidden, ndim, cond_channels, clamp)

    def _forward(self, x, c=None):
        _check_channels(x, self.channels, self.ndim, type(self).__name__)
        xa, xb = x[:, : self.na], x[:, self.na :]
        yb, ld = self.map.forward_b(xa, xb, c, type(self).__name__)
        return torch.cat([xa, yb], dim=1), ld

    def _inverse(self, y, c=None):
        _check_channels(y, self.channels, self.ndim, type(self).__name__)
        ya, yb = y[:, : self.na], y[:, self.na :]
        xb, ld = self.map.inverse_b(ya, yb, c, type(self).__name__)
        return torch.cat([ya, xb], dim=1), ld

    def _recompute(self, out, c, inverse):
        _check_channels(out, self.channels, self.ndim, type(self).__name__)
        return self.map.recompute(out, c, 0, self.channels, inverse, type(self).__name__)


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
        _check_positive("cond_channels", cond_channels)
        super().__init__(channels, hidden, ndim, cond_channels, clamp)


class HaarSqueeze(InvertibleModule):
    """Orthonormal Haar-wavelet squeeze: ``[b, c, n] -> [b, 2c, n/2]`` (``ndim=1``) or
    ``[b, c, h, w] -> [b, 4c, h/2, w/2]`` (``ndim=2``); logdet 0.

    Output channel ``c·f + k`` holds sub-band ``k`` (approximation first) of input channel
    ``c``, so the first channels of the output all come from the first input channels —
    the property multiscale splitting relies on.
    """

    def __init__(self, ndim: int = 2) -> None:
        super().__init__()
        if ndim not in (1, 2):
            raise InvalidArgumentError(f"HaarSqueeze needs ndim 1 or 2, got {ndim!r}")
        self.ndim = ndim

    def _check(self, x):
        if x.dim() != self.ndim + 2 or any(s % 2 for s in x.shape[2:]):
            raise InvalidShapeError(
                f"{type(self).__name__} needs [batch, channel] + {self.ndim} even spatial "
                f"sizes, got {tuple(x.shape)}"
            )

    def _zeros(self, x):
        return x.new_zeros(x.shape[0])

    def _forward(self, x, c=None):
        self._check(x)
        r = 1 / math.sqrt(2)
        if self.ndim == 1:
            e, o = x[..., 0::2], x[..., 1::2]
            bands = [(e + o) * r, (e - o) * r]
        else:
            a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
            cc, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
            bands = [
                (a + b + cc + d) / 2,
                (a - b + cc - d) / 2,
                (a + b - cc - d) / 2,
                (a - b - cc + d) / 2,
            ]
        y = torch.stack(bands, dim=2)
        return y.reshape(x.shape[0], -1, *y.shape[3:]), self._zeros(x)

    def _inverse(self, y, c=None):
        f = 2**self.ndim
        if y.dim() != self.ndim + 2 or y.shape[1] % f:
            raise InvalidShapeError(
                f"{type(self).__name__}.inverse needs channels divisible by {f}, "
                f"got {tuple(y.shape)}"
            )
        b = y.view(y.shape[0], y.shape[1] // f, f, *y.shape[2:])
        r = 1 / math.sqrt(2)
        if self.ndim == 1:
            lo, hi = b[:, :, 0], b[:, :, 1]
            x = torch.stack([(lo + hi) * r, (lo - hi) * r], dim=-1)
            return x.reshape(*x.shape[:-2], -1), self._zeros(y)
        s0, s1, s2, s3 = b[:, :, 0], b[:, :, 1], b[:, :, 2], b[:, :, 3]
        a = (s0 + s1 + s2 + s3) / 2
        bb = (s0 - s1 + s2 - s3) / 2
        cc = (s0 + s1 - s2 - s3) / 2
        d = (s0 - s1 - s2 + s3) / 2
        top = torch.stack([a, bb], dim=-1)  # [b, c, h, w, 2]
        bot = torch.stack([cc, d], dim=-1)
        x = torch.stack([top, bot], dim=-3)  # [b, c, h, 2, w, 2]
        n, ch, h, _, w, _ = x.shape
        return x.reshape(n, ch, 2 * h, 2 * w), self._zeros(y)


class Squeeze(HaarSqueeze):
    """Space-to-depth channel squeeze (Dinh et al. 2017): each 2 (1D) or 2×2 (2D) block of
    pixels becomes 2 or 4 channels; channel ``c·f + k`` comes from input channel ``c``."""

    def _forward(self, x, c=None):
        self._check(x)
        n, ch = x.shape[:2]
        if self.ndim == 1:
            y = x.reshape(n, ch, -1, 2).permute(0, 1, 3, 2)
            return y.reshape(n, 2 * ch, -1), self._zeros(x)
        h, w = x.shape[2:]
        y = x.reshape(n, ch, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(n, 4 * ch, h // 2, w // 2), self._zeros(x)

    def _inverse(self, y, c=None):
        f = 2**self.ndim
        if y.dim() != self.ndim + 2 or y.shape[1] % f:
            raise InvalidShapeError(
                f"Squeeze.inverse needs channels divisible by {f}, got {tuple(y.shape)}"
            )
        n, ch = y.shape[0], y.shape[1] // f
        if self.ndim == 1:
            x = y.reshape(n, ch, 2, -1).permute(0, 1, 3, 2)
            return x.reshape(n, ch, -1), self._zeros(y)
        h, w = y.shape[2:]
        x = y.reshape(n, ch, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(n, ch, 2 * h, 2 * w), self._zeros(y)


class Split(InvertibleModule):
    """Channel split for multiscale flows: ``inner`` acts on the first ``active`` channels,
    the remaining channels are factored out (passed through unchanged, logdet 0) and end up
    in the latent as they are (Dinh et al. 2017). Wrapping each layer of a level in a Split
    keeps the network a flat chain, which memory-frugal backprop recomputes layer by layer.
    """

    def __init__(self, inner: InvertibleModule, active: int) -> None:
        super().__init__()
        self.inner = inner
        self.active = _check_positive("active", active)

    def _forward(self, x, c=None):
        y, ld = self.inner._forward(x[:, : self.active], c)
        return torch.cat([y, x[:, self.active :]], dim=1), ld

    def _inverse(self, y, c=None):
        x, ld = self.inner._inverse(y[:, : self.active], c)
        return torch.cat([x, y[:, self.active :]], dim=1), ld

    def leaves(self) -> list[InvertibleModule]:
        """This Split distributed over the leaves of a sequential ``inner`` (so that
        memory-frugal backprop recomputes them one at a time), else ``[self]``."""
        if not isinstance(self.inner, InvertibleSequential):
            return [self]
        if getattr(self, "_leaf_views", None) is None:
            # plain list: the views share inner's parameters and must not be registered
            self._leaf_views = [Split(leaf, self.active) for leaf in self.inner.leaves()]
        return self._leaf_views

    def _recompute(self, out, c, inverse):
        inp, parts, o, ld, inner_assemble = self.inner._recompute(out[:, : self.active], c, inverse)
        rest = out[:, self.active :].detach().requires_grad_(True)
        n = len(parts)

        def assemble(grads):
            g = inner_assemble(grads[:n]) if inner_assemble else torch.cat(grads[:n], 1)
            return torch.cat([g, grads[n]], 1)

        inp = torch.cat([inp, rest.detach()], 1)
        return inp, parts + [rest], torch.cat([o, rest], 1), ld, assemble

    def extra_repr(self) -> str:
        return f"active={self.active}"
