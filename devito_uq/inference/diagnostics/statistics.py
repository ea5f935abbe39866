r"""Calibration statistics from ranks: SBC uniformity tests, expected coverage, TARP.

Plain numpy arrays in, so that ranks computed elsewhere (or loaded from a finished run)
can be tested too. :mod:`.coverage` holds the coverage curves, TARP and the verdicts
(conventions below), :mod:`.ranks` produces the ranks, :mod:`.plots` draws the
figures, :mod:`.images` holds the per-image statistics (UCE, z-fraction).

Conventions
-----------
*Rank.* For a true value :math:`\theta^*` and :math:`L` posterior draws
:math:`\theta_1..\theta_L`, the rank :math:`r = \#\{l : \theta_l < \theta^*\}\in\{0..L\}`
(ties broken at random). If the posterior is calibrated (the truth is a draw
from the prior and the posterior is the exact one), :math:`r` is uniform on
:math:`\{0..L\}` (Talts et al. 2018).

*PIT.* :math:`u = (r + V)/(L + 1)` with :math:`V \sim U(0, 1)` drawn from a seeded
generator. Under calibration :math:`u \sim U(0, 1)` exactly, so the KS test and a
:math:`\chi^2` test with equal-width bins are exact, with no discreteness correction.

*Credibility level* :math:`c` of the truth: the smallest level whose credible
region contains it. Per coordinate with central intervals, :math:`c = |2u - 1|`;
with highest-density regions (HPD, Hermans et al. 2022), :math:`c = 1 - u` where
:math:`u` is the PIT of :math:`\log q(\theta^*)` among :math:`\log q(\theta_l)`;
with TARP (Lemos et al. 2023), :math:`c = u` for the distance to a random
reference point. Under calibration :math:`c \sim U(0, 1)` in all three cases.

*Expected coverage* :math:`\mathrm{ECP}(\alpha) = P(c \le \alpha)` (estimated by the
fraction of truths), to be compared with the diagonal :math:`\mathrm{ECP} = \alpha`.
Its *signed area* :math:`A = \int_0^1 (\mathrm{ECP}(\alpha) - \alpha)\,d\alpha
= 1/2 - \overline{c}` (exact, no grid). **Sign convention: A > 0 is under-confident
(conservative: regions too wide), A < 0 is over-confident (regions too narrow or
off-centre).** The KS distance :math:`\sup_\alpha|\mathrm{ECP}(\alpha) - \alpha|` is the
largest coverage error at any level.

*Verdicts.* Every area is a mean over truths, so its standard error is the sd of
the per-truth values over :math:`\sqrt N` (coordinates of one truth averaged first:
they may be correlated; truths are independent). Under calibration
:math:`\mathrm{SE}(A) = 1/\sqrt{12N}` for one value per truth (0.029 at N = 100).
:func:`~devito_uq.inference.diagnostics.coverage.judge` labels an estimate only when the
evidence exceeds that noise.

References
----------
- Talts, Betancourt, Simpson, Vehtari, Gelman (2018), Validating Bayesian inference
  algorithms with simulation-based calibration, arXiv:1804.06788.
- Hermans, Delaunoy, Rozet, Wehenkel, Begy, Louppe (2022), A trust crisis in
  simulation-based inference? (...) can be unfaithful, TMLR.
- Lemos, Coogan, Hezaveh, Perreault-Levasseur (2023), Sampling-based accuracy testing
  of posterior estimators for general inference (TARP), ICML.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.validation import check_in_range, check_int, check_positive_int

__all__ = [
    "pit",
    "holm",
    "SBCTest",
    "sbc_test",
    "rank_band",
]


def _ranks_array(ranks, n_samples: int) -> np.ndarray:
    r = np.asarray(ranks)
    if not np.issubdtype(r.dtype, np.integer):
        raise InvalidArgumentError(f"ranks must be integers, got dtype {r.dtype}")
    if r.size and (r.min() < 0 or r.max() > n_samples):
        raise InvalidArgumentError(
            f"ranks must lie in [0, n_samples={n_samples}], got [{r.min()}, {r.max()}]"
        )
    return r


def pit(ranks, n_samples: int, seed: int = 0) -> np.ndarray:
    """Randomised PIT values ``u = (r + V) / (L + 1)``, ``V ~ U(0, 1)``.

    Parameters
    ----------
    ranks : array_like of int
        Ranks in ``[0, L]``, any shape (usually ``[n_truths, n_quantities]``).
    n_samples : int
        ``L``, the number of posterior draws each rank was counted among.
    seed : int
        Seed of ``V``; the same seed gives the same PIT values.

    Returns
    -------
    numpy.ndarray
        Float64 PIT values in ``(0, 1)``, the shape of ``ranks``.

    Raises
    ------
    InvalidArgumentError
        If ``ranks`` are not integers or lie outside ``[0, n_samples]``.
    """
    n_samples = check_positive_int("n_samples", n_samples)
    r = _ranks_array(ranks, n_samples)
    v = np.random.default_rng(np.random.SeedSequence([check_int("seed", seed, 0), 7])).random(
        r.shape
    )
    return (r + v) / (n_samples + 1)


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values: reject where ``adjusted < alpha``.

    Controls the family-wise error rate at ``alpha`` for any dependence between the
    tests (correlated pixels or depths included).

    Parameters
    ----------
    pvalues : array_like
        P-values, any shape.

    Returns
    -------
    numpy.ndarray
        Adjusted p-values in ``[0, 1]``, the shape of ``pvalues``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.ravel()
    m = flat.size
    order = np.argsort(flat, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * flat[order]))
    out = np.empty_like(flat)
    out[order] = adj
    return out.reshape(p.shape)


def _ks_uniform(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-sample KS statistic and exact p-value of each column of ``u`` [n, m] vs U(0,1)."""
    from scipy import stats  # lazy: scipy.stats costs ~1 s; importing inference stays cheap

    n = u.shape[0]
    s = np.sort(u, axis=0)
    i = np.arange(1, n + 1, dtype=np.float64)[:, None]
    d = np.maximum((i / n - s).max(0), (s - (i - 1) / n).max(0))
    return d, stats.kstwo.sf(d, n)


def _default_bins(n_truths: int) -> int:
    # About 20 truths per bin (Talts et al. use N/B ≈ 20 for the rank histogram).
    return int(np.clip(n_truths // 20, 2, 50))


@dataclass(frozen=True)
class SBCTest:
    """Uniformity tests of SBC ranks, one row per tested quantity.

    Attributes
    ----------
    names : tuple of str
        ``[m]`` names of the quantities (coordinates, summaries, ``log_prob``).
    ks_statistic, ks_pvalue : numpy.ndarray
        ``[m]`` one-sample KS test of the PIT values against U(0, 1).
    chi2_statistic, chi2_pvalue : numpy.ndarray
        ``[m]`` Pearson χ² test of ``bins`` equal-width PIT bins (``bins - 1``
        degrees of freedom).
    adjusted_pvalue : numpy.ndarray
        ``[m]`` per quantity, the smaller of its two Holm-adjusted p-values, the
        correction taken over all ``2m`` tests.
    family_pvalue : float
        Bonferroni p-value of the global null "every rank distribution is uniform":
        ``min(1, 2m · min p)``. Holm rejects some quantity exactly when this is
        below ``alpha``.
    pit_offset : numpy.ndarray
        ``[m]`` mean PIT − 1/2. Negative: the truth tends to sit below the posterior
        draws (posterior biased high); positive: biased low.
    alpha : float
        Level of the test; ``passed`` is ``family_pvalue > alpha``.
    bins, n_truths : int
        Number of χ² bins; number of rows (truths) tested.
    """

    names: tuple[str, ...]
    ks_statistic: np.ndarray
    ks_pvalue: np.ndarray
    chi2_statistic: np.ndarray
    chi2_pvalue: np.ndarray
    adjusted_pvalue: np.ndarray
    family_pvalue: float
    pit_offset: np.ndarray
    alpha: float
    bins: int
    n_truths: int

    @property
    def passed(self) -> bool:
        """True when the global uniformity null is not rejected at ``alpha``."""
        return self.family_pvalue > self.alpha

    def failed(self) -> list[str]:
        """Names of the quantities whose Holm-adjusted p-value is below ``alpha``."""
        return [n for n, p in zip(self.names, self.adjusted_pvalue) if p <= self.alpha]


def sbc_test(
    ranks,
    n_samples: int,
    names: Sequence[str] | None = None,
    bins: int | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> SBCTest:
    """Test the uniformity of SBC ranks ``[n_truths, m]`` (Talts et al. 2018).

    Each column is one quantity (a coordinate, a summary statistic, the log-density
    of the truth). Both tests run on randomised PIT values (:func:`pit`), which are
    exactly uniform under calibration. The multiple-testing correction is
    Holm–Bonferroni over all ``2m`` tests (KS and χ² for each column), valid for
    any correlation between columns.

    Parameters
    ----------
    ranks : array_like of int
        ``[n_truths, m]`` (or ``[n_truths]``) ranks in ``[0, n_samples]``.
    n_samples : int
        ``L``, the posterior draws each rank was counted among.
    names : sequence of str, optional
        ``[m]`` names of the columns; default ``"0", "1", ...``.
    bins : int, optional
        χ² bins; default about 20 truths per bin, between 2 and 50.
    alpha : float
        Level of the test, in ``(0, 1)``.
    seed : int
        Seed of the PIT jitter (:func:`pit`).

    Returns
    -------
    SBCTest

    Raises
    ------
    InvalidShapeError
        If ``ranks`` is not 1-D or 2-D, or ``names`` does not match its columns.
    InvalidArgumentError
        If fewer than 2 truths, or ranks, ``alpha`` or ``bins`` out of range.
    """
    from scipy import stats  # lazy: scipy.stats costs ~1 s; importing inference stays cheap

    n_samples = check_positive_int("n_samples", n_samples)
    r = _ranks_array(ranks, n_samples)
    if r.ndim == 1:
        r = r[:, None]
    if r.ndim != 2:
        raise InvalidShapeError(f"ranks has shape {list(r.shape)}; expected [n_truths, m]")
    n, m = r.shape
    check_int("n_truths", n, minimum=2)
    alpha = check_in_range("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
    bins = _default_bins(n) if bins is None else check_int("bins", bins, minimum=2)
    names = tuple(str(k) for k in range(m)) if names is None else tuple(names)
    if len(names) != m:
        raise InvalidShapeError(f"names has {len(names)} entries; ranks has {m} columns")
    u = pit(r, n_samples, seed)
    d, p_ks = _ks_uniform(u)
    idx = np.minimum((u * bins).astype(np.int64), bins - 1) + bins * np.arange(m)
    counts = np.bincount(idx.ravel(), minlength=bins * m).reshape(m, bins)
    expected = n / bins
    chi2 = ((counts - expected) ** 2).sum(1) / expected
    p_chi2 = stats.chi2.sf(chi2, bins - 1)
    adj = holm(np.stack([p_ks, p_chi2])).min(0)
    family = float(min(1.0, 2 * m * min(p_ks.min(), p_chi2.min())))
    return SBCTest(
        names=names,
        ks_statistic=d,
        ks_pvalue=p_ks,
        chi2_statistic=chi2,
        chi2_pvalue=p_chi2,
        adjusted_pvalue=adj,
        family_pvalue=family,
        pit_offset=u.mean(0) - 0.5,
        alpha=alpha,
        bins=bins,
        n_truths=n,
    )


def rank_band(n_truths: int, bins: int, mass: float = 0.99) -> tuple[float, float]:
    """Central ``mass`` interval of one histogram bin's count, ``Binomial(N, 1/bins)``.

    The band drawn behind SBC rank histograms (Talts et al. 2018, 99 %); it is
    per bin, so with ``bins`` bins about ``(1 - mass)·bins`` fall outside by chance.

    Parameters
    ----------
    n_truths : int
        ``N >= 2``, the truths in the histogram.
    bins : int
        Histogram bins, ``>= 2``.
    mass : float
        Probability of the band, in ``(0, 1)``.

    Returns
    -------
    (low, high) : tuple of float
    """
    from scipy import stats  # lazy: scipy.stats costs ~1 s; importing inference stays cheap

    n_truths = check_int("n_truths", n_truths, minimum=2)
    bins = check_int("bins", bins, minimum=2)
    mass = check_in_range("mass", mass, 0.0, 1.0, low_open=True, high_open=True)
    tail = (1.0 - mass) / 2.0
    lo, hi = stats.binom.ppf([tail, 1.0 - tail], n_truths, 1.0 / bins)
    return float(lo), float(hi)
