"""The pieces of the 2D amortized posterior and of its per-survey physics.

* :func:`one_padding_flow`: the conditional image flow trained with one padding draw;
* :func:`deconvolving`: an amortized posterior whose summary network sees the regularized
  least-squares image of the migrated image;
* :class:`NormalLikelihood`: the Born Gaussian likelihood through the assembled ``JᵀMJ``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from devito_uq.errors import InvalidArgumentError

__all__ = ["NormalLikelihood", "deconvolving", "one_padding_flow"]


class NormalLikelihood(nn.Module):
    r"""The Born Gaussian negative log-likelihood through the assembled normal operator:

    .. math::
        \tfrac{1}{2\sigma^2}\|M(d - J\delta m)\|^2
        = \tfrac{1}{2\sigma^2}\big(\delta m^\top H \delta m - 2\,\delta m^\top y
          + d^\top M d\big),

    ``H = JᵀMJ`` ``[n, n]``, ``y = JᵀMd`` ``[nx, nz]``, ``constant`` = ``dᵀMd/(2σ²)`` when
    known (else 0: gradients are unchanged). No PDE solve: ``m [batch, nx, nz] → [batch]``.
    """

    def __init__(self, H: torch.Tensor, y: torch.Tensor, sigma: float, constant: float = 0.0):
        super().__init__()
        self.register_buffer("H", H.double())
        self.register_buffer("y", y.double().reshape(-1))
        self.sigma, self.constant = float(sigma), float(constant)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        x = m.double().reshape(m.shape[0], -1)
        quad = ((x @ self.H) * x).sum(1) - 2.0 * (x @ self.y)
        return (0.5 * quad / self.sigma**2 + self.constant).to(m.dtype)


@functools.lru_cache(maxsize=1)
def one_padding_flow(base: type) -> type:
    """``base`` (:class:`ConditionalImageFlow`) whose ``log_prob`` draws one padding by
    default: on a padded grid (41×21 → 44×24 at two levels) that is the augmented flow's
    lower bound maximum likelihood trains on, at 1/16 of the cost of the default 16-draw
    estimate (which made one training step 16× slower for no better gradient)."""

    class OnePaddingImageFlow(base):
        def log_prob(self, m, c=None, n_pad: int = 1):
            return super().log_prob(m, c, n_pad)

    return OnePaddingImageFlow


@functools.lru_cache(maxsize=1)
def deconvolving(base: type) -> type:
    """``base`` (:class:`AmortizedPosterior`) whose summary network sees the least-squares
    image ``P y / prior_std`` of the raw migrated image ``y`` (``P`` of
    :meth:`~devito_uq.apps.amortize.imaging.ImagingSetting.least_squares_operator`, a
    buffer saved with the posterior) in place of the per-pixel standardized ``y``
    (``cond_mean``/``cond_scale`` then go unused).

    ``P`` is a fixed invertible linear map of ``y``: nothing is lost, but the deconvolution
    of the migrated image — the part a small CNN learns worst (41×21: relative error 0.45 of
    the amortized mean on training-distribution truths against 0.16 for ``P y`` itself) —
    is done by the physics, and the flow learns only how the crop prior departs from the
    Gaussian one.
    """

    class DeconvolvingPosterior(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            n = math.prod(self.model_shape)
            self.register_buffer("ls_operator", torch.zeros(n, n))
            self.register_buffer("ls_ready", torch.zeros((), dtype=torch.bool))
            self.setting = None

        def features(self, condition: torch.Tensor) -> torch.Tensor:
            if not bool(self.ls_ready):
                if self.setting is None:
                    raise InvalidArgumentError("the least-squares operator is not set")
                self.ls_operator.copy_(self.setting.least_squares_operator().float())
                self.ls_ready.fill_(True)
            ref = self._ref()
            y = condition.to(device=ref.device, dtype=ref.dtype)
            scale = float(self.parameterization.scale.flatten()[0])
            z = (y.flatten(1) @ self.ls_operator.T).view_as(y) / scale
            return self.summary(z)

    return DeconvolvingPosterior
