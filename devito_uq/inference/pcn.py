r"""Preconditioned Crank–Nicolson MCMC: a gradient-free reference in a whitened latent.

The chain runs on the latent ``x`` of a parameterization ``m = g(x)`` with the
potential :math:`U(x)` of :class:`~devito_uq.inference.PosteriorTarget` (misfit, prior
and ``−log|det J_g|``). It proposes

.. math::
    y = \rho\,x + \beta\,\xi, \qquad \xi \sim N(0, I), \qquad \rho = \sqrt{1 - \beta^2},

which is reversible with respect to :math:`N(0, I)`, and accepts with

.. math::
    \log \alpha = \Phi(x) - \Phi(y), \qquad \Phi(x) = U(x) - \tfrac12 \lVert x \rVert^2,

so the stationary law is exactly :math:`e^{-U}` whatever the latent (Cotter, Roberts,
Stuart and White 2013). Its efficiency is set by how close :math:`e^{-U}` is to
:math:`N(0, I)`: in the latent of a :class:`~devito_uq.inference.LaplaceParameterization`
(``m = g(MAP + A x)``, ``A Aᵀ`` the Gauss–Newton Laplace covariance) :math:`\Phi` holds
only the posterior's departure from the Laplace approximation — the Laplace-preconditioned
(generalized) pCN of Pinski, Simpson, Stuart and Weber (2015) and Rudolf and Sprungk (2018).
With the exact Gaussian posterior as the latent's law every proposal is accepted and
``β = 1`` draws independent samples; otherwise the step that keeps a given acceptance
shrinks as that departure, summed over the directions, grows (on a 2,048-unknown FWI
posterior in its exact Gauss–Newton latent: β 0.083 for 19 % acceptance, and 2,300 steps
did not decorrelate 16 chains — ``benchmarks/results/bench_fwi_reference.md``).

Each step costs one misfit per chain (forward solves only, no adjoint), against MALA's
misfit and gradient: in the imaging app's FWI latent a pCN step is about a third of a
MALA step's PDE work.

References:
    Cotter, Roberts, Stuart & White, 2013, MCMC methods for functions: modifying old
    algorithms to make them faster, Statistical Science 28.
    Pinski, Simpson, Stuart & Weber, 2015, Algorithms for Kullback–Leibler
    approximation of probability measures in infinite dimensions, SIAM J. Sci. Comput.
    Rudolf & Sprungk, 2018, On a generalization of the preconditioned Crank–Nicolson
    Metropolis algorithm, Found. Comput. Math. 18.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from devito_uq.errors import InvalidArgumentError
from devito_uq.inference.mcmc import _Langevin
from devito_uq.inference.parameterization import Parameterization
from devito_uq.inference.target import PosteriorTarget
from devito_uq.validation import check_in_range

__all__ = ["PCN"]


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


class PCN(_Langevin):
    r"""Preconditioned Crank–Nicolson Metropolis over a batch of independent chains.

    Parameters
    ----------
    likelihood : PosteriorTarget or callable
        Negative log-likelihood ``m -> [batch]`` (all shots are used), or a ready
        :class:`PosteriorTarget` (then no ``prior``/``parameterization``).
    prior : Prior, optional
        Prior with ``negative_log``.
    parameterization : Parameterization, optional
        ``m = g(x)``; the chain runs on ``x``, whose reference law is :math:`N(0, I)`.
        Exact with any; efficient when ``g`` whitens the posterior (a
        :class:`~devito_uq.inference.LaplaceParameterization`).
    step_size : float
        Initial ``β`` in ``(0, 1]``: the proposal's share of fresh noise (``1``: an
        independence sampler drawing from :math:`N(0, I)`).
    target_acceptance : float
        Acceptance rate the burn-in adaptation aims at (0.25 by default; pCN has no
        dimension-free optimum like MALA's, and a lower rate with larger moves mixes
        the posterior's widest directions faster).
    adapt : bool
        Adapt ``β`` during burn-in (Robbins–Monro on ``logit β``, acceptance averaged
        over chains); frozen afterwards, so the kept draws come from a fixed, exact
        kernel. ``β`` stays below 1 − 1e-6 while adapting.

    Notes
    -----
    ``MCMCResult.gradient_evaluations`` counts the misfits spent (per chain,
    starting point included): pCN takes no gradient, so each is one set of forward
    solves. ``MCMCResult.step_size`` is the final ``β``.
    """

    method = "pCN"

    def __init__(
        self,
        likelihood: PosteriorTarget | Callable[..., torch.Tensor] | None = None,
        prior: Any | None = None,
        parameterization: Parameterization | None = None,
        step_size: float = 0.5,
        target_acceptance: float = 0.25,
        adapt: bool = True,
    ) -> None:
        check_in_range("step_size", step_size, 0.0, 1.0, low_open=True)
        super().__init__(likelihood, prior, parameterization, step_size)
        self._adaptation(target_acceptance, adapt)

    def _phi(self, x: torch.Tensor) -> torch.Tensor:
        """``[n_chains]`` potential minus the reference's ``½‖x‖²`` (no gradient)."""
        with torch.no_grad():
            u = self.target.value(x)
        return u - 0.5 * x.flatten(1).pow(2).sum(1)

    def _chain(self, x, gen, burn_in, n_steps, thin, progress):
        n_chains = x.shape[0]
        phi = self._phi(x)
        bad = ~torch.isfinite(phi)
        if bool(bad.any()):
            # Every proposal from there would be accepted or none: no valid chain either way.
            chain = int(torch.nonzero(bad)[0])
            raise InvalidArgumentError(
                f"the potential at the start x0 of chain {chain} is {float(phi[chain])}; "
                f"start every chain where the posterior is finite"
            )
        beta = self.step_size
        # logit β adapts on the whole real line; β = 1 itself is kept out of reach so
        # the logit stays finite.
        cap = 1.0 - 1e-6
        s = _logit(min(beta, cap))
        kept, accepted, counted = [], 0.0, 0
        total = burn_in + n_steps
        bar = tqdm(range(total), disable=not progress, desc=self.label, dynamic_ncols=True)
        for t in bar:
            if t < burn_in and self.adapt:
                beta = 1.0 / (1.0 + math.exp(-s))
            rho = math.sqrt(max(1.0 - beta * beta, 0.0))
            noise = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
            y = rho * x + beta * noise
            phi_y = self._phi(y)
            log_alpha = torch.nan_to_num(phi - phi_y, nan=-math.inf)
            uniform = torch.rand(n_chains, generator=gen, dtype=x.dtype).to(x.device)
            accept = torch.log(uniform) < log_alpha
            x = torch.where(accept.view(-1, *([1] * (x.ndim - 1))), y, x)
            phi = torch.where(accept, phi_y, phi)
            rate = float(accept.double().mean())
            if t < burn_in:
                if self.adapt:
                    # Decreasing gain, as MALA's; frozen after burn-in.
                    s = min(
                        s + (rate - self.target_acceptance) * 4.0 / math.sqrt(t + 1.0), _logit(cap)
                    )
            else:
                accepted += rate
                counted += 1
                if (t - burn_in) % thin == thin - 1:
                    kept.append(self.target.to_model(x)[0].detach().cpu())
            if progress and t % 20 == 0:
                bar.set_postfix(beta=f"{beta:.3g}", acc=f"{rate:.2f}")
        bar.close()
        self.step_size = beta
        return kept, x, accepted / max(counted, 1), beta, float(n_chains * (total + 1))
