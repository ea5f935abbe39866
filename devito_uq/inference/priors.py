r"""Priors :math:`R(m) = -\log p(m)` (up to an additive constant), batched.

Every prior is an ``nn.Module`` with ``negative_log(m) -> [batch]`` for models
``m`` shaped ``[batch, *model_shape]``; calling the module does the same.
:class:`FlowPrior` makes a trained flow a prior; the Gaussian prior with a correlation
length on a grid, :class:`~devito_uq.inference.CorrelatedGaussianPrior`, lives in
:mod:`devito_uq.inference.priors_gaussian`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.flows.flow import Flow
from devito_uq.validation import check_finite_positive, check_int_tuple, check_positive_scalar

__all__ = ["Prior", "GaussianPrior", "SmoothnessPrior", "TotalVariationPrior", "FlowPrior"]


class Prior(nn.Module):
    """Base class: subclasses implement :meth:`~Prior.negative_log`."""

    def negative_log(self, m: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """−log p(m) up to a constant.

        Parameters
        ----------
        m : torch.Tensor
            ``[batch, *model_shape]`` models (model units).

        Returns
        -------
        torch.Tensor
            ``[batch]`` values (nats), differentiable in ``m``.
        """
        raise NotImplementedError

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`negative_log`."""
        return self.negative_log(m)


class GaussianPrior(Prior):
    r"""Gaussian prior :math:`\tfrac12 (m-\mu)^\top \Sigma^{-1} (m-\mu)`.

    Parameters
    ----------
    mean : torch.Tensor
        ``[*model_shape]`` floating-point prior mean μ (model units).
    covariance : float or torch.Tensor, optional
        Σ as a number (isotropic variance), a ``[n]`` tensor (diagonal variances) or a
        ``[n, n]`` SPD matrix, with ``n = mean.numel()`` (model units squared).
    precision : float or torch.Tensor, optional
        Σ⁻¹ in the same three forms. Give exactly one of ``covariance`` and
        ``precision``.

    Raises
    ------
    InvalidArgumentError
        If ``mean`` is not a floating-point tensor, both or neither of ``covariance``
        and ``precision`` are given, or the matrix is not symmetric positive definite.
    InvalidShapeError
        If ``covariance``/``precision`` is not a number, ``[n]`` or ``[n, n]``.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        covariance: float | torch.Tensor | None = None,
        precision: float | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(mean, torch.Tensor) or not mean.is_floating_point():
            raise InvalidArgumentError(
                f"mean must be a floating-point tensor, got {type(mean).__name__}"
            )
        if (covariance is None) == (precision is None):
            raise InvalidArgumentError("give exactly one of covariance and precision")
        n = mean.numel()
        name, value = (
            ("covariance", covariance) if covariance is not None else ("precision", precision)
        )
        self.register_buffer("mean", mean.detach().clone())
        self.model_shape = tuple(mean.shape)
        # Stored as a Cholesky factor L of the precision (P = L Lᵀ) or a diagonal.
        self.kind = "diag"
        if not isinstance(value, torch.Tensor) or value.ndim == 0:
            v = check_positive_scalar(name, value)
            diag = torch.full((n,), v if name == "precision" else 1.0 / v, dtype=mean.dtype)
            self.register_buffer("factor", diag)
        elif value.ndim <= 1 and value.numel() in (1, n):
            v = value.detach().to(mean.dtype).reshape(-1).expand(n).clone()
            check_finite_positive(f"diagonal {name}", v)
            self.register_buffer("factor", v if name == "precision" else 1.0 / v)
        elif value.shape == (n, n):
            mat = value.detach().to(mean.dtype)
            if not torch.allclose(mat, mat.T, rtol=1e-6, atol=1e-12 * float(mat.abs().max())):
                raise InvalidArgumentError(f"{name} matrix [{n}, {n}] is not symmetric")
            chol, info = torch.linalg.cholesky_ex(mat)
            if int(info) != 0:
                raise InvalidArgumentError(f"{name} matrix [{n}, {n}] is not positive definite")
            prec = mat if name == "precision" else torch.cholesky_inverse(chol)
            self.register_buffer("factor", torch.linalg.cholesky(prec))
            self.kind = "full"
        else:
            raise InvalidShapeError(
                f"{name} must be a number, [{n}] or [{n}, {n}] for a mean of {n} values, "
                f"got shape {tuple(value.shape)}"
            )

    def negative_log(self, m: torch.Tensor) -> torch.Tensor:
        """½ (m−μ)ᵀ Σ⁻¹ (m−μ).

        Parameters
        ----------
        m : torch.Tensor
            ``[batch, *model_shape]`` models.

        Returns
        -------
        torch.Tensor
            ``[batch]`` values.

        Raises
        ------
        InvalidShapeError
            If ``m`` is not ``[batch, *model_shape]``.
        """
        if tuple(m.shape[1:]) != self.model_shape:
            raise InvalidShapeError(
                f"models must be [batch, *{self.model_shape}], got {tuple(m.shape)}"
            )
        r = (m - self.mean.to(m.dtype)).flatten(1)
        if self.kind == "diag":
            return 0.5 * (r.pow(2) * self.factor.to(m.dtype)).sum(1)
        return 0.5 * (r @ self.factor.to(m.dtype)).pow(2).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws from the prior.

        Parameters
        ----------
        n : int
            Number of draws.
        generator : torch.Generator, optional
            Source of the normal variates; default torch's global generator.

        Returns
        -------
        torch.Tensor
            ``[n, *model_shape]`` draws, in the dtype of ``mean``.
        """
        z = torch.randn(n, self.mean.numel(), generator=generator, dtype=self.mean.dtype)
        if self.kind == "diag":
            x = z / self.factor.sqrt()
        else:
            # P = L Lᵀ  ⇒  x = L⁻ᵀ z has covariance P⁻¹.
            x = torch.linalg.solve_triangular(self.factor.T, z.T, upper=True).T
        return self.mean + x.reshape(n, *self.model_shape)


def _check_axes(axes: Sequence[int] | int) -> tuple[int, ...]:
    if not isinstance(axes, (Sequence, torch.Tensor)):
        axes = (axes,)
    # Any positive number of non-negative model axes (0 = first axis after the batch).
    axes = check_int_tuple("axes", axes, max(len(axes), 1), minimum=0)
    if len(set(axes)) != len(axes):
        raise InvalidArgumentError(f"axes must not repeat, got {axes}")
    return axes


def _differences(m: torch.Tensor, axes: tuple[int, ...], spacing: tuple[float, ...]):
    # Forward differences along model axis a (tensor axis a + 1, after the batch axis).
    if max(axes) >= m.ndim - 1:
        raise InvalidShapeError(
            f"prior axes {axes} do not exist in models of shape {tuple(m.shape[1:])}"
        )
    return [torch.diff(m, dim=a + 1) / h for a, h in zip(axes, spacing)]


class SmoothnessPrior(Prior):
    r"""Gaussian smoothness prior on first differences.

    .. math::
        R(m) = \frac{1}{2\sigma_p^2} \sum_{a} \| D_a (m - m_0) \|^2
             + \frac{1}{2\sigma_0^2} \| m - m_0 \|^2

    with :math:`D_a` the forward difference along model axis ``a`` divided by the
    grid ``spacing``. The second, small-norm term (``sigma_norm``) makes the prior
    proper; without it constant shifts of ``m`` are free.

    Parameters
    ----------
    sigma : float
        σ_p, expected size of one difference (model units per spacing unit).
    axes : int or sequence of int
        Model axes (0 = first axis after the batch axis) to difference.
    spacing : float or sequence of float, optional
        Grid spacing per axis (default 1).
    sigma_norm : float, optional
        σ_0 of the norm term (model units); ``None``: no norm term.
    reference : torch.Tensor or float
        m_0, ``[*model_shape]`` or a number (default 0).

    Raises
    ------
    InvalidArgumentError
        If a scale is not positive, ``axes`` repeat or ``spacing`` does not match them.
    """

    def __init__(
        self,
        sigma: float,
        axes: Sequence[int] | int = (0,),
        spacing: Sequence[float] | float | None = None,
        sigma_norm: float | None = None,
        reference: torch.Tensor | float = 0.0,
    ) -> None:
        super().__init__()
        self.sigma = check_positive_scalar("sigma", sigma)
        self.axes = _check_axes(axes)
        self.spacing = _spacing(spacing, self.axes)
        self.sigma_norm = (
            None if sigma_norm is None else check_positive_scalar("sigma_norm", sigma_norm)
        )
        self.register_buffer("reference", torch.as_tensor(reference).detach().clone())

    def negative_log(self, m: torch.Tensor) -> torch.Tensor:
        r = m - self.reference.to(m.dtype)
        out = sum(d.flatten(1).pow(2).sum(1) for d in _differences(r, self.axes, self.spacing))
        out = out / (2.0 * self.sigma**2)
        if self.sigma_norm is not None:
            out = out + r.flatten(1).pow(2).sum(1) / (2.0 * self.sigma_norm**2)
        return out


def _spacing(spacing, axes) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * len(axes)
    if not isinstance(spacing, (Sequence, torch.Tensor)) or (
        isinstance(spacing, torch.Tensor) and spacing.ndim == 0
    ):
        spacing = (spacing,) * len(axes)
    if len(spacing) != len(axes):
        raise InvalidArgumentError(f"spacing={tuple(spacing)} must give one value per axis {axes}")
    return tuple(check_positive_scalar(f"spacing[{i}]", s) for i, s in enumerate(spacing))


class TotalVariationPrior(Prior):
    r"""Smoothed isotropic total variation.

    .. math::
        R(m) = \lambda \sum_{x} \sqrt{\textstyle\sum_a (D_a m)(x)^2 + \varepsilon^2}

    The differences along the ``axes`` are cropped to their common interior. ε > 0
    keeps ``R`` differentiable at flat regions (Langevin and VI need gradients).

    Parameters
    ----------
    weight : float
        λ > 0, in 1 / (model units per spacing unit).
    axes, spacing
        As in :class:`SmoothnessPrior`.
    epsilon : float
        Smoothing ε > 0, in model units per spacing unit.
    """

    def __init__(
        self,
        weight: float,
        axes: Sequence[int] | int = (0,),
        spacing: Sequence[float] | float | None = None,
        epsilon: float = 1e-3,
    ) -> None:
        super().__init__()
        self.weight = check_positive_scalar("weight", weight)
        self.axes = _check_axes(axes)
        self.spacing = _spacing(spacing, self.axes)
        self.epsilon = check_positive_scalar("epsilon", epsilon)

    def negative_log(self, m: torch.Tensor) -> torch.Tensor:
        diffs = _differences(m, self.axes, self.spacing)
        # Crop every difference to the common interior [..., n_a - 1, ...].
        common = [min(d.shape[k] for d in diffs) for k in range(m.ndim)]
        sq = sum(d[tuple(slice(0, c) for c in common)].pow(2) for d in diffs)
        return self.weight * torch.sqrt(sq + self.epsilon**2).flatten(1).sum(1)


class FlowPrior(Prior):
    r"""A trained flow as prior: :math:`R(m) = -\log q(m)`.

    ``negative_log(m)`` takes ``m`` in the flow's shape ``[batch, *flow.shape]``. With a
    ``parameterization`` ``m = g(x)`` (the flow models the latent ``x``, as in a trained
    posterior of :class:`~devito_uq.inference.VariationalPosterior`), the density is that of
    ``m``: ``log q(m) = log q_x(g⁻¹(m)) − log|det ∂g/∂x|``.

    Parameters
    ----------
    flow : devito_uq.flows.Flow
        E.g. an :class:`~devito_uq.flows.ImageFlow`, or the ``flow`` of a trained
        :class:`~devito_uq.inference.VariationalPosterior`. Its parameters are frozen
        here (``requires_grad_(False)``, on the flow itself: call
        ``flow.requires_grad_(True)`` to train it again); gradients still flow to ``m``.
    parameterization : nn.Module, optional
        ``g`` with ``g(x) -> (m, log|det ∂g/∂x|)`` and ``g.inverse(m) -> x``.
    **log_prob_kwargs
        Passed to ``flow.log_prob`` on every call, e.g. ``n_pad=64`` for an
        :class:`~devito_uq.flows.ImageFlow` on a padded grid, whose ``log_prob`` is
        then a Monte-Carlo estimate (a fresh one each call).

    Raises
    ------
    InvalidArgumentError
        If ``flow`` is not a :class:`~devito_uq.flows.Flow`.
    """

    def __init__(
        self, flow: nn.Module, parameterization: nn.Module | None = None, **log_prob_kwargs
    ) -> None:
        super().__init__()
        if not isinstance(flow, Flow):
            raise InvalidArgumentError(
                f"FlowPrior needs a devito_uq.flows.Flow (e.g. Flow(net, shape) or ImageFlow), "
                f"got {type(flow).__name__}"
            )
        self.flow = flow.requires_grad_(False)
        self.parameterization = parameterization
        self.log_prob_kwargs = dict(log_prob_kwargs)

    def negative_log(self, m: torch.Tensor) -> torch.Tensor:
        """−log q(m).

        Parameters
        ----------
        m : torch.Tensor
            ``[batch, *flow.shape]`` models.

        Returns
        -------
        torch.Tensor
            ``[batch]`` values.
        """
        if self.parameterization is None:
            return -self.flow.log_prob(m, **self.log_prob_kwargs)
        x = self.parameterization.inverse(m)
        log_det = self.parameterization(x)[1]
        return log_det - self.flow.log_prob(x, **self.log_prob_kwargs)
