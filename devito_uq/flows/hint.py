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
a block of one channel is left unchanged); by default (:func:`default_leaf_size`) a step
is one full-width coupling. For vectors ``[batch, n]`` (``ndim=0``) the whole
vector is the channel axis, so the dense 1×1 mixing between HINT couplings couples every
entry of a depth profile with every other (DESIGN.md, 1D flows).
"""

from __future__ import annotations

import torch

from devito_uq.errors import InvalidShapeError
from devito_uq.flows.couplings import Conditioner, CouplingBase, with_condition
from devito_uq.flows.invertible import InvertibleSequential, check_input, check_ndim
from devito_uq.flows.layers import ActNorm, HaarSqueeze, InvertibleConv1x1
from devito_uq.flows.network import FlowNetwork, multiscale_layers
from devito_uq.validation import check_int, check_nonnegative_int, check_positive_int

__all__ = [
    "HINTCoupling",
    "ConditionalHINTCoupling",
    "HINT",
    "ConditionalHINT",
    "MultiscaleHINT",
    "default_leaf_size",
]


def default_leaf_size(channels: int) -> int:
    """Leaf size of the HINT recursion chosen from the channel count (``leaf_size=None``).

    Rule: ``channels`` — one full-width coupling per step, the recursion only where a user
    asks for it with ``leaf_size``. Measured (benchmarks/bench_flows.py, one VI step, 4
    steps × 64 hidden, 1 thread): every extra depth of the recursion costs about as much
    as a whole step at n ≤ 128 (n = 40, batch 8: 6.7 / 13.7 / 19.8 ms for 1 / 2 / 3
    depths) and 8–15 % at n = 1024, where the dense n×n mixing dominates; extra depths
    are extra couplings, which the same time buys as extra steps with a fresh dense
    mixing between them, so the default spends it on ``steps``.
    """
    return max(2, int(channels))


class _LevelCoupling(CouplingBase):
    """All couplings of one depth of the HINT recursion, evaluated together.

    The nodes of one depth act on disjoint channel ranges ``[lo, hi)`` (first half
    conditions the second), so they commute and run as one grouped conditioner. When every
    range has two equal halves and the ranges tile the channels (the rule for power-of-two
    sizes), the split is a reshape; otherwise ranges of unequal size are padded: missing
    conditioning inputs read a zero channel, missing outputs are dropped.
    """

    def __init__(self, channels, ranges, hidden, ndim, cond_channels, clamp):
        super().__init__(clamp)
        self.channels, self.ndim = channels, ndim
        self.cond_channels = int(cond_channels)
        self.ranges = [tuple(r) for r in ranges]
        g = len(ranges)
        mids = [lo + (hi - lo) // 2 for lo, hi in ranges]
        na = max(m - lo for (lo, _), m in zip(ranges, mids))
        nb = max(hi - m for (_, hi), m in zip(ranges, mids))
        self.groups, self.na, self.nb = g, na, nb
        self.tiled = na == nb and self.ranges == [(i * 2 * na, (i + 1) * 2 * na) for i in range(g)]
        self.tiled = self.tiled and 2 * na * g == channels
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

    @property
    def whole(self) -> bool:
        """One node spanning all channels (HINT's default, one coupling per step): the two
        halves are plain slices, no reshapes (fewer operations and autograd nodes in a
        launch-bound step)."""
        return self.tiled and self.groups == 1

    def _halves(self, v):
        """``[batch, groups, 2, half, *spatial]`` view of a tiled input."""
        return v.view(v.shape[0], self.groups, 2, self.na, *v.shape[2:])

    def _flat(self, v, axes=2):
        """Merge the ``axes`` axes after the batch axis into channels."""
        return v.reshape(v.shape[0], -1, *v.shape[1 + axes :])

    def _cond_input(self, v):
        if self.whole:
            return v[:, : self.na]
        if self.tiled:
            return self._flat(self._halves(v)[:, :, 0])
        zero = v.new_zeros(v.shape[0], 1, *v.shape[2:])
        return torch.cat([v, zero], dim=1).index_select(1, self.a_gather)

    def _take_b(self, v):
        if self.whole:
            return v[:, self.na :]
        if self.tiled:
            return self._flat(self._halves(v)[:, :, 1])
        return v.index_select(1, self.b_pos)

    def _put_b(self, v, b):
        if self.whole:
            return torch.cat([v[:, : self.na], b], dim=1)
        if self.tiled:
            a = self._halves(v)[:, :, 0]
            return self._flat(torch.stack([a, b.reshape_as(a)], dim=2), 3)
        return v.index_copy(1, self.b_pos, b)

    def _add_cond_grad(self, g_v, g_a):
        if self.whole:
            return torch.cat([g_v[:, : self.na] + g_a, g_v[:, self.na :]], dim=1)
        if self.tiled:
            h = self._halves(g_v)
            return self._flat(
                torch.stack([h[:, :, 0] + g_a.reshape_as(h[:, :, 0]), h[:, :, 1]], 2), 3
            )
        return g_v.index_add(1, self.a_pos, g_a.index_select(1, self.a_slots))

    def _raw(self, a, c):
        """``a``: conditioner input ``[batch, groups·na, *spatial]``."""
        n, g, sp = a.shape[0], self.groups, a.shape[2:]
        if self.cond_channels:
            cc = with_condition(a[:, :0], c, self.cond_channels, "HINTCoupling")
            cc = cc.unsqueeze(1).expand(n, g, *cc.shape[1:])
            a = torch.cat([a.reshape(n, g, self.na, *sp), cc], dim=2).reshape(n, -1, *sp)
        raw = self.net(a)
        if self.whole:
            return raw[:, : self.nb], raw[:, self.nb :]
        raw = raw.view(n, g, 2, self.nb, *sp)
        s_raw, t = self._flat(raw[:, :, 0]), self._flat(raw[:, :, 1])
        if self.tiled:
            return s_raw, t
        return s_raw.index_select(1, self.b_slots), t.index_select(1, self.b_slots)

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
    leaf_size : int or None
        Blocks with at most this many channels are not split further (≥ 2); None chooses
        it from ``channels`` (:func:`default_leaf_size`).
    """

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        ndim: int = 0,
        cond_channels: int = 0,
        clamp: float = 2.0,
        leaf_size: int | None = None,
    ) -> None:
        channels = _check_channels(channels)
        ndim = check_ndim(ndim)
        check_nonnegative_int("cond_channels", cond_channels)
        if leaf_size is None:
            leaf_size = default_leaf_size(channels)
        leaf_size = check_int("leaf_size", leaf_size, minimum=2)
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
        self.leaf_size = leaf_size

    def _check(self, x, c, inverse):
        check_input(x, type(self).__name__, self.channels, self.ndim)

    def extra_repr(self) -> str:
        return f"{self.channels}, ndim={self.ndim}, leaf_size={self.leaf_size}"


def _check_channels(channels) -> int:
    channels = check_positive_int("channels", channels)
    if channels < 2:
        raise InvalidShapeError(f"HINT needs at least 2 channels, got {channels}")
    return channels


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
        leaf_size: int | None = None,
    ) -> None:
        check_positive_int("cond_channels", cond_channels)
        super().__init__(channels, hidden, ndim, cond_channels, clamp, leaf_size)


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
    ``n`` may be any integer ≥ 2 (odd included). ``leaf_size=None`` picks the recursion
    depth from ``n`` (:func:`default_leaf_size`); ``memory_frugal`` is True, False or
    ``"auto"`` (default; see :class:`~devito_uq.flows.invertible.InvertibleSequential`).
    """

    def __init__(
        self,
        channels: int,
        steps: int = 4,
        hidden: int = 64,
        ndim: int = 0,
        cond_channels: int = 0,
        clamp: float = 2.0,
        leaf_size: int | None = None,
        memory_frugal: bool | str = "auto",
    ) -> None:
        channels = _check_channels(channels)
        check_positive_int("steps", steps)
        check_ndim(ndim)
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
        leaf_size: int | None = None,
        memory_frugal: bool | str = "auto",
    ) -> None:
        check_positive_int("cond_channels", cond_channels)
        super().__init__(
            channels, steps, hidden, ndim, cond_channels, clamp, leaf_size, memory_frugal
        )


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
        leaf_size: int | None = None,
        memory_frugal: bool | str = "auto",
    ) -> None:
        # A spatial condition would not match the squeezed shapes; a vector one would.
        check_nonnegative_int("cond_channels", cond_channels)
        layers = multiscale_layers(
            channels,
            levels,
            steps,
            ndim,
            HaarSqueeze,
            lambda a: _step(a, hidden, ndim, cond_channels, clamp, leaf_size),
            "MultiscaleHINT",
        )
        super().__init__(layers, channels, ndim, cond_channels, 2**levels, memory_frugal)
