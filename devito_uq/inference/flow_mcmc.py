r"""Exact MCMC in a trained flow's latent: a correction of VI that keeps its speed.

Reverse-KL VI is mode-seeking: a flow trained on :math:`\mathrm{KL}(q \| p)` settles
slightly narrow whatever the schedule (on the Sleipner AVP posterior ≈ 8 % in std at
2,000 and at 4,000 steps, ``docs/results/calibration.md``). Running a Markov chain
whose stationary law is the posterior itself removes that bias; running it in the
flow's latent keeps it cheap. With :math:`m = g(T(z))` (``T`` the flow's sampling map,
``g`` the target's parameterization) the chain targets

.. math::
    \pi_z(z) \propto p\big(g(T(z))\big)\,\big|\det \partial_z g(T(z))\big|,

which is :math:`N(0, I)` exactly when the flow is the posterior: the flow has
whitened the posterior, and a simple kernel mixes in a few steps (the "neural
transport" preconditioning of Hoffman et al. 2019). Chains start at independent flow
draws, so they begin near the stationary law and need little burn-in. The draws are
exact however poor the flow; what a poor flow costs is mixing, which the run reports
(acceptance, step, split-R̂ and ESS).

Two kernels: MALA (default; one misfit and gradient per chain and step, backpropagated
through the flow) and pCN (forward solves only: it accepts on the change of
:math:`\log q(m) - \log p(m)`, so a perfect flow accepts every proposal). Measured on
one AVP posterior (128 unknowns, VI at the demo's schedule; ``benchmarks/bench_flow_refine.py``),
8 chains × 3,000 steps after 200 each: MALA (h 0.19, 56 % accepted) reached split-R̂
≤ 1.03 and ESS ≥ 280 with its std 1.00× a long reference's; pCN at the same misfit count
R̂ 1.38, ESS 24 — each MALA step moves every direction, each pCN step only a ``β`` share
of it.

References:
    Hoffman, Sountsov, Dillon, Langmore, Tran & Vasudevan, 2019, NeuTra-lizing bad
    geometry in Hamiltonian Monte Carlo using neural transport, arXiv:1903.03704.
    Cotter, Roberts, Stuart & White, 2013, MCMC methods for functions: modifying old
    algorithms to make them faster, Statistical Science 28.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference.mcmc import MALA, MCMCResult
from devito_uq.inference.parameterization import Parameterization
from devito_uq.inference.pcn import PCN
from devito_uq.inference.summary import effective_sample_size
from devito_uq.inference.target import PosteriorTarget, to_latent, to_model
from devito_uq.validation import check_choice, check_int, check_positive_int

__all__ = ["FlowParameterization", "FlowMCMCResult", "refine_with_mcmc", "split_rhat"]


class FlowParameterization(Parameterization):
    """``m = g(T(z))``: a flow's sampling map followed by a parameterization.

    Parameters
    ----------
    flow : devito_uq.flows.Flow
        A trained (unconditional) flow; its network maps ``x → z`` and back.
    inner : Parameterization, optional
        The target's ``g`` (``None``: ``m = x``).

    Notes
    -----
    The latent ``z`` has the flow's ``latent_shape``; :meth:`forward` returns
    ``log|det ∂m/∂z| = log|det ∂T/∂z| + log|det ∂g/∂x|``. The reference (a chain's
    default start) is ``g(T(0))``, the flow's "median" model.
    """

    def __init__(self, flow, inner: Parameterization | None = None) -> None:
        net = getattr(flow, "net", None)
        if net is None or not callable(getattr(net, "inverse", None)):
            raise InvalidArgumentError(
                "flow must be a devito_uq.flows.Flow (a net with inverse), "
                f"got {type(flow).__name__}"
            )
        self.flow_shape = tuple(flow.shape)
        self.latent_shape = tuple(flow.latent_shape)
        ref_param = next(iter(flow.parameters()), None)
        dtype = ref_param.dtype if ref_param is not None else torch.get_default_dtype()
        with torch.no_grad():
            x0, _ = net.inverse(torch.zeros(1, *self.latent_shape, dtype=dtype), None)
            m0, _ = to_model(inner, x0.reshape(1, *self.flow_shape))
        super().__init__(m0[0].detach().clone(), scale=1.0)
        self.flow = flow
        self.inner = inner

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Models ``[batch, *model_shape]`` of latents ``z`` ``[batch, *latent_shape]`` and
        ``log|det ∂m/∂z|`` ``[batch]``."""
        if tuple(z.shape[1:]) != self.latent_shape:
            raise InvalidShapeError(
                f"flow latent z must be [batch, *{self.latent_shape}], got {tuple(z.shape)}"
            )
        x, logdet_t = self.flow.net.inverse(z, None)
        m, logdet_g = to_model(self.inner, x.reshape(z.shape[0], *self.flow_shape))
        return m, logdet_t + logdet_g

    def inverse(self, m: torch.Tensor) -> torch.Tensor:
        """Latents ``z = T⁻¹(g⁻¹(m))`` ``[batch, *latent_shape]`` of models."""
        self._check(m, "models")
        z, _ = self.flow.net(to_latent(self.inner, m), None)
        return z.reshape(m.shape[0], *self.latent_shape)


def split_rhat(chains: torch.Tensor) -> torch.Tensor:
    """``[*shape]`` split-R̂ of ``[n_draws, n_chains, *shape]`` draws (Gelman et al. 2013).

    Each chain is cut in two halves; R̂ compares the variance between the halves'
    means with the variance within them. 1 for chains that agree; above ≈ 1.01–1.05
    the chains have not forgotten their starts or not mixed.
    """
    if chains.ndim < 2 or chains.shape[0] < 4:
        raise InvalidShapeError(
            f"chains must be [n_draws >= 4, n_chains, ...], got {tuple(chains.shape)}"
        )
    n = chains.shape[0] // 2
    halves = torch.cat([chains[:n], chains[n : 2 * n]], dim=1).double()
    within = halves.var(0).mean(0)
    between = n * halves.mean(0).var(0)
    var = (n - 1) / n * within + between / n
    # No within-chain variance (chains that never moved): nothing is known, R̂ = ∞.
    ratio = torch.where(within > 0, var / within.clamp_min(1e-300), torch.inf)
    return ratio.sqrt()


@dataclass
class FlowMCMCResult:
    """The chains of :func:`refine_with_mcmc` and their convergence diagnostics.

    Attributes
    ----------
    chains : MCMCResult
        The run in the flow's latent (kept draws in model units,
        ``[n_draws, n_chains, *model_shape]``).
    rhat_max, rhat_median : float
        Split-R̂ over coordinates (1 for mixed chains).
    ess_min, ess_median : float
        Effective sample size over coordinates (of ``n_draws · n_chains`` draws).
    converged : bool
        ``rhat_max <= rhat_limit`` and ``ess_min >= ess_limit``.
    seconds : float
        Wall time of the run.
    """

    chains: MCMCResult
    rhat_max: float
    rhat_median: float
    ess_min: float
    ess_median: float
    converged: bool
    seconds: float

    def flat(self) -> torch.Tensor:
        """``[n_draws · n_chains, *model_shape]`` all kept draws."""
        return self.chains.flat()

    def to_dict(self) -> dict:
        """Plain data for a summary file."""
        c = self.chains
        return {
            "sampler": f"{c.method} in the flow latent",
            "draws": int(c.samples.shape[0] * c.samples.shape[1]),
            "chains": int(c.samples.shape[1]),
            "acceptance_rate": c.acceptance_rate,
            "step_size": c.step_size,
            "misfit_evaluations": c.gradient_evaluations,
            "rhat_max": self.rhat_max,
            "rhat_median": self.rhat_median,
            "ess_min": self.ess_min,
            "ess_median": self.ess_median,
            "converged": self.converged,
            "seconds": self.seconds,
        }


def refine_with_mcmc(
    posterior,
    n_steps: int,
    n_chains: int = 16,
    burn_in: int = 100,
    thin: int = 1,
    sampler: str = "mala",
    step_size: float | None = None,
    target_acceptance: float | None = None,
    rhat_limit: float = 1.05,
    ess_limit: float = 100.0,
    seed: int | None = None,
    progress: bool = False,
) -> FlowMCMCResult:
    """Exact posterior draws by MCMC in a trained VI posterior's flow latent.

    Parameters
    ----------
    posterior : VariationalPosterior
        A trained posterior (its flow unconditional, its target the posterior to draw).
    n_steps : int
        Steps per chain after burn-in (MALA: one misfit and gradient per chain; pCN: one
        misfit, forward solves only).
    n_chains : int
        Chains, each started at an independent flow draw.
    burn_in : int
        Steps discarded first, during which the step adapts to ``target_acceptance``.
    thin : int
        Keep every ``thin``-th step.
    sampler : str
        ``"mala"`` or ``"pcn"`` (module docstring).
    step_size : float, optional
        Initial step: MALA's ``h`` (latent units², default 0.2, about the optimum for
        an isotropic Gaussian of 100–1,000 dimensions) or pCN's ``β`` (default 0.5).
    target_acceptance : float, optional
        Acceptance rate the adaptation aims at (default 0.574 for MALA, 0.25 for pCN).
    rhat_limit, ess_limit : float
        The run counts as converged when split-R̂ ≤ ``rhat_limit`` and ESS ≥ ``ess_limit``
        in every coordinate.
    seed : int, optional
        Seeds the chains and their starts (``None``: torch's global generator).
    progress : bool
        A tqdm bar.

    Returns
    -------
    FlowMCMCResult
        Draws ``[n_steps // thin, n_chains, *model_shape]`` with the diagnostics.

    Raises
    ------
    InvalidArgumentError
        A count out of range, a flow without an invertible net, or a target without a
        likelihood or prior.
    """
    n_steps = check_positive_int("n_steps", n_steps)
    n_chains = check_int("n_chains", n_chains, minimum=2)  # R̂ compares chains
    thin = check_positive_int("thin", thin)
    if n_steps // thin < 4:
        raise InvalidArgumentError(
            f"n_steps={n_steps} // thin={thin} keeps {n_steps // thin} draws per chain; "
            "the diagnostics need at least 4"
        )
    if not (math.isfinite(rhat_limit) and rhat_limit >= 1.0):
        raise InvalidArgumentError(f"rhat_limit={rhat_limit!r} must be a number >= 1")
    target = posterior.target
    latent = FlowParameterization(posterior.flow, target.parameterization)
    kernel = {"mala": (MALA, 0.2, 0.574), "pcn": (PCN, 0.5, 0.25)}
    cls, h0, rate = kernel[check_choice("sampler", sampler, tuple(kernel))]
    chain = cls(
        PosteriorTarget(target.likelihood, target.prior, latent),
        step_size=h0 if step_size is None else step_size,
        target_acceptance=rate if target_acceptance is None else target_acceptance,
    )
    chain.label = f"{chain.method} in the flow latent"
    gen = torch.Generator()
    gen.manual_seed(int(torch.randint(2**62, ())) if seed is None else int(seed))
    ref = latent.reference
    # Started in the latent: a flow draw can sit on a bound of g in floating point,
    # where g⁻¹ of its model would fail.
    z0 = torch.randn(n_chains, *latent.latent_shape, generator=gen, dtype=ref.dtype)
    t0 = time.perf_counter()
    res = chain.run(
        n_steps,
        n_chains=n_chains,
        latent0=z0.to(ref.device),
        burn_in=burn_in,
        thin=thin,
        seed=int(torch.randint(2**62, (), generator=gen)),
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    draws = res.samples.double()
    rhat = split_rhat(draws).flatten()
    ess = effective_sample_size(draws).flatten()
    rhat_max, ess_min = float(rhat.max()), float(ess.min())
    return FlowMCMCResult(
        chains=res,
        rhat_max=rhat_max,
        rhat_median=float(rhat.median()),
        ess_min=ess_min,
        ess_median=float(ess.median()),
        converged=bool(rhat_max <= rhat_limit and ess_min >= ess_limit),
        seconds=seconds,
    )
