r"""Amortized posteriors: a conditional flow trained once on simulated (model, data) pairs.

Given pairs :math:`(m_i, y_i)` with :math:`m_i \sim p(m)` and :math:`y_i` simulated from
:math:`m_i` (:func:`devito_uq.io.simulate_dataset`), maximum likelihood

.. math::
    \min_\theta \; E_{(m, y)}\big[-\log q_\theta(m \mid y)\big]
    = \mathrm{const} + E_y\,\mathrm{KL}\big(p(m\mid y) \,\|\, q_\theta(m\mid y)\big)

trains a conditional flow whose :math:`q_\theta(\cdot\mid y)` approximates the posterior
for *every* ``y`` of the training distribution; a new survey then costs one pass of the
flow (Siahkoohi, Rizzuti, Witte & Herrmann 2020, "Faster uncertainty quantification for
inverse problems with conditional normalizing flows"; Orozco et al. 2024, WISE).

The flow lives where variational inference's flow lives, on the latent
:math:`x = g^{-1}(m)` of a :class:`~devito_uq.inference.Parameterization`:

.. math::
    \log q(m \mid y) = \log q_x(x \mid y) - \log|\det J_g(x)|, \qquad x = g^{-1}(m).

Raw conditions are standardized per feature with the training set's mean and standard
deviation (buffers ``cond_mean``, ``cond_scale``), then mapped by an optional ``summary``
network (trained jointly) to what the flow's ``c`` takes. For a survey outside the
training distribution, :meth:`AmortizedPosterior.correct` fits a latent correction with
the physics (:mod:`devito_uq.inference.amortized_correction`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from devito_uq.errors import CheckpointError, InvalidArgumentError, InvalidShapeError
from devito_uq.inference.amortized_correction import (
    ConditionedFlow,
    LatentCorrection,
    check_same_parameterization,
)
from devito_uq.inference.amortized_training import fit_amortized
from devito_uq.inference.parameterization import Parameterization
from devito_uq.inference.target import (
    PosteriorTarget,
    check_parameterization,
    to_latent,
    to_model,
)
from devito_uq.inference.variational import VariationalPosterior
from devito_uq.io.checkpoint import load_checkpoint, save_checkpoint
from devito_uq.validation import check_finite, check_positive_int

__all__ = ["AmortizedPosterior"]


class AmortizedPosterior(nn.Module):
    """Conditional flow ``q(m | y)`` over models ``m`` given raw conditions ``y``.

    Parameters
    ----------
    flow : nn.Module
        Conditional flow with ``log_prob(x, c)``, ``rsample_and_log_prob(n, c)``,
        ``sample(n, c)`` and ``shape`` (the model shape): ``Flow(ConditionalHINT(n,
        features), (n,))`` for vectors, or a 2D ``ConditionalImageFlow``.
    summary : nn.Module, optional
        Maps standardized raw conditions ``[b, *condition_shape]`` to the flow's ``c``
        (e.g. ``[b, features]``); ``None``: the standardized condition itself. Trained
        jointly with the flow.
    parameterization : Parameterization, optional
        ``m = g(x)`` the flow is trained in (``None``: ``m = x``); its ``model_shape``
        must equal ``flow.shape``.
    condition_shape : sequence of int, optional
        Shape of one raw condition; known after :meth:`fit`, needed before only to load
        a state dict into a fresh object (loading also resizes).

    Raises
    ------
    InvalidArgumentError
        A piece lacks what it must provide.
    InvalidShapeError
        The parameterization's model shape is not the flow's.

    Notes
    -----
    Tensors stay on the module's device (``.to(device)``, or ``fit(device=...)``):
    samples and log-densities are returned there.
    """

    def __init__(
        self,
        flow: nn.Module,
        summary: nn.Module | None = None,
        parameterization: Parameterization | None = None,
        condition_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(flow, nn.Module):
            raise InvalidArgumentError(f"flow must be an nn.Module, got {type(flow).__name__}")
        for attr in ("log_prob", "rsample_and_log_prob", "sample"):
            if not callable(getattr(flow, attr, None)):
                raise InvalidArgumentError(
                    f"flow must provide {attr}(…, c) like devito_uq.flows.Flow; "
                    f"{type(flow).__name__} does not"
                )
        if summary is not None and not isinstance(summary, nn.Module):
            raise InvalidArgumentError(
                f"summary must be an nn.Module or None, got {type(summary).__name__}"
            )
        check_parameterization(parameterization)
        shape = getattr(flow, "shape", None)
        if shape is None:
            raise InvalidArgumentError(f"flow {type(flow).__name__} has no .shape (model shape)")
        self.model_shape = tuple(int(s) for s in shape)
        if parameterization is not None and parameterization.model_shape != self.model_shape:
            raise InvalidShapeError(
                f"parameterization models have shape {parameterization.model_shape}; "
                f"the flow's have {self.model_shape}"
            )
        self.flow = flow
        self.summary = summary
        self.parameterization = parameterization
        cond = () if condition_shape is None else tuple(int(s) for s in condition_shape)
        ref = next(flow.parameters(), torch.empty(0))
        self.register_buffer("cond_mean", torch.zeros(cond, dtype=ref.dtype))
        self.register_buffer("cond_scale", torch.ones(cond, dtype=ref.dtype))
        self._has_condition_shape = condition_shape is not None
        self.history: dict[str, list[float]] = {}
        self.iteration = 0
        self.resumed_from = 0
        self.best_iteration: int | None = None
        self.best_val_nll: float | None = None

    # -- shapes, standardization ------------------------------------------------------------

    @property
    def condition_shape(self) -> tuple[int, ...] | None:
        """Shape of one raw condition (``None`` before :meth:`fit` or a load)."""
        return tuple(self.cond_mean.shape) if self._has_condition_shape else None

    def _ref(self) -> torch.Tensor:
        return next(self.flow.parameters(), self.cond_mean)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Standardization buffers take the stored condition shape (a fresh object has none).
        for name in ("cond_mean", "cond_scale"):
            t = state_dict.get(prefix + name)
            if isinstance(t, torch.Tensor) and t.shape != getattr(self, name).shape:
                old = getattr(self, name)
                setattr(self, name, torch.empty(t.shape, dtype=old.dtype, device=old.device))
                self._has_condition_shape = True
            elif isinstance(t, torch.Tensor):
                self._has_condition_shape = True
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_standardization(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Set the condition standardization.

        Parameters
        ----------
        mean, scale : torch.Tensor
            ``[*condition_shape]`` ``cond_mean`` and ``cond_scale`` (> 0).
        """
        ref = self._ref()
        self.cond_mean = mean.detach().to(device=ref.device, dtype=ref.dtype).clone()
        self.cond_scale = scale.detach().to(device=ref.device, dtype=ref.dtype).clone()
        self._has_condition_shape = True

    def features(self, condition: torch.Tensor) -> torch.Tensor:
        """What the flow's ``c`` takes: ``summary((y − cond_mean) / cond_scale)``.

        Parameters
        ----------
        condition : torch.Tensor
            ``[b, *condition_shape]`` raw conditions ``y``.

        Returns
        -------
        torch.Tensor
            ``[b, ...]`` the flow's conditioning input, differentiable.
        """
        ref = self._ref()
        y = condition.to(device=ref.device, dtype=ref.dtype)
        y = (y - self.cond_mean) / self.cond_scale
        return y if self.summary is None else self.summary(y)

    def _conditions(self, condition: Any, who: str) -> tuple[torch.Tensor, bool]:
        """``condition`` as ``[b, *condition_shape]`` and whether it was one condition."""
        cs = self.condition_shape
        if cs is None:
            raise InvalidArgumentError(
                f"{who}: the condition shape is unknown; fit() or load a trained state first"
            )
        if not isinstance(condition, torch.Tensor):
            raise InvalidArgumentError(
                f"{who}: condition must be a torch.Tensor, got {type(condition).__name__}"
            )
        if tuple(condition.shape) == cs:
            one = True
            condition = condition.unsqueeze(0)
        elif condition.dim() == len(cs) + 1 and tuple(condition.shape[1:]) == cs:
            one = False
        else:
            raise InvalidShapeError(
                f"{who}: condition has shape {tuple(condition.shape)}; expected {list(cs)} "
                f"or [batch, *{list(cs)}]"
            )
        check_finite(f"{who}: condition", condition)
        return condition, one

    # -- the model <-> latent map -------------------------------------------------------------

    def to_model(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``m = g(x)`` ``[batch, *model_shape]`` and ``log|det J_g(x)|`` ``[batch]``
        of latents ``x [batch, *model_shape]`` (:func:`~.target.to_model`)."""
        return to_model(self.parameterization, x)

    def to_latent(self, m: torch.Tensor) -> torch.Tensor:
        """``x = g⁻¹(m)`` ``[batch, *model_shape]`` for models ``[batch, *model_shape]``
        (:func:`~.target.to_latent`)."""
        return to_latent(self.parameterization, m)

    # -- training ---------------------------------------------------------------------------

    # The trainer, with its signature and documentation, is amortized_training's.
    fit = fit_amortized

    # -- after training -----------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, n: int, condition: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Posterior samples of models, drawn from torch's global generator.

        Parameters
        ----------
        n : int
            Samples per condition.
        condition : torch.Tensor
            One raw condition ``[*condition_shape]`` or a batch ``[b, *condition_shape]``.
        chunk : int
            Samples drawn from the flow at a time.

        Returns
        -------
        torch.Tensor
            ``[n, *model_shape]`` (one condition) or ``[b, n, *model_shape]``, on the
            module's device.
        """
        n = check_positive_int("n", n)
        chunk = check_positive_int("chunk", chunk)
        conds, one = self._conditions(condition, "sample")
        was = self.training
        self.eval()
        try:
            c = self.features(conds)
            out = []
            for i in range(c.shape[0]):
                ci = c[i : i + 1]
                parts = [self.flow.sample(min(chunk, n - j), ci) for j in range(0, n, chunk)]
                out.append(self.to_model(torch.cat(parts))[0])
        finally:
            self.train(was)
        return out[0] if one else torch.stack(out)

    def log_prob(self, m: torch.Tensor, condition: torch.Tensor, **kwargs) -> torch.Tensor:
        """Log-density ``log q(m | y)`` of models given raw conditions.

        Parameters
        ----------
        m : torch.Tensor
            ``[batch, *model_shape]`` models.
        condition : torch.Tensor
            One raw condition ``[*condition_shape]`` or one per model
            ``[batch, *condition_shape]``.
        **kwargs
            Passed to the flow's ``log_prob``.

        Returns
        -------
        torch.Tensor
            ``[batch]``, differentiable in ``m``.
        """
        if not isinstance(m, torch.Tensor) or tuple(m.shape[1:]) != self.model_shape:
            got = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise InvalidShapeError(f"log_prob: m must be [batch, *{self.model_shape}], got {got}")
        conds, one = self._conditions(condition, "log_prob")
        if not one and conds.shape[0] != m.shape[0]:
            raise InvalidShapeError(
                f"log_prob: {conds.shape[0]} conditions for {m.shape[0]} models; give one "
                "condition or one per model"
            )
        ref = self._ref()
        x = self.to_latent(m.to(device=ref.device, dtype=ref.dtype))
        return self.flow.log_prob(x, self.features(conds), **kwargs) - self.to_model(x)[1]

    @torch.no_grad()
    def conditioned(self, condition: torch.Tensor) -> ConditionedFlow:
        """The flow at one raw condition, for :class:`~devito_uq.inference.VariationalPosterior`.

        Parameters
        ----------
        condition : torch.Tensor
            ``[*condition_shape]`` raw condition.

        Returns
        -------
        ConditionedFlow
            A flow over latents ``x`` (``sample``, ``rsample_and_log_prob``,
            ``log_prob``, ``parameters``) sharing this flow's weights.
        """
        conds, one = self._conditions(condition, "conditioned")
        if not one:
            raise InvalidShapeError(
                f"conditioned: give one condition {list(self.condition_shape)}, "
                f"got {tuple(condition.shape)}"
            )
        was = self.training
        self.eval()
        try:
            c = self.features(conds)
        finally:
            self.train(was)
        return ConditionedFlow(self.flow, c)

    def correct(
        self,
        target: Any,
        condition: torch.Tensor,
        iterations: int,
        batch_size: int = 8,
        lr: float = 2e-2,
        lr_schedule: str | None = "cosine",
        checkpoint_path: str | os.PathLike | None = None,
        seed: int = 0,
        progress: bool = True,
        scale: str = "diagonal",
        **fit_kwargs: Any,
    ):
        """Physics-based latent correction for one survey.

        A :class:`LatentCorrection` of :meth:`conditioned` (``μ``, ``log s`` zero at the
        start: the uncorrected posterior) is trained by reverse KL against ``target``
        through :meth:`VariationalPosterior.fit
        <devito_uq.inference.VariationalPosterior.fit>`.

        Parameters
        ----------
        target : PosteriorTarget
            The survey's likelihood and the prior, in the parameterization this
            posterior was trained in, on this module's device.
        condition : torch.Tensor
            ``[*condition_shape]`` the survey's raw condition.
        iterations, batch_size, lr, lr_schedule, checkpoint_path, seed, progress
            As :meth:`VariationalPosterior.fit`, with defaults for a correction.
        scale : {"diagonal", "triangular"}
            The correction's latent scale (:class:`LatentCorrection`): per entry, or a
            dense Cholesky factor that also corrects correlations (≤ 4,096 entries).
        **fit_kwargs
            :meth:`VariationalPosterior.fit`'s other arguments (``checkpoint_every``,
            ``clip_grad``, ``identity``, ...).

        Returns
        -------
        VariationalPosterior
            The fitted correction; its ``sample(n)`` gives models through the
            target's parameterization.

        Raises
        ------
        InvalidArgumentError, InvalidShapeError
            ``target`` is no :class:`PosteriorTarget`, or its parameterization differs
            from this posterior's (shapes, bounds, reference, scale).
        """
        if not isinstance(target, PosteriorTarget):
            raise InvalidArgumentError(
                f"target must be a PosteriorTarget, got {type(target).__name__}"
            )
        check_same_parameterization(
            self.parameterization, target.parameterization, self.model_shape
        )
        vi = VariationalPosterior(LatentCorrection(self.conditioned(condition), scale), target)
        vi.fit(
            iterations,
            batch_size=batch_size,
            lr=lr,
            lr_schedule=lr_schedule,
            checkpoint_path=checkpoint_path,
            seed=seed,
            progress=progress,
            **fit_kwargs,
        )
        return vi

    # -- files ----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights and standardization (a hashed devito_uq checkpoint).

        Parameters
        ----------
        path : str or os.PathLike
            The file, written atomically.
        """
        save_checkpoint(path, {"module": self.state_dict(), "best": None})

    def load(self, path: str | os.PathLike) -> AmortizedPosterior:
        """Load :meth:`save`'s file or :meth:`fit`'s checkpoint.

        Parameters
        ----------
        path : str or os.PathLike
            The file; of a checkpoint the best-validation weights are read when it has
            them, else the last ones.

        Returns
        -------
        AmortizedPosterior
            ``self``.

        Raises
        ------
        CheckpointError
            The file is corrupt or does not fit this flow.
        """
        state = load_checkpoint(path, required=("module",))
        try:
            self.load_state_dict(state["best"] if state.get("best") else state["module"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit this flow: {exc}"
            ) from None
        return self
