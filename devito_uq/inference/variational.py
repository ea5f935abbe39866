r"""Variational inference with a normalizing flow (reverse KL).

Train :math:`T_\theta` so that :math:`m = g(T_\theta(z))`, :math:`z \sim N(0, I)`,
samples :math:`p(m \mid d) \propto \exp(-\Phi(m) - R(m))` by minimizing

.. math::
    L(\theta) = E_{z}\Big[ \underbrace{\Phi(m)}_{\text{misfit}}
        + \underbrace{R(m)}_{\text{prior}}
        + \underbrace{\log q_x(x) - \log|\det J_g(x)|}_{\log q_m(m)\ (= -\text{entropy})}\Big],
    \quad x = T_\theta(z),\ m = g(x),

which equals :math:`\mathrm{KL}(q_m \| p(\cdot\mid d)) - \log Z`. ``log q_x(x)``
(the flow's ``rsample_and_log_prob``) already contains
:math:`-\log|\det J_{T_\theta}(z)|`, the seed talk's log-determinant term.

The optimizer loop is :class:`~devito_uq.inference.training.TrainingLoop` (shared).

References
----------
Rizzuti, Siahkoohi, Witte & Herrmann, 2020, Parameterizing uncertainty by deep
invertible networks, an application to reservoir characterization.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from devito_uq.errors import InvalidArgumentError
from devito_uq.inference.parameterization import Parameterization
from devito_uq.inference.path_gradient import ESTIMATORS, frozen_log_prob
from devito_uq.inference.priors import Prior
from devito_uq.inference.summary import DEFAULT_QUANTILES, PosteriorSummary, summarize
from devito_uq.inference.target import PosteriorTarget, as_target
from devito_uq.inference.training import SCHEDULES, TrainingLoop, lr_scheduler, schedule_name
from devito_uq.validation import (
    check_allocation,
    check_bool,
    check_choice,
    check_in_range,
    check_int,
    check_positive_int,
    check_positive_scalar,
)

__all__ = ["VariationalPosterior"]

_TERMS = ("loss", "misfit", "prior", "neg_entropy")


class VariationalPosterior:
    """A flow trained by reverse KL to approximate ``p(m | d)``.

    Parameters
    ----------
    flow : nn.Module
        A ``devito_uq.flows.Flow`` (or anything with ``sample(n)``,
        ``rsample_and_log_prob(n)``, ``log_prob(x)`` and ``parameters()``) over
        latents ``[n, *model_shape]``.
    likelihood : PosteriorTarget or callable or None
        Negative log-likelihood ``m [batch, *model_shape] -> [batch]`` (e.g.
        :class:`GaussianLikelihood`), or ``None``; or a ready :class:`PosteriorTarget`
        (then no ``prior``/``parameterization``).
    prior : Prior, optional
        ``negative_log(m) -> [batch]``. At least one of ``likelihood`` and ``prior``.
    parameterization : Parameterization, optional
        ``m = g(x)`` (``None``: ``m = x``).

    Raises
    ------
    InvalidArgumentError
        The flow lacks one of the methods, or the target pieces are invalid.

    Attributes
    ----------
    history : dict of str to list of float
        After :meth:`fit`, one list per term (``iteration``, ``loss``, ``misfit``,
        ``prior``, ``neg_entropy``, ``lr``, ``beta``), batch means per iteration.
    iteration : int
        The iterations done.
    resumed_from : int
        The iteration the last :meth:`fit` resumed from (0: a fresh start).
    """

    def __init__(
        self,
        flow: nn.Module,
        likelihood: PosteriorTarget | Callable[[torch.Tensor], torch.Tensor] | None = None,
        prior: Any | None = None,
        parameterization: Parameterization | None = None,
    ) -> None:
        for attr in ("sample", "rsample_and_log_prob", "log_prob", "parameters"):
            if not callable(getattr(flow, attr, None)):
                raise InvalidArgumentError(
                    f"flow must provide {attr}() like devito_uq.flows.Flow; "
                    f"{type(flow).__name__} does not"
                )
        self.target = as_target(likelihood, prior, parameterization)
        self.flow = flow
        self.history: dict[str, list[float]] = {k: [] for k in ("iteration", *_TERMS, "lr", "beta")}
        self.iteration = 0
        self.resumed_from = 0

    @property
    def likelihood(self):
        """The target's likelihood (``None`` without one)."""
        return self.target.likelihood

    @property
    def prior(self):
        """The target's prior (``None`` without one)."""
        return self.target.prior

    @property
    def parameterization(self) -> Parameterization | None:
        """The target's parameterization (``None``: ``m = x``)."""
        return self.target.parameterization

    # -- objective ---------------------------------------------------------------------------

    def to_model(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``m = g(x)`` ``[batch, *model_shape]`` and ``log|det J_g(x)|`` ``[batch]``.

        Parameters
        ----------
        x : torch.Tensor
            ``[batch, *model_shape]`` latents.

        Returns
        -------
        tuple of torch.Tensor
            The models and the log-determinants.
        """
        return self.target.to_model(x)

    def loss_terms(
        self, batch_size: int, beta: float = 1.0, estimator: str = "reparameterization"
    ) -> dict[str, torch.Tensor]:
        """Monte-Carlo estimate of the objective and its three terms (batch means).

        Parameters
        ----------
        batch_size : int
            Latent samples drawn from the flow.
        beta : float
            Tempering of the target: ``beta · (misfit + prior) + log q_m``.
        estimator : str
            ``loss``'s gradient: ``"reparameterization"`` or ``"path"`` (the score term
            dropped, :mod:`~devito_uq.inference.path_gradient`; one more flow pass).

        Returns
        -------
        dict of str to torch.Tensor
            Scalars ``loss`` (differentiable), ``misfit``, ``prior``, ``neg_entropy``.
        """
        x, log_qx = self.flow.rsample_and_log_prob(batch_size)
        if check_choice("estimator", estimator, ESTIMATORS) == "path":
            log_qx = frozen_log_prob(self.flow, x)
        # full=False: a stochastic likelihood draws its shot subset (unbiased gradient).
        t = self.target.terms(x, full=False)
        neg_entropy = log_qx - t.logdet
        loss = beta * (t.misfit + t.prior) + neg_entropy
        return {
            "loss": loss.mean(),
            "misfit": t.misfit.mean(),
            "prior": t.prior.mean(),
            "neg_entropy": neg_entropy.mean(),
        }

    # -- training ----------------------------------------------------------------------------

    def fit(
        self,
        iterations: int,
        batch_size: int = 16,
        lr: float = 1e-3,
        lr_schedule: str | Callable[[torch.optim.Optimizer], Any] | None = None,
        clip_grad: float | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int = 100,
        seed: int = 0,
        progress: bool = True,
        temper_iterations: int = 0,
        temper_start: float = 0.1,
        callback: Callable[[int, dict[str, float]], None] | None = None,
        lr_final: float = 0.01,
        identity: dict[str, Any] | None = None,
        estimator: str = "reparameterization",
    ) -> dict[str, list[float]]:
        """Minimize the reverse-KL objective with Adam; return :attr:`history`.

        Parameters
        ----------
        iterations : int
            Total number of iterations (including any resumed ones).
        batch_size : int
            Latent samples per iteration (= likelihood gradients).
        lr : float
            Adam learning rate.
        lr_schedule : str or callable, optional
            ``None``/``"constant"``, ``"cosine"`` (to ``lr·lr_final`` at the end),
            ``"exponential"`` (same end point, geometric), or a callable
            ``optimizer -> torch LR scheduler``.
        clip_grad : float, optional
            Clip the global gradient norm to this value (``None``: off).
        checkpoint_path : str or os.PathLike, optional
            If given, write a checkpoint every ``checkpoint_every`` iterations and at
            the end; if the file exists when ``fit`` starts, training resumes from it
            and reproduces the uninterrupted run bit for bit. The checkpoint stores the
            run's identity (``seed``, ``batch_size``, ``lr``, the schedule and its
            ``lr_final``, ``clip_grad``, tempering, ``identity``) and a resume under
            another one is refused. Without a schedule, a larger ``iterations``
            extends a finished run. With an MPI likelihood (``likelihood.comm``) every
            rank computes the same state, rank 0 alone writes the file and every rank
            reads it, so a run stopped on N ranks resumes on any number of ranks (the
            folder must be shared by the ranks).
        checkpoint_every : int
            Iterations between checkpoints.
        seed : int
            Seeds torch's global generator at a fresh start (the flow draws its
            latents from it).
        progress : bool
            Show a tqdm bar with the loss and its three terms.
        temper_iterations : int
            Anneal the target, ``beta`` rising geometrically from ``temper_start`` to 1
            over this many iterations. A flattened target early on lets reverse KL
            spread over separated modes before it sharpens (it is mode-seeking
            otherwise).
        temper_start : float
            The first ``beta``, in ``(0, 1]``.
        callback : callable, optional
            Called as ``callback(iteration, terms)`` after each step.
        lr_final : float
            The learning rate at the end of a named schedule as a fraction of ``lr``,
            in ``(0, 1]``.
        identity : dict, optional
            JSON-able, whatever else the run depends on (an application's
            configuration), stored in the checkpoint and compared on resume.
        estimator : str
            ``"reparameterization"`` or ``"path"``, as in :meth:`loss_terms`.

        Returns
        -------
        dict of str to list of float
            :attr:`history`. :attr:`resumed_from` then holds the iteration it resumed
            from (0 for a fresh start), so ``iterations − resumed_from`` steps ran.

        Raises
        ------
        InvalidArgumentError
            An argument is out of range, or the flow has no trainable parameter.
        TrainingDivergedError
            The loss or its gradient became NaN/inf; the last checkpoint on disk is
            left as it was.
        CheckpointError
            The checkpoint is corrupt, belongs to another run, or is seen by only some
            of the MPI ranks; the file is left as it was.
        """
        iterations = check_positive_int("iterations", iterations)
        batch_size = check_positive_int("batch_size", batch_size)
        checkpoint_every = check_positive_int("checkpoint_every", checkpoint_every)
        temper_iterations = check_int("temper_iterations", temper_iterations, minimum=0)
        lr = check_positive_scalar("lr", lr)
        if clip_grad is not None:
            clip_grad = check_positive_scalar("clip_grad", clip_grad)
        temper_start = check_in_range("temper_start", temper_start, 0.0, 1.0, low_open=True)
        lr_final = check_in_range("lr_final", lr_final, 0.0, 1.0, low_open=True)
        if not lr * lr_final > 0.0:  # underflow: the schedule would end at a zero rate
            raise InvalidArgumentError(
                f"the final learning rate lr*lr_final={lr}*{lr_final} underflows to 0"
            )
        seed = check_int("seed", seed)
        estimator = check_choice("estimator", estimator, ESTIMATORS)
        progress = check_bool("progress", progress)
        if identity is not None and not isinstance(identity, dict):
            what = type(identity).__name__
            raise InvalidArgumentError(f"identity must be a dict or None, got {what}")
        params = [p for p in self.flow.parameters() if p.requires_grad]
        if not params:
            raise InvalidArgumentError("the flow has no trainable parameters")
        # fused: one kernel for all parameters; torch's CPU default loops over them
        # (~50 small tensors for a HINT: 3-14 ms of an AVP VI step, 0.5 ms fused).
        optimizer = torch.optim.Adam(params, lr=lr, fused=True)
        scheduler = lr_scheduler(lr_schedule, optimizer, iterations, lr_final)
        run = dict(seed=seed, batch_size=batch_size, iterations=iterations, lr=lr)
        run.update(lr_schedule=schedule_name(lr_schedule), lr_final=lr_final)
        run.update(clip_grad=clip_grad, temper_iterations=temper_iterations)
        run.update(temper_start=temper_start, identity=identity, estimator=estimator)
        keys = ["seed", "batch_size", "lr", "lr_schedule", "clip_grad"]
        keys += ["temper_iterations", "temper_start", "estimator"]
        if scheduler is not None:
            # A schedule depends on the total iteration count; without one, a finished
            # run may be extended by asking for more iterations.
            keys.append("iterations")
            if run["lr_schedule"] in SCHEDULES:  # a named schedule ends at lr·lr_final
                keys.append("lr_final")
        lik = self.likelihood
        has_rng = hasattr(lik, "get_rng_state") and hasattr(lik, "set_rng_state")
        loop = TrainingLoop(
            self,
            self.flow,
            params,
            optimizer,
            scheduler,
            run,
            keys,
            ("iteration", *_TERMS, "lr", "beta"),
            checkpoint_path=checkpoint_path,
            checkpoint_every=checkpoint_every,
            module_key="flow",
            # With an MPI likelihood every rank holds the same state: rank 0 writes.
            comm=getattr(lik, "comm", None),
            # A flow on a GPU draws its latents from the CUDA generators.
            cuda_devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else (),
            generators={"likelihood_rng": lik} if has_rng else None,
            clip_grad=clip_grad,
            progress=progress,
            desc="VI",
            what="flow/optimizer",
        )

        def step(it: int) -> tuple[torch.Tensor, tuple[dict[str, torch.Tensor], float]]:
            beta = 1.0 if it >= temper_iterations else temper_start ** (1 - it / temper_iterations)
            terms = self.loss_terms(batch_size, beta, estimator)
            return terms["loss"], (terms, beta)

        def record(it: int, aux, lr: float) -> dict[str, float]:
            terms, beta = aux
            values = {k: float(v.detach()) for k, v in terms.items()}
            for k, v in values.items():
                self.history[k].append(v)
            self.history["beta"].append(beta)
            return values

        loop.run(iterations, seed, step, record, _postfix, callback)
        return self.history

    # -- after training ----------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, chunk: int = 1024) -> torch.Tensor:
        """Posterior samples ``m = g(T(z))`` (no PDE solves).

        Parameters
        ----------
        n : int
            Number of samples.
        chunk : int
            Samples drawn from the flow at a time.

        Returns
        -------
        torch.Tensor
            ``[n, *model_shape]`` models, on the flow's device.

        Raises
        ------
        InsufficientMemoryError
            The samples would not fit in memory.
        """
        n = check_positive_int("n", n)
        chunk = check_positive_int("chunk", chunk)
        shape = getattr(self.flow, "shape", None)
        ref = next(iter(self.flow.parameters()), None)
        if shape is not None and ref is not None:
            # The chunks and their concatenation, refused before the first chunk.
            check_allocation(
                f"drawing n={n} posterior samples of shape {tuple(shape)}",
                2 * n * math.prod(shape) * ref.element_size(),
                ref.device,
                minimum=2**26,
            )
        out = []
        for i in range(0, n, chunk):
            x = self.flow.sample(min(chunk, n - i))
            out.append(self.to_model(x)[0])
        return torch.cat(out)

    def log_prob(self, m: torch.Tensor) -> torch.Tensor:
        """Log-density of the approximate posterior over models.

        Parameters
        ----------
        m : torch.Tensor
            ``[batch, *model_shape]`` models (inside the parameterization's bounds).

        Returns
        -------
        torch.Tensor
            ``[batch]`` ``log q(m)``, exact via the flow's inverse, differentiable in ``m``.
        """
        x = self.target.to_latent(m)
        return self.flow.log_prob(x) - self.target.to_model(x)[1]

    def as_prior(self) -> Prior:
        """The trained posterior as a prior for a related inversion.

        Returns
        -------
        Prior
            ``negative_log(m) = −log q(m)`` ``[batch]``, e.g. for the next survey of a
            time-lapse study.
        """
        return _FlowPrior(self)

    def summary(
        self, n: int = 1000, quantiles: Sequence[float] = DEFAULT_QUANTILES
    ) -> PosteriorSummary:
        """Summary statistics of fresh samples.

        Parameters
        ----------
        n : int
            Number of samples.
        quantiles : sequence of float
            Quantile levels in ``[0, 1]``.

        Returns
        -------
        PosteriorSummary
            Mean, standard deviation and quantiles, each ``[*model_shape]``.
        """
        return summarize(self.sample(n), quantiles)


def _postfix(values: dict[str, float]) -> dict[str, str]:
    """The progress bar's fields (a dict keeps this order; keywords would be sorted)."""
    return {
        "loss": f"{values['loss']:.4g}",
        "misfit": f"{values['misfit']:.4g}",
        "prior": f"{values['prior']:.4g}",
        "-H": f"{values['neg_entropy']:.4g}",
    }


class _FlowPrior(Prior):
    """``R(m) = −log q(m)`` of a trained :class:`VariationalPosterior`."""

    def __init__(self, posterior: VariationalPosterior) -> None:
        super().__init__()
        self.posterior = posterior

    def negative_log(self, m: torch.Tensor) -> torch.Tensor:
        return -self.posterior.log_prob(m)
