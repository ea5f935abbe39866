r"""Data and posterior of the Sleipner AVP experiment.

Posterior of a 1D squared-slowness profile ``m(z)`` (128 samples, dz = 3.048 m)
from plane-wave (τ-p) data at the configured ray parameters:

.. math::
    p(m \mid d) \propto \exp\Big(-\frac{1}{2\sigma^2}\|d - F(m)\|^2
        - \frac{1}{2\sigma_p^2}\|D m\|^2\Big),\qquad m > m_{\min}.

Defaults follow the original scripts (slimgroup/Software.SEG2020,
rizzuti2020SEGuqavp): ``p = sin θ / v_min`` with ``v_min`` the slowest velocity of
the **true** model (the original used ``sqrt(max(m_true))``), white noise at the
configured SNR relative to the scattered data ``d(m_true) − d(m_background)``, a
Gaussian first-difference prior with ``σ_p² = s‖D m_true‖²`` (the original's recipe,
which uses the truth to set the prior's strength), a lower bound on ``m`` and a HINT
flow over the whole profile.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import torch

from devito_uq.apps.avp.config import AVPConfig
from devito_uq.flows import HINT, Flow
from devito_uq.inference import (
    GaussianLikelihood,
    Parameterization,
    PosteriorSummary,
    PosteriorTarget,
    SmoothnessPrior,
    VariationalPosterior,
    sigma_from_snr,
)
from devito_uq.physics import PlaneWaveModeling, ray_parameters_from_angles

__all__ = [
    "SLEIPNER_DZ",
    "AVPProblem",
    "AVPResults",
    "load_sleipner",
    "build_problem",
    "make_flow",
    "fit_vi",
]

#: Depth spacing of the shipped Sleipner profile, m (10 ft).
SLEIPNER_DZ = 3.048


def load_sleipner() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shipped Sleipner profile: ``depth`` (m), ``m_true``, ``m_background`` (s²/km²).

    All three are float64 ``[128]``; the CSV stores s²/m², converted here (×10⁶).
    """
    text = resources.files("devito_uq").joinpath("data/sleipner_profile.csv").read_text()
    rows = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    arr = np.array([[float(v) for v in ln.split(",")] for ln in rows[1:]])
    depth = torch.from_numpy(arr[:, 0].copy())
    return depth, torch.from_numpy(arr[:, 1] * 1e6), torch.from_numpy(arr[:, 2] * 1e6)


def _torch_dtype(config: AVPConfig) -> torch.dtype:
    return torch.float32 if config.dtype == "float32" else torch.float64


@dataclass
class AVPProblem:
    """The posterior's ingredients, all on the same data.

    ``m_*`` are ``[nz]`` in s²/km²; ``data`` is ``[p, nt]``; ``ray_parameters`` in s/km.
    """

    config: AVPConfig
    depth: torch.Tensor
    m_true: torch.Tensor
    m_background: torch.Tensor
    ray_parameters: np.ndarray
    operator: PlaneWaveModeling
    data: torch.Tensor
    data_clean: torch.Tensor
    sigma: float
    likelihood: GaussianLikelihood
    prior: SmoothnessPrior
    parameterization: Parameterization

    @property
    def target(self) -> PosteriorTarget:
        """The posterior target every sampler of the experiment uses."""
        return PosteriorTarget(self.likelihood, self.prior, self.parameterization)


def build_problem(config: AVPConfig) -> AVPProblem:
    """Synthesize the noisy data and assemble likelihood, prior and parameterization."""
    config.validate()
    tdtype = _torch_dtype(config)
    depth, m_true, m_bg = load_sleipner()
    v_min = 1.0 / math.sqrt(float(m_true.max()))  # slowest velocity of the true model
    angles = np.linspace(config.angle_min, config.angle_max, config.n_angles)
    p = ray_parameters_from_angles(angles, v_min)
    op = PlaneWaveModeling(
        p, nz=m_true.numel(), dz=SLEIPNER_DZ, t1=config.t1, dt=config.dt, corners=config.corners
    )
    with torch.no_grad():
        d_true = op(m_true.to(tdtype))
        d_bg = op(m_bg.to(tdtype))
    sigma = sigma_from_snr(d_true - d_bg, config.snr_db)
    gen = torch.Generator().manual_seed(config.seed)
    noise = torch.randn(d_true.shape, generator=gen, dtype=torch.float64).to(tdtype)
    data = d_true + sigma * noise
    likelihood = GaussianLikelihood(op, data, sigma=sigma)
    diff = torch.diff(m_true) / SLEIPNER_DZ
    sigma_p = math.sqrt(config.prior_strength) * float(torch.linalg.norm(diff))
    prior = SmoothnessPrior(sigma=sigma_p, axes=(0,), spacing=SLEIPNER_DZ)
    param = Parameterization(m_bg.to(tdtype), scale=config.scale, lower=config.lower)
    return AVPProblem(
        config, depth, m_true, m_bg, p, op, data, d_true, sigma, likelihood, prior, param
    )


def make_flow(config: AVPConfig, n: int) -> Flow:
    """HINT over the whole profile of ``n`` depths (dense mixing of all depths).

    ``config.flow_leaf`` ≥ ``n`` (the default, 128) gives one full-width coupling per
    step, as :class:`HINT`'s own default: measured in ``benchmarks/bench_avp.py`` it
    halves the flow's share of a VI iteration against the former ``leaf_size=32``
    recursion at an unchanged posterior (see ``benchmarks/results/bench_avp.md``).
    ``memory_frugal="auto"`` keeps plain autograd: a batch of 8 profiles stores far
    less than the threshold where recomputation pays.
    """
    net = HINT(
        n,
        steps=config.flow_steps,
        hidden=config.flow_hidden,
        leaf_size=min(config.flow_leaf, n),
        memory_frugal="auto",
    )
    return Flow(net, (n,)).to(_torch_dtype(config))


def fit_vi(
    problem: AVPProblem,
    iterations: int,
    *,
    batch_size: int,
    lr: float,
    seed: int,
    target: PosteriorTarget | None = None,
    lr_schedule: str | Callable[[torch.optim.Optimizer], Any] = "exponential",
    lr_final: float = 0.01,
    init_seed: int | None = None,
    progress: bool = False,
    estimator: str = "reparameterization",
    temper_iterations: int = 0,
    **checkpointing: Any,
) -> VariationalPosterior:
    """A fresh HINT flow over the profile fitted by VI: the per-survey fit of the AVP
    experiment, its calibration and the amortized study.

    Parameters
    ----------
    problem : AVPProblem
        The flow is :func:`make_flow` of ``problem.config`` over its ``nz`` depths.
    iterations : int
        VI iterations of ``batch_size`` flow samples each.
    batch_size, lr, seed, lr_schedule, lr_final, progress, estimator, temper_iterations
        As :meth:`VariationalPosterior.fit` (``seed`` seeds torch's global generator at
        a fresh start).
    target : PosteriorTarget, optional
        The posterior fitted (default ``problem.target``, the Sleipner data's).
    init_seed : int, optional
        Seed of the flow's initial weights, drawn with the global generator's state
        kept; ``None``: drawn from the global generator as it stands.
    **checkpointing
        ``checkpoint_path``, ``checkpoint_every``, ``callback``, ``identity`` of
        :meth:`VariationalPosterior.fit`.

    Returns
    -------
    VariationalPosterior
        The trained posterior (``resumed_from`` says where a checkpointed fit started).
    """
    n = problem.m_background.numel()
    if init_seed is None:
        flow = make_flow(problem.config, n)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            flow = make_flow(problem.config, n)
    vi = VariationalPosterior(flow, problem.target if target is None else target)
    vi.fit(
        iterations,
        batch_size=batch_size,
        lr=lr,
        lr_schedule=lr_schedule,
        lr_final=lr_final,
        seed=seed,
        progress=progress,
        estimator=estimator,
        temper_iterations=temper_iterations,
        **checkpointing,
    )
    return vi


@dataclass
class AVPResults:
    """What MAP, MALA and VI produced on the Sleipner data, for the summary and the figures.

    ``m_map`` ``[nz]``; ``vi_samples`` / ``mala_samples`` ``[n, nz]`` (s²/km²);
    ``d_mean`` / ``d_background`` ``[p, nt]``, the data of the VI mean and of the
    background model; ``refined_summary`` that of VI refined by MCMC in its latent
    (``None`` without refinement).
    """

    m_map: torch.Tensor
    vi_samples: torch.Tensor
    mala_samples: torch.Tensor
    vi_summary: PosteriorSummary
    mala_summary: PosteriorSummary
    history: dict[str, list[float]]
    d_mean: torch.Tensor
    d_background: torch.Tensor
    refined_summary: PosteriorSummary | None = None
