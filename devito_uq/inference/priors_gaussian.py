r"""Stationary Gaussian prior with a correlation length on a grid:
:class:`CorrelatedGaussianPrior`.

The covariance is separable, one exponential (Matérn-1/2, Ornstein–Uhlenbeck) kernel per
correlated axis,

.. math::
    \Sigma = D \Big(\bigotimes_k C_k\Big) D, \qquad
    (C_k)_{ij} = \rho_k^{|i-j|}, \quad \rho_k = e^{-h_k/\ell_k},

with :math:`h_k` the grid spacing and :math:`\ell_k` the correlation length of axis k (same
units), :math:`D = \mathrm{diag}(\sigma)` and :math:`C_k = I` on uncorrelated axes. The
kernel is that of a first-order autoregression (AR(1)), so everything is exact and
cheap: the precision of :math:`C_k` is tridiagonal,

.. math::
    C_k^{-1} = \frac{1}{1-\rho^2}
    \begin{pmatrix} 1 & -\rho & & \\ -\rho & 1+\rho^2 & \ddots & \\
    & \ddots & \ddots & -\rho \\ & & -\rho & 1 \end{pmatrix},

applied along each axis in O(N) (no matrix is stored), and its Cholesky factor is
:math:`(L_k)_{i0} = \rho^i`, :math:`(L_k)_{ij} = \rho^{i-j}\sqrt{1-\rho^2}` for
:math:`1 \le j \le i` (sampling, dense ``[n_k, n_k]`` per axis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference.priors import Prior
from devito_uq.validation import (
    check_finite_positive,
    check_int_tuple,
    check_positive_int,
    check_positive_scalar,
)

__all__ = ["CorrelatedGaussianPrior", "KroneckerSqrt"]

#: Largest model (number of values) for which :meth:`CorrelatedGaussianPrior.covariance_matrix`
#: assembles the dense matrix.
MAX_DENSE = 4096


def _per_axis(name: str, value, n: int) -> tuple[float, ...]:
    """A positive number, or one per axis, as a tuple of ``n`` floats."""
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        value = float(value)
    if isinstance(value, (Sequence, torch.Tensor)) and not isinstance(value, str):
        if len(value) != n:
            raise InvalidArgumentError(
                f"{name}={tuple(float(v) for v in value)} must give one value per "
                f"correlated axis ({n})"
            )
        return tuple(check_positive_scalar(f"{name}[{i}]", v) for i, v in enumerate(value))
    return (check_positive_scalar(name, value),) * n


def _along(x: torch.Tensor, axis: int, mat: torch.Tensor) -> torch.Tensor:
    """``mat`` ``[n, n]`` applied along tensor axis ``axis`` of ``x``."""
    return torch.movedim(torch.tensordot(mat, torch.movedim(x, axis, 0), dims=1), 0, axis)


class CorrelatedGaussianPrior(Prior):
    r"""Gaussian prior with exponential correlation on a grid (module docstring).

    ``negative_log(m)`` is :math:`\tfrac12 (m-\mu)^\top \Sigma^{-1} (m-\mu)` ``[batch]``
    (the normalizing constant dropped), for ``m`` ``[batch, *model_shape]``.

    Parameters
    ----------
    mean : torch.Tensor
        μ, floating tensor ``[*model_shape]`` (e.g. ``[nx, nz]``), model units.
    std : float or torch.Tensor
        σ, marginal standard deviation in model units: a number, or a tensor
        broadcastable to ``model_shape`` (then :math:`\Sigma = D (\otimes C_k) D`).
    correlation_length : float or sequence of float
        ℓ, a number or one per correlated axis, in the units of ``spacing``.
    spacing : float or sequence of float, optional
        Grid spacing per correlated axis (a number or one each; default 1).
    axes : int or sequence of int, optional
        Correlated model axes (0 = first axis after the batch axis); default all.
        Other axes are independent.

    Raises
    ------
    InvalidArgumentError
        If ``mean`` is not a floating tensor, a scale is not positive, or ``axes``,
        ``spacing`` and ``correlation_length`` do not match.
    InvalidShapeError
        If ``std`` does not broadcast to ``model_shape``.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        std: float | torch.Tensor,
        correlation_length: float | Sequence[float],
        spacing: float | Sequence[float] | None = None,
        axes: Sequence[int] | int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(mean, torch.Tensor) or not mean.is_floating_point() or mean.ndim < 1:
            got = tuple(mean.shape) if isinstance(mean, torch.Tensor) else type(mean).__name__
            raise InvalidArgumentError(
                f"mean must be a floating-point tensor [*model_shape], got {got}"
            )
        self.model_shape = tuple(mean.shape)
        nd = mean.ndim
        if axes is None:
            axes = tuple(range(nd))
        elif isinstance(axes, int):
            axes = (axes,)
        axes = check_int_tuple("axes", axes, len(axes) or 1, minimum=0)
        if len(set(axes)) != len(axes) or max(axes) >= nd:
            raise InvalidArgumentError(
                f"axes={axes} must be distinct axes of a model of shape {self.model_shape}"
            )
        self.axes = axes
        self.correlation_length = _per_axis("correlation_length", correlation_length, len(axes))
        self.spacing = _per_axis("spacing", 1.0 if spacing is None else spacing, len(axes))
        self.register_buffer("mean", mean.detach().clone())
        if isinstance(std, torch.Tensor) and std.ndim > 0:
            try:
                s = torch.broadcast_to(std.detach().to(mean.dtype), self.model_shape).clone()
            except RuntimeError:
                raise InvalidShapeError(
                    f"std of shape {tuple(std.shape)} does not broadcast to the model "
                    f"shape {self.model_shape}"
                ) from None
            check_finite_positive("std", s)
        else:
            s = torch.full(self.model_shape, check_positive_scalar("std", std), dtype=mean.dtype)
        self.register_buffer("std", s)
        # ρ_k and 1 − ρ_k² (expm1: accurate when ℓ ≫ h, where ρ → 1)
        self.rho = tuple(
            math.exp(-h / ell) for h, ell in zip(self.spacing, self.correlation_length)
        )
        self.one_minus_rho2 = tuple(
            -math.expm1(-2 * h / ell) for h, ell in zip(self.spacing, self.correlation_length)
        )

    def extra_repr(self) -> str:
        ell = ", ".join(f"{v:g}" for v in self.correlation_length)
        return f"model_shape={self.model_shape}, axes={self.axes}, correlation_length=({ell})"

    # -- checks ---------------------------------------------------------------------------

    def _check_models(self, m: object, who: str) -> torch.Tensor:
        if not isinstance(m, torch.Tensor) or tuple(m.shape[1:]) != self.model_shape:
            got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise InvalidShapeError(f"{who} expects [batch, *{self.model_shape}], got {got}")
        return m

    # -- per-axis pieces --------------------------------------------------------------------

    def _axis_precision(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """``C_k⁻¹`` (tridiagonal) applied along model axis ``self.axes[k]`` of ``x``."""
        a = self.axes[k] + 1
        rho, q = self.rho[k], self.one_minus_rho2[k]
        n = x.shape[a]
        if n == 1:
            return x.clone()  # C_k = [1]
        # diagonal 1 + ρ², but 1 at the two ends, which have one neighbour each
        diag = torch.full((n,), 1 + rho**2, dtype=x.dtype, device=x.device)
        diag[0] = diag[-1] = 1.0
        out = x * diag.view(-1, *([1] * (x.ndim - a - 1)))
        lo = x.narrow(a, 0, n - 1)
        hi = x.narrow(a, 1, n - 1)
        out = out - rho * (
            torch.cat([torch.zeros_like(x.narrow(a, 0, 1)), lo], a)
            + torch.cat([hi, torch.zeros_like(x.narrow(a, 0, 1))], a)
        )
        return out / q

    def _axis_precision_diagonal(self, k: int) -> torch.Tensor:
        n = self.model_shape[self.axes[k]]
        rho, q = self.rho[k], self.one_minus_rho2[k]
        d = torch.full((n,), (1 + rho**2) / q, dtype=self.mean.dtype, device=self.mean.device)
        if n == 1:
            return torch.ones_like(d)
        d[0] = d[-1] = 1 / q
        return d

    def _index(self, k: int) -> torch.Tensor:
        n = self.model_shape[self.axes[k]]
        return torch.arange(n, dtype=self.mean.dtype, device=self.mean.device)

    def _axis_correlation(self, k: int) -> torch.Tensor:
        """Dense ``C_k`` ``[n_k, n_k]``."""
        i = self._index(k)
        return self.rho[k] ** (i[:, None] - i[None, :]).abs()

    def _axis_cholesky(self, k: int) -> torch.Tensor:
        """Dense lower Cholesky factor ``L_k`` of ``C_k`` (module docstring)."""
        i = self._index(k)
        lag = i[:, None] - i[None, :]
        factor = torch.full_like(lag, math.sqrt(self.one_minus_rho2[k]))
        factor[:, 0] = 1.0
        return torch.where(lag >= 0, self.rho[k] ** lag.clamp(min=0) * factor, 0.0)

    # -- the prior ----------------------------------------------------------------------------

    def precision_matvec(self, r: torch.Tensor) -> torch.Tensor:
        """``Σ⁻¹ r``, exact, without forming Σ.

        Parameters
        ----------
        r : torch.Tensor
            ``[batch, *model_shape]`` (model units).

        Returns
        -------
        torch.Tensor
            ``[batch, *model_shape]`` (1 / model units).
        """
        r = self._check_models(r, "precision_matvec")
        std = self.std.to(r)
        w = r / std
        for k in range(len(self.axes)):
            w = self._axis_precision(w, k)
        return w / std

    def negative_log(self, m: torch.Tensor) -> torch.Tensor:
        """½ (m−μ)ᵀ Σ⁻¹ (m−μ), exact.

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
        r = self._check_models(m, "CorrelatedGaussianPrior") - self.mean.to(m)
        return 0.5 * (r * self.precision_matvec(r)).flatten(1).sum(1)

    def precision_diagonal(self) -> torch.Tensor:
        """Diagonal of Σ⁻¹, ``[*model_shape]`` (per-axis diagonals times 1/σ²)."""
        d = self.std.pow(-2)
        for k, a in enumerate(self.axes):
            shape = [1] * len(self.model_shape)
            shape[a] = -1
            d = d * self._axis_precision_diagonal(k).view(shape)
        return d

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact draws ``μ + D (⊗ L_k) z``, ``z ~ N(0, I)``.

        Parameters
        ----------
        n : int
            Number of draws.
        generator : torch.Generator, optional
            Source of ``z``; default torch's global generator.

        Returns
        -------
        torch.Tensor
            ``[n, *model_shape]`` draws, dtype and device of ``mean``.
        """
        n = check_positive_int("n", n)
        x = torch.randn(
            n,
            *self.model_shape,
            generator=generator,
            dtype=self.mean.dtype,
            device=self.mean.device,
        )
        for k, a in enumerate(self.axes):
            x = _along(x, a + 1, self._axis_cholesky(k))
        return self.mean + self.std * x

    def sqrt(self) -> KroneckerSqrt:
        """The square root ``L = D (⊗ L_k)`` of Σ (``Σ = L Lᵀ``).

        Returns
        -------
        KroneckerSqrt
            An operator on ``[batch, *model_shape]`` tensors: ``matvec``, ``rmatvec``
            (``Lᵀ``), ``solve`` (``L⁻¹``), ``logdet`` — the whitening of
            :mod:`devito_uq.inference.laplace`.
        """
        return KroneckerSqrt(
            self.std, [(a, self._axis_cholesky(k)) for k, a in enumerate(self.axes)]
        )

    def covariance_matrix(self) -> torch.Tensor:
        """Dense Σ ``[N, N]`` (``N = prod(model_shape)``, row-major order of the model);
        refused above :data:`MAX_DENSE` values."""
        size = math.prod(self.model_shape)
        if size > MAX_DENSE:
            raise InvalidArgumentError(
                f"covariance_matrix: a model of shape {self.model_shape} has N={size} values, "
                f"a dense [N, N] matrix is refused above N={MAX_DENSE}; use precision_matvec "
                "or precision_diagonal instead"
            )
        like = {"dtype": self.mean.dtype, "device": self.mean.device}
        c = torch.ones(1, 1, **like)
        for a, n in enumerate(self.model_shape):  # row-major: the last axis varies fastest
            if a in self.axes:
                c = torch.kron(c, self._axis_correlation(self.axes.index(a)))
            else:
                c = torch.kron(c, torch.eye(n, **like))
        s = self.std.reshape(-1)
        return s[:, None] * c * s[None, :]


class KroneckerSqrt:
    """``L = D (⊗_k L_k)``: ``D`` the std (broadcast), ``L_k`` lower-triangular per axis.

    The same operator interface as :class:`~devito_uq.inference.DiagonalSqrt`, on
    ``[batch, *model_shape]`` tensors: ``matvec`` (``L x``), ``rmatvec`` (``Lᵀ x``),
    ``solve`` (``L⁻¹ u``), ``logdet`` (``log|det L|``) and ``state`` (for checkpoints).

    Parameters
    ----------
    std : torch.Tensor
        ``D``: the marginal std, broadcastable to ``model_shape`` (model units).
    factors : list of (int, torch.Tensor)
        ``(axis, L_k)`` with ``L_k`` ``[n_k, n_k]`` the lower Cholesky factor of the
        correlation along model axis ``axis`` (0 = first axis after the batch).
    """

    def __init__(self, std: torch.Tensor, factors: list[tuple[int, torch.Tensor]]) -> None:
        self.std = std.detach().clone()
        self.factors = factors

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        for a, lk in self.factors:
            x = _along(x, a + 1, lk.to(x))
        return self.std.to(x) * x

    def rmatvec(self, x: torch.Tensor) -> torch.Tensor:
        x = self.std.to(x) * x
        for a, lk in self.factors:
            x = _along(x, a + 1, lk.T.to(x))
        return x

    def solve(self, u: torch.Tensor) -> torch.Tensor:
        x = u / self.std.to(u)
        for a, lk in self.factors:
            moved = torch.movedim(x, a + 1, 0)
            flat = moved.reshape(moved.shape[0], -1)
            sol = torch.linalg.solve_triangular(lk.to(flat), flat, upper=False)
            x = torch.movedim(sol.reshape(moved.shape), 0, a + 1)
        return x

    def state(self) -> dict:
        """Plain tensors for a checkpoint (:func:`~devito_uq.inference.laplace.sqrt_from_state`)."""
        return {"std": self.std, "factors": {str(a): lk for a, lk in self.factors}}

    def logdet(self) -> float:
        shape = self.std.shape
        n = math.prod(shape)
        total = float(torch.log(self.std).sum())
        for a, lk in self.factors:
            total += (n / shape[a]) * float(torch.log(lk.diagonal()).sum())
        return total
