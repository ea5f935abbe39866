r"""Ranks and moments of one truth among posterior draws, streamed in chunks.

The per-truth half of simulation-based calibration (Talts et al. 2018): given a
truth and anything that can ``sample(n)``, count for every coordinate, summary,
log-density (HPD, Hermans et al. 2022) and TARP distance (Lemos et al. 2023) how
many draws fall below the truth, and accumulate the posterior mean and std — in
chunks of at most 2²¹ values, so memory is ``O(chunk · pixels)`` whatever ``L``.
:func:`image_metrics` turns one truth's statistics into the per-image diagnostics
(error, std, z-scores, UCE, coverage map); the statistics over many truths are in
:mod:`.statistics`, the per-image ones in :mod:`.images`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference.diagnostics.images import (
    UCEResult,
    uncertainty_calibration_error,
    z_fraction,
)
from devito_uq.inference.diagnostics.statistics import pit
from devito_uq.validation import check_finite_positive, check_in_range, check_positive_int

__all__ = [
    "CachedDraws",
    "Summary",
    "TruthStatistics",
    "truth_statistics",
    "window_mean",
    "ImageMetrics",
    "image_metrics",
]

Summary = Callable[[torch.Tensor], torch.Tensor]
_ELEMENTS_PER_CHUNK = 1 << 21  # float64 work arrays of ~16 MB per statistic chunk


@dataclass
class TruthStatistics:
    """What one truth contributes to a calibration run.

    Attributes
    ----------
    ranks : numpy.ndarray
        ``[*shape]`` int, draws below the truth per coordinate (ties at random).
    summary_ranks : numpy.ndarray
        ``[k]`` int, ranks of the summaries, in ``summaries`` order.
    log_prob_rank : int
        Draws with ``log q`` below ``log q(truth)``; −1 without ``log_prob``.
    tarp_rank : int
        Draws closer to the reference than the truth; −1 without reference.
    mean, std : numpy.ndarray
        ``[*shape]`` float64 posterior mean and std (``L − 1`` normalised) of the
        draws, in model units.
    n_samples : int
        ``L``, the draws counted.
    """

    ranks: np.ndarray
    summary_ranks: np.ndarray
    log_prob_rank: int
    tarp_rank: int
    mean: np.ndarray
    std: np.ndarray
    n_samples: int


def window_mean(index: Any) -> Summary:
    """Summary ``x ↦ mean of x.flatten(1)[:, index]``.

    Parameters
    ----------
    index : int, slice, sequence of int or tensor
        Flat coordinates to average, e.g. a depth window ``slice(40, 60)``.

    Returns
    -------
    Summary
        A function ``[c, *shape] -> [c]``.
    """

    def summary(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, index].mean(1)

    return summary


class _Counter:
    """Counts of ``values < target`` and ``values == target``, accumulated over chunks."""

    def __init__(self, size: int) -> None:
        self.less = np.zeros(size, np.int64)
        self.equal = np.zeros(size, np.int64)

    def add(self, values: np.ndarray, target: np.ndarray) -> None:
        self.less += (values < target).sum(0)
        self.equal += (values == target).sum(0)

    def ranks(self, rng: np.random.Generator) -> np.ndarray:
        # Break ties uniformly, so ranks stay uniform for discrete or repeated draws.
        return self.less + np.floor(rng.random(self.less.shape) * (self.equal + 1)).astype(np.int64)


def _check_block(x: Any, want: int, shape: tuple, where: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"{where} returned {type(x).__name__}, not a torch.Tensor")
    if tuple(x.shape) != (want, *shape):
        raise InvalidShapeError(
            f"{where} returned samples of shape {list(x.shape)}; expected {[want, *shape]}"
        )
    return x.detach()


def _check_finite(x: torch.Tensor, offset: int, where: str) -> torch.Tensor:
    # Checked per statistics chunk: a whole-block isfinite mask would cost L·P bytes.
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        idx = [int(i) for i in bad.nonzero()[0]]
        value = x[tuple(idx)].item()
        idx[0] += offset
        raise InvalidArgumentError(
            f"{where} returned a non-finite sample value {value} at index {idx}"
        )
    return x


def _sample_chunks(posterior: Any, n: int, shape: tuple, sample_chunk: int | None):
    """Yield ``[c, *shape]`` chunks of ``n`` draws, at most ``_ELEMENTS_PER_CHUNK`` values each."""
    step = max(1, _ELEMENTS_PER_CHUNK // max(1, math.prod(shape)))
    if isinstance(posterior, torch.Tensor):
        where, calls = "the posterior builder", [(0, n)]
    else:
        where = "posterior.sample"
        per_call = n if sample_chunk is None else sample_chunk  # fresh draws per call
        calls = [(i, min(per_call, n - i)) for i in range(0, n, per_call)]
    for start, count in calls:
        if isinstance(posterior, torch.Tensor):
            block = _check_block(posterior, n, shape, where)
        else:
            block = _check_block(posterior.sample(count), count, shape, where)
        for j in range(0, count, step):
            yield _check_finite(block[j : j + step], start + j, where)


def _summaries_of(summaries: Mapping[str, Summary], x: torch.Tensor) -> np.ndarray:
    cols = []
    for name, fn in summaries.items():
        v = fn(x)
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != (x.shape[0],):
            got = list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise InvalidShapeError(f"summary {name!r} returned {got}; expected [{x.shape[0]}]")
        cols.append(v.detach().double().cpu().numpy())
    return np.stack(cols, 1) if cols else np.zeros((x.shape[0], 0))


def _log_prob(posterior: Any, x: torch.Tensor) -> np.ndarray:
    v = posterior.log_prob(x)
    if not isinstance(v, torch.Tensor) or tuple(v.shape) != (x.shape[0],):
        got = list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise InvalidShapeError(f"posterior.log_prob returned {got}; expected [{x.shape[0]}]")
    out = v.detach().double().cpu().numpy()
    if not np.isfinite(out).all():
        raise InvalidArgumentError(f"posterior.log_prob returned non-finite values: {out}")
    return out[:, None]


@torch.no_grad()
def truth_statistics(
    truth: torch.Tensor,
    posterior: Any,
    n_samples: int,
    *,
    summaries: Mapping[str, Summary] | None = None,
    reference: torch.Tensor | None = None,
    reference_scale: torch.Tensor | None = None,
    use_log_prob: bool = True,
    sample_chunk: int | None = None,
    generator: np.random.Generator | None = None,
) -> TruthStatistics:
    """Ranks and moments of one truth among ``n_samples`` posterior draws, streamed.

    Statistics are computed in float64 on chunks of at most 2²¹ values.

    Parameters
    ----------
    truth : torch.Tensor
        ``[*shape]`` the true model.
    posterior : torch.Tensor or object
        A ``[L, *shape]`` tensor of draws (e.g. ``MCMCResult.flat()``), or an object
        with ``sample(n) -> [n, *shape]`` and optionally ``log_prob(m) -> [n]``.
    n_samples : int
        ``L >= 1``.
    summaries : mapping of str to callable, optional
        Name → function ``[c, *shape] -> [c]`` of draws, ranked like coordinates.
    reference : torch.Tensor, optional
        ``[*shape]`` TARP reference point.
    reference_scale : torch.Tensor, optional
        ``[*shape]`` positive scale dividing each coordinate in the TARP distance
        ``‖(x − reference) / scale‖₂`` (e.g. the prior std when coordinates have
        different units); ``None``: 1.
    use_log_prob : bool
        Rank ``log q(truth)`` when ``posterior`` has ``log_prob``.
    sample_chunk : int, optional
        ``None`` calls ``sample(L)`` once (right for any sampler, including MCMC
        objects that return stored draws); ``k`` calls ``sample(k)`` repeatedly,
        which needs fresh independent draws per call (flows, VI, amortized
        posteriors) and keeps only ``k`` draws in memory.
    generator : numpy.random.Generator, optional
        Tie-breaking generator; default ``default_rng(0)``.

    Returns
    -------
    TruthStatistics

    Raises
    ------
    InvalidArgumentError
        If the truth, a draw or a log-density is not finite, or ``posterior`` can
        neither be indexed as draws nor sampled.
    InvalidShapeError
        If draws, summaries, ``log_prob``, ``reference`` or ``reference_scale`` do
        not have the shapes above.
    """
    n_samples = check_positive_int("n_samples", n_samples)
    if sample_chunk is not None:
        sample_chunk = check_positive_int("sample_chunk", sample_chunk)
    if not isinstance(truth, torch.Tensor):
        raise InvalidArgumentError(f"truth must be a torch.Tensor, got {type(truth).__name__}")
    if not isinstance(posterior, torch.Tensor) and not callable(getattr(posterior, "sample", None)):
        raise InvalidArgumentError(
            f"posterior must be a tensor of draws or have sample(n); got {type(posterior).__name__}"
        )
    summaries = dict(summaries or {})
    rng = generator if generator is not None else np.random.default_rng(0)
    shape = tuple(truth.shape)
    t = truth.detach().double().cpu().reshape(1, -1).numpy()
    if not np.isfinite(t).all():
        raise InvalidArgumentError("truth has non-finite values")
    has_lp = bool(use_log_prob) and callable(getattr(posterior, "log_prob", None))
    has_lp = has_lp and not isinstance(posterior, torch.Tensor)
    ref = None if reference is None else reference.detach().double().cpu().reshape(1, -1).numpy()
    if ref is not None and ref.shape != t.shape:
        raise InvalidShapeError(f"reference has shape {list(reference.shape)}; expected {shape}")
    scale = 1.0
    if reference_scale is not None:
        scale = reference_scale.detach().double().cpu().reshape(1, -1).numpy()
        if scale.shape != t.shape:
            raise InvalidShapeError(
                f"reference_scale has shape {list(reference_scale.shape)}; expected {shape}"
            )
        check_finite_positive("reference_scale", scale)

    coords, counts_sum = _Counter(t.shape[1]), _Counter(len(summaries))
    counts_lp, counts_tarp = _Counter(1), _Counter(1)
    targets_sum = lp_truth = d_truth = None
    n, mean, m2 = 0, np.zeros(t.shape[1]), np.zeros(t.shape[1])
    for x in _sample_chunks(posterior, n_samples, shape, sample_chunk):
        if targets_sum is None:  # the truth in the draws' dtype and device
            tx = truth.detach().to(dtype=x.dtype, device=x.device).unsqueeze(0)
            targets_sum = _summaries_of(summaries, tx)
            lp_truth = _log_prob(posterior, tx) if has_lp else None
        xf = x.double().cpu().reshape(x.shape[0], -1).numpy()
        coords.add(xf, t)
        # Chan et al. pairwise update of mean and squared deviations: no cancellation
        # even when the posterior sits many std away from the truth.
        c, e = xf.shape[0], xf - t
        cm = e.mean(0)
        cm2 = ((e - cm) ** 2).sum(0)
        delta = cm - mean
        mean += delta * c / (n + c)
        m2 += cm2 + delta**2 * n * c / (n + c)
        n += c
        if summaries:
            counts_sum.add(_summaries_of(summaries, x), targets_sum)
        if has_lp:
            counts_lp.add(_log_prob(posterior, x), lp_truth)
        if ref is not None:
            if d_truth is None:
                d_truth = np.sqrt((((t - ref) / scale) ** 2).sum(1, keepdims=True))
            counts_tarp.add(np.sqrt((((xf - ref) / scale) ** 2).sum(1, keepdims=True)), d_truth)
    std = np.sqrt(m2 / (n - 1)) if n > 1 else np.zeros_like(m2)
    return TruthStatistics(
        ranks=coords.ranks(rng).reshape(shape),
        summary_ranks=counts_sum.ranks(rng),
        log_prob_rank=int(counts_lp.ranks(rng)[0]) if has_lp else -1,
        tarp_rank=int(counts_tarp.ranks(rng)[0]) if ref is not None else -1,
        mean=(mean + t[0]).reshape(shape),
        std=std.reshape(shape),
        n_samples=n_samples,
    )


@dataclass(frozen=True)
class ImageMetrics:
    """Per-image calibration diagnostics of one truth.

    Attributes
    ----------
    mean, std : numpy.ndarray
        ``[*shape]`` posterior mean and std (model units).
    error : numpy.ndarray
        ``[*shape]`` mean − truth (model units).
    z : numpy.ndarray
        ``[*shape]`` ``|error| / std`` (unitless; inf where std is 0).
    credibility : numpy.ndarray
        ``[*shape]`` smallest central credible level containing the truth,
        ``|2u − 1|`` from the randomised PIT ``u`` of the pixel's rank.
    z_fraction : float
        Fraction of pixels with ``z > 2`` (4.55 % for a calibrated Gaussian).
    uce : UCEResult
        Binned RMS error against RMS std.
    """

    mean: np.ndarray
    std: np.ndarray
    error: np.ndarray
    z: np.ndarray
    credibility: np.ndarray
    z_fraction: float
    uce: UCEResult

    def coverage_map(self, level: float = 0.9) -> np.ndarray:
        """``[*shape]`` bool: the truth lies inside the central ``level`` interval."""
        level = check_in_range("level", level, 0.0, 1.0)
        return self.credibility <= level

    def coverage(self, level: float = 0.9) -> float:
        """Fraction of pixels whose central ``level`` interval holds the truth."""
        return float(self.coverage_map(level).mean())


def image_metrics(
    truth: torch.Tensor,
    posterior: Any,
    n_samples: int,
    *,
    n_bins: int = 10,
    binning: str = "quantile",
    sample_chunk: int | None = None,
    seed: int = 0,
) -> ImageMetrics:
    """UCE, z-scores and the coverage map of one truth, from ``n_samples`` streamed draws.

    Parameters
    ----------
    truth, posterior, n_samples, sample_chunk
        As in :func:`truth_statistics`.
    n_bins, binning
        As in :func:`.images.uncertainty_calibration_error`.
    seed : int
        Seeds the tie-breaking and the PIT jitter.

    Returns
    -------
    ImageMetrics
    """
    gen = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    st = truth_statistics(
        truth, posterior, n_samples, use_log_prob=False, sample_chunk=sample_chunk, generator=gen
    )
    error = st.mean - truth.detach().double().cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(error) / st.std
    u = pit(st.ranks, n_samples, seed)
    return ImageMetrics(
        mean=st.mean,
        std=st.std,
        error=error,
        z=z,
        credibility=np.abs(2.0 * u - 1.0),
        z_fraction=z_fraction(error, st.std),
        uce=uncertainty_calibration_error(error, st.std, n_bins=n_bins, binning=binning),
    )


class CachedDraws:
    """Posterior draws that carry their exact log-density, for
    :func:`~devito_uq.inference.calibration.run_calibration`.

    ``sample(n)`` draws latents from ``flow`` (``rsample_and_log_prob``), maps them by
    ``to_model`` (``x -> (m, log|det J_g(x)|)``) and keeps each draw's ``log q(m) = log q_x(x)
    − log|det J_g(x)|``; ``log_prob`` of those same draws (in order, as
    :func:`~devito_uq.inference.truth_statistics` asks for them) returns it. A draw that
    float32 rounding puts exactly on the lower bound, where ``g⁻¹`` is undefined, thus still
    has its density; any other model (the truth) goes to ``log_prob_of`` (through ``g⁻¹``).

    Parameters
    ----------
    flow : Flow
        Latent distribution with ``rsample_and_log_prob(n) -> ([n, *shape], [n])``.
    to_model : callable
        ``x -> (m, log|det J_g(x)|)``, shapes ``[n, *shape]`` and ``[n]``.
    log_prob_of : callable
        ``m -> [n]`` log-density of any model ``[n, *shape]``.
    """

    def __init__(self, flow, to_model, log_prob_of) -> None:
        self.flow, self.to_model, self.log_prob_of = flow, to_model, log_prob_of
        self._m: torch.Tensor | None = None
        self._lp: torch.Tensor | None = None
        self._cursor = 0

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        x, log_qx = self.flow.rsample_and_log_prob(n)
        m, logdet = self.to_model(x)
        self._m, self._lp, self._cursor = m, log_qx - logdet, 0
        return m

    @torch.no_grad()
    def log_prob(self, m: torch.Tensor) -> torch.Tensor:
        c, k = self._cursor, m.shape[0]
        if self._m is not None and c + k <= len(self._m) and torch.equal(m, self._m[c : c + k]):
            self._cursor += k
            return self._lp[c : c + k]
        return self.log_prob_of(m.to(self._m.dtype) if self._m is not None else m)
