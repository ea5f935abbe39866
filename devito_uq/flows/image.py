r"""A 2D multiscale flow over any model grid: :class:`ImageFlow`.

Multiscale networks (:class:`~devito_uq.flows.Glow`, :class:`~devito_uq.flows.MultiscaleHINT`)
squeeze space into channels ``levels`` times, so they need spatial sizes divisible by
``2**levels`` and channel-first images ``[batch, 1, nx, nz]``. Seismic models are
``[batch, nx, nz]`` on grids such as 121×61. :class:`ImageFlow` runs the network on the
padded grid ``(px, pz) = (⌈nx/2^L⌉·2^L, ⌈nz/2^L⌉·2^L)`` and hands out samples on the
model grid.

The rule (an augmented flow; Huang, Dinh & Courville 2020, "Augmented normalizing
flows"): the network models the padded image :math:`u = [m, \varepsilon]` jointly, with
the padding :math:`\varepsilon` (the pixels past ``nx`` and ``nz``, at the end of each
axis) an auxiliary variable whose reference density is fixed,
:math:`r(\varepsilon) = \mathcal N(0, I)`.

* :meth:`ImageFlow.rsample_and_log_prob` draws :math:`u \sim q`, returns the cropped
  :math:`m` and the surrogate

  .. math::
      \log \tilde q(m) = \log q(m, \varepsilon) - \log r(\varepsilon)

  at the sampled :math:`\varepsilon`. Since
  :math:`E_q[\log p(m) - \log\tilde q] = E_q[\log p(m) r(\varepsilon) - \log q(m,
  \varepsilon)]`, variational inference with :math:`\tilde q` maximizes the ELBO of the
  augmented target :math:`p(m)\,r(\varepsilon)`: a lower bound of the marginal ELBO
  :math:`E_q[\log p(m) - \log q(m)]`, equal to it when :math:`q(\varepsilon\mid m) =
  r(\varepsilon)`, whose optimum :math:`q(m, \varepsilon) = p(m)\,r(\varepsilon)` has the
  exact posterior as its marginal. :class:`~devito_uq.inference.VariationalPosterior`
  therefore works unchanged.
* :meth:`ImageFlow.log_prob` estimates the marginal density of a given ``m`` by
  importance sampling with the reference as proposal,

  .. math::
      \log q(m) \approx \log \frac1K \sum_{k=1}^K
      \frac{q(m, \varepsilon_k)}{r(\varepsilon_k)}, \qquad \varepsilon_k \sim r,

  ``K = n_pad`` (a consistent estimate, biased low by Jensen for finite ``K``; exact
  whatever ``K`` when :math:`q(\varepsilon\mid m) = r`).

When nothing is padded (both sizes divisible by ``2**levels``) both are the exact
:math:`\log q(m)` of the plain :class:`~devito_uq.flows.Flow`.
"""

from __future__ import annotations

import math

import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.flows.flow import Flow
from devito_uq.flows.glow import Glow
from devito_uq.flows.hint import MultiscaleHINT
from devito_uq.validation import (
    check_allocation,
    check_choice,
    check_int_tuple,
    check_positive_int,
)

__all__ = ["ImageFlow", "check_grid", "padded_size"]

_KINDS = ("hint", "glow")


def padded_size(n: int, levels: int) -> int:
    """Smallest multiple of ``2**levels`` that is ``>= n``."""
    f = 2**levels
    return -(-n // f) * f


def check_grid(shape: object, levels: object, who: str = "ImageFlow") -> tuple[int, ...]:
    """``(nx, nz, px, pz)``: the model grid and the grid padded to multiples of
    ``2**levels``, after checking that padding never exceeds the model along an axis."""
    nx, nz = check_int_tuple("shape", shape, 2, minimum=1)
    levels = check_positive_int("levels", levels)
    if 2**levels > 2 * min(nx, nz):
        most = int(math.floor(math.log2(2 * min(nx, nz))))
        raise InvalidArgumentError(
            f"{who}: levels={levels} would pad the grid {(nx, nz)} to "
            f"{(padded_size(nx, levels), padded_size(nz, levels))}, more than twice the "
            f"model along an axis; use levels <= {most} (2**levels <= 2·min(nx, nz))"
        )
    return nx, nz, padded_size(nx, levels), padded_size(nz, levels)


class ImageFlow(Flow):
    """Distribution over 2D models ``m [batch, nx, nz]`` on any grid (module docstring).

    Parameters
    ----------
    shape : (int, int)
        Model grid ``(nx, nz)``, sizes ``>= 1``.
    kind : "hint" or "glow"
        :class:`~devito_uq.flows.MultiscaleHINT` (default) or :class:`~devito_uq.flows.Glow`.
    levels, steps, hidden, clamp, memory_frugal
        Passed to the network (``ndim=2``, one channel). The grid is padded to multiples of
        ``2**levels``; ``2**levels <= 2·min(nx, nz)`` so that padding never exceeds the
        model along an axis.
    leaf_size : int or None
        HINT recursion leaf (``kind="hint"`` only).

    Attributes
    ----------
    shape : (nx, nz); padded_shape : (px, pz); kind, levels; net : the network on
    ``[batch, 1, px, pz]``. ``state_dict`` holds the network only.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        kind: str = "hint",
        levels: int = 2,
        steps: int = 4,
        hidden: int = 32,
        clamp: float = 2.0,
        memory_frugal: bool | str = "auto",
        leaf_size: int | None = None,
    ) -> None:
        nx, nz, px, pz = check_grid(shape, levels)
        levels = check_positive_int("levels", levels)
        kind = check_choice("kind", kind, _KINDS)
        if kind == "glow":
            if leaf_size is not None:
                raise InvalidArgumentError(
                    f"leaf_size={leaf_size!r} applies to kind='hint' only, not 'glow'"
                )
            net = Glow(1, levels, steps, hidden, ndim=2, clamp=clamp, memory_frugal=memory_frugal)
        else:
            net = MultiscaleHINT(
                1,
                levels,
                steps,
                hidden,
                ndim=2,
                clamp=clamp,
                leaf_size=leaf_size,
                memory_frugal=memory_frugal,
            )
        super().__init__(net, (1, px, pz))
        self._set_grid((nx, nz), (px, pz), kind, levels)

    def _set_grid(self, shape, padded_shape, kind, levels) -> None:
        """Grid attributes and the padding mask (shared with the conditional flow)."""
        (nx, nz), (px, pz) = shape, padded_shape
        self.shape = (nx, nz)
        self.padded_shape = (px, pz)
        self.kind, self.levels = kind, levels
        pad = torch.ones(px, pz, dtype=torch.bool)
        pad[:nx, :nz] = False
        # not persistent: a function of the shape, so checkpoints hold the network only
        self.register_buffer("pad_mask", pad, persistent=False)
        self.n_padded = px * pz - nx * nz

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, padded_shape={self.padded_shape}, kind={self.kind!r}, "
            f"levels={self.levels}"
        )

    # -- padding ------------------------------------------------------------------------------

    def crop(self, u: torch.Tensor) -> torch.Tensor:
        """``[batch, 1, px, pz]`` padded images → models ``[batch, nx, nz]``."""
        return u[:, 0, : self.shape[0], : self.shape[1]]

    def augment(self, m: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Models ``[batch, nx, nz]`` → padded images ``[batch, 1, px, pz]`` whose padding
        is taken from ``eps`` (``[batch, 1, px, pz]``, read at the padded pixels only; None:
        zeros)."""
        px, pz = self.padded_shape
        u = torch.nn.functional.pad(m, (0, pz - self.shape[1], 0, px - self.shape[0]))
        u = u.unsqueeze(1)
        if eps is not None and self.n_padded:
            u = torch.where(self.pad_mask.to(u.device), eps, u)
        return u

    def reference_log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """``log r(ε)`` ``[batch]`` of the padding of ``u`` ``[batch, 1, px, pz]``."""
        eps = u.reshape(u.shape[0], -1)[:, self.pad_mask.to(u.device).reshape(-1)]
        return -0.5 * eps.pow(2).sum(1) - 0.5 * self.n_padded * math.log(2 * math.pi)

    def _check_models(self, m: object, who: str) -> torch.Tensor:
        if not isinstance(m, torch.Tensor) or m.dim() != 3 or tuple(m.shape[1:]) != self.shape:
            got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise InvalidShapeError(f"ImageFlow.{who} expects [batch, *{self.shape}], got {got}")
        return m

    # -- the distribution -----------------------------------------------------------------------

    def rsample_and_log_prob(
        self, n: int, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterized models ``m [n, nx, nz]`` and ``log q̃(m) = log q(m, ε) − log r(ε)``
        ``[n]`` at the drawn padding ε (exact ``log q(m)`` when nothing is padded); both
        differentiable in the network parameters."""
        n = check_positive_int("n", n)
        ref = self._ref()
        itemsize = ref.element_size() if ref.numel() else torch.get_default_dtype().itemsize
        check_allocation(
            f"sampling n={n} models of shape {self.shape} (padded {self.padded_shape})",
            2 * n * math.prod(self.latent_shape) * itemsize,
            ref.device,
            minimum=2**26,
        )
        z = torch.randn(n, *self.latent_shape, dtype=ref.dtype, device=ref.device)
        m, log_det = self._decode(z, c)
        return m, self.base_log_prob(z) - log_det

    def from_latent(
        self, z: torch.Tensor, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Models ``m [n, nx, nz]`` from latents ``z [n, *latent_shape]`` and ``log_det``
        ``[n]`` such that ``log q̃(m) = log p_Z(z) − log_det`` for whatever base density
        ``p_Z`` drew ``z`` (``log_det = log|det ∂u/∂z| + log r(ε)``, u the padded image):
        the hook for latent-space corrections of a trained flow."""
        if not isinstance(z, torch.Tensor) or tuple(z.shape[1:]) != self.latent_shape:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise InvalidShapeError(
                f"{type(self).__name__}.from_latent expects [n, *{self.latent_shape}], got {got}"
            )
        return self._decode(z, c)

    def _decode(self, z, c):
        u, logdet = self.net.inverse(z, self._condition(c, z.shape[0]))
        if self.n_padded:
            logdet = logdet + self.reference_log_prob(u)
        return self.crop(u), logdet

    def log_prob(
        self, m: torch.Tensor, c: torch.Tensor | None = None, n_pad: int = 16
    ) -> torch.Tensor:
        """``log q(m)`` ``[batch]`` for models ``m [batch, nx, nz]``: exact when nothing is
        padded, else the importance-sampling estimate over ``n_pad`` paddings ``ε ~ r``
        (module docstring); differentiable in ``m`` and the network parameters."""
        m = self._check_models(m, "log_prob")
        n_pad = check_positive_int("n_pad", n_pad)
        b = m.shape[0]
        c = self._condition(c, b)
        if not self.n_padded:
            z, logdet = self.net(self.augment(m), c)
            return self.base_log_prob(z) + logdet
        u = self.augment(m).repeat(n_pad, 1, 1, 1)  # [n_pad·batch, 1, px, pz], k-major
        u = torch.where(self.pad_mask.to(u.device), torch.randn_like(u), u)
        ck = None if c is None else c.repeat(n_pad, *([1] * (c.dim() - 1)))
        z, logdet = self.net(u, ck)
        log_w = self.base_log_prob(z) + logdet - self.reference_log_prob(u)
        return torch.logsumexp(log_w.view(n_pad, b), dim=0) - math.log(n_pad)
