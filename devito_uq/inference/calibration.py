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
  ``|error|/std > 2`` (see :mod:`devito_uq.inference.calibration_metrics`).

Samples are streamed in chunks, so memory is ``O(chunk · pixels)``: never the
``[L, pixels]`` block of comparisons or float64 copies, and never
``[N, L, pixels]``. With ``out_dir`` each truth's result is written atomically
to ``truth_000123.npz`` as it finishes (numpy arrays only, loaded with
``allow_pickle=False``) and a rerun skips finished truths; with ``comm`` the
truths are dealt round-robin over MPI ranks and the results summed to every rank.

Reproducibility: truth ``i`` runs with torch's global generators seeded from
``(seed, i)`` inside :func:`torch.random.fork_rng` (the caller's state is left as
it was), so its prior draw, data, posterior and samples do not depend on the
number of ranks, on resuming, or on the other truths.

References: Talts et al. (2018) arXiv:1804.06788; Hermans et al. (2022) TMLR;
Lemos et al. (2023) ICML; see :mod:`devito_uq.inference.calibration_metrics`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from devito_uq.errors import CheckpointError, InvalidArgumentError, InvalidShapeError
from devito_uq.inference.calibration_metrics import (
    CoverageCurve,
    SBCTest,
    TARPResult,
    expected_coverage,
    pit,
    sbc_test,
    tarp_test,
    uncertainty_calibration_error,
    z_fraction,
)
from devito_uq.inference.calibration_ranks import Summary, truth_statistics
from devito_uq.io._atomic import atomic_path
from devito_uq.parallel import ShotDistribution, allreduce_sum, rank_and_size
from devito_uq.validation import check_bool, check_int, check_positive_int

__all__ = ["CalibrationResult", "run_calibration", "load_calibration"]

_FORMAT = 1
_METRICS = ("rmse", "rms_std", "uce", "uce_signed", "z_fraction", "seconds")


@dataclass
class CalibrationResult:
    """Per-truth ranks and metrics of a calibration run, and the tests on them.

    Attributes:
        ranks: ``[N, *shape]`` int32 coordinate ranks in ``[0, L]``.
        summary_ranks: ``[N, k]`` int32; ``summary_names``: ``k`` names.
        log_prob_ranks, tarp_ranks: ``[N]`` int32, −1 where not computed.
        metrics: name → ``[N]`` float64: ``rmse``, ``rms_std`` (model units), ``uce``,
            ``uce_signed`` (model units; quantile bins of >= 100 pixels, at most 10),
            ``z_fraction``, ``seconds`` (wall time of the truth: prior draw,
            simulation, posterior, statistics).
        n_samples: ``L``; ``seed``: the run's seed (also seeds the PIT jitter).
        computed: truths this process computed in this call (not loaded from
            ``out_dir``; on this rank only).
    """

    ranks: np.ndarray
    summary_ranks: np.ndarray
    summary_names: tuple[str, ...]
    log_prob_ranks: np.ndarray
    tarp_ranks: np.ndarray
    metrics: dict[str, np.ndarray]
    n_samples: int
    seed: int = 0
    computed: list[int] = field(default_factory=list)

    @property
    def n_truths(self) -> int:
        return int(self.ranks.shape[0])

    def quantity_ranks(self, coordinates: bool = True) -> tuple[np.ndarray, list[str]]:
        """``([N, m] ranks, names)``: coordinates ``x[i]`` (flattened), summaries, log_prob."""
        blocks, names = [self.summary_ranks], list(self.summary_names)
        if coordinates:
            blocks.insert(0, self.ranks.reshape(self.n_truths, -1))
            names = [f"x[{i}]" for i in range(blocks[0].shape[1])] + names
        if (self.log_prob_ranks >= 0).all():
            blocks.append(self.log_prob_ranks[:, None])
            names.append("log_prob")
        return np.concatenate(blocks, 1), names

    def sbc(
        self, alpha: float = 0.05, bins: int | None = None, coordinates: bool = True
    ) -> SBCTest:
        """:func:`sbc_test` over coordinates (unless ``coordinates=False``), summaries and
        ``log_prob``, Holm-corrected over all of them."""
        r, names = self.quantity_ranks(coordinates)
        return sbc_test(r, self.n_samples, names, bins=bins, alpha=alpha, seed=self.seed)

    def pit(self) -> np.ndarray:
        """``[N, P]`` randomised PIT values of the coordinates."""
        return pit(self.ranks.reshape(self.n_truths, -1), self.n_samples, self.seed)

    def coverage(self, kind: str = "central", levels=None) -> CoverageCurve:
        """Expected coverage of per-coordinate central intervals (``"central"``, pooled
        over truths and coordinates) or of highest-density regions (``"hpd"``)."""
        if kind == "central":
            return expected_coverage(np.abs(2.0 * self.pit() - 1.0), levels, kind="central")
        if kind == "hpd":
            if not (self.log_prob_ranks >= 0).all():
                raise InvalidArgumentError("kind='hpd' needs a posterior with log_prob")
            u = pit(self.log_prob_ranks, self.n_samples, self.seed + 1)
            return expected_coverage(1.0 - u, levels, kind="hpd")
        raise InvalidArgumentError(f"kind={kind!r} must be one of ('central', 'hpd')")

    def tarp(self, levels=None) -> TARPResult:
        """:func:`tarp_test` of the TARP ranks."""
        if not (self.tarp_ranks >= 0).all():
            raise InvalidArgumentError("tarp needs a run with tarp_reference")
        return tarp_test(pit(self.tarp_ranks, self.n_samples, self.seed + 2), levels)

    def report(self, alpha: float = 0.05) -> dict:
        """JSON-ready verdicts: SBC family p-value, coverage areas, TARP, mean metrics."""
        sbc = self.sbc(alpha)
        out = {
            "n_truths": self.n_truths,
            "n_samples": self.n_samples,
            "sbc": {
                "passed": sbc.passed,
                "family_pvalue": sbc.family_pvalue,
                "alpha": alpha,
                "failed": sbc.failed()[:20],
            },
        }
        kinds = ["central"] + (["hpd"] if (self.log_prob_ranks >= 0).all() else [])
        for kind in kinds:
            c = self.coverage(kind)
            out[f"coverage_{kind}"] = {
                "area": c.area,
                "ks": c.ks_statistic,
                "at_0.9": c.at(0.9),
                "verdict": c.verdict(),
            }
        if (self.tarp_ranks >= 0).all():
            t = self.tarp()
            out["tarp"] = {"atc": t.atc, "ks": t.ks_statistic, "ks_pvalue": t.ks_pvalue}
        out["metrics"] = {k: float(np.mean(v)) for k, v in self.metrics.items()}
        return out


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


def _draw(prior: Any) -> torch.Tensor:
    x = prior.sample(1)[0] if callable(getattr(prior, "sample", None)) else prior()
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"the prior returned {type(x).__name__}, not a torch.Tensor")
    return x.detach()


def _check_meta(out_dir: Path, meta: dict) -> None:
    path = out_dir / "calibration.json"
    if path.exists():
        old = json.loads(path.read_text())
        for key, value in meta.items():
            if old.get(key) != value:
                raise CheckpointError(
                    f"{path} was written with {key}={old.get(key)!r}, this run has {value!r}; "
                    "use another out_dir or the same settings"
                )
        return
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1))


def _load(path: Path, index: int, shape: tuple, k: int) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            rec = {name: z[name] for name in z.files}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if int(rec.get("index", -1)) != index or tuple(rec["ranks"].shape) != shape:
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
) -> CalibrationResult:
    """Simulation-based calibration over ``n_truths`` truths (Talts et al. 2018).

    For truth ``i``: ``truth = prior()`` (or ``prior.sample(1)[0]``), ``data =
    simulator(truth)``, ``posterior = build_posterior(data)``; then
    :func:`truth_statistics` with ``n_samples`` draws and the per-image metrics.

    Args:
        prior: callable ``() -> [*shape]`` or object with ``sample(n) -> [n, *shape]``.
        simulator: ``truth -> data`` (anything the builder accepts; noise included).
        build_posterior: ``data -> posterior``: a ``[L, *shape]`` tensor of draws or an
            object with ``sample(n)`` (and optionally ``log_prob``); see
            :func:`truth_statistics` for ``sample_chunk``.
        n_truths: ``N >= 2``. ``n_samples``: ``L >= 1`` draws per truth.
        summaries: name → ``[c, *shape] -> [c]`` functions ranked like coordinates
            (e.g. :func:`window_mean`).
        tarp_reference: TARP reference point per truth: ``"prior"`` (default: an
            independent prior draw, its own seed), a callable ``() -> [*shape]``
            (drawn under the same seed), or ``None`` to skip TARP. Distances are
            Euclidean over all coordinates, divided by ``tarp_scale``.
        tarp_scale: ``[*shape]`` positive per-coordinate scale of the TARP distance (e.g.
            the prior std, when coordinates have different units); ``None``: 1.
        use_log_prob: rank ``log q(truth)`` (HPD coverage) when the posterior has it.
        seed: seeds everything per truth (see the module docstring).
        out_dir: folder for ``calibration.json`` and ``truth_%06d.npz``; finished truths
            found there are loaded, not recomputed (``N`` may grow between runs).
        comm: MPI communicator: truths dealt round-robin, results summed on every rank.
        progress: tqdm bar over this rank's truths.
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
    summaries = dict(summaries or {})
    names = tuple(summaries)
    rank, _ = rank_and_size(comm)
    user0, _, _ = _seeds(seed, 0)
    with _seeded(user0):
        shape = tuple(_draw(prior).shape)  # every rank learns the shape, even with no truths
    folder = None if out_dir is None else Path(out_dir)
    if folder is not None:
        ref_kind = "none" if tarp_reference is None else ("prior" if is_prior else "custom")
        _check_meta(
            folder,
            {
                "format": _FORMAT,
                "n_samples": n_samples,
                "seed": seed,
                "shape": list(shape),
                "summaries": list(names),
                "tarp_reference": ref_kind,
                "tarp_scale": None if tarp_scale is None else "custom",
                "use_log_prob": use_log_prob,
            },
        )

    out = _Collector(n_truths, shape, names, n_samples, seed)
    mine = ShotDistribution(n_truths, comm).shots
    bar = mine
    if progress and mine:
        from tqdm import tqdm

        bar = tqdm(mine, desc=f"calibration (rank {rank})", leave=False)
    for i in bar:
        path = None if folder is None else folder / f"truth_{i:06d}.npz"
        if path is not None and path.exists():
            out.put(i, _load(path, i, shape, len(names)))
            continue
        rec = _one_truth(
            i,
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
        if path is not None:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, **rec)
        out.put(i, rec, computed=True)
    return out.result(comm)


def load_calibration(out_dir: str | os.PathLike, n_truths: int | None = None) -> CalibrationResult:
    """The :class:`CalibrationResult` of the truths saved in ``out_dir`` (no recomputation).

    ``n_truths``: use truths ``0..n_truths-1`` (all must be there); default: every
    ``truth_*.npz`` found, which must be numbered ``0..N-1`` without gaps.
    """
    folder = Path(out_dir)
    meta_path = folder / "calibration.json"
    if not meta_path.exists():
        raise CheckpointError(f"{meta_path} does not exist: not a calibration folder")
    meta = json.loads(meta_path.read_text())
    found = sorted(folder.glob("truth_*.npz"))
    n = len(found) if n_truths is None else check_int("n_truths", n_truths, minimum=2)
    if n < 2:
        raise CheckpointError(f"{folder} holds {len(found)} finished truths; need at least 2")
    shape, names = tuple(meta["shape"]), tuple(meta["summaries"])
    out = _Collector(n, shape, names, meta["n_samples"], meta["seed"])
    for i in range(n):
        path = folder / f"truth_{i:06d}.npz"
        if not path.exists():
            raise CheckpointError(f"{path} is missing: truth {i} of {n} has not finished")
        out.put(i, _load(path, i, shape, len(names)))
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


def _one_truth(
    index,
    seed,
    prior,
    simulator,
    build,
    shape,
    n_samples,
    summaries,
    tarp_reference,
    tarp_scale,
    use_log_prob,
    sample_chunk,
) -> dict:
    """Run truth ``index`` and return its record (numpy values only, for ``np.savez``)."""
    start = time.perf_counter()
    user, ref_seed, rng = _seeds(seed, index)
    reference = None
    if tarp_reference is not None:
        with _seeded(ref_seed):
            reference = tarp_reference().detach() if callable(tarp_reference) else _draw(prior)
    with _seeded(user):
        truth = _draw(prior)
        if tuple(truth.shape) != shape:
            raise InvalidShapeError(
                f"the prior's draws must share one shape: got {list(truth.shape)} for truth "
                f"{index}, {list(shape)} for the first draw"
            )
        posterior = build(simulator(truth))
        st = truth_statistics(
            truth,
            posterior,
            n_samples,
            summaries=summaries,
            reference=reference,
            reference_scale=tarp_scale,
            use_log_prob=use_log_prob,
            sample_chunk=sample_chunk,
            generator=rng,
        )
    error = st.mean - truth.double().cpu().numpy()
    # >= 100 pixels per bin: the RMSE of n values is biased low by ~1/(4n) (0.25 %).
    uce = uncertainty_calibration_error(
        error, st.std, n_bins=int(np.clip(error.size // 100, 1, 10))
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
