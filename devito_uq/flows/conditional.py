r"""A conditional multiscale flow for 2D models on any grid: :class:`ConditionalImageFlow`.

Amortized posteriors :math:`q(m \mid y)` for imaging condition on an image on the model
grid, e.g. the migrated image :math:`J^\top d` (Orozco et al. 2024, WISE; Siahkoohi et al.
2023). The multiscale network squeezes the model into channels once per level, so the
condition must follow it: the padded condition image ``[b, C, px, pz]`` is squeezed by the
network's own squeeze (Haar for HINT, space-to-depth for Glow), once per level, into the
pyramid

.. math::
    c_\ell = S^{\ell+1}(c) \in \mathbb R^{C 4^{\ell+1} \times p_x/2^{\ell+1} \times
    p_z/2^{\ell+1}}, \qquad \ell = 0, \dots, L-1,

which loses nothing (the squeezes are orthogonal) and puts every coarse-level conditioner
next to all the condition's detail. Each coupling of level :math:`\ell` reads
:math:`c_\ell`, whose spatial shape is its input's (as in InvertibleNetworks.jl's
conditional Glow and HINT). The pyramid is computed once per pass and handed to the
invertible chain packed into one tensor ``[b, Σ_ℓ |c_ℓ|]``, so memory-frugal
backpropagation (which takes one condition tensor) returns its gradient like plain
autograd does, and from there the gradient reaches the condition and any summary network
upstream.

Padding follows :class:`~devito_uq.flows.ImageFlow` (an augmented flow): the network models
``[m, ε]`` on the padded grid, ε ~ r = N(0, I) at the padded pixels, and the condition is
padded with zeros plus one indicator channel of the padded pixels (so the conditioners know
where the auxiliary pixels are; only when something is padded).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.flows.couplings import AffineCoupling
from devito_uq.flows.hint import HINTCoupling
from devito_uq.flows.image import ImageFlow, check_grid
from devito_uq.flows.invertible import InvertibleModule, check_input
from devito_uq.flows.layers import ActNorm, HaarSqueeze, InvertibleConv1x1, Split, Squeeze
from devito_uq.flows.network import FlowNetwork
from devito_uq.validation import check_choice, check_positive_int

__all__ = ["ConditionalImageFlow", "ConditionalMultiscaleNetwork", "LevelCondition"]

_KINDS = ("hint", "glow")


class LevelCondition(InvertibleModule):
    """Hands ``inner`` its level of a packed condition pyramid.

    The chain passes every layer the same condition ``c [b, total]``; this wrapper reads
    entries ``[offset, offset + C·h·w)`` as ``[b, C, h, w]`` (a view, differentiable) and
    calls ``inner`` with it, in every pass and in the memory-frugal recomputation.
    """

    def __init__(self, inner: InvertibleModule, offset: int, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.inner = inner
        self.offset = int(offset)
        self.cond_shape = tuple(int(s) for s in shape)
        self.size = math.prod(self.cond_shape)

    def pick(self, c: torch.Tensor) -> torch.Tensor:
        """This level ``[b, C, h, w]`` of the packed pyramid ``c [b, total]``."""
        return c[:, self.offset : self.offset + self.size].view(c.shape[0], *self.cond_shape)

    def _forward(self, x, c=None):
        return self.inner._forward(x, self.pick(c))

    def _inverse(self, y, c=None):
        return self.inner._inverse(y, self.pick(c))

    def _recompute(self, out, c, inverse):
        return self.inner._recompute(out, self.pick(c), inverse)

    def leaves(self) -> list[InvertibleModule]:
        """This wrapper distributed over the leaves of ``inner`` (recomputed one at a time
        by memory-frugal backprop)."""
        inner = self.inner.leaves() if hasattr(self.inner, "leaves") else [self.inner]
        if len(inner) == 1 and inner[0] is self.inner:
            return [self]
        if getattr(self, "_leaf_views", None) is None:
            # plain list: the views share inner's parameters and must not be registered
            self._leaf_views = [LevelCondition(v, self.offset, self.cond_shape) for v in inner]
        return self._leaf_views

    def extra_repr(self) -> str:
        return f"offset={self.offset}, cond_shape={self.cond_shape}"


class ConditionalMultiscaleNetwork(FlowNetwork):
    """Conditional multiscale HINT or Glow on images ``[b, 1, px, pz]`` whose couplings read
    a condition image at their own level's resolution (module docstring).

    Per level: squeeze (Haar for ``kind="hint"``, space-to-depth for ``"glow"``), ``steps``
    × (ActNorm, LU 1×1 mixing, coupling reading ``c_ℓ``), then half the active channels are
    factored out (not at the last level). ``net(x, p)`` and ``net.inverse(z, p)`` take the
    packed pyramid ``p = net.pyramid(c)`` ``[b, cond_size]`` of the condition image
    ``c [b, cond_channels, px, pz]``; the latent is ``[b, 4**levels, px/2**levels,
    pz/2**levels]``.
    """

    def __init__(
        self,
        grid: tuple[int, int],
        cond_channels: int,
        kind: str = "hint",
        levels: int = 2,
        steps: int = 4,
        hidden: int = 32,
        clamp: float = 2.0,
        leaf_size: int | None = None,
        memory_frugal: bool | str = "auto",
    ) -> None:
        kind = check_choice("kind", kind, _KINDS)
        cond_channels = check_positive_int("cond_channels", cond_channels)
        levels = check_positive_int("levels", levels)
        steps = check_positive_int("steps", steps)
        check_positive_int("hidden", hidden)
        if kind == "glow" and leaf_size is not None:
            raise InvalidArgumentError(
                f"leaf_size={leaf_size!r} applies to kind='hint' only, not 'glow'"
            )
        h, w = grid
        if h % 2**levels or w % 2**levels:
            raise InvalidShapeError(
                f"ConditionalMultiscaleNetwork: grid {tuple(grid)} must be divisible by "
                f"{2**levels} (use ConditionalImageFlow, which pads any grid)"
            )
        squeeze = HaarSqueeze if kind == "hint" else Squeeze
        active, offset, layers, shapes = 1, 0, [], []
        for level in range(levels):
            layers.append(squeeze(2))
            active, h, w = 4 * active, h // 2, w // 2
            shape = (cond_channels * 4 ** (level + 1), h, w)
            for _ in range(steps):
                if kind == "hint":
                    coupling = HINTCoupling(active, hidden, 2, shape[0], clamp, leaf_size)
                else:
                    coupling = AffineCoupling(active, hidden, 2, shape[0], clamp)
                layers += [
                    Split(ActNorm(active, 2), active),
                    Split(InvertibleConv1x1(active, 2), active),
                    LevelCondition(Split(coupling, active), offset, shape),
                ]
            shapes.append(shape)
            offset += math.prod(shape)
            if level < levels - 1:
                active -= active // 2
        super().__init__(layers, 1, 2, cond_channels, 2**levels, memory_frugal)
        self.squeeze = squeeze(2)
        self.grid, self.kind, self.levels = (int(grid[0]), int(grid[1])), kind, levels
        self.cond_shapes = shapes
        self.cond_size = offset

    def pyramid(self, c: torch.Tensor) -> torch.Tensor:
        """Packed pyramid ``[b, cond_size]`` of the condition image ``c [b, cond_channels,
        px, pz]``: level ℓ is the squeeze applied ℓ + 1 times, flattened."""
        check_input(c, "ConditionalMultiscaleNetwork.pyramid", self.cond_channels, 2)
        if tuple(c.shape[2:]) != self.grid:
            raise InvalidShapeError(
                f"ConditionalMultiscaleNetwork.pyramid expects a condition on the grid "
                f"{self.grid}, got shape {tuple(c.shape)}"
            )
        parts = []
        for _ in range(self.levels):
            c, _ = self.squeeze._forward(c)
            parts.append(c.reshape(c.shape[0], -1))
        return torch.cat(parts, dim=1)

    def _check(self, x, c, inverse):
        super()._check(x, c, inverse)
        name = type(self).__name__ + (".inverse" if inverse else "")
        if c.dim() != 2 or c.shape[0] != x.shape[0] or c.shape[1] != self.cond_size:
            raise InvalidShapeError(
                f"{name} takes the packed condition pyramid [{x.shape[0]}, {self.cond_size}] "
                f"(net.pyramid(c)), got shape {tuple(c.shape)}"
            )

    def extra_repr(self) -> str:
        return f"grid={self.grid}, kind={self.kind!r}, levels={self.levels}"


class ConditionalImageFlow(ImageFlow):
    r"""Conditional distribution ``q(m | c)`` over 2D models ``m [batch, nx, nz]`` on any
    grid, given a condition image ``c [batch, cond_channels, nx, nz]`` on the same grid
    (module docstring).

    Parameters
    ----------
    shape : (int, int)
        Model grid ``(nx, nz)``.
    cond_channels : int
        Channels of the condition ``c`` the methods take (before ``summary``).
    kind : "hint" or "glow"
        Multiscale HINT (Haar squeezes) or Glow (space-to-depth squeezes, affine couplings).
    levels, steps, hidden, clamp, leaf_size, memory_frugal
        As :class:`~devito_uq.flows.ImageFlow`; the grid is padded to multiples of
        ``2**levels`` (``2**levels <= 2·min(nx, nz)``).
    summary : nn.Module, optional
        Applied to ``c`` first: ``[b, cond_channels, nx, nz] → [b, F, nx, nz]`` (e.g.
        :class:`~devito_uq.flows.ImageSummary`); its parameters are the flow's, so maximum
        likelihood trains both. ``F`` is read from one call on zeros.

    Notes
    -----
    Methods as :class:`~devito_uq.flows.ImageFlow`, with the condition mandatory
    (``[1 or n, cond_channels, nx, nz]``; batch 1 is shared by every sample)::

        m = q.sample(n, c)                      # [n, nx, nz]
        m, log_q = q.rsample_and_log_prob(n, c) # log q̃ at the drawn padding, [n]
        log_q = q.log_prob(m, c, n_pad=1)       # [batch]; n_pad=1 is the ML training loss's
                                                # lower bound E_r[log q(m, ε) − log r(ε)]
        m, log_det = q.from_latent(z, c)        # log q̃(m) = log p_Z(z) − log_det

    Gradients reach the parameters, ``c`` and the summary, in plain and memory-frugal mode.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        cond_channels: int,
        kind: str = "hint",
        levels: int = 2,
        steps: int = 4,
        hidden: int = 32,
        summary: nn.Module | None = None,
        clamp: float = 2.0,
        memory_frugal: bool | str = "auto",
        leaf_size: int | None = None,
    ) -> None:
        nx, nz, px, pz = check_grid(shape, levels, "ConditionalImageFlow")
        cond_channels = check_positive_int("cond_channels", cond_channels)
        features = cond_channels
        if summary is not None:
            if not isinstance(summary, nn.Module):
                raise InvalidArgumentError(
                    f"summary must be a torch.nn.Module, got {type(summary).__name__}"
                )
            ref = next(summary.parameters(), torch.empty(0))
            probe = torch.zeros(1, cond_channels, nx, nz, dtype=ref.dtype, device=ref.device)
            with torch.no_grad():
                out = summary(probe)
            if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[2:] != (nx, nz):
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise InvalidShapeError(
                    f"summary must map [b, {cond_channels}, {nx}, {nz}] to [b, F, {nx}, {nz}], "
                    f"got {got}"
                )
            features = int(out.shape[1])
        padded = (px, pz) != (nx, nz)
        net = ConditionalMultiscaleNetwork(
            (px, pz),
            features + int(padded),
            kind,
            levels,
            steps,
            hidden,
            clamp,
            leaf_size,
            memory_frugal,
        )
        super(ImageFlow, self).__init__(net, (1, px, pz))
        self._set_grid((nx, nz), (px, pz), net.kind, net.levels)
        self.summary = summary
        self.cond_channels = cond_channels
        self.features = features

    def extra_repr(self) -> str:
        return super().extra_repr() + f", cond_channels={self.cond_channels}"

    def prepare_condition(self, c: object, batch: int) -> torch.Tensor:
        """The packed condition pyramid ``[1 or batch, net.cond_size]`` of ``c [1 or batch,
        cond_channels, nx, nz]``: summary, zero padding (plus the padding indicator
        channel) and the squeezes; differentiable in ``c`` and the summary."""
        want = f"[1 or {batch}, {self.cond_channels}, {self.shape[0]}, {self.shape[1]}]"
        if c is None:
            raise InvalidArgumentError(f"ConditionalImageFlow needs a condition {want}, got None")
        if not isinstance(c, torch.Tensor):
            raise InvalidArgumentError(
                f"ConditionalImageFlow: the condition must be a torch.Tensor {want}, "
                f"got {type(c).__name__}"
            )
        if (
            c.dim() != 4
            or c.shape[0] not in (1, batch)
            or tuple(c.shape[1:]) != (self.cond_channels, *self.shape)
        ):
            raise InvalidShapeError(
                f"ConditionalImageFlow: the condition must be {want}, got {tuple(c.shape)}"
            )
        ref = self._ref()
        c = c.to(dtype=ref.dtype, device=ref.device)
        if self.summary is not None:
            c = self.summary(c)
        (nx, nz), (px, pz) = self.shape, self.padded_shape
        c = F.pad(c, (0, pz - nz, 0, px - nx))
        if self.n_padded:
            mask = self.pad_mask.to(dtype=c.dtype, device=c.device)
            c = torch.cat([c, mask.expand(c.shape[0], 1, px, pz)], dim=1)
        return self.net.pyramid(c)

    def rsample_and_log_prob(
        self, n: int, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized ``m [n, nx, nz]`` given ``c`` and ``log q̃(m | c)`` ``[n]`` (see
        :meth:`ImageFlow.rsample_and_log_prob`)."""
        n = check_positive_int("n", n)
        return super().rsample_and_log_prob(n, self.prepare_condition(c, n))

    def from_latent(
        self, z: torch.Tensor, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``m [n, nx, nz]`` and ``log_det [n]`` from latents ``z [n, *latent_shape]`` given
        ``c`` (see :meth:`ImageFlow.from_latent`)."""
        if not isinstance(z, torch.Tensor) or tuple(z.shape[1:]) != self.latent_shape:
            return super().from_latent(z, c)  # raises, naming z's shape
        return self._decode(z, self.prepare_condition(c, z.shape[0]))

    def log_prob(
        self, m: torch.Tensor, c: torch.Tensor | None = None, n_pad: int = 16
    ) -> torch.Tensor:
        """``log q(m | c)`` ``[batch]`` for ``m [batch, nx, nz]`` (importance-sampled over
        ``n_pad`` paddings when the grid is padded; see :meth:`ImageFlow.log_prob`)."""
        m = self._check_models(m, "log_prob")
        return super().log_prob(m, self.prepare_condition(c, m.shape[0]), n_pad)
