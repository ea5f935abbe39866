r"""Langevin MCMC baselines: MALA and SGLD, many chains in parallel as one batch.

Both sample the posterior of :math:`m = g(x)` by running the chain on the latent
:math:`x` with potential

.. math::
    U(x) = \Phi(g(x)) + R(g(x)) - \log|\det J_g(x)|,

the Jacobian term making the chain's stationary law the posterior density of
``m`` (see :mod:`devito_uq.inference.parameterization`). One step proposes

.. math::
    x' = x - h \nabla U(x) + \sqrt{2h}\,\xi, \qquad \xi \sim N(0, I)

(the seed talk's Langevin slide). MALA accepts it with the Metropolis–Hastings
ratio (exact stationary law); SGLD always accepts and may use stochastic subsets
of shots (biased by O(h), cheap). Operators take a batch, so ``n_chains`` chains
cost one batched forward and adjoint per step.

References:
    Roberts & Tweedie, 1996, Exponential convergence of Langevin distributions.
    Welling & Teh, 2011, Bayesian learning via stochastic gradient Langevin dynamics.
    Roberts & Rosenthal, 1998 (optimal MALA acceptance ≈ 0.574).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from devito_uq.errors import InvalidArgumentError, InvalidShapeError, TrainingDivergedError
from devito_uq.inference.parameterization import Parameterization
from devito_uq.inference.summary import (
    DEFAULT_QUANTILES,
    PosteriorSummary,
    effective_sample_size,
    summarize,
)
from devito_uq.inference.target import PosteriorTarget, as_target
from devito_uq.validation import (
    check_bool,
    check_finite,
    check_in_range,
    check_int,
    check_positive_scalar,
)

__all__ = ["MALA", "SGLD", "MCMCResult"]


@dataclass
class MCMCResult:
    """Draws of a batch of chains.

    Attributes
    ----------
    samples : torch.Tensor
        ``[n_draws, n_chains, *model_shape]`` kept draws of ``m`` (model units).
    acceptance_rate : float or None
        Mean MH acceptance after burn-in (``None`` for SGLD).
    step_size : float
        Final step size ``h`` (latent units²).
    gradient_evaluations : float
        Likelihood gradients spent, counted per chain and in full-data equivalents
        (a batch of ``n`` of ``N`` shots counts ``n/N``).
    method : str
        ``"MALA"``, ``"SGLD"`` or ``"pCN"``.
    last : torch.Tensor
        ``[n_chains, *model_shape]`` final state, to continue a run.
    """

    samples: torch.Tensor
    acceptance_rate: float | None
    step_size: float
    gradient_evaluations: float
    method: str
    last: torch.Tensor

    def flat(self) -> torch.Tensor:
        """``[n_draws · n_chains, *model_shape]`` all kept draws."""
        return self.samples.reshape(-1, *self.samples.shape[2:])

    def summary(self, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> PosteriorSummary:
        return summarize(self.flat(), quantiles)

    def effective_sample_size(self) -> torch.Tensor:
        """``[*model_shape]`` ESS of the kept draws (Geyer, over all chains)."""
        return effective_sample_size(self.samples)


class _Langevin:
    method = "Langevin"

    def __init__(self, likelihood, prior, parameterization, step_size: float) -> None:
        self.target = as_target(likelihood, prior, parameterization)
        self.step_size = check_positive_scalar("step_size", step_size)
        self.result: MCMCResult | None = None
        self.label = self.method  # the progress bar's name

    def _adaptation(self, target_acceptance: float, adapt: bool) -> None:
        """Set the burn-in adaptation of a Metropolis–Hastings kernel (MALA, pCN)."""
        self.target_acceptance = check_in_range(
            "target_acceptance", target_acceptance, 0.0, 1.0, low_open=True, high_open=True
        )
        self.adapt = check_bool("adapt", adapt)

    def _start(self, n_steps, n_chains, x0, burn_in, thin, seed, latent0=None):
        """Validate :meth:`run`'s arguments; return ``(n_chains, generator, x_start)``."""
        n_steps = check_int("n_steps", n_steps, minimum=1)
        n_chains = check_int("n_chains", n_chains, minimum=1)
        check_int("burn_in", burn_in, minimum=0)
        thin = check_int("thin", thin, minimum=1)
        if n_steps < thin:
            raise InvalidArgumentError(f"n_steps={n_steps} keeps no draw with thin={thin}")
        gen = torch.Generator()
        seed = check_int("seed", seed) if seed is not None else int(torch.randint(2**62, ()))
        gen.manual_seed(seed)
        if latent0 is None:
            return n_chains, gen, self._initial(x0, n_chains)
        if x0 is not None:
            raise InvalidArgumentError("give x0 or latent0, not both")
        if not isinstance(latent0, torch.Tensor) or latent0.shape[:1] != (n_chains,):
            got = tuple(latent0.shape) if isinstance(latent0, torch.Tensor) else type(latent0)
            raise InvalidShapeError(f"latent0 must be [n_chains={n_chains}, ...], got {got}")
        check_finite("latent0", latent0)
        return n_chains, gen, latent0.detach().clone()

    def run(
        self,
        n_steps: int,
        n_chains: int = 1,
        x0: torch.Tensor | None = None,
        burn_in: int = 0,
        thin: int = 1,
        seed: int | None = None,
        progress: bool = True,
        latent0: torch.Tensor | None = None,
    ) -> MCMCResult:
        """Run ``burn_in + n_steps`` steps; keep every ``thin``-th after burn-in.

        Parameters
        ----------
        n_steps : int
            Steps after burn-in, ``>= thin``.
        n_chains : int
            Independent chains, run as one batch.
        x0 : torch.Tensor, optional
            Starting models ``[n_chains, *model_shape]`` or ``[1, *model_shape]``
            (shared by all chains); with a parameterization also ``[*model_shape]``
            (default: its reference).
        burn_in : int
            Steps discarded first (the step size adapts during them).
        thin : int
            Keep every ``thin``-th step.
        seed : int, optional
            Seeds a private generator (``None``: drawn from torch's global one).
        progress : bool
            Show a tqdm bar.
        latent0 : torch.Tensor, optional
            Starting latents ``[n_chains, ...]`` instead of ``x0`` (no ``g⁻¹`` round
            trip: a start on a bound that ``g`` reaches only in floating point is kept).

        Returns
        -------
        MCMCResult
            Also kept in :attr:`result`.

        Raises
        ------
        InvalidArgumentError
            If an argument is out of range, or ``x0`` is missing (without a
            parameterization) or not finite.
        InvalidShapeError
            If ``x0`` does not match the model shape or ``n_chains``.
        TrainingDivergedError
            If a chain becomes non-finite.
        """
        n_chains, gen, x = self._start(n_steps, n_chains, x0, burn_in, thin, seed, latent0)
        kept, x, acceptance, step, evaluations = self._chain(
            x, gen, burn_in, n_steps, thin, progress
        )
        self.result = MCMCResult(
            samples=torch.stack(kept),
            acceptance_rate=acceptance,
            step_size=step,
            gradient_evaluations=evaluations,
            method=self.method,
            last=self.target.to_model(x)[0].detach().cpu(),
        )
        return self.result

    def _chain(self, x, gen, burn_in, n_steps, thin, progress):
        """Run the chains from latents ``x`` ``[n_chains, ...]``; return the kept models,
        the final latents, the acceptance rate, the final step and the gradient count."""
        raise NotImplementedError  # pragma: no cover - MALA and SGLD implement it

    def _initial(self, x0: torch.Tensor | None, n_chains: int) -> torch.Tensor:
        if x0 is None:
            p = self.target.parameterization
            if p is None:
                raise InvalidArgumentError("x0 is required without a parameterization")
            x0 = p.reference
        if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
            raise InvalidArgumentError(f"x0 must be a floating-point tensor, got {type(x0)}")
        # A NaN start would give NaN draws (SGLD) or a chain that never moves (MALA).
        check_finite("x0", x0)
        shape = self.target.model_shape
        if shape is not None and tuple(x0.shape) == shape:
            x0 = x0.expand(n_chains, *shape)
        elif shape is not None and tuple(x0.shape[1:]) != shape:
            raise InvalidShapeError(
                f"x0 must be {shape} or [n_chains, *{shape}], got {tuple(x0.shape)}"
            )
        if x0.shape[0] != n_chains:
            if x0.shape[0] != 1:
                raise InvalidShapeError(
                    f"x0 has {x0.shape[0]} chains but n_chains={n_chains} "
                    f"(x0 shape {tuple(x0.shape)})"
                )
            x0 = x0.expand(n_chains, *x0.shape[1:])
        return self.target.to_latent(x0.detach().clone())

    def summary(self, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> PosteriorSummary:
        """Summary of the last :meth:`run`.

        Parameters
        ----------
        quantiles : sequence of float
            Levels in ``(0, 1)`` to compute.

        Returns
        -------
        PosteriorSummary

        Raises
        ------
        InvalidArgumentError
            Before the first :meth:`run`.
        """
        if self.result is None:
            raise InvalidArgumentError(f"{self.method}.summary() needs a run() first")
        return self.result.summary(quantiles)

    def sample(self, n: int) -> torch.Tensor:
        """The last ``n`` kept draws of the last :meth:`run`.

        Parameters
        ----------
        n : int
            At most the number of kept draws (over all chains).

        Returns
        -------
        torch.Tensor
            ``[n, *model_shape]`` draws.

        Raises
        ------
        InvalidArgumentError
            Before the first :meth:`run`, or with ``n`` out of range.
        """
        if self.result is None:
            raise InvalidArgumentError(f"{self.method}.sample() needs a run() first")
        flat = self.result.flat()
        n = check_int("n", n, minimum=1, maximum=flat.shape[0])
        return flat[-n:]


class MALA(_Langevin):
    """Metropolis-adjusted Langevin algorithm over a batch of independent chains.

    Parameters
    ----------
    likelihood : PosteriorTarget or callable
        Negative log-likelihood ``m -> [batch]`` (all shots are used), or a ready
        :class:`PosteriorTarget` (then no ``prior``/``parameterization``).
    prior : Prior, optional
        Prior with ``negative_log``.
    parameterization : Parameterization, optional
        ``m = g(x)``; the chain runs on ``x``.
    step_size : float
        Initial ``h`` (latent units²).
    target_acceptance : float
        Acceptance rate the burn-in adaptation aims at (0.574 is optimal for MALA
        in high dimension).
    adapt : bool
        Adapt ``h`` during burn-in (Robbins–Monro on ``log h`` with the acceptance
        averaged over chains); ``h`` is frozen afterwards so the kept draws come
        from a fixed, exact kernel.
    """

    method = "MALA"

    def __init__(
        self,
        likelihood: PosteriorTarget | Callable[..., torch.Tensor] | None = None,
        prior: Any | None = None,
        parameterization: Parameterization | None = None,
        step_size: float = 1e-2,
        target_acceptance: float = 0.574,
        adapt: bool = True,
    ) -> None:
        super().__init__(likelihood, prior, parameterization, step_size)
        self._adaptation(target_acceptance, adapt)

    def _chain(self, x, gen, burn_in, n_steps, thin, progress):
        n_chains = x.shape[0]
        u, g = self.target.value_and_grad(x)
        bad = ~(torch.isfinite(u) & torch.isfinite(g).flatten(1).all(1))
        if bool(bad.any()):
            # Every proposal from there would be rejected: the chain would never move.
            chain = int(torch.nonzero(bad)[0])
            raise InvalidArgumentError(
                f"the potential or its gradient at the start x0 of chain {chain} is "
                f"{float(u[chain])}; start every chain where the posterior is finite"
            )
        log_h = math.log(self.step_size)
        kept, accepted, counted = [], 0.0, 0
        total = burn_in + n_steps
        bar = tqdm(range(total), disable=not progress, desc=self.label, dynamic_ncols=True)
        for t in bar:
            h = math.exp(log_h)
            noise = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
            y = x - h * g + math.sqrt(2.0 * h) * noise
            uy, gy = self.target.value_and_grad(y)
            # log q(x | y) − log q(y | x) for the Gaussian Langevin proposal.
            fwd = (y - x + h * g).flatten(1).pow(2).sum(1)
            bwd = (x - y + h * gy).flatten(1).pow(2).sum(1)
            log_alpha = (u - uy) + (fwd - bwd) / (4.0 * h)
            log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf)
            uniform = torch.rand(n_chains, generator=gen, dtype=x.dtype).to(x.device)
            accept = torch.log(uniform) < log_alpha
            mask = accept.view(-1, *([1] * (x.ndim - 1)))
            x = torch.where(mask, y, x)
            u = torch.where(accept, uy, u)
            g = torch.where(mask, gy, g)
            rate = float(accept.double().mean())
            if t < burn_in:
                if self.adapt:
                    # Robbins–Monro on log h: decreasing gain, frozen after burn-in.
                    log_h += (rate - self.target_acceptance) * 2.0 / math.sqrt(t + 1.0)
            else:
                accepted += rate
                counted += 1
                if (t - burn_in) % thin == thin - 1:
                    kept.append(self.target.to_model(x)[0].detach().cpu())
            if progress and t % 20 == 0:
                bar.set_postfix(h=f"{h:.3g}", acc=f"{rate:.2f}", U=f"{float(u.mean()):.4g}")
        bar.close()
        self.step_size = math.exp(log_h)
        # One value-and-gradient per chain and step, plus the starting point's.
        return kept, x, accepted / max(counted, 1), self.step_size, float(n_chains * (total + 1))


class SGLD(_Langevin):
    """Stochastic-gradient Langevin dynamics over a batch of chains.

    Every proposal is accepted; with a stochastic :class:`GaussianLikelihood`
    (``shot_batch``) each step uses a fresh random subset of shots. The step
    follows ``h_t = step_size · (1 + t)^(−decay)`` (``decay=0``: constant step,
    stationary law biased by O(h); ``0 < decay ≤ 1`` removes the bias
    asymptotically, Welling & Teh 2011).

    Parameters
    ----------
    likelihood, prior, parameterization, step_size
        As in :class:`MALA` (``step_size`` is ``h_0``).
    decay : float
        Exponent of the step decay, in ``[0, 1]``.
    """

    method = "SGLD"

    def __init__(
        self,
        likelihood: PosteriorTarget | Callable[..., torch.Tensor] | None = None,
        prior: Any | None = None,
        parameterization: Parameterization | None = None,
        step_size: float = 1e-3,
        decay: float = 0.0,
    ) -> None:
        super().__init__(likelihood, prior, parameterization, step_size)
        self.decay = check_in_range("decay", decay, 0.0, 1.0)

    def _chain(self, x, gen, burn_in, n_steps, thin, progress):
        # The step keeps decaying through burn-in and sampling.
        n_chains = x.shape[0]
        lik = self.target.likelihood
        fraction = 1.0
        if getattr(lik, "stochastic", False):
            fraction = lik.shot_batch / lik.n_shots
        kept = []
        total = burn_in + n_steps
        h0 = self.step_size
        h = h0
        bar = tqdm(range(total), disable=not progress, desc=self.label, dynamic_ncols=True)
        for t in bar:
            h = h0 * (1.0 + t) ** (-self.decay)
            _, g = self.target.value_and_grad(x, full=False)
            noise = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
            x = x - h * g + math.sqrt(2.0 * h) * noise
            finite = torch.isfinite(x).flatten(1).all(1)
            if not bool(finite.all()):
                chains = torch.nonzero(~finite).flatten().tolist()
                raise TrainingDivergedError(
                    f"SGLD diverged at step {t + 1}: chains {chains[:8]} became non-finite "
                    f"(step {h:.3g}; reduce step_size={h0})"
                )
            if t >= burn_in and (t - burn_in) % thin == thin - 1:
                kept.append(self.target.to_model(x)[0].detach().cpu())
            if progress and t % 20 == 0:
                bar.set_postfix(h=f"{h:.3g}")
        bar.close()
        return kept, x, None, h, float(n_chains * total * fraction)
