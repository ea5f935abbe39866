"""Generic flow network and multiscale assembly, shared by HINT and Glow.

:class:`FlowNetwork` is an :class:`~devito_uq.flows.invertible.InvertibleSequential` that
knows the shape of its input and checks it at the boundary; :func:`multiscale_layers`
builds the flat layer list of a multiscale flow (squeeze, steps, factor-out per level)
from any step factory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from devito_uq.errors import InvalidArgumentError
from devito_uq.flows.invertible import (
    InvertibleModule,
    InvertibleSequential,
    check_input,
    check_ndim,
)
from devito_uq.flows.layers import Split
from devito_uq.validation import check_nonnegative_int, check_positive_int

__all__ = ["FlowNetwork", "multiscale_layers"]


class FlowNetwork(InvertibleSequential):
    """An :class:`InvertibleSequential` that validates the shapes of its inputs.

    ``channels``/``ndim`` describe the input ``[batch, channels, *spatial]`` (``[batch, n]``
    for ``ndim=0``); ``factor`` is the divisor every spatial size must have (2**levels for
    multiscale networks, whose latent then has ``channels·factor**ndim`` channels);
    ``cond_channels`` > 0 makes the condition tensor mandatory.
    """

    def __init__(
        self,
        layers: Sequence[InvertibleModule],
        channels: int,
        ndim: int,
        cond_channels: int = 0,
        factor: int = 1,
        memory_frugal: bool | str = "auto",
    ) -> None:
        super().__init__(*layers, memory_frugal=memory_frugal)
        self.channels = check_positive_int("channels", channels)
        self.ndim = ndim
        self.cond_channels = check_nonnegative_int("cond_channels", cond_channels)
        self.factor = check_positive_int("factor", factor)

    def _check(self, x, c, inverse):
        name = type(self).__name__ + (".inverse" if inverse else "")
        channels = self.channels * (self.factor**self.ndim if inverse else 1)
        check_input(x, name, channels, self.ndim, 1 if inverse else self.factor)
        if self.cond_channels and c is None:
            raise InvalidArgumentError(f"{name} is conditional and needs a condition, got None")
        if c is not None and not self.cond_channels:
            raise InvalidArgumentError(f"{name} is not conditional, but a condition was given")


def multiscale_layers(
    channels: int,
    levels: int,
    steps: int,
    ndim: int,
    squeeze: Callable[[int], InvertibleModule],
    step_factory: Callable[[int], list[InvertibleModule]],
    who: str = "multiscale flow",
) -> list[InvertibleModule]:
    """Flat layer list of a multiscale flow (Dinh et al. 2017; Glow).

    Each level squeezes space into channels (``squeeze(ndim)``), applies ``steps`` steps of
    ``step_factory(active_channels)`` to the active channels and, except at the last
    level, factors out half of them. Factored-out channels travel on unchanged, so the
    latent has the input's size: ``[batch, channels·f**levels, *(spatial / 2**levels)]``
    with ``f = 2**ndim``. Checks the arguments the multiscale networks share (``who``
    names the network in the messages).
    """
    check_positive_int("channels", channels)
    check_ndim(ndim, (1, 2), who)
    check_positive_int("levels", levels)
    check_positive_int("steps", steps)
    f = 2**ndim
    active = channels
    layers: list[InvertibleModule] = []
    for level in range(levels):
        layers.append(squeeze(ndim))
        active *= f
        for _ in range(steps):
            layers += [Split(layer, active) for layer in step_factory(active)]
        if level < levels - 1:
            active -= active // 2
    return layers
