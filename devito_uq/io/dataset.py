r"""Simulated training sets on disk: sharded, verified, resumable, rank-independent.

An amortized posterior learns from pairs (model, condition) drawn from the prior and
pushed through the physics. :func:`simulate_dataset` writes them as shards::

    folder/dataset.json          format, n_pairs, shard_size, seed, identity, fields, complete
    folder/shard_000000.pt       pairs 0 … shard_size−1         (devito_uq checkpoint files:
    folder/shard_000001.pt       pairs shard_size … 2·shard_size−1   hashed, never pickled)
    ...

Shard ``k`` holds ``min(shard_size, n_pairs − k·shard_size)`` pairs, computed by
``simulate_shard(k, count, generator)`` with a generator seeded from ``(seed, k)`` alone.
So the dataset is the same bytes whatever the number of MPI ranks (shards are dealt
round-robin, :class:`~devito_uq.parallel.ShotDistribution`) and whatever interruptions
happened: a rerun verifies the shards on disk (SHA-256) and recomputes only the missing
or corrupt ones. :class:`ShardedDataset` reads a dataset back.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from devito_uq.errors import CheckpointError, InvalidArgumentError, InvalidShapeError
from devito_uq.io._atomic import atomic_path
from devito_uq.io._files import read_input_json
from devito_uq.io.checkpoint import check_identity, load_checkpoint, save_checkpoint
from devito_uq.parallel import ShotDistribution, allreduce_sum, rank_and_size
from devito_uq.validation import (
    check_bool,
    check_finite,
    check_in_range,
    check_nonnegative_int,
    check_positive_int,
)

__all__ = ["simulate_dataset", "ShardedDataset", "shard_generator", "DATASET_FORMAT"]

#: Format tag of ``dataset.json``.
DATASET_FORMAT = "devito_uq-dataset-v1"
_META = "dataset.json"
# What a resume compares with the dataset on disk (a mismatch names the key).
_IDENTITY_KEYS = ("format", "n_pairs", "shard_size", "seed", "identity")


def shard_path(folder: str | os.PathLike, index: int) -> Path:
    """``folder/shard_000012.pt`` for shard ``index``."""
    return Path(folder) / f"shard_{index:06d}.pt"


def shard_generator(seed: int, index: int) -> torch.Generator:
    """The CPU generator of shard ``index``: seeded from ``(seed, index)`` only.

    numpy's ``SeedSequence`` hashes the pair, so neighbouring shards (and datasets
    with neighbouring seeds) get unrelated streams.
    """
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def _spec(fields: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """``{name: {"shape": per-pair shape, "dtype": name}}`` of a shard's tensors."""
    return {
        k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in sorted(fields.items())
    }


def _check_shard(out: Any, index: int, count: int) -> dict[str, torch.Tensor]:
    """What ``simulate_shard`` returned, validated: named tensors of ``count`` finite pairs."""
    where = f"simulate_shard(index={index}, count={count})"
    if not isinstance(out, Mapping) or not out:
        raise InvalidArgumentError(
            f"{where} must return a non-empty dict of tensors, got {type(out).__name__}"
        )
    fields = {}
    for name, value in out.items():
        if not isinstance(name, str) or not name or name.startswith("__"):
            raise InvalidArgumentError(f"{where} returned the field name {name!r}")
        if not isinstance(value, torch.Tensor):
            raise InvalidArgumentError(
                f"{where} field {name!r} is a {type(value).__name__}, not a torch.Tensor"
            )
        if value.dim() == 0 or value.shape[0] != count:
            raise InvalidShapeError(
                f"{where} field {name!r} has shape {list(value.shape)}; expected [{count}, ...]"
            )
        if value.is_floating_point() or value.is_complex():
            # A NaN pair (an unstable simulation) would poison training much later.
            check_finite(f"{where} field {name!r}", value)
        fields[name] = value.detach().cpu().contiguous()
    return fields


def _fingerprint(spec: dict | None) -> int:
    """62-bit integer digest of a field spec (0: no spec), summable over MPI ranks."""
    if spec is None:
        return 0
    text = json.dumps(spec, sort_keys=True).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 2 | 1


def _write_meta(folder: Path, meta: dict) -> None:
    with atomic_path(folder / _META) as tmp, open(tmp, "w") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True)
        fh.write("\n")


def _read_meta(folder: Path) -> dict:
    path = folder / _META
    if not os.path.lexists(path):
        raise CheckpointError(f"{str(folder)!r} holds no dataset (no {_META})")
    meta = read_input_json(path, "dataset file", CheckpointError)
    if not isinstance(meta, dict) or meta.get("format") != DATASET_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{str(path)!r} has format {got!r}, not {DATASET_FORMAT}")
    return meta


def _barrier(comm: Any) -> None:
    if rank_and_size(comm)[1] > 1:
        allreduce_sum(torch.zeros(1, dtype=torch.float64), comm)


def simulate_dataset(
    folder: str | os.PathLike,
    n_pairs: int,
    simulate_shard: Callable[[int, int, torch.Generator], Mapping[str, torch.Tensor]],
    *,
    shard_size: int = 256,
    seed: int = 0,
    identity: dict[str, Any] | None = None,
    resume: bool = True,
    comm: Any = None,
    progress: bool = True,
) -> ShardedDataset:
    """Simulate ``n_pairs`` training pairs into ``folder``, shard by shard; resumable.

    Parameters
    ----------
    folder : str or os.PathLike
        Output folder (created; shared by every MPI rank).
    n_pairs : int
        Number of pairs ``>= 1``.
    simulate_shard : callable
        ``simulate_shard(index, count, generator) -> {name: [count, ...]}``; draws
        ``count`` models with ``generator`` (a CPU ``torch.Generator``; its only source
        of randomness) and returns them with their conditions, e.g. ``{"model": [count,
        nz], "condition": [count, p, nt]}``. Every call must return the same names,
        per-pair shapes and dtypes; floating values finite.
    shard_size : int
        Pairs per shard (the unit of work, of resume and of the split).
    seed : int
        Dataset seed ``>= 0``; shard ``k`` uses ``shard_generator(seed, k)``.
    identity : dict, optional
        JSON-able dict of whatever else the data depend on (the prior, the survey, the
        noise level), stored and compared on resume.
    resume : bool
        Keep the verified shards already in ``folder`` (False: recompute all).
    comm : mpi4py communicator, optional
        Shards are dealt round-robin over its ranks; every rank must call this function
        (collective). ``None``: serial.
    progress : bool
        tqdm bar over the shards of rank 0.

    Returns
    -------
    ShardedDataset
        The complete dataset (on every rank).

    Raises
    ------
    InvalidArgumentError, InvalidShapeError
        Bad arguments, or a shard that breaks the contract above (naming the shard and
        field), before it is written.
    CheckpointError
        ``folder`` holds a dataset with another ``n_pairs``, ``shard_size``, ``seed`` or
        ``identity`` (naming the key) and ``resume`` is True; nothing is modified then.

    Notes
    -----
    A shard found corrupt on resume is recomputed (with a warning).
    """
    n_pairs = check_positive_int("n_pairs", n_pairs)
    shard_size = check_positive_int("shard_size", shard_size)
    seed = check_nonnegative_int("seed", seed)
    resume = check_bool("resume", resume)
    progress = check_bool("progress", progress)
    if not callable(simulate_shard):
        raise InvalidArgumentError(
            f"simulate_shard must be callable, got {type(simulate_shard).__name__}"
        )
    if identity is not None:
        if not isinstance(identity, dict):
            raise InvalidArgumentError(
                f"identity must be a dict or None, got {type(identity).__name__}"
            )
        try:
            json.dumps(identity)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"identity must be JSON-able: {exc}") from None
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InvalidArgumentError(f"dataset folder {str(folder)!r} is not a folder")
    rank, _ = rank_and_size(comm)
    n_shards = math.ceil(n_pairs / shard_size)
    meta = {
        "format": DATASET_FORMAT,
        "n_pairs": n_pairs,
        "shard_size": shard_size,
        "n_shards": n_shards,
        "seed": seed,
        "identity": identity,
        "fields": None,
        "complete": False,
    }
    # Every rank reads the same file before anyone writes: all refuse alike.
    old = None
    if resume and (folder / _META).exists():
        old = _read_meta(folder)
        check_identity(
            folder / _META, old, meta, _IDENTITY_KEYS, hint="; pass resume=False to start afresh"
        )
    _barrier(comm)
    if rank == 0 and old is None:
        folder.mkdir(parents=True, exist_ok=True)
        _write_meta(folder, meta)
    _barrier(comm)
    run = {k: meta[k] for k in _IDENTITY_KEYS}
    spec = old.get("fields") if old else None
    mine = ShotDistribution(n_shards, comm).shots
    bar = tqdm(mine, desc="simulate", unit="shard", disable=not progress or rank != 0)
    for k in bar:
        count = min(shard_size, n_pairs - k * shard_size)
        path = shard_path(folder, k)
        if resume and path.exists():
            try:
                have = _load_shard(path, k, count, run, spec)
            except CheckpointError as exc:  # corrupt, truncated or left by another run
                warnings.warn(f"recomputing shard {k}: {exc}", stacklevel=2)
            else:
                spec = spec or _spec(have)
                continue
        fields = _check_shard(simulate_shard(k, count, shard_generator(seed, k)), k, count)
        got = _spec(fields)
        if spec is not None and got != spec:
            raise InvalidShapeError(
                f"simulate_shard(index={k}) returned fields {got}; earlier shards have {spec}"
            )
        spec = got
        save_checkpoint(path, {"run": run, "index": k, "count": count, "fields": fields})
    bar.close()
    # Every rank's shards must agree on the fields: compare digests (cheap, collective).
    _, size = rank_and_size(comm)
    digests = torch.zeros(size, dtype=torch.int64)
    digests[rank] = _fingerprint(spec)
    digests = allreduce_sum(digests, comm)
    if len({int(d) for d in digests if int(d)}) > 1:
        raise InvalidShapeError(
            f"the MPI ranks' shards of {str(folder)!r} disagree on their fields "
            f"(names, per-pair shapes or dtypes); this rank has {spec}"
        )
    if rank == 0:
        meta["fields"] = spec
        meta["complete"] = True
        _write_meta(folder, meta)
    _barrier(comm)
    return ShardedDataset(folder)


def _load_shard(path: Path, index: int, count: int, run: dict, spec: dict | None) -> dict:
    """The verified tensors of shard ``index`` (CheckpointError if anything is off)."""
    state = load_checkpoint(path, required=("run", "index", "count", "fields"))
    check_identity(path, state["run"], run, _IDENTITY_KEYS)
    if state["index"] != index or state["count"] != count:
        raise CheckpointError(
            f"shard {str(path)!r} holds shard {state['index']} with {state['count']} pairs; "
            f"expected shard {index} with {count}"
        )
    fields = state["fields"]
    if spec is not None and _spec(fields) != spec:
        raise CheckpointError(
            f"shard {str(path)!r} has fields {_spec(fields)}; the dataset has {spec}"
        )
    return fields


class ShardedDataset:
    """A dataset written by :func:`simulate_dataset`, read back.

    Attributes
    ----------
    folder : pathlib.Path
        The dataset folder.
    n_pairs, shard_size, n_shards, seed : int
        As simulated.
    identity : dict or None
        The ``identity`` dict given to :func:`simulate_dataset`.
    fields : dict or None
        ``{name: {"shape": per-pair shape, "dtype": name}}`` (``None`` until the first
        complete simulation).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        meta = _read_meta(self.folder)
        self._meta = meta
        self.n_pairs = int(meta["n_pairs"])
        self.shard_size = int(meta["shard_size"])
        self.n_shards = int(meta["n_shards"])
        self.seed = int(meta["seed"])
        self.identity = meta.get("identity")
        self.fields = meta.get("fields")

    def __len__(self) -> int:
        return self.n_pairs

    def __repr__(self) -> str:
        names = sorted(self.fields) if self.fields else []
        return (
            f"ShardedDataset({str(self.folder)!r}, n_pairs={self.n_pairs}, "
            f"n_shards={self.n_shards}, fields={names}, complete={self.complete})"
        )

    @property
    def shards(self) -> list[Path]:
        """Paths of the ``n_shards`` shard files, in pair order (present or not)."""
        return [shard_path(self.folder, k) for k in range(self.n_shards)]

    @property
    def complete(self) -> bool:
        """Whether the simulation finished and every shard file is present (the files'
        hashes are checked when they are loaded)."""
        return bool(self._meta.get("complete")) and all(p.exists() for p in self.shards)

    def count(self, index: int) -> int:
        """Number of pairs in shard ``index``."""
        return min(self.shard_size, self.n_pairs - index * self.shard_size)

    def load(
        self, fields: Iterable[str] | None = None, shards: Iterable[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """``{name: [pairs, *shape]}`` of the given shards (default all), concatenated in
        pair order; ``fields`` picks names (default all).

        Every shard is verified (SHA-256, index, run identity, field shapes): a missing
        or corrupt shard raises :class:`CheckpointError` naming the file.
        """
        if self.fields is None:
            raise CheckpointError(
                f"dataset {str(self.folder)!r} is incomplete: rerun simulate_dataset"
            )
        names = sorted(self.fields) if fields is None else list(fields)
        unknown = [n for n in names if n not in self.fields]
        if unknown or not names:
            raise InvalidArgumentError(
                f"fields={names!r} must be a non-empty subset of {sorted(self.fields)}"
            )
        index = list(range(self.n_shards)) if shards is None else [int(k) for k in shards]
        bad = [k for k in index if not 0 <= k < self.n_shards]
        if bad or not index:
            raise InvalidArgumentError(
                f"shards={index!r} must be a non-empty list of indices in [0, {self.n_shards})"
            )
        run = {k: self._meta[k] for k in _IDENTITY_KEYS}
        parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        for k in index:
            path = shard_path(self.folder, k)
            if not path.exists():
                raise CheckpointError(
                    f"shard {str(path)!r} is missing: rerun simulate_dataset to complete it"
                )
            got = _load_shard(path, k, self.count(k), run, self.fields)
            for n in names:
                parts[n].append(got[n])
        return {n: torch.cat(v) for n, v in parts.items()}

    def split(
        self, validation_fraction: float = 0.1, fields: Iterable[str] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(train, validation)`` dicts of whole shards: the last
        ``max(1, round(fraction · n_shards))`` shards are the validation set
        (deterministic; at least one shard stays for training)."""
        fraction = check_in_range(
            "validation_fraction", validation_fraction, 0.0, 1.0, low_open=True, high_open=True
        )
        if self.n_shards < 2:
            raise InvalidArgumentError(
                f"dataset {str(self.folder)!r} has {self.n_shards} shard; a split needs "
                "at least 2 (use a smaller shard_size)"
            )
        n_val = min(max(1, round(fraction * self.n_shards)), self.n_shards - 1)
        cut = self.n_shards - n_val
        return (
            self.load(fields, range(cut)),
            self.load(fields, range(cut, self.n_shards)),
        )
