"""Maximum-likelihood training of an :class:`~devito_uq.inference.AmortizedPosterior`.

One function, :func:`fit_amortized`, which *is* :meth:`AmortizedPosterior.fit
<devito_uq.inference.amortized.AmortizedPosterior.fit>`: data checks,
condition standardization, the minibatch order, validation with best-state keeping. The
optimizer loop (fused Adam, cosine schedule, checkpoints that resume bit for bit, a NaN
loss or gradient raising

:class:`~devito_uq.errors.TrainingDivergedError`) is
:class:`~devito_uq.inference.training.TrainingLoop`, shared with
:meth:`VariationalPosterior.fit <devito_uq.inference.VariationalPosterior.fit>`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference.training import TrainingLoop, lr_scheduler
from devito_uq.io.dataset import ShardedDataset
from devito_uq.validation import (
    check_bool,
    check_finite,
    check_in_range,
    check_nonnegative_int,
    check_positive_int,
    check_positive_scalar,
)

__all__ = ["fit_amortized"]

# Rows per chunk when a whole data set is transformed or reduced (bounded memory).
_CHUNK = 4096


@dataclass
class _Pairs:
    """Training or validation pairs, on the CPU: latents, raw conditions, ``log|det J_g|``."""

    x: torch.Tensor  # [N, *model_shape]
    c: torch.Tensor  # [N, *condition_shape]
    logdet: torch.Tensor  # [N] float64
    fingerprint: float

    def __len__(self) -> int:
        return self.x.shape[0]


def _fingerprint(t: torch.Tensor) -> float:
    """Order-sensitive float64 digest of ``t`` (rows weighted by their position)."""
    total = 0.0
    for i in range(0, t.shape[0], _CHUNK):
        rows = t[i : i + _CHUNK].double().reshape(min(_CHUNK, t.shape[0] - i), -1).sum(1)
        w = torch.arange(i + 1, i + 1 + rows.shape[0], dtype=torch.float64)
        total += float((rows * w).sum())
    return total / t.shape[0]


def _pairs(post, data: Any, fields: tuple[str, str], who: str) -> _Pairs:
    if isinstance(data, ShardedDataset):
        data = data.load(fields=list(fields))
    if not isinstance(data, Mapping):
        raise InvalidArgumentError(
            f"{who} must be a dict of tensors or a ShardedDataset, got {type(data).__name__}"
        )
    mk, ck = fields
    missing = [k for k in fields if k not in data]
    if missing:
        raise InvalidArgumentError(f"{who} lacks the fields {missing}; it has {sorted(data)}")
    m, c = data[mk], data[ck]
    for k, t in ((mk, m), (ck, c)):
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() and t.dim() >= 1):
            raise InvalidArgumentError(
                f"{who}[{k!r}] must be a floating-point tensor [N, ...], got "
                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
            )
    if tuple(m.shape[1:]) != post.model_shape or m.shape[0] == 0:
        raise InvalidShapeError(
            f"{who}[{mk!r}] has shape {list(m.shape)}; expected [N >= 1, *{list(post.model_shape)}]"
        )
    if c.shape[0] != m.shape[0]:
        raise InvalidShapeError(
            f"{who} has {m.shape[0]} models ({mk!r}) but {c.shape[0]} conditions ({ck!r})"
        )
    if c.dim() < 2:
        raise InvalidShapeError(f"{who}[{ck!r}] has shape {list(c.shape)}; expected [N, ...]")
    check_finite(f"{who}[{mk!r}]", m)
    check_finite(f"{who}[{ck!r}]", c)
    ref = post._ref()
    m = m.detach().to(device="cpu", dtype=ref.dtype)
    c = c.detach().to(device="cpu", dtype=ref.dtype)
    xs, lds = [], []
    with torch.no_grad():
        for i in range(0, m.shape[0], _CHUNK):
            # g⁻¹ refuses models outside the bounds, naming the value.
            x = post.to_latent(m[i : i + _CHUNK].to(ref.device))
            xs.append(x.cpu())
            lds.append(post.to_model(x)[1].double().cpu())
    x = torch.cat(xs)
    return _Pairs(x, c, torch.cat(lds), _fingerprint(x) + 1e-3 * _fingerprint(c))


def _standardization(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std of conditions ``[N, *shape]`` (float64 accumulation,
    two passes); a zero std (a constant feature) becomes 1."""
    n = c.shape[0]
    total = torch.zeros(c.shape[1:], dtype=torch.float64)
    for i in range(0, n, _CHUNK):
        total += c[i : i + _CHUNK].double().sum(0)
    mean = total / n
    sq = torch.zeros_like(mean)
    for i in range(0, n, _CHUNK):
        sq += (c[i : i + _CHUNK].double() - mean).pow(2).sum(0)
    std = (sq / n).sqrt()
    return mean, torch.where(std > 0, std, torch.ones_like(std))


class _Batches:
    """Minibatch indices as a function of the iteration: the training stream is one
    permutation per epoch, epoch ``e``'s drawn by a generator seeded from ``(seed, e)``.
    Nothing to store for a resume; a batch may straddle two epochs."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            state = np.random.SeedSequence([self.seed, epoch, 13]).generate_state(2, np.uint32)
            g = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return self._perm

    def __call__(self, iteration: int) -> torch.Tensor:
        start, need, parts = iteration * self.batch_size, self.batch_size, []
        while need:
            epoch, pos = divmod(start, self.n)
            take = min(need, self.n - pos)
            parts.append(self._permutation(epoch)[pos : pos + take])
            start, need = start + take, need - take
        return torch.cat(parts)


def _device(device: Any, post) -> torch.device:
    if device is None:
        return post._ref().device
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(f"device={device!r} is not a torch device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidArgumentError(f"device={device!r}: CUDA is not available here")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _cpu_state(post) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in post.state_dict().items()}


@torch.no_grad()
def _validation_nll(post, pairs: _Pairs, chunk: int, dev: torch.device, lp_kw: dict) -> float:
    """Mean ``−log q(m | y)`` per model dimension over every validation pair."""
    was = post.training
    post.eval()
    total = 0.0
    for i in range(0, len(pairs), chunk):
        x = pairs.x[i : i + chunk].to(dev)
        log_q = post.flow.log_prob(x, post.features(pairs.c[i : i + chunk].to(dev)), **lp_kw)
        total += float((pairs.logdet[i : i + chunk].to(dev) - log_q.double()).sum())
    post.train(was)
    return total / len(pairs) / math.prod(post.model_shape)


def fit_amortized(
    post: Any,
    train: Any,
    iterations: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    lr_final: float = 0.01,
    validation: Any = None,
    validate_every: int = 100,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    seed: int = 0,
    device: str | torch.device | None = None,
    clip_grad: float | None = None,
    progress: bool = True,
    identity: dict[str, Any] | None = None,
    fields: tuple[str, str] = ("model", "condition"),
    callback: Callable[[int, dict[str, float]], None] | None = None,
    log_prob_kwargs: dict[str, Any] | None = None,
) -> dict[str, list[float]]:
    """Train an amortized posterior by maximum likelihood on pairs; return its history.

    :meth:`AmortizedPosterior.fit <devito_uq.inference.amortized.AmortizedPosterior.fit>`
    is this function (``post`` is ``self``).

    Parameters
    ----------
    post : AmortizedPosterior
        The posterior trained in place.
    train : dict or ShardedDataset
        ``{"model": [N, *model_shape], "condition": [N, *condition_shape]}`` (CPU
        tensors are fine: each minibatch moves to ``device``) or a
        :class:`~devito_uq.io.ShardedDataset` (loaded whole).
    iterations : int
        Total Adam steps (including resumed ones).
    batch_size : int
        Pairs per step; minibatches walk through one random permutation of the
        training set per epoch, drawn from a generator seeded by ``(seed, epoch)``,
        so a batch is a function of the iteration alone.
    lr, lr_final : float
        Adam rate, cosine-annealed to ``lr·lr_final`` at the end.
    validation : dict or ShardedDataset, optional
        Pairs like ``train``: the validation NLL is evaluated every
        ``validate_every`` steps and at the end, and the weights with the lowest one
        are loaded when ``fit`` returns.
    validate_every : int
        Steps between validations.
    checkpoint_path : str or os.PathLike, optional
        Written every ``checkpoint_every`` steps and at the end; if it exists at the
        start, training resumes from it bit for bit (weights, optimizer, schedule,
        RNG, history, best state). Another run's file (seed, batch size, lr, data
        sizes and fingerprint, ``identity``, ...) is refused naming the key.
    checkpoint_every : int
        Steps between checkpoints.
    seed : int
        Seeds the minibatch order and, at a fresh start, torch's generator inside
        ``fit`` (the caller's random state is left as it was).
    device : str or torch.device, optional
        ``"cpu"``, ``"cuda"``, a ``torch.device``, or ``None`` (where the module
        is). The module moves there and stays there.
    clip_grad : float, optional
        Clip the global gradient norm (``None``: off).
    progress : bool
        tqdm bar with the train/validation NLL.
    identity : dict, optional
        JSON-able, stored in the checkpoint and compared on resume.
    fields : tuple of str
        Names of the model and condition entries of ``train``/``validation``.
    callback : callable, optional
        ``callback(iteration, {"train_nll": ..., "lr": ...})`` after a step.
    log_prob_kwargs : dict, optional
        Extra keyword arguments of the flow's ``log_prob`` in training and
        validation, e.g. ``{"n_pad": 1}`` for an image flow on a padded grid (one
        padding draw per pair: the augmented flow's bound on ``log q``, ``n_pad``
        times cheaper than the default estimate); stored in the run identity.

    Returns
    -------
    dict of str to list of float
        ``post.history``: ``iteration``, ``train_nll``, ``lr`` per step;

        ``val_iteration``, ``val_nll`` per validation. NLLs are ``−log q(m | y)`` of
        models (the Jacobian of ``g`` included) in nats **per model dimension**
        (divided by ``prod(model_shape)``), batch means for training, full-set means
        for validation. After the call ``best_iteration``/``best_val_nll`` name the
        weights kept (``None`` without validation: the final weights) and
        ``resumed_from`` the iteration resumed from.

    Raises
    ------
    InvalidArgumentError, InvalidShapeError
        Bad arguments or data (shapes, NaN, models outside the parameterization's
        bounds), before any step.
    TrainingDivergedError
        The loss or gradient became NaN/inf; the last checkpoint on disk is kept.
    CheckpointError
        The checkpoint is corrupt or belongs to another run.
    """
    iterations = check_positive_int("iterations", iterations)
    batch_size = check_positive_int("batch_size", batch_size)
    lr = check_positive_scalar("lr", lr)
    lr_final = check_in_range("lr_final", lr_final, 0.0, 1.0, low_open=True)
    validate_every = check_positive_int("validate_every", validate_every)
    checkpoint_every = check_positive_int("checkpoint_every", checkpoint_every)
    seed = check_nonnegative_int("seed", seed)
    progress = check_bool("progress", progress)
    if clip_grad is not None:
        clip_grad = check_positive_scalar("clip_grad", clip_grad)
    lp_kw = log_prob_kwargs or {}
    if not isinstance(lp_kw, dict) or not all(isinstance(k, str) for k in lp_kw):
        raise InvalidArgumentError(f"log_prob_kwargs={lp_kw!r} must be a dict of keyword arguments")
    if identity is not None and not isinstance(identity, dict):
        raise InvalidArgumentError(
            f"identity must be a dict or None, got {type(identity).__name__}"
        )
    ok = isinstance(fields, (tuple, list)) and len(fields) == 2
    if not ok or not all(isinstance(f, str) for f in fields) or fields[0] == fields[1]:
        raise InvalidArgumentError(f"fields={fields!r} must be two different names")
    fields = tuple(fields)
    dev = _device(device, post)
    post.to(dev)

    tr = _pairs(post, train, fields, "train")
    va = None if validation is None else _pairs(post, validation, fields, "validation")
    cond_shape = tuple(tr.c.shape[1:])
    if va is not None and tuple(va.c.shape[1:]) != cond_shape:
        raise InvalidShapeError(
            f"validation conditions have shape {list(va.c.shape[1:])}; the training "
            f"ones {list(cond_shape)}"
        )
    if post.condition_shape not in (None, cond_shape):
        raise InvalidShapeError(
            f"train conditions have shape {list(cond_shape)}; this posterior was set up "
            f"for {list(post.condition_shape)}"
        )
    post.set_standardization(*_standardization(tr.c))
    params = [p for p in post.parameters() if p.requires_grad]
    if not params:
        raise InvalidArgumentError("the flow and summary have no trainable parameters")
    optimizer = torch.optim.Adam(params, lr=lr, fused=True)
    scheduler = lr_scheduler("cosine", optimizer, iterations, lr_final)
    run = {
        "seed": seed,
        "batch_size": batch_size,
        "iterations": iterations,
        "lr": lr,
        "lr_final": lr_final,
        "clip_grad": clip_grad,
        "validate_every": validate_every,
        "fields": list(fields),
        "model_shape": list(post.model_shape),
        "condition_shape": list(cond_shape),
        "n_train": len(tr),
        "n_validation": 0 if va is None else len(va),
        "train_fingerprint": tr.fingerprint,
        "validation_fingerprint": None if va is None else va.fingerprint,
        "log_prob_kwargs": lp_kw,
        "identity": identity,
    }
    batches = _Batches(len(tr), batch_size, seed)
    d = math.prod(post.model_shape)
    chunk = max(4 * batch_size, 64)
    best: dict[str, Any] = {"state": None, "val_nll": None, "iteration": None}
    loop = TrainingLoop(
        post,
        post,
        params,
        optimizer,
        scheduler,
        run,
        [k for k in run if k != "identity"],
        ("iteration", "train_nll", "lr", "val_iteration", "val_nll"),
        checkpoint_path=checkpoint_path,
        checkpoint_every=checkpoint_every,
        cuda_devices=[dev] if dev.type == "cuda" else (),
        extra_state=lambda: {
            "best": best["state"],
            "best_val_nll": best["val_nll"],
            "best_iteration": best["iteration"],
        },
        load_extra=lambda state: best.update(
            state=state.get("best"),
            val_nll=state.get("best_val_nll"),
            iteration=state.get("best_iteration"),
        ),
        clip_grad=clip_grad,
        # Seeding (or restoring) the generators inside leaves the caller's alone.
        isolate_rng=True,
        progress=progress,
        desc="amortized",
        what="posterior",
    )

    def step(it: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        idx = batches(it)
        x, c = tr.x[idx].to(dev), tr.c[idx].to(dev)
        loss = -post.flow.log_prob(x, post.features(c), **lp_kw).mean()
        return loss, (loss, idx)

    def record(it: int, aux: tuple[torch.Tensor, torch.Tensor], lr: float) -> dict[str, float]:
        loss, idx = aux
        h = post.history
        nll = (float(loss.detach()) + float(tr.logdet[idx].mean())) / d
        h["train_nll"].append(nll)
        if va is not None and ((it + 1) % validate_every == 0 or it + 1 == iterations):
            v = _validation_nll(post, va, chunk, dev, lp_kw)
            h["val_iteration"].append(it + 1)
            h["val_nll"].append(v)
            if best["val_nll"] is None or v < best["val_nll"]:
                best.update(state=_cpu_state(post), val_nll=v, iteration=it + 1)
        return {"train_nll": nll, "lr": lr}

    def postfix(values: dict[str, float]) -> dict[str, str]:
        shown = {"nll": f"{values['train_nll']:.4g}"}
        if post.history["val_nll"]:
            shown["val"] = f"{post.history['val_nll'][-1]:.4g}"
        return shown

    post.train()
    loop.run(iterations, seed, step, record, postfix, callback)
    if best["state"] is not None:
        post.load_state_dict(best["state"])
    post.best_iteration, post.best_val_nll = best["iteration"], best["val_nll"]
    post.eval()
    return post.history
