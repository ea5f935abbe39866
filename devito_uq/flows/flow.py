r"""A normalizing flow as a distribution: standard normal base pushed through an invertible
network.

The network maps model space to latent space, ``z, logdet = net(m)`` (the normalizing
direction); samples come from the inverse pass ``m = net.inverse(z)``. Densities follow from
the change of variables:

.. math::
    \log q(m) = \log \mathcal N(\mathrm{net}(m); 0, I) + \log|\det \partial_m \mathrm{net}(m)|
              = \log \mathcal N(z; 0, I) - \log|\det \partial_z \mathrm{net}^{-1}(z)|
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.flows.invertible import InvertibleModule
from devito_uq.validation import (
    check_allocation,
    check_device,
    check_finite,
    check_positive_int,
)

__all__ = ["Flow"]

#: Sample batches below this size (bytes of z and m) are not checked against free memory.
_CHECKED_BYTES = 2**26


class Flow(nn.Module):
    """Distribution ``q(m) = net⁻¹_# N(0, I)`` over tensors of shape ``shape``.

    Parameters
    ----------
    net : InvertibleModule
        Invertible network mapping ``m [batch, *shape]`` to ``z`` (same number of entries).
    shape : sequence of int
        Event shape of ``m``, e.g. ``(n,)`` for vectors, ``(c, h, w)`` for images.
    latent_shape : sequence of int, optional
        Shape of ``z`` when it differs from ``shape`` (multiscale networks squeeze space into
        channels); inferred from one forward pass on zeros when omitted.

    Notes
    -----
    Methods take an optional condition ``c`` (``[batch, ...]`` or ``[1, ...]``, broadcast)
    for conditional networks. ``state_dict`` holds the network's parameters and ActNorm's
    initialization flags, so ``load_state_dict`` restores the exact distribution.
    """

    def __init__(
        self,
        net: InvertibleModule,
        shape: Sequence[int],
        latent_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, InvertibleModule):
            raise InvalidArgumentError(f"net must be an InvertibleModule, got {type(net).__name__}")
        shape = tuple(int(s) for s in shape)
        if not shape or any(s < 1 for s in shape):
            raise InvalidShapeError(
                f"shape must be a non-empty tuple of positive sizes, got {shape}"
            )
        self.net = net
        self.shape = shape
        if latent_shape is None:
            latent_shape = self._infer_latent_shape()
        self.latent_shape = tuple(int(s) for s in latent_shape)
        if math.prod(self.latent_shape) != math.prod(shape):
            raise InvalidShapeError(
                f"latent_shape {self.latent_shape} must have as many entries as shape {shape}"
            )

    def _infer_latent_shape(self):
        f = getattr(self.net, "factor", 1)
        ndim = getattr(self.net, "ndim", None)
        if f == 1 or ndim is None:
            return self.shape
        c, *spatial = self.shape
        return (c * f**ndim, *(s // f for s in spatial))

    def _ref(self):
        p = next(self.net.parameters(), None)
        if p is None:
            return torch.empty(0)
        return p

    def _condition(self, c, n):
        if c is None:
            return None
        if c.shape[0] == 1 and n > 1:
            c = c.expand(n, *c.shape[1:])
        if c.shape[0] != n:
            raise InvalidShapeError(f"condition batch must be 1 or {n}, got {tuple(c.shape)}")
        return c

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, I) per sample, ``[batch]``."""
        d = math.prod(z.shape[1:])
        return -0.5 * z.reshape(z.shape[0], -1).pow(2).sum(1) - 0.5 * d * math.log(2 * math.pi)

    def rsample_and_log_prob(
        self, n: int, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized samples ``m [n, *shape]`` and ``log q(m)`` ``[n]``, both
        differentiable in the network parameters (memory-frugal if the net is)."""
        n = check_positive_int("n", n)
        ref = self._ref()
        # z and m, both [n, *shape]: the least the call allocates.
        itemsize = ref.element_size() if ref.numel() else torch.get_default_dtype().itemsize
        nbytes = 2 * n * math.prod(self.latent_shape) * itemsize
        if nbytes >= _CHECKED_BYTES:  # no message built, no /proc read on a training step
            check_allocation(f"sampling n={n} models of shape {self.shape}", nbytes, ref.device)
        z = torch.randn(n, *self.latent_shape, dtype=ref.dtype, device=ref.device)
        m, logdet = self.net.inverse(z, self._condition(c, n))
        if m.shape[1:] != self.shape:  # a reshape view would be one more autograd node
            m = m.reshape(n, *self.shape)
        return m, self.base_log_prob(z) - logdet

    def rsample(self, n: int, c: torch.Tensor | None = None) -> torch.Tensor:
        """Reparameterized samples ``[n, *shape]``."""
        return self.rsample_and_log_prob(n, c)[0]

    def sample(self, n: int, c: torch.Tensor | None = None) -> torch.Tensor:
        """Samples ``[n, *shape]`` without gradient."""
        with torch.no_grad():
            return self.rsample(n, c)

    def log_prob(self, m: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """``log q(m)`` per sample, ``[batch]``; ``m`` is ``[batch, *shape]``."""
        if not isinstance(m, torch.Tensor) or tuple(m.shape[1:]) != self.shape:
            got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise InvalidShapeError(f"log_prob expects [batch, *{self.shape}], got {got}")
        check_device("m.device", m)
        # A NaN model would come back as a NaN density that silently poisons a loss.
        check_finite("m", m.detach())
        z, logdet = self.net(m, self._condition(c, m.shape[0]))
        return self.base_log_prob(z) + logdet

    def forward(self, m: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Same as :meth:`log_prob`."""
        return self.log_prob(m, c)
