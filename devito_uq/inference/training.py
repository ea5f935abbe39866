"""One resumable training loop: checkpoints, resume, RNG states, run identity, divergence.

:class:`TrainingLoop` runs the optimizer steps of :meth:`VariationalPosterior.fit
<devito_uq.inference.VariationalPosterior.fit>` and of :func:`fit_amortized
<devito_uq.inference.amortized_training.fit_amortized>`. A caller hands it a per-step
callable (its loss: the ELBO, the minibatch NLL) and a record callable (its own history,
validation, best state); the loop owns what both share:

- a fresh start (torch's generator seeded, an empty history) or a resume from the
  checkpoint file, refused with :class:`~devito_uq.errors.CheckpointError` when the file
  belongs to another run (:func:`~devito_uq.io.checkpoint.check_identity`);
- the step: gradient, optional norm clipping, a NaN/inf loss or gradient norm raising
  :class:`~devito_uq.errors.TrainingDivergedError` (the last checkpoint kept), Adam,
  the learning-rate schedule;
- checkpoints every ``checkpoint_every`` steps and at the end, written atomically by
  rank 0 alone under MPI, holding the weights, optimizer, schedule, history, the torch
  (CPU and CUDA), numpy and Python generator states and any named generator (a
  stochastic likelihood's shot subsets), so that a resume continues bit for bit;
- the progress bar and the ``iteration``/``lr`` columns of the history.

Checkpoint entries: ``iteration``, ``run``, the module's state under ``module_key``,
``optimizer``, ``scheduler``, ``torch_rng``, ``numpy_rng``, ``python_rng``,
``history``, ``cuda_rng`` (a list, one per CUDA device used), the named generators'
states, and the caller's extra entries.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from devito_uq.errors import CheckpointError, TrainingDivergedError
from devito_uq.io.checkpoint import (
    check_identity,
    checkpoint_exists,
    load_checkpoint,
    save_checkpoint,
)
from devito_uq.parallel import rank_and_size
from devito_uq.validation import check_choice

__all__ = ["SCHEDULES", "TrainingLoop", "lr_scheduler", "schedule_name"]

#: The named learning-rate schedules of :func:`lr_scheduler`.
SCHEDULES = ("constant", "cosine", "exponential")

#: ``step(iteration) -> (loss, aux)``: the scalar loss (with its graph) and what the
#: record callable needs of this step.
Step = Callable[[int], tuple[torch.Tensor, Any]]
#: ``record(iteration, aux, lr) -> values``: append to the history after the optimizer
#: step; ``values`` go to the callback and the progress bar.
Record = Callable[[int, Any, float], dict[str, float]]


def schedule_name(spec: str | Callable | None) -> str:
    """The schedule's name as stored in a checkpoint (a callable cannot be compared).

    Parameters
    ----------
    spec : str or callable or None
        :func:`lr_scheduler`'s ``spec``.

    Returns
    -------
    str
        ``"constant"`` for ``None``, ``"callable"`` for a callable, else ``spec``.
    """
    if spec is None:
        return "constant"
    return "callable" if callable(spec) else str(spec)


def lr_scheduler(
    spec: str | Callable | None,
    optimizer: torch.optim.Optimizer,
    iterations: int,
    lr_final: float,
) -> Any:
    """A learning-rate schedule from its name.

    Parameters
    ----------
    spec : str or callable or None
        ``None``/``"constant"``; ``"cosine"``, annealed to ``lr·lr_final`` at
        ``iterations``; ``"exponential"``, geometric to the same end point; or a
        callable ``optimizer -> torch LR scheduler``.
    optimizer : torch.optim.Optimizer
        Its first parameter group's ``lr`` is the starting rate.
    iterations : int
        The steps of the whole run.
    lr_final : float
        The final rate as a fraction of the starting one, in ``(0, 1]``.

    Returns
    -------
    torch.optim.lr_scheduler.LRScheduler or None
        ``None`` for a constant rate.

    Raises
    ------
    InvalidArgumentError
        ``spec`` names no schedule of :data:`SCHEDULES`.
    """
    if spec is None or callable(spec):
        return None if spec is None else spec(optimizer)
    check_choice("lr_schedule", spec, SCHEDULES)
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


def _global_rng_state() -> dict[str, Any]:
    """numpy's and Python's global generator states as checkpoint entries."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    version, words, gauss_next = random.getstate()
    return {
        "numpy_rng": {
            "name": name,
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python_rng": [version, list(words), gauss_next],
    }


def _set_global_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`_global_rng_state` returned (entries absent: left alone)."""
    if state.get("numpy_rng") is not None:
        s = state["numpy_rng"]
        key = s["key"].numpy().astype(np.uint32)
        np.random.set_state((s["name"], key, s["pos"], s["has_gauss"], s["gauss"]))
    if state.get("python_rng") is not None:
        version, words, gauss_next = state["python_rng"]
        random.setstate((version, tuple(words), gauss_next))


class TrainingLoop:
    """Resumable optimizer loop shared by variational and amortized training.

    Parameters
    ----------
    owner : object
        Holds the run's results: ``history`` (``dict[str, list]``),
        ``iteration`` (``int``) and ``resumed_from`` (``int``) are set on it.
    module : nn.Module
        What is trained; its ``state_dict`` is checkpointed under ``module_key``.
    params : sequence of torch.nn.Parameter
        The trainable parameters (for the gradient norm and its clipping).
    optimizer : torch.optim.Optimizer
        Stepped once per iteration.
    scheduler : torch.optim.lr_scheduler.LRScheduler or None
        Stepped after the optimizer (``None``: a constant rate).
    run : dict
        The run's identity (JSON-able), stored in the checkpoint; its optional
        ``"identity"`` entry (a caller's dict) is compared key by key on resume.
    identity_keys : sequence of str
        The entries of ``run`` a resume must match.
    history_keys : sequence of str
        The columns of a fresh history; must include ``"iteration"`` and ``"lr"``.
    checkpoint_path : str or os.PathLike, optional
        The checkpoint file (``None``: none). If it exists when :meth:`run` starts,
        training resumes from it.
    checkpoint_every : int
        Steps between checkpoints (one more at the end).
    module_key : str
        Checkpoint entry of the module's state dict.
    comm : mpi4py communicator, optional
        Every rank computes the same state; rank 0 alone writes, every rank reads.
    cuda_devices : sequence of torch.device or int
        CUDA devices whose generators are saved and restored.
    generators : mapping of str to object
        Named objects with ``get_rng_state()``/``set_rng_state(state)`` (a stochastic
        likelihood), saved under their names.
    extra_state : callable, optional
        ``() -> dict`` of further checkpoint entries (a best-validation state).
    load_extra : callable, optional
        ``(state: dict) -> None``: read those entries back on resume.
    clip_grad : float, optional
        Clip the global gradient norm to this value (``None``: no clipping).
    isolate_rng : bool
        Leave the caller's torch (CPU and ``cuda_devices``), numpy and Python generators
        as they were before :meth:`run`.
    progress : bool
        Show a tqdm bar.
    desc : str
        The bar's label.
    what : str
        What the module is, for the error of a checkpoint that does not fit it.
    """

    def __init__(
        self,
        owner: Any,
        module: nn.Module,
        params: Sequence[nn.Parameter],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        run: dict[str, Any],
        identity_keys: Sequence[str],
        history_keys: Sequence[str],
        *,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int = 100,
        module_key: str = "module",
        comm: Any = None,
        cuda_devices: Sequence[torch.device | int] = (),
        generators: Mapping[str, Any] | None = None,
        extra_state: Callable[[], dict[str, Any]] | None = None,
        load_extra: Callable[[dict[str, Any]], None] | None = None,
        clip_grad: float | None = None,
        isolate_rng: bool = False,
        progress: bool = True,
        desc: str = "train",
        what: str = "module",
    ) -> None:
        self.owner, self.module, self.params = owner, module, list(params)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.run_identity, self.identity_keys = run, list(identity_keys)
        self.history_keys = tuple(history_keys)
        self.path, self.every, self.module_key = checkpoint_path, checkpoint_every, module_key
        self.comm, self.cuda_devices = comm, list(cuda_devices)
        self.generators = dict(generators or {})
        self.extra_state, self.load_extra = extra_state, load_extra
        self.clip_grad, self.isolate_rng = clip_grad, isolate_rng
        self.progress, self.desc, self.what = progress, desc, what

    # -- the loop -----------------------------------------------------------------------------

    def run(
        self,
        iterations: int,
        seed: int,
        step: Step,
        record: Record,
        postfix: Callable[[dict[str, float]], dict[str, str]] | None = None,
        callback: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        """Train up to ``iterations`` steps in all, resuming from the checkpoint if any.

        Parameters
        ----------
        iterations : int
            Total number of steps, resumed ones included.
        seed : int
            Seeds torch's global generator at a fresh start.
        step : callable
            ``step(iteration) -> (loss, aux)``: the scalar loss, after the gradients
            were zeroed, and what ``record`` needs.
        record : callable
            ``record(iteration, aux, lr) -> values`` after the optimizer step: the
            caller's history columns (the loop appends ``iteration`` and ``lr``).
        postfix : callable, optional
            ``values -> dict[str, str]`` shown on the bar every 10 steps.
        callback : callable, optional
            ``callback(iteration + 1, values)`` after each step (and checkpoint).

        Raises
        ------
        TrainingDivergedError
            The loss or its gradient norm became NaN/inf; the last checkpoint is kept.
        CheckpointError
            The checkpoint is corrupt, belongs to another run or does not fit.
        """
        rng = torch.random.fork_rng(devices=self.cuda_devices) if self.isolate_rng else None
        saved = _global_rng_state() if self.isolate_rng else None
        try:
            with rng or contextlib.nullcontext():
                start = self._start(seed)
                self._steps(start, iterations, step, record, postfix, callback)
        finally:
            if saved is not None:
                _set_global_rng_state(saved)

    def _start(self, seed: int) -> int:
        exists = self.path is not None and checkpoint_exists(self.path, self.comm)
        if exists:
            start = self._resume()
        else:
            start = 0
            torch.manual_seed(seed)
            self.owner.history = {k: [] for k in self.history_keys}
        # Callers (the applications) read where this fit started instead of opening
        # the checkpoint themselves.
        self.owner.resumed_from = start
        return start

    def _steps(self, start, iterations, step, record, postfix, callback) -> None:
        writer = rank_and_size(self.comm)[0] == 0  # every rank holds the same state
        bar = tqdm(
            range(start, iterations),
            initial=start,
            total=iterations,
            disable=not self.progress,
            desc=self.desc,
            dynamic_ncols=True,
        )
        for it in bar:
            self.optimizer.zero_grad(set_to_none=True)
            loss, aux = step(it)
            if not torch.isfinite(loss):
                self._diverged(it, f"loss is {loss.item()}")
            loss.backward()
            if self.clip_grad is not None:
                gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
            else:  # the norm only (for the divergence check): no scaling pass by 1.0
                gnorm = torch.nn.utils.get_total_norm(
                    [p.grad for p in self.params if p.grad is not None]
                )
            if not torch.isfinite(gnorm):
                # Stepping would write NaN into the weights (and the next checkpoint).
                self._diverged(it, f"gradient norm is {gnorm.item()}")
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.owner.iteration = it + 1
            self.owner.history["iteration"].append(it + 1)
            self.owner.history["lr"].append(lr)
            values = record(it, aux, lr)
            last = it + 1 == iterations
            if self.progress and postfix is not None and (it % 10 == 0 or last):
                bar.set_postfix(postfix(values), refresh=False)
            if writer and self.path is not None and ((it + 1) % self.every == 0 or last):
                save_checkpoint(self.path, self._state())
            if callback is not None:
                callback(it + 1, values)
        bar.close()

    def _diverged(self, it: int, what: str) -> None:
        path = self.path
        kept = (
            f"; the last good checkpoint {str(path)!r} is kept"
            if path is not None and os.path.exists(path)
            else ""
        )
        raise TrainingDivergedError(f"training diverged at iteration {it + 1}: {what}{kept}")

    # -- checkpoints ----------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        sched = self.scheduler
        state = {
            "iteration": self.owner.iteration,
            "run": self.run_identity,
            self.module_key: self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "torch_rng": torch.get_rng_state(),
            "history": self.owner.history,
            **_global_rng_state(),
        }
        if self.cuda_devices:
            state["cuda_rng"] = [torch.cuda.get_rng_state(d) for d in self.cuda_devices]
        for name, g in self.generators.items():
            state[name] = g.get_rng_state()
        if self.extra_state is not None:
            state.update(self.extra_state())
        return state

    def _resume(self) -> int:
        path, run = self.path, self.run_identity
        required = ("iteration", "run", self.module_key, "optimizer", "torch_rng", "history")
        state = load_checkpoint(path, required=required)
        saved = state["run"]
        check_identity(path, saved, run, self.identity_keys)
        if run.get("identity") is not None or saved.get("identity") is not None:
            # Key by key, so that the message names the field that differs.
            check_identity(path, saved.get("identity") or {}, run.get("identity") or {})
        if self.scheduler is not None and state.get("scheduler") is None:
            raise CheckpointError(f"checkpoint {str(path)!r} was written without lr_schedule")
        try:
            self.module.load_state_dict(state[self.module_key])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit this {self.what}: {exc}"
            ) from exc
        torch.set_rng_state(state["torch_rng"])
        if self.cuda_devices and state.get("cuda_rng") is not None:
            cuda = state["cuda_rng"]
            # An amortized checkpoint of an earlier version holds one device's state alone.
            cuda = [cuda] if isinstance(cuda, torch.Tensor) else cuda
            if len(cuda) != len(self.cuda_devices):
                raise CheckpointError(
                    f"checkpoint {str(path)!r} holds {len(cuda)} CUDA generator states, "
                    f"this run uses {len(self.cuda_devices)} GPUs"
                )
            for s, d in zip(cuda, self.cuda_devices):
                torch.cuda.set_rng_state(s, d)
        _set_global_rng_state(state)
        for name, g in self.generators.items():
            if name in state:
                g.set_rng_state(state[name])
        self.owner.history = {k: list(v) for k, v in state["history"].items()}
        self.owner.iteration = int(state["iteration"])
        if self.load_extra is not None:
            self.load_extra(state)
        return self.owner.iteration
