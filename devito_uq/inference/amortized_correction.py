r"""A conditional flow fixed at one condition, and its physics-based latent correction.

:class:`ConditionedFlow` is a trained conditional flow :math:`T(\cdot\,; y)` with its
condition ``y`` frozen: a flow over the latent ``x`` of one survey, with the methods
:class:`~devito_uq.inference.VariationalPosterior` uses (``sample``,
``rsample_and_log_prob``, ``log_prob``, ``parameters``) — the one fixed-condition
adapter of this package.

:class:`LatentCorrection`, a :class:`ConditionedFlow` too (Siahkoohi, Rizzuti, Orozco &
Herrmann 2023, "Reliable amortized variational inference with physics-based latent
distribution correction"), keeps the trained flow fixed and learns an affine map of its
base distribution,

.. math::
    \varepsilon \sim N(0, I), \quad z = \mu + S \varepsilon, \quad
    x = T^{-1}(z; y), \qquad S = \mathrm{diag}(s) + L, \quad s = e^{\log s},

with ``L`` zero (``scale="diagonal"``: ``S ε = s ⊙ ε``) or a trained strictly lower
triangular matrix over the flattened latent (``scale="triangular"``: a dense Cholesky
factor, so the correction can add or remove correlations between latent coordinates,
not only rescale them; ``D²/2`` parameters for ``D`` latent entries, for small latents).
A diagonal scale cannot correct the dependence of a frozen flow that has it wrong: on
a correlated posterior it widens the marginals to make up for it (overshooting).

so the corrected density of ``x`` is (change of variables through both maps)

.. math::
    \log q_{\mu,S}(x) = \log N(\varepsilon; 0, I) - \textstyle\sum_i \log s_i
        + \log\Big|\det \frac{\partial T(x; y)}{\partial x}\Big|,
    \qquad \varepsilon = S^{-1}(T(x; y) - \mu)

(``S`` is triangular with diagonal ``s``, so ``log|det S| = Σ log s``). It is
implemented as one invertible layer in front of the flow's network (``ε ↦ μ + Sε`` on
the generative side, a triangular solve back), so the flow's own
``rsample_and_log_prob``/``log_prob`` — padding of an image flow, memory-frugal
backpropagation — run unchanged. ``μ = 0``, ``log s = 0``, ``L = 0`` (the
initialization) give the uncorrected amortized posterior exactly. Only ``μ``, ``log s``
(and ``L``) are trained: reverse KL
against the physics :class:`~devito_uq.inference.PosteriorTarget`, by
:meth:`VariationalPosterior.fit <devito_uq.inference.VariationalPosterior.fit>`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
from torch import nn

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.flows.invertible import InvertibleModule
from devito_uq.inference.parameterization import Parameterization

__all__ = ["ConditionedFlow", "LatentCorrection", "check_same_parameterization"]


class ConditionedFlow(nn.Module):
    """A conditional flow at one fixed condition: a distribution over latents ``x``.

    Parameters
    ----------
    flow : nn.Module
        Conditional flow with ``sample(n, c)``, ``rsample_and_log_prob(n, c)``,
        ``log_prob(x, c)`` and ``shape`` (e.g. ``Flow(ConditionalHINT(...))``).
    condition : torch.Tensor
        ``[1, ...]`` what the flow's ``c`` takes for one survey (the output of the
        amortized posterior's summary; stored as a buffer, detached).

    Raises
    ------
    InvalidShapeError
        ``condition`` is not a tensor ``[1, ...]``.

    Notes
    -----
    It shares ``flow``'s weights: training it (``VariationalPosterior(cf, target).fit``,
    a per-survey fine-tuning) changes the amortized flow too; ``copy.deepcopy`` first to
    keep it.
    """

    def __init__(self, flow: nn.Module, condition: torch.Tensor) -> None:
        super().__init__()
        if (
            not isinstance(condition, torch.Tensor)
            or condition.dim() < 2
            or condition.shape[0] != 1
        ):
            got = tuple(condition.shape) if isinstance(condition, torch.Tensor) else condition
            raise InvalidShapeError(f"condition must be a tensor [1, ...], got {got}")
        self.flow = flow
        self.register_buffer("condition", condition.detach().clone())
        self.shape = tuple(flow.shape)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of the flow's base variable (the flow's ``latent_shape``)."""
        return tuple(getattr(self.flow, "latent_shape", self.shape))

    def sample(self, n: int) -> torch.Tensor:
        """Draw latents without gradient.

        Parameters
        ----------
        n : int
            Number of samples.

        Returns
        -------
        torch.Tensor
            ``[n, *shape]`` latents ``x``.
        """
        return self.flow.sample(n, self.condition)

    def rsample_and_log_prob(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw reparameterized latents with their log-density.

        Parameters
        ----------
        n : int
            Number of samples.

        Returns
        -------
        x : torch.Tensor
            ``[n, *shape]`` latents, differentiable in the trainable parameters.
        log_q : torch.Tensor
            ``[n]`` ``log q(x | y)``.
        """
        return self.flow.rsample_and_log_prob(n, self.condition)

    def rsample(self, n: int) -> torch.Tensor:
        """Draw reparameterized latents.

        Parameters
        ----------
        n : int
            Number of samples.

        Returns
        -------
        torch.Tensor
            ``[n, *shape]`` latents.
        """
        return self.rsample_and_log_prob(n)[0]

    def log_prob(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Log-density of latents at the fixed condition.

        Parameters
        ----------
        x : torch.Tensor
            ``[batch, *shape]`` latents.
        **kwargs
            Passed to the flow's ``log_prob`` (``n_pad`` of an image flow).

        Returns
        -------
        torch.Tensor
            ``[batch]`` ``log q(x | y)``.
        """
        return self.flow.log_prob(x, self.condition, **kwargs)


class _ShiftedLatent(InvertibleModule):
    """``ε ↦ z = μ + Sε`` in front of ``net`` (generative side): ``inverse(ε) =
    net.inverse(μ + Sε)`` with log-determinant ``+Σ log s``; ``forward(x)`` maps back.
    ``S = diag(s) + L``, ``L`` strictly lower triangular (``lower``; None: diagonal)."""

    def __init__(
        self,
        net: InvertibleModule,
        latent_shape: tuple[int, ...],
        ref: torch.Tensor,
        triangular: bool = False,
    ):
        super().__init__()
        # First, so that a Flow's reference parameter (dtype, device) is μ.
        self.mu = nn.Parameter(torch.zeros(latent_shape, dtype=ref.dtype, device=ref.device))
        self.log_scale = nn.Parameter(torch.zeros_like(self.mu))
        d = self.mu.numel()
        self.lower = (
            nn.Parameter(torch.zeros(d, d, dtype=ref.dtype, device=ref.device))
            if triangular
            else None
        )
        self.net = net

    def factor(self) -> torch.Tensor | None:
        """``[D, D]`` the dense factor ``S = diag(s) + tril(L, −1)``; None when diagonal."""
        if self.lower is None:
            return None
        return torch.diag(torch.exp(self.log_scale).reshape(-1)) + torch.tril(self.lower, -1)

    def _scale(self, eps: torch.Tensor) -> torch.Tensor:
        if self.lower is None:
            return torch.exp(self.log_scale) * eps
        return (eps.reshape(eps.shape[0], -1) @ self.factor().T).reshape(eps.shape)

    def _unscale(self, r: torch.Tensor) -> torch.Tensor:
        if self.lower is None:
            return r * torch.exp(-self.log_scale)
        flat = r.reshape(r.shape[0], -1).T
        return torch.linalg.solve_triangular(self.factor(), flat, upper=False).T.reshape(r.shape)

    @property
    def memory_frugal(self):
        return getattr(self.net, "memory_frugal", False)

    @memory_frugal.setter
    def memory_frugal(self, value) -> None:
        self.net.memory_frugal = value

    def __getattr__(self, name: str):
        # Whatever else the flow asks of its network (ConditionalImageFlow's
        # ``net.pyramid``, ``cond_size``, ``factor``) is the wrapped network's.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "net":
                raise
            return getattr(super().__getattr__("net"), name)

    def _forward(self, x, c):
        z, logdet = self.net(x, c)
        return self._unscale(z - self.mu), logdet - self.log_scale.sum()

    def _inverse(self, eps, c):
        z = self.mu + self._scale(eps)
        x, logdet = self.net.inverse(z, c)
        return x, logdet + self.log_scale.sum()


class LatentCorrection(ConditionedFlow):
    """Trainable mean and scale (diagonal or triangular) of a fixed flow's latent (module doc).

    A :class:`ConditionedFlow` whose flow is a frozen copy of ``conditioned``'s, with the
    latent shift and scale as one invertible layer in front of its network.

    Parameters
    ----------
    conditioned : ConditionedFlow
        The flow at one condition; its flow must have an invertible ``net`` and a
        ``latent_shape`` (``devito_uq.flows.Flow`` and its image subclasses).
    scale : str
        ``"diagonal"`` (``s ⊙ ε``) or ``"triangular"`` (``(diag(s) + L) ε``, a dense
        Cholesky factor that corrects correlations; at most ``MAX_TRIANGULAR`` latent
        entries).

    Raises
    ------
    InvalidArgumentError
        ``conditioned`` is no :class:`ConditionedFlow`, its flow has no invertible
        ``net``, no ``latent_shape`` or no parameters, ``scale`` is unknown, or
        ``"triangular"`` with more than ``MAX_TRIANGULAR`` latent entries.

    Notes
    -----
    The flow is deep-copied, set to ``eval`` and frozen (``requires_grad=False``): the
    amortized posterior it came from is untouched. :meth:`parameters` yields ``mu`` and
    ``log_scale``, both ``[*latent_shape]``, then (triangular) ``lower`` ``[D, D]`` (only
    its strictly lower part is used), all zero at construction.
    ``VariationalPosterior(LatentCorrection(cf), target).fit(...)`` trains them; its
    samples are then latents ``x`` and ``.sample`` of the VI object gives models.
    ``log_prob`` is exact for a plain flow, an image flow's padding estimate otherwise.
    """

    MAX_TRIANGULAR = 4096

    def __init__(self, conditioned: ConditionedFlow, scale: str = "diagonal") -> None:
        if scale not in ("diagonal", "triangular"):
            raise InvalidArgumentError(f"scale={scale!r} must be one of ('diagonal', 'triangular')")
        if not isinstance(conditioned, ConditionedFlow):
            raise InvalidArgumentError(
                f"LatentCorrection needs a ConditionedFlow (AmortizedPosterior.conditioned), "
                f"got {type(conditioned).__name__}"
            )
        flow = copy.deepcopy(conditioned.flow)
        net = getattr(flow, "net", None)
        if not isinstance(net, InvertibleModule) or not hasattr(flow, "latent_shape"):
            raise InvalidArgumentError(
                f"LatentCorrection needs a flow with an invertible .net and .latent_shape "
                f"(devito_uq.flows.Flow); {type(flow).__name__} has not"
            )
        ref = next(net.parameters(), None)
        if ref is None:
            raise InvalidArgumentError("the conditioned flow has no parameters")
        d = math.prod(flow.latent_shape)
        if scale == "triangular" and d > self.MAX_TRIANGULAR:
            raise InvalidArgumentError(
                f"scale='triangular' needs a [D, D] factor; D={d} latent entries exceed "
                f"{self.MAX_TRIANGULAR}: use scale='diagonal'"
            )
        for p in flow.parameters():
            p.requires_grad_(False)
        flow.net = _ShiftedLatent(net, tuple(flow.latent_shape), ref, scale == "triangular")
        super().__init__(flow, conditioned.condition)
        self.train(False)

    @property
    def mu(self) -> nn.Parameter:
        """``[*latent_shape]`` latent shift μ."""
        return self.flow.net.mu

    @property
    def log_scale(self) -> nn.Parameter:
        """``[*latent_shape]`` latent log-scale ``log s``."""
        return self.flow.net.log_scale

    @property
    def lower(self) -> nn.Parameter | None:
        """``[D, D]`` triangular part ``L`` (strictly lower part used); None if diagonal."""
        return self.flow.net.lower

    def factor(self) -> torch.Tensor | None:
        """``[D, D]`` the latent scale ``S = diag(s) + L``; None for a diagonal scale."""
        return self.flow.net.factor()

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The trainable ``mu``, ``log_scale`` (and ``lower``); not the fixed flow's weights.

        Parameters
        ----------
        recurse : bool
            Ignored (kept for ``nn.Module``'s signature).

        Yields
        ------
        nn.Parameter
            ``mu``, then ``log_scale``, then ``lower`` when triangular.
        """
        yield self.mu
        yield self.log_scale
        if self.lower is not None:
            yield self.lower

    def train(self, mode: bool = True) -> LatentCorrection:
        """Set the mode of this module; the fixed flow stays in ``eval``.

        Dropout and batch statistics of a summary or conditioner remain those of the
        trained flow.

        Parameters
        ----------
        mode : bool
            Training (``True``) or evaluation mode.

        Returns
        -------
        LatentCorrection
            ``self``.
        """
        super().train(mode)
        self.flow.net.net.eval()
        return self


def _buffers(p: Parameterization) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in p.named_buffers()}


def check_same_parameterization(
    trained: Parameterization | None, target: Parameterization | None, model_shape
) -> None:
    """Refuse a target whose ``m = g(x)`` differs from the one the flow was trained in.

    The corrected flow's samples are latents of the amortized posterior's
    parameterization; the target maps latents to models with its own: both must be
    absent, or have the same shapes, bounds, reference and scale.

    Parameters
    ----------
    trained : Parameterization or None
        The amortized posterior's.
    target : Parameterization or None
        The target's.
    model_shape : tuple of int
        The amortized posterior's model shape.

    Raises
    ------
    InvalidArgumentError
        Only one is present, or bounds, reference or scale differ (named).
    InvalidShapeError
        The target's model shape differs.
    """
    if (trained is None) != (target is None):
        which = "the amortized posterior" if target is None else "the target"
        raise InvalidArgumentError(
            f"only {which} has a parameterization; the correction needs the target in "
            "the parameterization the amortized flow was trained in"
        )
    if target is not None and tuple(target.model_shape) != tuple(model_shape):
        raise InvalidShapeError(
            f"the target's models have shape {tuple(target.model_shape)}; the amortized "
            f"posterior's have {tuple(model_shape)}"
        )
    if trained is None:
        return
    if (trained.has_lower, trained.has_upper) != (target.has_lower, target.has_upper):
        raise InvalidArgumentError(
            "the target's parameterization has other bounds than the amortized posterior's"
        )
    a, b = _buffers(trained), _buffers(target)
    for name in sorted(set(a) | set(b)):
        same = name in a and name in b and a[name].shape == b[name].shape
        if not same or not torch.allclose(a[name].double(), b[name].double(), rtol=1e-6, atol=0):
            raise InvalidArgumentError(
                f"the target's parameterization differs from the amortized posterior's in "
                f"{name!r}; use the parameterization the flow was trained in"
            )
