r"""Simulation-based calibration of any posterior that can ``sample(n)``.

:func:`run_calibration` draws ``N`` truths from the prior, simulates data for each,
builds a posterior (a VI fit, an MCMC run, an amortized posterior), draws ``L``
samples and keeps, per truth, only ranks and a few scalars:

* the SBC rank of every coordinate and of chosen summaries (e.g. a window mean),
  uniform on ``{0..L}`` when the posterior is calibrated (Talts et al. 2018);
* the rank of :math:`\log q(\theta^*)` among :math:`\log q(\theta_l)` when the
  posterior has ``log_prob`` (highest-density-region coverage, Hermans et al. 2022);
* the TARP rank of the distance to a random reference point (Lemos et al. 2023);
* per-image metrics: RMSE, RMS std, UCE and the fraction of pixels with
  ``|error|/std > 2`` (see :mod:`devito_uq.inference.diagnostics.images`).

Samples are streamed in chunks, so memory is ``O(chunk · pixels)``: never the
``[L, pixels]`` block of comparisons or float64 copies, and never
``[N, L, pixels]``. With ``out_dir`` each truth's result is written atomically
to ``truth_000123.npz`` as it finishes (numpy arrays only, loaded with
``allow_pickle=False``) and a rerun skips finished truths; with ``comm`` the
truths are dealt round-robin over MPI ranks and the results summed to every rank.

Reproducibility: truth ``i`` runs with torch's global generators seeded from
``(seed, i)`` inside ``torch.random.fork_rng`` (the caller's state is left as
it was), so its prior draw, data, posterior and samples do not depend on the
number of ranks, on resuming, or on the other truths.

References: Talts et al. (2018) arXiv:1804.06788; Hermans et al. (2022) TMLR;
Lemos et al. (2023) ICML; see :mod:`devito_uq.inference.diagnostics.statistics`.
The ranks, statistics and figures themselves live in :mod:`devito_uq.inference.diagnostics`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from devito_uq.errors import CheckpointError, InvalidArgumentError, InvalidShapeError
from devito_uq.inference.diagnostics.images import uncertainty_calibration_error, z_fraction
from devito_uq.inference.diagnostics.ranks import Summary, truth_statistics
from devito_uq.inference.diagnostics.result import CalibrationResult
from devito_uq.io._atomic import atomic_path
from devito_uq.io._files import read_input_json
from devito_uq.io.records import load_record, save_record
from devito_uq.parallel import ShotDistribution, allreduce_sum, rank_and_size
from devito_uq.validation import check_bool, check_int, check_positive_int

__all__ = ["run_calibration", "load_calibration"]

_FORMAT = 1
_METRICS = ("rmse", "rms_std", "uce", "uce_signed", "z_fraction", "seconds")


def _seeds(seed: int, index: int) -> tuple[int, int, np.random.Generator]:
    """(torch seed of the truth's own work, torch seed of its TARP reference, tie rng)."""
    a, b = (int(s) for s in np.random.SeedSequence([seed, index]).generate_state(2, np.uint64))
    return a >> 1, b >> 1, np.random.default_rng(np.random.SeedSequence([seed, index, 1]))


@contextlib.contextmanager
def _seeded(seed: int):
    """Run a block with torch's global generators seeded, then restore the caller's state."""
    cuda = torch.cuda.is_available()
    with torch.random.fork_rng(devices=None if cuda else []):
        # torch.manual_seed would also queue a lazy CUDA seeding with a captured stack
        # trace (0.5 ms per truth on CPU-only machines); seed CUDA only where it exists.
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed_all(seed)
        yield


def _plain_identity(identity: Mapping[str, Any] | None) -> dict[str, Any]:
    """``identity`` as plain JSON data with string keys (what the files store)."""
    if identity is None:
        return {}
    if not isinstance(identity, Mapping) or not all(isinstance(k, str) for k in identity):
        raise InvalidArgumentError(f"identity={identity!r} must be a mapping with string keys")
    try:
        return json.loads(json.dumps(dict(identity), allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"identity={identity!r} is not plain JSON data: {exc}") from None


def _draw(prior: Any) -> torch.Tensor:
    x = prior.sample(1)[0] if callable(getattr(prior, "sample", None)) else prior()
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"the prior returned {type(x).__name__}, not a torch.Tensor")
    return x.detach()


def _check_meta(out_dir: Path, meta: dict) -> None:
    path = out_dir / "calibration.json"
    if os.path.lexists(path):
        old = read_input_json(path, "calibration file", CheckpointError)
        if not isinstance(old, dict):
            raise CheckpointError(f"calibration file {str(path)!r} does not hold a JSON object")
        for key in sorted(set(meta) | set(old)):
            if old.get(key) != meta.get(key):
                raise CheckpointError(
                    f"{path} was written with {key}={old.get(key)!r}, this run has "
                    f"{meta.get(key)!r}; use another out_dir or the same settings"
                )
        return
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1))


def _load(path: Path, index: int, shape: tuple, k: int, meta: dict) -> dict:
    """Truth ``index``'s record from ``path``, verified: its hash, then its run identity."""
    rec = load_record(path, meta, "calibration result")
    missing = sorted(
        {"index", "ranks", "summary_ranks", "log_prob_rank", "tarp_rank", *_METRICS} - set(rec)
    )
    if missing:
        raise CheckpointError(f"{path} lacks the entries {missing}")
    if int(rec["index"]) != index or tuple(rec["ranks"].shape) != shape:
        raise CheckpointError(f"{path} does not hold truth {index} of shape {list(shape)}")
    if rec["summary_ranks"].shape != (k,):
        raise CheckpointError(f"{path} has {rec['summary_ranks'].size} summaries, expected {k}")
    return rec


def run_calibration(
    prior: Any,
    simulator: Callable[[torch.Tensor], Any],
    build_posterior: Callable[[Any], Any],
    n_truths: int,
    n_samples: int,
    *,
    summaries: Mapping[str, Summary] | None = None,
    tarp_reference: str | Callable[[], torch.Tensor] | None = "prior",
    tarp_scale: torch.Tensor | None = None,
    use_log_prob: bool = True,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    comm: Any = None,
    sample_chunk: int | None = None,
    progress: bool = False,
    identity: Mapping[str, Any] | None = None,
) -> CalibrationResult:
    """Simulation-based calibration over ``n_truths`` truths (Talts et al. 2018).

    For truth ``i``: ``truth = prior()`` (or ``prior.sample(1)[0]``), ``data =
    simulator(truth)``, ``posterior = build_posterior(data)``; then
    :func:`truth_statistics` with ``n_samples`` draws and the per-image metrics.

    Parameters
    ----------
    prior : callable or object
        ``() -> [*shape]``, or an object with ``sample(n) -> [n, *shape]``.
    simulator : callable
        ``truth -> data`` (anything the builder accepts; noise included).
    build_posterior : callable
        ``data -> posterior``: a ``[L, *shape]`` tensor of draws or an object with
        ``sample(n)`` (and optionally ``log_prob``).
    n_truths : int
        ``N >= 2``.
    n_samples : int
        ``L >= 1`` draws per truth.
    summaries : mapping of str to callable, optional
        Name → ``[c, *shape] -> [c]`` functions ranked like coordinates (e.g.
        :func:`~devito_uq.inference.window_mean`).
    tarp_reference : {"prior"} or callable or None
        TARP reference point per truth: ``"prior"`` (default: an independent prior
        draw, its own seed), a callable ``() -> [*shape]`` (drawn under the same
        seed), or ``None`` to skip TARP. Distances are Euclidean over all
        coordinates, divided by ``tarp_scale``.
    tarp_scale : torch.Tensor, optional
        ``[*shape]`` positive per-coordinate scale of the TARP distance (e.g. the
        prior std, when coordinates have different units); ``None``: 1.
    use_log_prob : bool
        Rank ``log q(truth)`` (HPD coverage) when the posterior has it.
    seed : int
        Seeds everything per truth (see the module docstring).
    out_dir : str or os.PathLike, optional
        Folder for ``calibration.json`` and ``truth_%06d.npz``; finished truths found
        there are loaded, not recomputed (``N`` may grow between runs).
    comm : MPI communicator, optional
        Truths dealt round-robin, results summed on every rank.
    sample_chunk : int, optional
        As in :func:`~devito_uq.inference.truth_statistics`.
    progress : bool
        tqdm bar over this rank's truths.
    identity : mapping of str to JSON value, optional
        The caller's configuration the truths depend on (noise, prior, physics): stored
        as ``identity.KEY`` in ``calibration.json`` and in every truth file; a resume
        under another value, or a truth file of another run, is refused naming the key.

    Returns
    -------
    CalibrationResult

    Raises
    ------
    InvalidArgumentError
        If an argument has the wrong kind or range, or the prior or posterior returns
        non-tensors or non-finite values.
    InvalidShapeError
        If the prior's draws change shape between truths.
    CheckpointError
        If ``out_dir`` holds a run with other settings or an unreadable truth.
    """
    n_truths = check_int("n_truths", n_truths, minimum=2)
    n_samples = check_positive_int("n_samples", n_samples)
    seed = check_int("seed", seed, minimum=0)
    check_bool("use_log_prob", use_log_prob)
    if sample_chunk is not None:
        sample_chunk = check_positive_int("sample_chunk", sample_chunk)
    for name, fn in (("simulator", simulator), ("build_posterior", build_posterior)):
        if not callable(fn):
            raise InvalidArgumentError(f"{name} must be callable, got {type(fn).__name__}")
    if not (callable(prior) or callable(getattr(prior, "sample", None))):
        raise InvalidArgumentError(f"prior must be callable or have sample(n), got {prior!r}")
    is_prior = isinstance(tarp_reference, str) and tarp_reference == "prior"
    if not (tarp_reference is None or is_prior or callable(tarp_reference)):
        raise InvalidArgumentError(
            f"tarp_reference={tarp_reference!r} must be 'prior', a callable or None"
        )
    identity = _plain_identity(identity)
    summaries = dict(summaries or {})
    names = tuple(summaries)
    rank, _ = rank_and_size(comm)
    user0, _, _ = _seeds(seed, 0)
    with _seeded(user0):
        shape = tuple(_draw(prior).shape)  # every rank learns the shape, even with no truths
    folder = None if out_dir is None else Path(out_dir)
    ref_kind = "none" if tarp_reference is None else ("prior" if is_prior else "custom")
    meta = {
        "format": _FORMAT,
        "n_samples": n_samples,
        "seed": seed,
        "shape": list(shape),
        "summaries": list(names),
        "tarp_reference": ref_kind,
        "tarp_scale": None if tarp_scale is None else "custom",
        "use_log_prob": use_log_prob,
        **{f"identity.{k}": v for k, v in identity.items()},
    }
    if folder is not None:
        _check_meta(folder, meta)

    run = _Run(
        seed,
        prior,
        simulator,
        build_posterior,
        shape,
        n_samples,
        summaries,
        tarp_reference,
        tarp_scale,
        use_log_prob,
        sample_chunk,
    )
    out = _Collector(n_truths, shape, names, n_samples, seed)
    mine = ShotDistribution(n_truths, comm).shots
    bar = mine
    if progress and mine:
        bar = tqdm(mine, desc=f"calibration (rank {rank})", leave=False)
    for i in bar:
        path = None if folder is None else folder / f"truth_{i:06d}.npz"
        if path is not None and os.path.lexists(path):
            out.put(i, _load(path, i, shape, len(names), meta))
            continue
        rec = _one_truth(i, run)
        if path is not None:
            save_record(path, rec, meta)
        out.put(i, rec, computed=True)
    return out.result(comm)


def load_calibration(out_dir: str | os.PathLike, n_truths: int | None = None) -> CalibrationResult:
    """The :class:`CalibrationResult` of the truths saved in ``out_dir`` (no recomputation).

    Parameters
    ----------
    out_dir : str or os.PathLike
        Folder written by :func:`run_calibration`.
    n_truths : int, optional
        Use truths ``0..n_truths-1`` (all must be there); default: every
        ``truth_*.npz`` found, which must be numbered ``0..N-1`` without gaps.

    Returns
    -------
    CalibrationResult

    Raises
    ------
    CheckpointError
        If the folder is not a calibration folder, or truths are missing or unreadable.
    """
    folder = Path(out_dir)
    meta_path = folder / "calibration.json"
    if not os.path.lexists(meta_path):
        raise CheckpointError(f"{meta_path} does not exist: not a calibration folder")
    meta = read_input_json(meta_path, "calibration file", CheckpointError)
    if not isinstance(meta, dict) or not {"shape", "summaries", "n_samples", "seed"} <= set(meta):
        raise CheckpointError(f"calibration file {str(meta_path)!r} is not a calibration manifest")
    found = sorted(folder.glob("truth_*.npz"))
    n = len(found) if n_truths is None else check_int("n_truths", n_truths, minimum=2)
    if n < 2:
        raise CheckpointError(f"{folder} holds {len(found)} finished truths; need at least 2")
    shape, names = tuple(meta["shape"]), tuple(meta["summaries"])
    out = _Collector(n, shape, names, meta["n_samples"], meta["seed"])
    for i in range(n):
        path = folder / f"truth_{i:06d}.npz"
        if not os.path.lexists(path):
            raise CheckpointError(f"{path} is missing: truth {i} of {n} has not finished")
        out.put(i, _load(path, i, shape, len(names), meta))
    return out.result(None)


class _Collector:
    """Per-truth records gathered into ``[N, ...]`` arrays, summed over ranks at the end."""

    def __init__(self, n: int, shape: tuple, names: tuple, n_samples: int, seed: int) -> None:
        self.shape, self.names, self.n_samples, self.seed = shape, names, n_samples, seed
        self.ranks = np.zeros((n, max(1, math.prod(shape))), np.int32)
        self.sranks = np.zeros((n, len(names)), np.int32)
        self.scal = np.zeros((n, 2 + len(_METRICS)), np.float64)  # log_prob, tarp, metrics
        self.done = np.zeros(n, np.int32)
        self.computed: list[int] = []

    def put(self, i: int, rec: dict, computed: bool = False) -> None:
        self.ranks[i] = rec["ranks"].reshape(-1)
        self.sranks[i] = rec["summary_ranks"]
        self.scal[i] = [rec["log_prob_rank"], rec["tarp_rank"], *(rec[k] for k in _METRICS)]
        self.done[i] = 1
        if computed:
            self.computed.append(i)

    def result(self, comm: Any) -> CalibrationResult:
        arrays = (self.ranks, self.sranks, self.scal, self.done)
        if rank_and_size(comm)[1] > 1:
            arrays = tuple(allreduce_sum(torch.from_numpy(a), comm).numpy() for a in arrays)
        ranks, sranks, scal, done = arrays
        if not (done == 1).all():  # pragma: no cover - a layout bug, not a user error
            raise RuntimeError(f"truths computed {done.tolist()} times, expected once each")
        return CalibrationResult(
            ranks=ranks.reshape(ranks.shape[0], *self.shape),
            summary_ranks=sranks,
            summary_names=self.names,
            log_prob_ranks=scal[:, 0].astype(np.int32),
            tarp_ranks=scal[:, 1].astype(np.int32),
            metrics={k: scal[:, 2 + j] for j, k in enumerate(_METRICS)},
            n_samples=self.n_samples,
            seed=self.seed,
            computed=self.computed,
        )


@dataclass(frozen=True)
class _Run:
    """The validated arguments of one :func:`run_calibration` call, as each truth needs them."""

    seed: int
    prior: Any
    simulator: Callable[[torch.Tensor], Any]
    build_posterior: Callable[[Any], Any]
    shape: tuple[int, ...]
    n_samples: int
    summaries: dict[str, Summary]
    tarp_reference: str | Callable[[], torch.Tensor] | None
    tarp_scale: torch.Tensor | None
    use_log_prob: bool
    sample_chunk: int | None


def _one_truth(index: int, run: _Run) -> dict:
    """Run truth ``index`` and return its record (numpy values only, for ``np.savez``)."""
    start = time.perf_counter()
    user, ref_seed, rng = _seeds(run.seed, index)
    reference = None
    if run.tarp_reference is not None:
        with _seeded(ref_seed):
            ref = run.tarp_reference
            reference = ref().detach() if callable(ref) else _draw(run.prior)
    with _seeded(user):
        truth = _draw(run.prior)
        if tuple(truth.shape) != run.shape:
            raise InvalidShapeError(
                f"the prior's draws must share one shape: got {list(truth.shape)} for truth "
                f"{index}, {list(run.shape)} for the first draw"
            )
        posterior = run.build_posterior(run.simulator(truth))
        st = truth_statistics(
            truth,
            posterior,
            run.n_samples,
            summaries=run.summaries,
            reference=reference,
            reference_scale=run.tarp_scale,
            use_log_prob=run.use_log_prob,
            sample_chunk=run.sample_chunk,
            generator=rng,
        )
    error = st.mean - truth.double().cpu().numpy()
    # >= 100 pixels per bin: the RMSE of n values is biased low by ~1/(4n) (0.25 %).
    uce = uncertainty_calibration_error(
        error,
        st.std,
        n_bins=int(np.clip(error.size // 100, 1, 10)),
        n_samples=run.n_samples,  # the std is estimated from L draws: E[e²] = σ²(1 + 1/L)
    )
    return {
        "index": np.int64(index),
        "ranks": st.ranks.astype(np.int32),
        "summary_ranks": st.summary_ranks.astype(np.int32),
        "log_prob_rank": np.int64(st.log_prob_rank),
        "tarp_rank": np.int64(st.tarp_rank),
        "rmse": np.float64(np.sqrt(np.mean(error**2))),
        "rms_std": np.float64(np.sqrt(np.mean(st.std**2))),
        "uce": np.float64(uce.uce),
        "uce_signed": np.float64(uce.signed),
        "z_fraction": np.float64(z_fraction(error, st.std)),
        "seconds": np.float64(time.perf_counter() - start),
    }
