r"""The posterior target: likelihood, prior and parameterization as one object.

Every sampler in :mod:`devito_uq.inference` works on an unconstrained latent ``x``
with models ``m = g(x)`` (:class:`~devito_uq.inference.Parameterization`, identity
without one) and the negative log posterior

.. math::
    U(x) = \underbrace{\Phi(g(x))}_{\text{misfit}} + \underbrace{R(g(x))}_{\text{prior}}
        \; [\, - \log|\det J_g(x)| \,],

the bracket present when ``x`` is to be *sampled* (MALA, SGLD: the chain on ``x``
must target :math:`p(g(x))\,|\det J_g(x)|`) and absent when the *mode of m* is
sought (MAP). Variational inference needs the three terms apart
(:meth:`PosteriorTarget.terms`) to log them and to temper the misfit and prior.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from devito_uq.errors import InvalidArgumentError
from devito_uq.inference.parameterization import Parameterization

__all__ = [
    "PosteriorTarget",
    "TargetTerms",
    "as_target",
    "check_parameterization",
    "to_latent",
    "to_model",
]


def check_parameterization(parameterization: Any) -> None:
    """Refuse anything but a :class:`~devito_uq.inference.Parameterization` or ``None``.

    Parameters
    ----------
    parameterization : object
        The ``parameterization`` argument of a sampler or posterior.

    Raises
    ------
    InvalidArgumentError
        It is neither.
    """
    if parameterization is not None and not isinstance(parameterization, Parameterization):
        raise InvalidArgumentError(
            f"parameterization must be a Parameterization, got {type(parameterization).__name__}"
        )


def to_model(
    parameterization: Parameterization | None, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Models of latents through ``m = g(x)``, ``None`` being the identity.

    Parameters
    ----------
    parameterization : Parameterization or None
        The map ``g`` (``None``: ``m = x``).
    x : torch.Tensor
        ``[batch, *model_shape]`` latents.

    Returns
    -------
    m : torch.Tensor
        ``[batch, *model_shape]`` models.
    logdet : torch.Tensor
        ``[batch]`` ``log|det J_g(x)|`` (zeros for the identity).
    """
    if parameterization is None:
        return x, x.new_zeros(x.shape[0])
    return parameterization(x)


def to_latent(parameterization: Parameterization | None, m: torch.Tensor) -> torch.Tensor:
    """Latents of models, ``x = g⁻¹(m)``, ``None`` being the identity.

    Parameters
    ----------
    parameterization : Parameterization or None
        The map ``g`` (``None``: ``x = m``).
    m : torch.Tensor
        ``[batch, *model_shape]`` models, inside ``g``'s bounds.

    Returns
    -------
    torch.Tensor
        ``[batch, *model_shape]`` latents.

    Raises
    ------
    InvalidArgumentError
        A model lies outside the bounds (raised by the parameterization).
    """
    return m if parameterization is None else parameterization.inverse(m)


@dataclass
class TargetTerms:
    """Per-sample pieces of :math:`U` at a batch of latents, all ``[batch]`` but ``model``.

    Attributes
    ----------
    model : torch.Tensor
        ``[batch, *model_shape]`` ``m = g(x)``.
    misfit : torch.Tensor
        ``[batch]`` negative log-likelihood Φ(m) (zeros without a likelihood).
    prior : torch.Tensor
        ``[batch]`` negative log-prior R(m) (zeros without a prior).
    logdet : torch.Tensor
        ``[batch]`` ``log|det J_g(x)|`` (zeros without a parameterization).
    """

    model: torch.Tensor
    misfit: torch.Tensor
    prior: torch.Tensor
    logdet: torch.Tensor


def _takes_full(likelihood: Any) -> bool:
    """Whether ``likelihood`` accepts ``full=`` (a stochastic :class:`GaussianLikelihood`)."""
    fn = likelihood.forward if isinstance(likelihood, torch.nn.Module) else likelihood
    try:
        return "full" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


class PosteriorTarget:
    """Negative log posterior over the latent ``x`` of ``m = g(x)``, batched.

    Parameters
    ----------
    likelihood : callable, optional
        Negative log-likelihood ``m [batch, *model_shape] -> [batch]`` (e.g.
        :class:`~devito_uq.inference.GaussianLikelihood`, any callable).
    prior : Prior, optional
        Object with ``negative_log(m) -> [batch]`` (any
        :class:`~devito_uq.inference.Prior`). At least one of the two.
    parameterization : Parameterization, optional
        ``m = g(x)`` (``None``: ``m = x``).

    Raises
    ------
    InvalidArgumentError
        Neither piece given, or one is of the wrong kind. The triple is validated
        here, once, for every sampler that uses it.
    """

    def __init__(
        self,
        likelihood: Callable[..., torch.Tensor] | None = None,
        prior: Any | None = None,
        parameterization: Parameterization | None = None,
    ) -> None:
        if likelihood is None and prior is None:
            raise InvalidArgumentError("give a likelihood, a prior or both; got neither")
        if likelihood is not None and not callable(likelihood):
            raise InvalidArgumentError(
                f"likelihood must be callable, got {type(likelihood).__name__}"
            )
        if prior is not None and not callable(getattr(prior, "negative_log", None)):
            raise InvalidArgumentError(
                f"prior must provide negative_log(m), got {type(prior).__name__}"
            )
        check_parameterization(parameterization)
        self.likelihood = likelihood
        self.prior = prior
        self.parameterization = parameterization
        self._full = likelihood is not None and _takes_full(likelihood)

    @property
    def model_shape(self) -> tuple[int, ...] | None:
        """Shape of one model (known only through a parameterization)."""
        return None if self.parameterization is None else self.parameterization.model_shape

    # -- the change of variables ---------------------------------------------------------

    def to_model(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``m = g(x)`` ``[batch, *model_shape]`` and ``log|det J_g(x)|`` ``[batch]``
        of latents ``x [batch, *model_shape]`` (:func:`to_model`)."""
        return to_model(self.parameterization, x)

    def to_latent(self, m: torch.Tensor) -> torch.Tensor:
        """``x = g⁻¹(m)`` ``[batch, *model_shape]`` for models ``[batch, *model_shape]``
        inside the bounds (:func:`to_latent`)."""
        return to_latent(self.parameterization, m)

    # -- the terms ---------------------------------------------------------------------------

    def misfit(self, m: torch.Tensor, full: bool = True) -> torch.Tensor:
        """The misfit Φ(m) (zeros without a likelihood).

        Parameters
        ----------
        m : torch.Tensor
            ``[batch, *model_shape]`` models.
        full : bool
            Every shot, or (``False``) the likelihood's random shot subset.

        Returns
        -------
        torch.Tensor
            ``[batch]`` Φ(m).
        """
        if self.likelihood is None:
            return m.new_zeros(m.shape[0])
        return self.likelihood(m, full=full) if self._full else self.likelihood(m)

    def prior_value(self, m: torch.Tensor) -> torch.Tensor:
        """The prior term R(m) (zeros without a prior).

        Parameters
        ----------
        m : torch.Tensor
            ``[batch, *model_shape]`` models.

        Returns
        -------
        torch.Tensor
            ``[batch]`` R(m).
        """
        if self.prior is None:
            return m.new_zeros(m.shape[0])
        return self.prior.negative_log(m)

    def terms(self, x: torch.Tensor, full: bool = True) -> TargetTerms:
        """Model, misfit, prior and log-determinant at latents.

        Parameters
        ----------
        x : torch.Tensor
            ``[batch, *model_shape]`` latents.
        full : bool
            Every shot, or (``False``) the likelihood's stochastic shot subset.

        Returns
        -------
        TargetTerms
            The four per-sample pieces.
        """
        m, logdet = self.to_model(x)
        return TargetTerms(m, self.misfit(m, full=full), self.prior_value(m), logdet)

    # -- the potential ------------------------------------------------------------------------

    def value(self, x: torch.Tensor, jacobian: bool = True, full: bool = True) -> torch.Tensor:
        """The negative log posterior ``U(x)``.

        Parameters
        ----------
        x : torch.Tensor
            ``[batch, *model_shape]`` latents.
        jacobian : bool
            Subtract ``log|det J_g|`` (sampling ``x``: yes; mode of ``m``: no).
        full : bool
            Every shot (exact value, MALA/MAP) or, ``False``, the likelihood's
            stochastic shot subset (SGLD).

        Returns
        -------
        torch.Tensor
            ``[batch]`` ``U(x)``, differentiable in ``x``.
        """
        t = self.terms(x, full=full)
        u = t.misfit + t.prior
        return u - t.logdet if jacobian else u

    __call__ = value

    def value_and_grad(
        self, x: torch.Tensor, jacobian: bool = True, full: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``U(x)`` and its gradient, both detached.

        Samples are independent, so the gradient of the batch sum is the batch of
        per-sample gradients.

        Parameters
        ----------
        x : torch.Tensor
            ``[batch, *model_shape]`` latents.
        jacobian, full : bool
            As :meth:`value`.

        Returns
        -------
        value : torch.Tensor
            ``[batch]`` ``U(x)``.
        grad : torch.Tensor
            ``[batch, *model_shape]`` ``∇U(x)``.
        """
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            u = self.value(xg, jacobian=jacobian, full=full)
            (g,) = torch.autograd.grad(u.sum(), xg)
        return u.detach(), g.detach()

    def __repr__(self) -> str:
        parts = (
            ("likelihood", self.likelihood),
            ("prior", self.prior),
            ("parameterization", self.parameterization),
        )
        inner = ", ".join(f"{k}={type(v).__name__}" for k, v in parts if v is not None)
        return f"PosteriorTarget({inner})"


def as_target(
    likelihood: PosteriorTarget | Callable[..., torch.Tensor] | None,
    prior: Any | None,
    parameterization: Parameterization | None,
) -> PosteriorTarget:
    """A :class:`PosteriorTarget` from either a target or its three pieces.

    Samplers take ``(likelihood, prior, parameterization)`` or a ready target in the
    first position.

    Parameters
    ----------
    likelihood : PosteriorTarget or callable or None
        A ready target, or the negative log-likelihood.
    prior : Prior or None
        The prior (``None`` with a ready target).
    parameterization : Parameterization or None
        ``m = g(x)`` (``None`` with a ready target).

    Returns
    -------
    PosteriorTarget
        The target given, or one built from the pieces.

    Raises
    ------
    InvalidArgumentError
        A target together with a prior or parameterization (ambiguous), or invalid
        pieces.
    """
    if isinstance(likelihood, PosteriorTarget):
        if prior is not None or parameterization is not None:
            raise InvalidArgumentError(
                "give either a PosteriorTarget or (likelihood, prior, parameterization), "
                "not a target together with a prior or parameterization"
            )
        return likelihood
    return PosteriorTarget(likelihood, prior, parameterization)
