"""The pieces of the 2D amortized posterior and of its per-survey physics.

* :func:`one_padding_flow`: the conditional image flow trained with one padding draw;
* :func:`deconvolving`: an amortized posterior whose summary network sees the regularized
  least-squares image of the migrated image;
* :func:`gaussian_residual`: a deconvolving posterior whose flow models the residual around
  the survey's exact Gaussian-prior posterior, whitened by that posterior's covariance
  (:func:`gaussian_residual_flow`), so that its geometry is the survey's own;
* :func:`gaussian_factors`: that Gaussian posterior's mean operator and covariance roots;
* :class:`NormalLikelihood`: the Born Gaussian likelihood through the assembled ``JᵀMJ``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from devito_uq.errors import InvalidArgumentError

__all__ = [
    "NormalLikelihood",
    "deconvolving",
    "gaussian_factors",
    "gaussian_residual",
    "gaussian_residual_flow",
    "one_padding_flow",
]


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


def gaussian_factors(H: torch.Tensor, sigma: float, prior, scale: float) -> dict:
    r"""The exact posterior of ``δm`` under the Gaussian ``prior`` ``C`` (mean 0) for the
    migrated image ``y = JᵀMd`` of a survey with normal operator ``H = JᵀMJ`` at noise
    ``sigma``: ``Σ = (H/σ² + C⁻¹)⁻¹`` (computed as ``L (I + LᵀHL/σ²)⁻¹ Lᵀ``, ``C = LLᵀ``),
    mean ``Σ y/σ²``.

    Parameters
    ----------
    H : torch.Tensor
        ``[n, n]`` the survey's ``JᵀMJ`` (s⁴/km⁴ per data unit², any float dtype).
    sigma : float
        The survey's noise std.
    prior : CorrelatedGaussianPrior
        ``C`` on the model grid.
    scale : float
        The flow's latent scale (``prior_std``): the roots are in units of it.

    Returns
    -------
    dict
        float64 ``ls_operator`` ``P = Σ/σ²`` ``[n, n]`` (``P y`` is the posterior mean, the
        damped least-squares image), ``cov_sqrt`` ``Σ^{1/2}/scale`` and ``cov_isqrt`` its
        inverse (symmetric, ``[n, n]``), ``log_det`` ``log det(Σ^{1/2}/scale)``, and
        ``std`` ``[n]`` the posterior's pointwise std (s²/km²).
    """
    n = H.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    L = prior.sqrt().matvec(eye.reshape(n, *prior.mean.shape)).reshape(n, n).T
    A = eye + L.T @ H.double() @ L / sigma**2
    cov = L @ torch.linalg.solve(A, L.T)
    cov = 0.5 * (cov + cov.T)
    lam, vec = torch.linalg.eigh(cov / scale**2)
    # Σ ≤ C, and C's spectrum is bounded below (≥ 0.06 prior_std² on the default grid):
    # the clip only guards round-off.
    lam = lam.clamp_min(1e-12 * float(lam.max()))
    return {
        "ls_operator": cov / sigma**2,
        "cov_sqrt": (vec * lam.sqrt()) @ vec.T,
        "cov_isqrt": (vec * lam.rsqrt()) @ vec.T,
        "log_det": 0.5 * torch.log(lam).sum(),
        "std": cov.diagonal().clamp_min(0).sqrt(),
    }


@functools.lru_cache(maxsize=4)
def gaussian_residual_flow(base: type) -> type:
    r"""``base`` (a :class:`ConditionalImageFlow`) over latents ``x`` whose condition carries
    one more channel, the Gaussian-posterior mean ``μ`` (latent units), and which models

    .. math::
        x = \mu + \Sigma^{1/2} w, \qquad w \sim q_{\text{base}}(\cdot \mid c),

    ``Σ^{1/2}`` the survey's Gaussian-posterior covariance root (buffers ``cov_sqrt``,
    ``cov_isqrt``, ``cov_log_det``; :func:`gaussian_factors`). With ``q_base = N(0, I)``
    the flow *is* the exact Gaussian-prior posterior; training on crop-prior pairs teaches
    it only how the crop prior departs from that answer. The affine map is exact, so
    ``log q(x) = log q_base(w) − log det Σ^{1/2}``, and a latent correction
    (:class:`~devito_uq.inference.LatentCorrection`, which wraps ``net``) acts on ``w``.
    """

    class GaussianResidualImageFlow(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            n = math.prod(self.shape)
            self.register_buffer("cov_sqrt", torch.eye(n))
            self.register_buffer("cov_isqrt", torch.eye(n))
            self.register_buffer("cov_log_det", torch.zeros(()))

        def set_factors(self, factors: dict) -> None:
            """Take ``cov_sqrt``/``cov_isqrt``/``log_det`` of :func:`gaussian_factors`."""
            for name in ("cov_sqrt", "cov_isqrt"):
                getattr(self, name).copy_(factors[name].to(getattr(self, name).dtype))
            self.cov_log_det.fill_(float(factors["log_det"]))

        def _split(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if not isinstance(c, torch.Tensor) or c.dim() != 4 or c.shape[1] < 2:
                got = tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__
                raise InvalidArgumentError(
                    f"a Gaussian-residual flow needs [b, features + 1, nx, nz] (the last "
                    f"channel the Gaussian-posterior mean), got {got}"
                )
            return c[:, :-1], c[:, -1]

        def _to_x(self, w: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
            return mu + (w.flatten(1) @ self.cov_sqrt.to(w.dtype)).view_as(w)

        def log_prob(self, m, c=None, n_pad: int = 1):
            cc, mu = self._split(c)
            m = self._check_models(m, "log_prob")
            w = ((m - mu).flatten(1) @ self.cov_isqrt.to(m.dtype)).view_as(m)
            return super().log_prob(w, cc, n_pad) - self.cov_log_det.to(m.dtype)

        def rsample_and_log_prob(self, n, c=None):
            cc, mu = self._split(c)
            w, log_q = super().rsample_and_log_prob(n, cc)
            return self._to_x(w, mu), log_q - self.cov_log_det.to(w.dtype)

        def from_latent(self, z, c=None):
            cc, mu = self._split(c)
            w, log_det = super().from_latent(z, cc)
            return self._to_x(w, mu), log_det + self.cov_log_det.to(w.dtype)

    return GaussianResidualImageFlow


@functools.lru_cache(maxsize=4)
def gaussian_residual(base: type) -> type:
    """``base`` (a :func:`deconvolving` posterior) whose flow is a
    :func:`gaussian_residual_flow`: the features are the summary of the least-squares image
    ``z = P y/prior_std`` with ``z`` itself appended as the residual's mean channel.

    ``set_geometry`` conditions it on a survey's own acquisition and noise (shot or
    trace subsets, another σ): ``P`` and the covariance roots are recomputed from that
    survey's ``JᵀMJ``, so the flow's answer is the survey's exact Gaussian posterior plus
    the learned departure. Training sets the training survey's (on first use, from
    ``setting``); a saved posterior keeps them, with that ``normal_operator`` ``[n, n]``
    and ``noise_sigma`` (so that another σ costs no solve).
    """

    class GaussianResidualPosterior(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            n = math.prod(self.model_shape)
            # the geometry the factors are for: conditioning on another σ needs only these
            self.register_buffer("normal_operator", torch.zeros(n, n, dtype=torch.float64))
            self.register_buffer("noise_sigma", torch.zeros((), dtype=torch.float64))

        def _fill(self) -> None:
            if self.setting is None:
                raise InvalidArgumentError("the least-squares operator is not set")
            s = self.setting
            H = s.normal_matrices().sum(0)
            self.set_geometry(H, s.sigma)

        def set_geometry(self, H: torch.Tensor, sigma: float) -> dict:
            """Condition on a survey with normal operator ``H`` ``[n, n]`` and noise
            ``sigma``; returns :func:`gaussian_factors`'s dict (its ``std`` is the exact
            Gaussian posterior's)."""
            if self.setting is None:
                raise InvalidArgumentError("set_geometry needs the posterior's setting")
            scale = float(self.parameterization.scale.flatten()[0])
            prior = self.setting.gaussian_prior()
            f = gaussian_factors(H, float(sigma), prior, scale)
            self.ls_operator.copy_(f["ls_operator"].to(self.ls_operator.dtype))
            self.ls_ready.fill_(True)
            self.flow.set_factors(f)
            self.normal_operator.copy_(H.double())
            self.noise_sigma.fill_(float(sigma))
            return f

        def features(self, condition: torch.Tensor) -> torch.Tensor:
            if not bool(self.ls_ready):
                self._fill()
            ref = self._ref()
            y = condition.to(device=ref.device, dtype=ref.dtype)
            scale = float(self.parameterization.scale.flatten()[0])
            z = (y.flatten(1) @ self.ls_operator.T).view_as(y) / scale
            return torch.cat([self.summary(z), z[:, :1]], dim=1)

    return GaussianResidualPosterior
