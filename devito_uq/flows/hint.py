r"""Recursive HINT coupling and the HINT networks.

HINT (Kruse et al. 2021, "HINT: Hierarchical invertible neural transport for density
estimation and Bayesian inference"; InvertibleNetworks.jl's ``CouplingLayerHINT``) splits
the channels in two halves, couples the second half on the first, and recurses into both
halves, so the Jacobian is recursively block-triangular and every channel ends up
conditioned on every channel before it:

.. math::
    x = (x_a, x_b),\quad x_b' = x_b \odot e^{\log s(x_a)} + t(x_a),\quad
    y = (R_a(x_a),\ R_b(x_b')),\quad
    \log|\det J| = \textstyle\sum \log s + \log|\det J_{R_a}| + \log|\det J_{R_b}|

The recursion stops at blocks of at most ``leaf_size`` channels (a single coupling there;
a block of one channel is left unchanged). For vectors ``[batch, n]`` (``ndim=0``) the whole
vector is the channel axis, so the dense 1×1 mixing between HINT couplings couples every
entry of a depth profile with every other (DESIGN.md, 1D flows).
"""

from __future__ import annotations

import torch

from devito_uq.errors import InvalidArgumentError, InvalidDtypeError, InvalidShapeError
from devito_uq.flows.layers import (
    ActNorm,
    Conditioner,
    HaarSqueeze,
    InvertibleConv1x1,
    Split,
    _check_channels,
    _check_ndim,
    _check_positive,
    _with_condition,
)
from devito_uq.flows.memory import InvertibleModule, InvertibleSequential

__all__ = [
    "HINTCoupling",
    "ConditionalHINTCoupling",
    "FlowNetwork",
    "HINT",
    "ConditionalHINT",
    "MultiscaleHINT",
]


def _sum_but_batch(v):
    return v.reshape(v.shape[0], -1).sum(dim=1)


class _LevelCoupling(InvertibleModule):
    """All couplings of one depth of the HINT recursion, evaluated together.

    The nodes of one depth act on disjoint channel ranges ``[lo, hi)`` (first half
    conditions the second), so they commute and run as one grouped conditioner. Ranges of
    unequal size are padded: missing conditioning inputs read a zero channel, missing
    outputs are dropped.
    """

    def __init__(self, channels, ranges, hidden, ndim, cond_channels, clamp):
        super().__init__()
        if not clamp > 0:
            raise InvalidArgumentError(f"clamp must be positive, got {clamp!r}")
        self.channels, self.ndim, self.clamp = channels, ndim, float(clamp)
        self.cond_channels = int(cond_channels)
        self.ranges = [tuple(r) for r in ranges]
        g = len(ranges)
        mids = [lo + (hi - lo) // 2 for lo, hi in ranges]
        na = max(m - lo for (lo, _), m in zip(ranges, mids))
        nb = max(hi - m for (_, hi), m in zip(ranges, mids))
        self.groups, self.na, self.nb = g, na, nb
        pad = channels  # index of an appended zero channel
        a_idx = [
            [lo + i if lo + i < m else pad for i in range(na)] for (lo, _), m in zip(ranges, mids)
        ]
        b_idx = [
            [m + i if m + i < hi else pad for i in range(nb)] for (_, hi), m in zip(ranges, mids)
        ]
        a_flat = torch.tensor(a_idx).flatten()
        b_flat = torch.tensor(b_idx).flatten()
        # conditioner input slots (padded) and the channels they read
        self.register_buffer("a_gather", a_flat, persistent=False)
        self.register_buffer("a_slots", torch.nonzero(a_flat < pad).flatten(), persistent=False)
        self.register_buffer("a_pos", a_flat[a_flat < pad], persistent=False)
        # conditioner output slots that are real, and the channels they transform
        self.register_buffer("b_slots", torch.nonzero(b_flat < pad).flatten(), persistent=False)
        self.register_buffer("b_pos", b_flat[b_flat < pad], persistent=False)
        self.net = Conditioner(na + self.cond_channels, 2 * nb, hidden, ndim, groups=g)

    def _scale_shift(self, a, c):
        """``a``: padded conditioning input ``[batch, groups·na, *spatial]``."""
        n, g = a.shape[0], self.groups
        sp = a.shape[2:]
        if self.cond_channels:
            cc = _with_condition(a[:, :0], c, self.cond_channels, "HINTCoupling")
            cc = cc.unsqueeze(1).expand(n, g, *cc.shape[1:])
            a = torch.cat([a.reshape(n, g, self.na, *sp), cc], dim=2).reshape(n, -1, *sp)
        raw = self.net(a).reshape(n, g, 2 * self.nb, *sp)
        s_raw = raw[:, :, : self.nb].reshape(n, g * self.nb, *sp).index_select(1, self.b_slots)
        t = raw[:, :, self.nb :].reshape(n, g * self.nb, *sp).index_select(1, self.b_slots)
        return self.clamp * torch.tanh(s_raw / self.clamp), t

    def _gather_a(self, v):
        _check_channels(v, self.channels, self.ndim, "HINTCoupling")
        zero = v.new_zeros(v.shape[0], 1, *v.shape[2:])
        return torch.cat([v, zero], dim=1).index_select(1, self.a_gather)

    def _forward(self, x, c=None):
        log_s, t = self._scale_shift(self._gather_a(x), c)
        b = x.index_select(1, self.b_pos) * torch.exp(log_s) + t
        return x.index_copy(1, self.b_pos, b), _sum_but_batch(log_s)

    def _inverse(self, y, c=None):
        log_s, t = self._scale_shift(self._gather_a(y), c)
        b = (y.index_select(1, self.b_pos) - t) * torch.exp(-log_s)
        return y.index_copy(1, self.b_pos, b), -_sum_but_batch(log_s)

    def _recompute(self, out, c, inverse):
        # The conditioner runs once on a leaf copy of the (unchanged) conditioning channels:
        # its output rebuilds the transformed channels and carries the gradient graph.
        a = self._gather_a(out).detach().requires_grad_(True)
        log_s, t = self._scale_shift(a, c)
        with torch.no_grad():
            b = out.index_select(1, self.b_pos)
            b = b * torch.exp(log_s) + t if inverse else (b - t) * torch.exp(-log_s)
            inp = out.index_copy(1, self.b_pos, b)
        leaf = inp.clone().requires_grad_(True)
        b_in = leaf.index_select(1, self.b_pos)
        if inverse:
            b_out, ld = (b_in - t) * torch.exp(-log_s), -_sum_but_batch(log_s)
        else:
            b_out, ld = b_in * torch.exp(log_s) + t, _sum_but_batch(log_s)
        out2 = leaf.index_copy(1, self.b_pos, b_out)

        def assemble(grads):
            g_leaf, g_a = grads
            return g_leaf.index_add(1, self.a_pos, g_a.index_select(1, self.a_slots))

        return inp, [leaf, a], out2, ld, assemble

    def extra_repr(self) -> str:
        return f"{self.groups} ranges, e.g. {self.ranges[0]}"


class HINTCoupling(InvertibleSequential):
    """Recursive HINT coupling over channels (see module docstring). Identity at init.

    The recursion is stored by depth: the couplings of one depth act on disjoint channel
    ranges, so they commute with each other's subtrees and run as one grouped conditioner
    (``depth`` grouped evaluations instead of one per node); memory-frugal backprop
    recomputes one depth at a time.

    Parameters
    ----------
    channels : int
        Channel count (the vector length for ``ndim=0``); at least 2.
    hidden : int
        Hidden width of every conditioner in the recursion tree.
    ndim : int
        0 vectors ``[batch, n]``, 1 signals ``[batch, c, n]``, 2 images ``[batch, c, h, w]``.
    cond_channels : int
        Channels of the condition tensor (0: unconditional).
    clamp : float
        Bound of the log-scale, ``log s = clamp·tanh(raw/clamp)``.
    leaf_size : int
        Blocks with at most this many channels are not split further (≥ 2).
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        ndim: int = 0,
        cond_channels: int = 0,
        clamp: float = 2.0,
        leaf_size: int = 4,
    ) -> None:
        _check_positive("channels", channels)
        if channels < 2:
            raise InvalidShapeError(f"a HINT coupling needs at least 2 channels, got {channels}")
        if not isinstance(leaf_size, int) or leaf_size < 2:
            raise InvalidArgumentError(f"leaf_size must be an integer ≥ 2, got {leaf_size!r}")
        _check_ndim(ndim)
        # ranges of the recursion tree by depth; the two halves of a node act on disjoint
        # channels, so all nodes of one depth commute and are evaluated together
        levels: list[list[tuple[int, int]]] = []

        def build(lo, hi, depth):
            if hi - lo < 2:
                return  # a single channel is left unchanged
            if len(levels) <= depth:
                levels.append([])
            levels[depth].append((lo, hi))
            if hi - lo > leaf_size:
                mid = lo + (hi - lo) // 2
                build(lo, mid, depth + 1)
                build(mid, hi, depth + 1)

        build(0, channels, 0)
        nodes = [_LevelCoupling(channels, r, hidden, ndim, cond_channels, clamp) for r in levels]
        super().__init__(*nodes)
        self.channels, self.ndim, self.cond_channels = channels, ndim, cond_channels

    def _check(self, x, c, inverse):
        _check_channels(x, self.channels, self.ndim, type(self).__name__)

    def extra_repr(self) -> str:
        return f"{self.channels}, ndim={self.ndim}"


class ConditionalHINTCoupling(HINTCoupling):
    """:class:`HINTCoupling` whose conditioners also read a condition tensor ``c``
    (``[batch, cond_channels]`` or ``[batch, cond_channels, *spatial]``)."""

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        hidden: int = 64,
        ndim: int = 0,
        clamp: float = 2.0,
        leaf_size: int = 4,
    ) -> None:
        _check_positive("cond_channels", cond_channels)
        super().__init__(channels, hidden, ndim, cond_channels, clamp, leaf_size)


class FlowNetwork(InvertibleSequential):
    """An :class:`InvertibleSequential` that validates the shapes of its inputs.

    ``channels``/``ndim`` describe the input ``[batch, channels, *spatial]``; ``factor`` is
    the divisor every spatial size must have (2**levels for multiscale networks);
    ``cond_channels`` > 0 makes the condition tensor mandatory.
    """

    def __init__(self, layers, channels, ndim, cond_channels=0, factor=1, memory_frugal=True):
        super().__init__(*layers, memory_frugal=memory_frugal)
        self.channels = channels
        self.ndim = ndim
        self.cond_channels = cond_channels
        self.factor = factor

    def _check(self, x, c, inverse):
        name = type(self).__name__ + (".inverse" if inverse else "")
        if not isinstance(x, torch.Tensor):
            raise InvalidArgumentError(f"{name} input must be a torch.Tensor, got {type(x)}")
        if not x.is_floating_point():
            raise InvalidDtypeError(f"{name} input must be floating point, got {x.dtype}")
        if x.dim() != self.ndim + 2:
            want = "[batch, n]" if self.ndim == 0 else f"[batch, channel] + {self.ndim} sizes"
            raise InvalidShapeError(f"{name} expects {want}, got shape {tuple(x.shape)}")
        # The latent of a multiscale network has channels·2**(ndim·levels) channels.
        channels = self.channels * (self.factor**self.ndim if inverse else 1)
        if x.shape[1] != channels:
            raise InvalidShapeError(
                f"{name} expects {channels} channels (vector length for ndim=0), "
                f"got shape {tuple(x.shape)}"
            )
        if not inverse and any(s % self.factor for s in x.shape[2:]):
            raise InvalidShapeError(
                f"{name}: spatial sizes must be divisible by {self.factor}, "
                f"got {tuple(x.shape[2:])}"
            )
        if self.cond_channels and c is None:
            raise InvalidArgumentError(f"{name} is conditional and needs a condition, got None")
        if c is not None and not self.cond_channels:
            raise InvalidArgumentError(f"{name} is not conditional, but a condition was given")


def _step(channels, hidden, ndim, cond_channels, clamp, leaf_size):
    """One HINT step: ActNorm → dense 1×1 mixing → recursive HINT coupling."""
    return [
        ActNorm(channels, ndim),
        InvertibleConv1x1(channels, ndim),
        HINTCoupling(channels, hidden, ndim, cond_channels, clamp, leaf_size),
    ]


class HINT(FlowNetwork):
    """HINT network: ``steps`` × (ActNorm, LU 1×1 mixing, recursive HINT coupling).

    ``HINT(n)`` acts on vectors/1D profiles ``[batch, n]`` treated as n channels (dense
    mixing, the DESIGN.md choice for depth profiles); ``HINT(c, ndim=1)`` on signals
    ``[batch, c, n]`` and ``ndim=2`` on images, with convolutional conditioners.
    ``n`` may be any integer ≥ 2 (odd included).
    """

    def __init__(
        self,
        channels: int,
        steps: int = 4,
        hidden: int = 64,
        ndim: int = 0,
        cond_channels: int = 0,
        clamp: float = 2.0,
        leaf_size: int = 4,
        memory_frugal: bool = True,
    ) -> None:
        _check_positive("channels", channels)
        _check_positive("steps", steps)
        _check_ndim(ndim)
        if channels < 2:
            raise InvalidShapeError(f"HINT needs at least 2 channels, got {channels}")
        layers = []
        for _ in range(steps):
            layers += _step(channels, hidden, ndim, cond_channels, clamp, leaf_size)
        super().__init__(layers, channels, ndim, cond_channels, 1, memory_frugal)


class ConditionalHINT(HINT):
    """Conditional HINT for amortized posteriors p(m | d): every coupling conditioner also
    reads the condition ``c`` (``[batch, cond_channels]``, e.g. flattened or summarized data
    ``d``), so ``y, logdet = net(m, c)`` and ``m, logdet = net.inverse(z, c)``."""

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        steps: int = 4,
        hidden: int = 64,
        ndim: int = 0,
        clamp: float = 2.0,
        leaf_size: int = 4,
        memory_frugal: bool = True,
    ) -> None:
        _check_positive("cond_channels", cond_channels)
        super().__init__(
            channels, steps, hidden, ndim, cond_channels, clamp, leaf_size, memory_frugal
        )


def multiscale_layers(channels, levels, steps, ndim, squeeze, step_factory):
    """Flat layer list of a multiscale flow (Dinh et al. 2017; Glow).

    Each level squeezes space into channels (``squeeze(ndim)``), applies ``steps`` steps of
    ``step_factory(active_channels)`` to the active channels and, except at the last
    level, factors out half of them. Factored-out channels travel on unchanged, so the
    latent has the input's size: ``[batch, channels·f**levels, *(spatial / 2**levels)]``.
    """
    _check_positive("levels", levels)
    _check_positive("steps", steps)
    f = 2**ndim
    active = channels
    layers = []
    for level in range(levels):
        layers.append(squeeze(ndim))
        active *= f
        for _ in range(steps):
            layers += [Split(layer, active) for layer in step_factory(active)]
        if level < levels - 1:
            active -= active // 2
    return layers


class MultiscaleHINT(FlowNetwork):
    """Multiscale HINT for signals (``ndim=1``) or images (``ndim=2``): per level a Haar
    wavelet squeeze, ``steps`` HINT steps on the active channels, then a channel split."""

    def __init__(
        self,
        channels: int,
        levels: int = 3,
        steps: int = 4,
        hidden: int = 64,
        ndim: int = 2,
        cond_channels: int = 0,
        clamp: float = 2.0,
        leaf_size: int = 4,
        memory_frugal: bool = True,
    ) -> None:
        _check_positive("channels", channels)
        if ndim not in (1, 2):
            raise InvalidArgumentError(f"MultiscaleHINT needs ndim 1 or 2, got {ndim!r}")
        if cond_channels:
            # A spatial condition would not match the squeezed shapes; a vector one would.
            _check_positive("cond_channels", cond_channels)
        layers = multiscale_layers(
            channels,
            levels,
            steps,
            ndim,
            HaarSqueeze,
            lambda a: _step(a, hidden, ndim, cond_channels, clamp, leaf_size),
        )
        super().__init__(layers, channels, ndim, cond_channels, 2**levels, memory_frugal)
