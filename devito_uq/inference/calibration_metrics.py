r"""Calibration statistics from ranks: SBC uniformity tests, expected coverage, TARP, UCE.

Everything here works on plain numpy arrays, so that ranks computed elsewhere (or
loaded from a finished run) can be tested too. :mod:`devito_uq.inference.calibration`
produces the ranks; :mod:`devito_uq.inference.calibration_plots` draws the figures.

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

References
----------
- S. Talts, M. Betancourt, D. Simpson, A. Vehtari, A. Gelman (2018), Validating
  Bayesian inference algorithms with simulation-based calibration, arXiv:1804.06788.
- J. Hermans, A. Delaunoy, F. Rozet, A. Wehenkel, V. Begy, G. Louppe (2022), A trust
  crisis in simulation-based inference? Your posterior approximations can be
  unfaithful, TMLR.
- P. Lemos, A. Coogan, Y. Hezaveh, L. Perreault-Levasseur (2023), Sampling-based
  accuracy testing of posterior estimators for general inference (TARP), ICML.
- M.-H. Laves, S. Ihler, J. Fast, L. Kahrs, T. Ortmaier (2020), Well-calibrated
  regression uncertainty in medical imaging with deep learning, MIDL (UCE); used for
  seismic images by A. Siahkoohi, G. Rizzuti, R. Orozco, F. Herrmann (2023) and
  R. Orozco et al. (2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.validation import as_float_array, check_in_range, check_int, check_positive_int

__all__ = [
    "pit",
    "holm",
    "SBCTest",
    "sbc_test",
    "rank_band",
    "CoverageCurve",
    "expected_coverage",
    "TARPResult",
    "tarp_test",
    "UCEResult",
    "uncertainty_calibration_error",
    "z_fraction",
    "expected_z_fraction",
]

DEFAULT_LEVELS = np.linspace(0.0, 1.0, 101)


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
    """Randomised PIT values ``u = (r + V) / (L + 1)``, ``V ~ U(0, 1)`` (same shape as ranks).

    Args:
        ranks: integer ranks in ``[0, L]``, any shape (usually ``[n_truths, n_quantities]``).
        n_samples: ``L``, the number of posterior draws each rank was counted among.
        seed: seed of ``V``; the same seed gives the same PIT values.
    """
    n_samples = check_positive_int("n_samples", n_samples)
    r = _ranks_array(ranks, n_samples)
    v = np.random.default_rng(np.random.SeedSequence([check_int("seed", seed, 0), 7])).random(
        r.shape
    )
    return (r + v) / (n_samples + 1)


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (same shape): reject where ``adjusted < alpha``.

    Controls the family-wise error rate at ``alpha`` for any dependence between the
    tests (correlated pixels or depths included).
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
    from scipy import stats  # lazy: importing the inference package stays cheap

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

    Attributes:
        names: ``[m]`` names of the quantities (coordinates, summaries, ``log_prob``).
        ks_statistic, ks_pvalue: ``[m]`` one-sample KS test of the PIT values vs U(0, 1).
        chi2_statistic, chi2_pvalue: ``[m]`` Pearson χ² test of ``bins`` equal-width
            PIT bins (``bins - 1`` degrees of freedom).
        adjusted_pvalue: ``[m]`` per quantity, the smaller of its two Holm-adjusted
            p-values, the correction taken over all ``2m`` tests.
        family_pvalue: Bonferroni p-value of the global null "every rank distribution
            is uniform": ``min(1, 2m · min p)``. Holm rejects some quantity exactly when
            this is below ``alpha``.
        pit_offset: ``[m]`` mean PIT − 1/2. Negative: the truth tends to sit below the
            posterior draws (posterior biased high); positive: biased low.
        alpha: level of the test; ``passed`` is ``family_pvalue > alpha``.
        bins: χ² bins; ``n_truths``: rows tested.
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
    """
    from scipy import stats

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
    """
    from scipy import stats

    n_truths = check_int("n_truths", n_truths, minimum=2)
    bins = check_int("bins", bins, minimum=2)
    mass = check_in_range("mass", mass, 0.0, 1.0, low_open=True, high_open=True)
    tail = (1.0 - mass) / 2.0
    lo, hi = stats.binom.ppf([tail, 1.0 - tail], n_truths, 1.0 / bins)
    return float(lo), float(hi)


@dataclass(frozen=True)
class CoverageCurve:
    """Expected coverage :math:`\\mathrm{ECP}(\\alpha)` of credible regions.

    Attributes:
        levels: ``[a]`` credibility levels α.
        coverage: ``[a]`` fraction of truths inside their level-α region.
        area: signed area ∫(ECP − α)dα, exact. **> 0 under-confident (conservative),
            < 0 over-confident.**
        ks_statistic, ks_pvalue: sup-distance of the curve to the diagonal and its KS
            p-value (exact for independent values; pooled correlated coordinates make
            the p-value optimistic, the statistic stays right).
        kind: ``"central"``, ``"hpd"`` or ``"tarp"``; ``n_values``: credibility values.
        area_per_coordinate: ``[m]`` signed area per coordinate (central only).
    """

    levels: np.ndarray
    coverage: np.ndarray
    area: float
    ks_statistic: float
    ks_pvalue: float
    kind: str
    n_values: int
    area_per_coordinate: np.ndarray | None = None

    def at(self, level: float) -> float:
        """Coverage at the grid level closest to ``level``."""
        return float(self.coverage[np.argmin(np.abs(self.levels - level))])

    def max_deviation(self, levels: Sequence[float] | None = None) -> float:
        """Largest ``|ECP(α) − α|`` over ``levels`` (default: the whole grid)."""
        if levels is None:
            return float(np.abs(self.coverage - self.levels).max())
        return float(max(abs(self.at(a) - a) for a in levels))

    def verdict(self, tolerance: float = 0.02) -> str:
        """``"calibrated"``, ``"under-confident"`` or ``"over-confident"`` by the area."""
        if abs(self.area) <= tolerance:
            return "calibrated"
        return "under-confident" if self.area > 0 else "over-confident"


def expected_coverage(
    credibility, levels: Sequence[float] | None = None, kind: str = "central"
) -> CoverageCurve:
    """:class:`CoverageCurve` of credibility levels ``c`` (any shape; ``[n, m]`` keeps
    per-column areas). Build ``c`` with ``|2u − 1|`` (central), ``1 − u`` (HPD) or ``u``
    (TARP) from PIT values ``u``."""

    c = as_float_array("credibility", credibility)
    if c.size < 2 or c.min() < 0 or c.max() > 1:
        raise InvalidArgumentError(f"credibility needs >= 2 values in [0, 1], got {c.size}")
    lv = DEFAULT_LEVELS if levels is None else as_float_array("levels", levels, ndim=1)
    flat = np.sort(c.ravel())
    cov = np.searchsorted(flat, lv, side="right") / flat.size
    d, p = _ks_uniform(flat[:, None])
    per = 0.5 - c.mean(0) if c.ndim == 2 else None
    return CoverageCurve(
        levels=lv,
        coverage=cov,
        area=float(0.5 - flat.mean()),
        ks_statistic=float(d[0]),
        ks_pvalue=float(p[0]),
        kind=kind,
        n_values=int(flat.size),
        area_per_coordinate=per,
    )


@dataclass(frozen=True)
class TARPResult:
    """TARP expected coverage (Lemos et al. 2023).

    Attributes:
        curve: :class:`CoverageCurve` of the TARP credibility (``kind="tarp"``).
        atc: area to curve over the upper half, ∫_{1/2}^1 (ECP − α) dα, exact.
            Same sign convention: > 0 under-confident, < 0 over-confident. (sbi's
            ``check_tarp`` sums ECP − α over its bins instead; divide that by the bins
            per unit α to compare.)
        ks_statistic, ks_pvalue: KS test of the TARP credibilities against U(0, 1);
            the statistic is the sup-distance of the ECP curve to the diagonal.
    """

    curve: CoverageCurve
    atc: float
    ks_statistic: float
    ks_pvalue: float


def tarp_test(credibility, levels: Sequence[float] | None = None) -> TARPResult:
    """:class:`TARPResult` from the per-truth TARP credibilities ``[n_truths]``."""
    curve = expected_coverage(credibility, levels, kind="tarp")
    c = as_float_array("credibility", credibility).ravel()
    atc = float(np.mean(1.0 - np.maximum(c, 0.5)) - 0.375)
    return TARPResult(curve, atc, curve.ks_statistic, curve.ks_pvalue)


@dataclass(frozen=True)
class UCEResult:
    """Uncertainty calibration error of one image.

    Pixels are binned by their predicted std; in each bin ``b`` the root-mean-square
    error ``rmse[b]`` is compared with the root-mean-square predicted std ``rms_std[b]``.

    Attributes:
        uce: Σ_b (n_b / n) |rmse_b − rms_std_b|, in the model's units.
        relative: ``uce`` divided by the RMS predicted std of the whole image (unitless).
        signed: Σ_b (n_b / n)(rms_std_b − rmse_b), model units: > 0 under-confident,
            < 0 over-confident (same convention as the coverage area).
        rmse, rms_std, counts: ``[bins]`` per-bin values (for the calibration plot).
        edges: ``[bins + 1]`` std bin edges (model units).
    """

    uce: float
    relative: float
    signed: float
    rmse: np.ndarray
    rms_std: np.ndarray
    counts: np.ndarray
    edges: np.ndarray


def uncertainty_calibration_error(
    error, std, n_bins: int = 10, binning: str = "quantile"
) -> UCEResult:
    """UCE of one image: binned RMS error against RMS predicted std.

    Args:
        error: ``[*shape]`` posterior mean − truth (model units, e.g. km/s).
        std: ``[*shape]`` predicted posterior std (same units, > 0 where finite).
        n_bins: number of std bins.
        binning: ``"quantile"`` (default: equal-count bins, so no bin is empty and
            each holds ``n/n_bins`` pixels) or ``"uniform"`` (equal-width bins over
            ``[min std, max std]``, empty ones skipped, as in Laves et al. 2020).

    Root-mean-squares are compared (not mean |error| with mean std) because for a
    calibrated Gaussian predictive :math:`E|e| = \\sqrt{2/\\pi}\\,\\sigma \\approx 0.8\\sigma`:
    the |error|-vs-std plot of a perfect posterior sits 20 % below the diagonal.
    The posterior mean from ``L`` draws adds ``σ²/L`` to the squared error
    (0.1 % in RMSE for ``L = 1000``).
    """
    e = as_float_array("error", error).ravel()
    s = as_float_array("std", std).ravel()
    if e.shape != s.shape:
        raise InvalidShapeError(f"error has {e.size} values and std {s.size}; they must match")
    n_bins = check_int("n_bins", n_bins, minimum=1)
    if e.size < n_bins:
        raise InvalidArgumentError(f"n_bins={n_bins} exceeds the {e.size} pixels")
    if s.min() < 0:
        raise InvalidArgumentError(f"std must be >= 0, got min {s.min()}")
    if binning == "quantile":
        order = np.argsort(s, kind="stable")
        groups = np.array_split(order, n_bins)
        edges = np.array([s[order[0]]] + [s[g[-1]] for g in groups])
    elif binning == "uniform":
        edges = np.linspace(s.min(), s.max(), n_bins + 1)
        which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, n_bins - 1)
        groups = [np.flatnonzero(which == b) for b in range(n_bins)]
    else:
        raise InvalidArgumentError(f"binning={binning!r} must be one of ('quantile', 'uniform')")
    counts = np.array([g.size for g in groups])
    rmse = np.array([np.sqrt(np.mean(e[g] ** 2)) if g.size else np.nan for g in groups])
    rms = np.array([np.sqrt(np.mean(s[g] ** 2)) if g.size else np.nan for g in groups])
    w = counts / counts.sum()
    ok = counts > 0
    uce = float(np.sum(w[ok] * np.abs(rmse[ok] - rms[ok])))
    signed = float(np.sum(w[ok] * (rms[ok] - rmse[ok])))
    scale = float(np.sqrt(np.mean(s**2)))
    return UCEResult(
        uce=uce,
        relative=uce / scale if scale > 0 else float("inf"),
        signed=signed,
        rmse=rmse,
        rms_std=rms,
        counts=counts,
        edges=edges,
    )


def z_fraction(error, std, threshold: float = 2.0) -> float:
    """Fraction of pixels with ``z = |error| / std > threshold``.

    For a calibrated Gaussian posterior this is ``2Φ(−threshold)``: 4.55 % at 2
    (slightly more when mean and std come from few draws: :func:`expected_z_fraction`).
    Over-confident posteriors give more, under-confident ones fewer.
    """
    e = as_float_array("error", error).ravel()
    s = as_float_array("std", std).ravel()
    if e.shape != s.shape:
        raise InvalidShapeError(f"error has {e.size} values and std {s.size}; they must match")
    check_in_range("threshold", threshold, 0.0, np.inf, low_open=True, high_open=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(e) / s
    return float(np.mean(z > threshold))


def expected_z_fraction(n_samples: int | None = None, threshold: float = 2.0) -> float:
    """Expected :func:`z_fraction` of a calibrated Gaussian posterior.

    With mean and std estimated from ``L`` draws, ``(mean − truth) / (std·√(1 + 1/L))``
    is Student-t with ``L − 1`` degrees of freedom (the truth is one more draw), so the
    fraction is ``2·T_{L−1}(−threshold/√(1 + 1/L))``: 4.93 % for ``L = 100``, 4.59 % for
    ``L = 1000``; ``2Φ(−threshold)`` = 4.55 % for ``n_samples=None`` (exact moments).
    """
    from scipy import stats

    check_in_range("threshold", threshold, 0.0, np.inf, low_open=True, high_open=True)
    if n_samples is None:
        return float(2.0 * stats.norm.sf(threshold))
    n = check_int("n_samples", n_samples, minimum=2)
    return float(2.0 * stats.t.sf(threshold / np.sqrt(1.0 + 1.0 / n), n - 1))
