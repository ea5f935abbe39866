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

The couplings live in :mod:`devito_uq.flows.couplings` and :mod:`devito_uq.flows.hint`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from devito_uq.errors import InvalidShapeError
from devito_uq.flows.invertible import (
    InvertibleModule,
    InvertibleSequential,
    check_input,
    check_ndim,
)
from devito_uq.flows.mixing import lu_mix
from devito_uq.validation import check_positive_int

__all__ = ["ActNorm", "InvertibleConv1x1", "HaarSqueeze", "Squeeze", "Split"]


def _spatial_size(x: torch.Tensor) -> int:
    return math.prod(x.shape[2:])


class ActNorm(InvertibleModule):
    r"""Per-channel affine map :math:`y = x\,e^{\ell} + b` with data-dependent initialization.

    On its first call, :math:`\ell, b` are set so that the output of that batch has zero
    mean and unit variance per channel (in the inverse direction: so that the rebuilt
    ``x`` does). The ``initialized`` buffer is part of the ``state_dict``.

    Shapes: ``[batch, channels, *spatial]`` with ``ndim`` spatial dimensions.
    """

    def __init__(self, channels: int, ndim: int = 0, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.ndim = check_ndim(ndim)
        self.eps = eps
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, p: torch.Tensor) -> torch.Tensor:
        # vectors broadcast [channels] as it is: no view, one autograd node less
        return p.view(1, self.channels, *([1] * self.ndim)) if self.ndim else p

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
        ld = self.log_scale.sum()
        return (ld * _spatial_size(x) if self.ndim else ld).expand(x.shape[0])

    def _forward(self, x, c=None):
        check_input(x, "ActNorm", self.channels, self.ndim)
        if not self.initialized:
            self._initialize(x, inverse=False)
        y = torch.addcmul(self._view(self.bias), x, self._view(self.log_scale.exp()))
        return y, self._logdet(x)

    def _inverse(self, y, c=None):
        check_input(y, "ActNorm", self.channels, self.ndim)
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

    Parameters: ``lu`` holds both triangular factors in one C×C matrix, as LAPACK stores
    an LU factorization (strict lower part :math:`L - I`, strict upper part :math:`U`,
    diagonal unused), and ``log_s``. One matrix instead of two half-empty ones halves
    what the optimizer updates (at n = 1024, Adam over the mixing took most of a VI step).
    State dicts with the earlier ``lower``/``upper`` pair load into it.

    Vectors never form :math:`W` or :math:`W^{-1}`: the forward pass applies the triangular
    factors as two matrix products and a gather, the inverse pass as a gather and two
    triangular solves, each O(n²) per sample, where forming :math:`W` would cost O(n³) per
    call (at n = 1024 that product alone took longer than a whole step of a coupling flow).
    Signals and images form the C×C weight for one convolution (C is small there).
    """

    def __init__(self, channels: int, ndim: int = 0) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.ndim = check_ndim(ndim)
        dtype = torch.get_default_dtype()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.to(dtype))
        self.register_buffer("sign", torch.sign(s).to(dtype))
        self.lu = nn.Parameter((torch.tril(lower, -1) + torch.triu(upper, 1)).to(dtype))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).to(dtype))
        # P as gathers: (z Pᵀ)_j = z_π(j) and (y P)_k = y_π⁻¹(k); rebuilt when a state_dict
        # brings another P
        self.register_buffer("perm_index", torch.empty(0, dtype=torch.long), persistent=False)
        self.register_buffer("perm_inverse", torch.empty(0, dtype=torch.long), persistent=False)
        self._sync_perm()
        self.register_load_state_dict_post_hook(_sync_perm_after_load)

    def _sync_perm(self) -> None:
        self.perm_index = self.perm.argmax(dim=1)
        self.perm_inverse = self.perm.argmax(dim=0)

    def _diag(self) -> torch.Tensor:
        return self.sign * torch.exp(self.log_s)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # state dicts written before ``lu`` held the factors in two parameters and a mask
        lower, upper = (
            state_dict.pop(prefix + "lower", None),
            state_dict.pop(prefix + "upper", None),
        )
        state_dict.pop(prefix + "lower_mask", None)
        if lower is not None and upper is not None:
            state_dict[prefix + "lu"] = torch.tril(lower, -1) + torch.triu(upper, 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _factors(self):
        eye = torch.eye(self.channels, dtype=self.lu.dtype, device=self.lu.device)
        lower = torch.tril(self.lu, -1) + eye
        upper = torch.triu(self.lu, 1) + torch.diag(self._diag())
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
        if self.ndim == 1:
            return F.conv1d(x, w.unsqueeze(-1))
        return F.conv2d(x, w.view(*w.shape, 1, 1))

    def _logdet(self, x):
        ld = self.log_s.sum()
        return (ld * _spatial_size(x) if self.ndim else ld).expand(x.shape[0])

    def _vector_mix(self, v, inverse: bool):
        args = (self.lu, self.log_s, self.sign, self.perm_index, self.perm_inverse)
        return lu_mix(v, *args, inverse)

    def _forward(self, x, c=None):
        check_input(x, "InvertibleConv1x1", self.channels, self.ndim)
        if self.ndim:
            return self._mix(self.weight(), x), self._logdet(x)
        # y = x Wᵀ = ((x Uᵀ) Lᵀ) Pᵀ (devito_uq.flows.mixing)
        return self._vector_mix(x, False)

    def _inverse(self, y, c=None):
        check_input(y, "InvertibleConv1x1", self.channels, self.ndim)
        if self.ndim:
            return self._mix(self.weight_inverse(), y), -self._logdet(y)
        # xᵀ = W⁻¹ yᵀ = U⁻¹ L⁻¹ Pᵀ yᵀ by two triangular solves (devito_uq.flows.mixing)
        return self._vector_mix(y, True)

    def extra_repr(self) -> str:
        return f"{self.channels}, ndim={self.ndim}"


def _sync_perm_after_load(module: InvertibleConv1x1, incompatible_keys) -> None:
    module._sync_perm()  # a module-level function: the module stays picklable


class HaarSqueeze(InvertibleModule):
    """Orthonormal Haar-wavelet squeeze: ``[b, c, n] -> [b, 2c, n/2]`` (``ndim=1``) or
    ``[b, c, h, w] -> [b, 4c, h/2, w/2]`` (``ndim=2``); logdet 0.

    Output channel ``c·f + k`` holds sub-band ``k`` (approximation first) of input channel
    ``c``, so the first channels of the output all come from the first input channels —
    the property multiscale splitting relies on.
    """

    def __init__(self, ndim: int = 2) -> None:
        super().__init__()
        self.ndim = check_ndim(ndim, (1, 2), type(self).__name__)

    def _check(self, v, inverse=False):
        who = type(self).__name__ + (".inverse" if inverse else "")
        check_input(v, who, None, self.ndim, 1 if inverse else 2)
        f = 2**self.ndim
        if inverse and v.shape[1] % f:
            raise InvalidShapeError(
                f"{who} needs channels divisible by {f}, got shape {tuple(v.shape)}"
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
        self._check(y, inverse=True)
        f = 2**self.ndim
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
        self._check(y, inverse=True)
        f = 2**self.ndim
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
        self.active = check_positive_int("active", active)

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
