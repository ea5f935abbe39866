"""Maximum-likelihood training of an :class:`~devito_uq.inference.AmortizedPosterior`.

One function, :func:`fit_amortized`, behind :meth:`AmortizedPosterior.fit
<devito_uq.inference.AmortizedPosterior.fit>` (documented there): data checks, condition
standardization, the minibatch order, validation with best-state keeping, checkpoints
that resume bit for bit. Mirrors :meth:`VariationalPosterior.fit
<devito_uq.inference.VariationalPosterior.fit>` (fused Adam, cosine schedule, a NaN
loss or gradient raises :class:`TrainingDivergedError` and keeps the last checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference.training import TrainingLoop
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


def fit_amortized(post, train, **kw) -> dict[str, list[float]]:
    """Train ``post`` (an AmortizedPosterior) by maximum likelihood; see its ``fit``."""
    iterations = check_positive_int("iterations", kw["iterations"])
    batch_size = check_positive_int("batch_size", kw["batch_size"])
    lr = check_positive_scalar("lr", kw["lr"])
    lr_final = check_in_range("lr_final", kw["lr_final"], 0.0, 1.0, low_open=True)
    validate_every = check_positive_int("validate_every", kw["validate_every"])
    checkpoint_every = check_positive_int("checkpoint_every", kw["checkpoint_every"])
    seed = check_nonnegative_int("seed", kw["seed"])
    progress = check_bool("progress", kw["progress"])
    clip_grad = kw["clip_grad"]
    if clip_grad is not None:
        clip_grad = check_positive_scalar("clip_grad", clip_grad)
    identity, fields, callback = kw["identity"], kw["fields"], kw["callback"]
    lp_kw = kw["log_prob_kwargs"] or {}
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
    dev = _device(kw["device"], post)
    post.to(dev)

    tr = _pairs(post, train, fields, "train")
    va = None if kw["validation"] is None else _pairs(post, kw["validation"], fields, "validation")
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
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=iterations, eta_min=lr * lr_final
    )
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
        checkpoint_path=kw["checkpoint_path"],
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
