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

References:
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
from tqdm.auto import tqdm

from devito_uq.errors import CheckpointError, InvalidArgumentError, TrainingDivergedError
from devito_uq.inference.parameterization import Parameterization
from devito_uq.inference.priors import Prior
from devito_uq.inference.summary import DEFAULT_QUANTILES, PosteriorSummary, summarize
from devito_uq.inference.target import PosteriorTarget, as_target
from devito_uq.io.checkpoint import (
    check_identity,
    checkpoint_exists,
    load_checkpoint,
    save_checkpoint,
)
from devito_uq.parallel import rank_and_size
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
_SCHEDULES = ("constant", "cosine", "exponential")


class VariationalPosterior:
    """A flow trained by reverse KL to approximate ``p(m | d)``.

    Args:
        flow: a ``devito_uq.flows.Flow`` (or anything with ``sample(n)``,
            ``rsample_and_log_prob(n)``, ``log_prob(x)`` and ``parameters()``)
            over latents ``[n, *model_shape]``.
        likelihood: callable ``m [batch, *model_shape] -> [batch]`` negative
            log-likelihood (e.g. :class:`GaussianLikelihood`), or ``None``; or a
            ready :class:`PosteriorTarget` (then no ``prior``/``parameterization``).
        prior: a prior (``negative_log(m) -> [batch]``) or ``None``. At least one
            of ``likelihood`` and ``prior`` must be given.
        parameterization: :class:`Parameterization` ``m = g(x)`` (``None``: ``m = x``).

    After :meth:`fit`, ``history`` holds one list per term (``iteration``, ``loss``,
    ``misfit``, ``prior``, ``neg_entropy``, ``lr``, ``beta``), batch means per
    iteration, ``iteration`` the iterations done and ``resumed_from`` the iteration
    the last :meth:`fit` resumed from (0: a fresh start).
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
        """``m = g(x)`` and ``log|det J_g(x)|`` ``[batch]``."""
        return self.target.to_model(x)

    def loss_terms(self, batch_size: int, beta: float = 1.0) -> dict[str, torch.Tensor]:
        """Monte-Carlo estimate of the objective and its three terms (batch means).

        ``beta`` tempers the target: ``beta · (misfit + prior) + log q_m``.
        """
        x, log_qx = self.flow.rsample_and_log_prob(batch_size)
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
    ) -> dict[str, list[float]]:
        """Minimize the reverse-KL objective with Adam; return :attr:`history`.

        Args:
            iterations: total number of iterations (including any resumed ones).
            batch_size: latent samples per iteration (= likelihood gradients).
            lr: Adam learning rate.
            lr_schedule: ``None``/``"constant"``, ``"cosine"`` (to ``lr·lr_final`` at
                the end), ``"exponential"`` (same end point, geometric), or a callable
                ``optimizer -> torch LR scheduler``.
            clip_grad: clip the global gradient norm to this value (``None``: off).
            checkpoint_path: if given, write a checkpoint every ``checkpoint_every``
                iterations and at the end; if the file exists when ``fit`` starts,
                training resumes from it and reproduces the uninterrupted run bit
                for bit. The checkpoint stores the run's identity (``seed``,
                ``batch_size``, ``lr``, the schedule and its ``lr_final``, ``clip_grad``,
                tempering, ``identity``) and a resume under another one is refused.
                Without a schedule, a larger ``iterations`` extends a finished run.
                With an MPI likelihood (``likelihood.comm``) every rank computes the
                same state, rank 0 alone writes the file and every rank reads it, so
                a run stopped on N ranks resumes on any number of ranks (the folder
                must be shared by the ranks).
            seed: seeds torch's global generator at a fresh start (the flow draws
                its latents from it).
            progress: show a tqdm bar with the loss and its three terms.
            temper_iterations: anneal the target, ``beta`` rising geometrically
                from ``temper_start`` to 1 over this many iterations. A flattened
                target early on lets reverse KL spread over separated modes
                before it sharpens (it is mode-seeking otherwise).
            callback: called as ``callback(iteration, terms)`` after each step.
            lr_final: the learning rate at the end of a named schedule as a fraction of
                ``lr``, in ``(0, 1]``.
            identity: JSON-able ``dict`` of whatever else the run depends on (an
                application's configuration), stored in the checkpoint and compared
                on resume.

        After the call :attr:`resumed_from` holds the iteration it resumed from (0 for
        a fresh start), so ``iterations − resumed_from`` steps ran in this call.

        Raises:
            TrainingDivergedError: the loss or its gradient became NaN/inf; the
                last checkpoint on disk is left as it was.
            CheckpointError: the checkpoint is corrupt, belongs to another run, or is
                seen by only some of the MPI ranks; the file is left as it was.
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
        progress = check_bool("progress", progress)
        if identity is not None and not isinstance(identity, dict):
            raise InvalidArgumentError(
                f"identity must be a dict or None, got {type(identity).__name__}"
            )
        params = [p for p in self.flow.parameters() if p.requires_grad]
        if not params:
            raise InvalidArgumentError("the flow has no trainable parameters")
        # fused: one kernel for all parameters; torch's CPU default loops over them
        # (~50 small tensors for a HINT: 3-14 ms of an AVP VI step, 0.5 ms fused).
        optimizer = torch.optim.Adam(params, lr=lr, fused=True)
        scheduler = _scheduler(lr_schedule, optimizer, iterations, lr_final)
        run = {
            "seed": seed,
            "batch_size": batch_size,
            "iterations": iterations,
            "lr": lr,
            "lr_schedule": _schedule_name(lr_schedule),
            "lr_final": lr_final,
            "clip_grad": clip_grad,
            "temper_iterations": temper_iterations,
            "temper_start": temper_start,
            "identity": identity,
        }
        # One writer: with an MPI likelihood every rank holds the same state.
        comm = getattr(self.likelihood, "comm", None)
        writer = rank_and_size(comm)[0] == 0

        resumed = checkpoint_path is not None and checkpoint_exists(checkpoint_path, comm)
        start = self._resume(checkpoint_path, optimizer, scheduler, run) if resumed else 0
        # Callers (the applications) read where this fit started instead of opening
        # the checkpoint themselves.
        self.resumed_from = start
        if not resumed:
            torch.manual_seed(seed)
            self.history = {k: [] for k in self.history}

        def beta_at(it: int) -> float:
            if it >= temper_iterations:
                return 1.0
            return temper_start ** (1.0 - it / temper_iterations)

        bar = tqdm(
            range(start, iterations),
            initial=start,
            total=iterations,
            disable=not progress,
            desc="VI",
            dynamic_ncols=True,
        )
        for it in bar:
            beta = beta_at(it)
            optimizer.zero_grad(set_to_none=True)
            terms = self.loss_terms(batch_size, beta)
            loss = terms["loss"]
            if not torch.isfinite(loss):
                self._diverged(it, f"loss is {loss.item()}", checkpoint_path)
            loss.backward()
            if clip_grad is not None:
                gnorm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
            else:  # the norm only (for the divergence check): no scaling pass by 1.0
                gnorm = torch.nn.utils.get_total_norm(
                    [p.grad for p in params if p.grad is not None]
                )
            if not torch.isfinite(gnorm):
                # Stepping would write NaN into the flow (and the next checkpoint).
                self._diverged(it, f"gradient norm is {gnorm.item()}", checkpoint_path)
            current_lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            values = {k: float(v.detach()) for k, v in terms.items()}
            self.iteration = it + 1
            for k, v in values.items():
                self.history[k].append(v)
            self.history["iteration"].append(it + 1)
            self.history["lr"].append(current_lr)
            self.history["beta"].append(beta)
            if progress and (it % 10 == 0 or it + 1 == iterations):
                # A dict keeps this order (keyword arguments would be sorted by name).
                bar.set_postfix(
                    {
                        "loss": f"{values['loss']:.4g}",
                        "misfit": f"{values['misfit']:.4g}",
                        "prior": f"{values['prior']:.4g}",
                        "-H": f"{values['neg_entropy']:.4g}",
                    },
                    refresh=False,
                )
            if (
                writer
                and checkpoint_path is not None
                and ((it + 1) % checkpoint_every == 0 or it + 1 == iterations)
            ):
                self._save(checkpoint_path, optimizer, scheduler, run)
            if callback is not None:
                callback(it + 1, values)
        bar.close()
        return self.history

    def _diverged(self, it: int, what: str, path) -> None:
        kept = (
            f"; the last good checkpoint {str(path)!r} is kept"
            if path is not None and os.path.exists(path)
            else ""
        )
        raise TrainingDivergedError(f"training diverged at iteration {it + 1}: {what}{kept}")

    def _state(self, optimizer, scheduler, run) -> dict[str, Any]:
        state = {
            "iteration": self.iteration,
            "run": run,
            "flow": self.flow.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
        }
        if torch.cuda.is_available():
            # A flow on a GPU draws its latents from the CUDA generators.
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if hasattr(self.likelihood, "get_rng_state"):
            state["likelihood_rng"] = self.likelihood.get_rng_state()
        return state

    def _save(self, path, optimizer, scheduler, run) -> None:
        save_checkpoint(path, self._state(optimizer, scheduler, run))

    def _resume(self, path, optimizer, scheduler, run) -> int:
        state = load_checkpoint(
            path, required=("iteration", "run", "flow", "optimizer", "torch_rng", "history")
        )
        keys = ["seed", "batch_size", "lr", "lr_schedule", "clip_grad", "temper_iterations"]
        keys.append("temper_start")
        if scheduler is not None:
            # A schedule depends on the total iteration count; without one, a finished
            # run may be extended by asking for more iterations.
            keys.append("iterations")
            if run["lr_schedule"] in _SCHEDULES:  # a named schedule ends at lr·lr_final
                keys.append("lr_final")
        saved = state["run"]
        check_identity(path, saved, run, keys)
        if run["identity"] is not None or saved.get("identity") is not None:
            # Key by key, so that the message names the field that differs.
            check_identity(path, saved.get("identity") or {}, run["identity"] or {})
        try:
            self.flow.load_state_dict(state["flow"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit this flow/optimizer: {exc}"
            ) from exc
        if scheduler is not None:
            if state.get("scheduler") is None:
                raise CheckpointError(f"checkpoint {str(path)!r} was written without lr_schedule")
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            if len(state["cuda_rng"]) != torch.cuda.device_count():
                raise CheckpointError(
                    f"checkpoint {str(path)!r} holds {len(state['cuda_rng'])} CUDA generator "
                    f"states, this machine has {torch.cuda.device_count()} GPUs"
                )
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if "likelihood_rng" in state and hasattr(self.likelihood, "set_rng_state"):
            self.likelihood.set_rng_state(state["likelihood_rng"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.iteration = int(state["iteration"])
        return self.iteration

    # -- after training ----------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, chunk: int = 1024) -> torch.Tensor:
        """``[n, *model_shape]`` posterior samples ``m = g(T(z))`` (no PDE solves)."""
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
        """``[batch]`` log-density of the approximate posterior over ``m`` (exact, via
        the flow's inverse; differentiable in ``m``)."""
        x = self.target.to_latent(m)
        return self.flow.log_prob(x) - self.target.to_model(x)[1]

    def as_prior(self) -> Prior:
        """The trained posterior as a prior (``negative_log = −log q``) for a related
        inversion, e.g. the next survey of a time-lapse study."""
        return _FlowPrior(self)

    def summary(
        self, n: int = 1000, quantiles: Sequence[float] = DEFAULT_QUANTILES
    ) -> PosteriorSummary:
        """:class:`PosteriorSummary` of ``n`` fresh samples."""
        return summarize(self.sample(n), quantiles)


def _schedule_name(spec) -> str:
    """The schedule as stored in a checkpoint (a callable cannot be compared)."""
    if spec is None:
        return "constant"
    return "callable" if callable(spec) else str(spec)


def _scheduler(spec, optimizer, iterations: int, lr_final: float):
    if spec is None or callable(spec):
        return None if spec is None else spec(optimizer)
    check_choice("lr_schedule", spec, _SCHEDULES)
    if spec == "constant":
        return None
    if spec == "cosine":
        lr0 = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=iterations, eta_min=lr0 * lr_final
        )
    return torch.optim.lr_scheduler.ExponentialLR(
        optimizer, gamma=lr_final ** (1.0 / max(iterations, 1))
    )


class _FlowPrior(Prior):
    """``R(m) = −log q(m)`` of a trained :class:`VariationalPosterior`."""

    def __init__(self, posterior: VariationalPosterior) -> None:
        super().__init__()
        self.posterior = posterior

    def negative_log(self, m: torch.Tensor) -> torch.Tensor:
        return -self.posterior.log_prob(m)
