"""Glow (Kingma & Dhariwal 2018): multiscale flow of ActNorm, LU 1×1 convolution and affine
coupling steps, for images (``ndim=2``) or 1D signals (``ndim=1``)."""

from __future__ import annotations

from devito_uq.flows.couplings import AffineCoupling
from devito_uq.flows.layers import ActNorm, InvertibleConv1x1, Squeeze
from devito_uq.flows.network import FlowNetwork, multiscale_layers
from devito_uq.validation import check_nonnegative_int, check_positive_int

__all__ = ["Glow"]


class Glow(FlowNetwork):
    """Glow with ``levels`` levels of ``steps`` steps each.

    Per level: channel squeeze (space to depth), ``steps`` × (ActNorm, invertible 1×1
    convolution, affine coupling with a residual conditioner of width ``hidden`` whose last
    layer is zero), then half the active channels are factored out (not at the last level).

    Input ``[batch, channels, h, w]`` (or ``[batch, channels, n]`` with ``ndim=1``) with
    spatial sizes divisible by ``2**levels``; the latent ``y`` has the same number of
    entries, shaped ``[batch, channels·4**levels, h/2**levels, w/2**levels]``.
    """

    def __init__(
        self,
        channels: int,
        levels: int = 3,
        steps: int = 4,
        hidden: int = 64,
        ndim: int = 2,
        cond_channels: int = 0,
        clamp: float = 2.0,
        memory_frugal: bool | str = "auto",
    ) -> None:
        check_positive_int("hidden", hidden)
        check_nonnegative_int("cond_channels", cond_channels)

        def step(active):
            return [
                ActNorm(active, ndim),
                InvertibleConv1x1(active, ndim),
                AffineCoupling(active, hidden, ndim, cond_channels, clamp),
            ]

        layers = multiscale_layers(channels, levels, steps, ndim, Squeeze, step, "Glow")
        super().__init__(layers, channels, ndim, cond_channels, 2**levels, memory_frugal)
