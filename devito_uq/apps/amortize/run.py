"""Orchestration of the amortized workflow: simulate → train → study.

Files in the output folder ``OUT``:

* ``dataset/`` — the training set (:mod:`devito_uq.io.dataset`: ``dataset.json`` and one
  verified ``shard_000012.pt`` per shard; a killed simulation resumes shard by shard);
* ``train_checkpoint.pt`` — the maximum-likelihood training state (resumed by ``--resume``);
* ``amortized.pt`` — the trained amortized posterior with the configuration it was built
  from (what ``devito-uq invert --amortized`` reads);
* ``summary.json`` and the figures of the study.

Every run takes the command's :class:`~devito_uq.apps.amortize.config.AmortizeConfig` or
a problem's config and works on the latter (``AmortizeConfig.for_problem()``). Each
problem module (:mod:`devito_uq.apps.amortize.avp`, :mod:`devito_uq.apps.amortize.imaging`)
provides ``build_setting(config, comm)`` returning a *setting* with:

* ``identity() -> dict`` — what the training set depends on (stored in it, compared on
  resume);
* ``simulate_shard(index, count, generator) -> {"model": [k, *shape], "condition":
  [k, *cond_shape]}`` — ``count`` prior draws and their noisy simulated conditions;
* ``make_posterior() -> AmortizedPosterior`` — the untrained conditional flow;
* ``study(posterior, out, progress, figures, comm) -> dict`` — the evaluation on surveys
  (written to ``summary.json`` by :func:`run_study`).
"""

from __future__ import annotations

import importlib
import json
import os
import time
from typing import Any

import torch

from devito_uq.apps import prepare_output
from devito_uq.apps.amortize.config import AmortizeConfig, problem_config
from devito_uq.apps.amortize.training_config import AmortizeTraining
from devito_uq.errors import CheckpointError
from devito_uq.io._atomic import atomic_path
from devito_uq.io.checkpoint import check_identity, load_checkpoint, save_checkpoint
from devito_uq.io.dataset import ShardedDataset, simulate_dataset
from devito_uq.parallel import rank_and_size

#: A run's config: the command's (every problem's fields) or one problem's.
Config = AmortizeConfig | AmortizeTraining

__all__ = [
    "build_setting",
    "dataset_folder",
    "checkpoint_file",
    "run_simulate",
    "run_train",
    "run_study",
    "run_all",
    "load_amortized",
]

_TRAIN_CKPT = "train_checkpoint.pt"

#: Fields the trained posterior does not depend on (study-only knobs): a trained
#: posterior is reused by ``study`` under other values of these.
STUDY_ONLY = frozenset(
    {
        "n_samples",
        "correct_iterations",
        "correct_batch_size",
        "correct_lr",
        "vi_iterations",
        "n_truths",
        "noise_factor",
        "shift_fraction",
        "heldout_draws",
        "mala_steps",
        "mala_chains",
        "checkpoint",
        "dataset",
        "device",
        "label",
    }
)


def build_setting(config: Config, comm: Any = None):
    """The problem module's setting (see the module docstring)."""
    config = config.for_problem().validate()
    module = importlib.import_module(f"devito_uq.apps.amortize.{config.problem}")
    return module.build_setting(config, comm)


def dataset_folder(config: Config, out: str) -> str:
    """The training set's folder: ``config.dataset`` or ``OUT/dataset``."""
    return config.dataset or os.path.join(out, "dataset")


def checkpoint_file(config: Config, out: str) -> str:
    """The trained posterior's file: ``config.checkpoint`` or ``OUT/amortized.pt``."""
    return config.checkpoint or os.path.join(out, "amortized.pt")


def _check_checkpoint_target(config: Config, out: str) -> None:
    """Refuse, before any work, to overwrite an existing file at ``config.checkpoint`` that
    is not a trained amortized posterior of devito_uq (``OUT/amortized.pt`` is ours)."""
    path = checkpoint_file(config, out)
    if not config.checkpoint or not os.path.lexists(path):
        return
    try:
        load_checkpoint(path, required=("config", "posterior"))
    except CheckpointError as exc:
        raise CheckpointError(
            f"checkpoint={config.checkpoint!r} names an existing file that is not a trained "
            f"amortized posterior ({exc}); it is never overwritten: remove it or name "
            "another path"
        ) from None


def _check_dataset_target(config: Config) -> None:
    """Refuse, before any work, a ``dataset`` path naming an existing file, or a folder
    that holds other files but no ``dataset.json`` (someone else's folder)."""
    path = config.dataset
    if not path or not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        raise CheckpointError(
            f"dataset={path!r} names an existing file, not a dataset folder; it is never "
            "overwritten: remove it or name another path"
        )
    entries = os.listdir(path)
    if entries and "dataset.json" not in entries:
        raise CheckpointError(
            f"dataset={path!r} is a folder of {len(entries)} other files (no dataset.json); "
            "the training set is never written into it: name an empty or new folder"
        )


def _write_json(path: str, obj: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2)


def run_simulate(
    config: Config,
    out: str,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    comm: Any = None,
) -> dict[str, Any]:
    """Simulate the training and validation pairs into the dataset folder.

    Without ``resume`` an existing dataset folder of another configuration is refused
    (naming the key); the same configuration always continues where a killed run stopped:
    finished shards are verified and kept.
    """
    config = config.for_problem().validate()
    _check_dataset_target(config)
    prepare_output(out, (), True)
    setting = build_setting(config, comm)
    t0 = time.perf_counter()
    ds = simulate_dataset(
        dataset_folder(config, out),
        config.n_train + config.n_validation,
        setting.simulate_shard,
        shard_size=config.shard_size,
        seed=config.seed,
        identity=setting.identity(),
        resume=True,
        comm=comm,
        progress=progress,
    )
    return {
        "dataset": dataset_folder(config, out),
        "pairs": ds.n_pairs,
        "fields": {k: list(v["shape"]) if isinstance(v, dict) else v for k, v in ds.fields.items()},
        "time_s": {"simulate": time.perf_counter() - t0},
    }


def _train_identity(config: AmortizeTraining) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in STUDY_ONLY}


def run_train(
    config: Config,
    out: str,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    comm: Any = None,
) -> dict[str, Any]:
    """Train the conditional flow on the dataset by maximum likelihood; write ``amortized.pt``.

    Training runs on rank 0 (the flow is small; the PDE solves were in ``simulate``).
    With ``resume`` a killed training continues from ``OUT/train_checkpoint.pt``. A
    ``checkpoint`` path naming an existing file that is not a trained amortized posterior
    is refused before any work (never overwritten).
    """
    config = config.for_problem().validate()
    rank, _ = rank_and_size(comm)
    _check_checkpoint_target(config, out)
    prepare_output(out, (_TRAIN_CKPT,), resume, writer=rank == 0)
    setting = build_setting(config, comm)
    ds = ShardedDataset(dataset_folder(config, out))
    if not ds.complete:
        raise CheckpointError(
            f"the dataset {dataset_folder(config, out)!r} is incomplete; run "
            "'devito-uq amortize simulate' with the same configuration first"
        )
    check_identity(ds.folder, ds.identity, setting.identity(), hint="; simulate it again")
    if rank != 0:
        return {}
    fraction = config.n_validation / (config.n_train + config.n_validation)
    train, validation = ds.split(fraction)
    posterior = setting.make_posterior()
    device = _device(config.device)
    t0 = time.perf_counter()
    history = posterior.fit(
        train,
        config.iterations,
        batch_size=config.batch_size,
        lr=config.lr,
        lr_final=config.lr_final,
        validation=validation,
        validate_every=config.validate_every,
        checkpoint_path=os.path.join(out, _TRAIN_CKPT),
        checkpoint_every=config.checkpoint_every,
        seed=config.seed,
        device=device,
        progress=progress,
        identity=_train_identity(config),
    )
    seconds = time.perf_counter() - t0
    posterior.to("cpu")
    save_checkpoint(
        checkpoint_file(config, out),
        {"config": config.to_dict(), "posterior": posterior.state_dict(), "history": history},
    )
    summary = {
        "checkpoint": checkpoint_file(config, out),
        "train_pairs": int(next(iter(train.values())).shape[0]),
        "validation_pairs": int(next(iter(validation.values())).shape[0]),
        "final_train_nll": history["train_nll"][-1] if history.get("train_nll") else None,
        "best_validation_nll": min(history["val_nll"]) if history.get("val_nll") else None,
        "time_s": {"train": seconds},
        "device": str(device),
    }
    _write_json(os.path.join(out, "train_summary.json"), summary)
    return summary


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("device='cuda' but torch sees no CUDA device")
    return torch.device(name)


def load_amortized(path: str, config: Config | None = None, comm: Any = None):
    """``(posterior, config, setting)`` of a trained ``amortized.pt``.

    The architecture is rebuilt from the configuration stored in the file (its problem's
    config); with ``config`` given, every field the training depends on must agree (else
    :class:`CheckpointError` naming the key), study-only fields come from ``config``.
    """
    state = load_checkpoint(path, required=("config", "posterior"))
    stored = dict(state["config"])
    if stored.get("problem") == "imaging":  # trained before the key: the former design
        stored.setdefault("residual", False)
    saved = problem_config(stored)
    if config is not None:
        config = config.for_problem()
        check_identity(path, _train_identity(saved), _train_identity(config))
        saved = config
    setting = build_setting(saved, comm)
    posterior = setting.make_posterior()
    try:
        posterior.load_state_dict(state["posterior"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path!r} does not fit this posterior: {exc}") from exc
    posterior.eval()
    return posterior, saved, setting


def run_study(
    config: Config,
    out: str,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    comm: Any = None,
) -> dict[str, Any]:
    """Evaluate the trained posterior on the problem's surveys; write ``summary.json``."""
    config = config.for_problem().validate()
    prepare_output(out, (), True)
    posterior, config, setting = load_amortized(checkpoint_file(config, out), config, comm)
    posterior.to(_device(config.device))
    t0 = time.perf_counter()
    summary = setting.study(posterior, out, progress=progress, figures=figures, comm=comm)
    summary.setdefault("time_s", {})["study"] = time.perf_counter() - t0
    summary["config"] = config.to_dict()
    if rank_and_size(comm)[0] == 0:
        _write_json(os.path.join(out, "summary.json"), summary)
    return summary


def run_all(
    config: Config,
    out: str,
    resume: bool = False,
    progress: bool = True,
    figures: bool = True,
    comm: Any = None,
) -> dict[str, Any]:
    """simulate → train → study in one folder (``make amortize``)."""
    t0 = time.perf_counter()
    sim = run_simulate(config, out, resume, progress, figures, comm)
    train = run_train(config, out, resume, progress, figures, comm)
    summary = run_study(config, out, resume, progress, figures, comm)
    times = summary.setdefault("time_s", {})
    times.update(sim["time_s"])
    times.update(train.get("time_s", {}))
    times["total"] = time.perf_counter() - t0
    summary["training"] = {k: v for k, v in train.items() if k != "time_s"}
    if rank_and_size(comm)[0] == 0:
        _write_json(os.path.join(out, "summary.json"), summary)
    return summary
