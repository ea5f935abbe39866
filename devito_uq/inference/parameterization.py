r"""Model parameterization :math:`m = g(x)`: reference model, scale and hard bounds.

The flow (or a Langevin chain) works on an unconstrained latent ``x``; the
physics sees ``m = g(x)``. Without bounds :math:`g(x) = m_{\mathrm{ref}} + s\,x`.
With bounds, ``u = s·x`` goes through a smooth bijection onto the open interval,
chosen so that ``g(0) = m_ref`` and ``g'(0) = s`` (near the reference the map is the
plain affine one):

* both bounds:  :math:`m = l + w\,\mathrm{sigmoid}(c + a u)`, ``w = h − l``,
  ``c = logit((m_ref − l)/w)``, ``a = 1/(w σ(c)(1 − σ(c)))``;
* lower only:   :math:`m = l + \frac{r}{\ln 2}\,\mathrm{softplus}(2\ln 2\,u / r)`,
  ``r = m_ref − l``;
* upper only:   the mirror image.

The posterior is a density over ``m``. A flow density :math:`q_x` maps to
:math:`q_m(m) = q_x(x)\,/\,|\det \partial g/\partial x|`, so the VI objective
:math:`\mathrm{KL}(q_m \| p)` reads
:math:`E[\log q_x(x) - \log|\det J_g(x)| - \log p(g(x))]`, and a Langevin chain in
``x`` targets :math:`p(g(x))\,|\det J_g(x)|`. :meth:`Parameterization.forward`
returns that log-determinant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.validation import check_finite, check_finite_positive

__all__ = ["Parameterization"]

_LN2 = math.log(2.0)


def _tensor(name: str, value, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype).detach().clone()
    try:
        t = torch.broadcast_to(t, like.shape).clone()
    except RuntimeError:
        raise InvalidShapeError(
            f"{name} of shape {tuple(t.shape)} does not broadcast to the model {tuple(like.shape)}"
        ) from None
    check_finite(name, t)
    return t


def _softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    # log(exp(y) − 1) = y + log(1 − exp(−y)), stable for large y.
    return y + torch.log(-torch.expm1(-y))


class Parameterization(nn.Module):
    """Bijection from latent ``x`` ``[batch, *model_shape]`` to models ``m``.

    Parameters
    ----------
    reference : torch.Tensor
        ``[*model_shape]`` floating reference model ``m_ref`` (``g(0)``; model units).
    scale : float or torch.Tensor
        Positive, broadcastable to the model: ``g'(0)`` (model units per latent unit).
    lower, upper : float or torch.Tensor, optional
        Hard bounds broadcastable to the model; ``lower < reference < upper`` must
        hold everywhere.

    Raises
    ------
    InvalidArgumentError
        If ``reference`` is not a floating tensor, ``scale`` is not positive, a value
        is not finite or the reference is not strictly inside the bounds.
    InvalidShapeError
        If ``scale`` or a bound does not broadcast to the model.
    """

    def __init__(
        self,
        reference: torch.Tensor,
        scale: float | torch.Tensor = 1.0,
        lower: float | torch.Tensor | None = None,
        upper: float | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(reference, torch.Tensor) or not reference.is_floating_point():
            raise InvalidArgumentError(
                f"reference must be a floating-point tensor, got {type(reference).__name__}"
            )
        ref = _tensor("reference", reference, reference)
        s = _tensor("scale", scale, ref)
        check_finite_positive("scale", s)
        self.model_shape = tuple(ref.shape)
        self.register_buffer("reference", ref)
        self.register_buffer("scale", s)
        self.has_lower, self.has_upper = lower is not None, upper is not None
        lo = _tensor("lower", lower, ref) if self.has_lower else torch.full_like(ref, -math.inf)
        hi = _tensor("upper", upper, ref) if self.has_upper else torch.full_like(ref, math.inf)
        if self.has_lower and not bool(torch.all(lo < ref)):
            bad = float((ref - lo).min())
            raise InvalidArgumentError(
                f"lower bound must lie below the reference model everywhere (min gap {bad})"
            )
        if self.has_upper and not bool(torch.all(ref < hi)):
            bad = float((hi - ref).min())
            raise InvalidArgumentError(
                f"upper bound must lie above the reference model everywhere (min gap {bad})"
            )
        self.register_buffer("lower", lo)
        self.register_buffer("upper", hi)
        if self.has_lower and self.has_upper:
            w = hi - lo
            s0 = (ref - lo) / w
            self.register_buffer("width", w)
            self.register_buffer("offset", torch.logit(s0))
            self.register_buffer("gain", 1.0 / (w * s0 * (1.0 - s0)))
        elif self.has_lower or self.has_upper:
            self.register_buffer("room", ref - lo if self.has_lower else hi - ref)

    def _check(self, t: torch.Tensor, name: str) -> None:
        if tuple(t.shape[1:]) != self.model_shape:
            raise InvalidShapeError(
                f"{name} must be [batch, *{self.model_shape}], got {tuple(t.shape)}"
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map latents to models.

        Parameters
        ----------
        x : torch.Tensor
            ``[batch, *model_shape]`` latents.

        Returns
        -------
        m : torch.Tensor
            ``[batch, *model_shape]`` models ``g(x)`` (model units).
        logdet : torch.Tensor
            ``[batch]`` ``log|det ∂g/∂x|``.

        Raises
        ------
        InvalidShapeError
            If ``x`` is not ``[batch, *model_shape]``.
        """
        self._check(x, "latent x")
        u = self.scale * x
        log_s = torch.log(self.scale)
        if self.has_lower and self.has_upper:
            z = self.offset + self.gain * u
            m = self.lower + self.width * torch.sigmoid(z)
            # d/dz sigmoid = sigmoid(z) sigmoid(−z), in log space for stability.
            logd = torch.log(self.width * self.gain) + F.logsigmoid(z) + F.logsigmoid(-z)
        elif self.has_lower or self.has_upper:
            sign = 1.0 if self.has_lower else -1.0
            z = sign * 2.0 * _LN2 * u / self.room
            m = (self.lower if self.has_lower else self.upper) + sign * (
                self.room / _LN2
            ) * F.softplus(z)
            logd = _LN2 + F.logsigmoid(z)
        else:
            m = self.reference + u
            logd = torch.zeros_like(u)
        logdet = (logd + log_s).flatten(1).sum(1)
        return m, logdet

    def inverse(self, m: torch.Tensor) -> torch.Tensor:
        """Latent ``x = g⁻¹(m)`` for models strictly inside the bounds.

        Parameters
        ----------
        m : torch.Tensor
            ``[batch, *model_shape]`` models (model units).

        Returns
        -------
        torch.Tensor
            ``[batch, *model_shape]`` latents.

        Raises
        ------
        InvalidShapeError
            If ``m`` is not ``[batch, *model_shape]``.
        InvalidArgumentError
            If a value of ``m`` is on or beyond a bound (the worst one is named).
        """
        self._check(m, "models")
        if self.has_lower and not bool(torch.all(m > self.lower)):
            raise _bound_error("lower", m, self.lower)
        if self.has_upper and not bool(torch.all(m < self.upper)):
            raise _bound_error("upper", m, self.upper)
        if self.has_lower and self.has_upper:
            u = (torch.logit((m - self.lower) / self.width) - self.offset) / self.gain
        elif self.has_lower:
            u = _softplus_inverse((m - self.lower) * _LN2 / self.room) * self.room / (2 * _LN2)
        elif self.has_upper:
            u = -_softplus_inverse((self.upper - m) * _LN2 / self.room) * self.room / (2 * _LN2)
        else:
            u = m - self.reference
        return u / self.scale


def _bound_error(which: str, m: torch.Tensor, bound: torch.Tensor) -> InvalidArgumentError:
    """Error for a model outside the bounds (names the worst value)."""
    gap = (m - bound) if which == "lower" else (bound - m)
    idx = int(torch.argmin(gap.flatten()))
    return InvalidArgumentError(
        f"model value {float(m.flatten()[idx])} violates the {which} bound "
        f"{float(bound.expand_as(m).flatten()[idx])}; g⁻¹ needs models strictly inside"
    )
