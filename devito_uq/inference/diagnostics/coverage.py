r"""Expected coverage (central, HPD), TARP, and verdicts that know their sample size.

Conventions (credibility levels, signed areas, sign convention: > 0 under-confident,
< 0 over-confident) are those of :mod:`.statistics`. Every estimate here is a mean
over independent truths, so :func:`judge` reports it with its standard error (the
sd of the per-truth values over :math:`\sqrt N`, a truth's correlated coordinates
averaged first) and labels it only when the evidence exceeds that noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from devito_uq.errors import InvalidArgumentError
from devito_uq.inference.diagnostics.statistics import _ks_uniform
from devito_uq.validation import as_float_array, check_in_range, check_int

__all__ = [
    "Verdict",
    "judge",
    "CoverageCurve",
    "expected_coverage",
    "TARPResult",
    "tarp_test",
]

DEFAULT_LEVELS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class Verdict:
    """A signed calibration estimate, its standard error and the label they support.

    Attributes
    ----------
    estimate, se : float
        The estimate (> 0 under-confident, < 0 over-confident) and its standard error.
    pvalue : float
        Two-sided p-value of ``estimate = 0`` (Student t, ``N − 1`` degrees of freedom).
    label : str
        ``"under-confident"`` / ``"over-confident"`` when ``pvalue < level``;
        ``"calibrated"`` when the ``1 − level`` interval lies inside ``±tolerance``;
        otherwise ``"inconclusive at N truths"``.
    level, tolerance : float
        Test level and the half-width that "calibrated" guarantees.
    n_truths : int
        ``N``, independent truths behind the estimate.
    resolution : float
        Target half-width of the ``1 − level`` interval.
    truths_needed : int
        Truths for that half-width at the observed per-truth sd.
    """

    estimate: float
    se: float
    pvalue: float
    label: str
    level: float
    tolerance: float
    n_truths: int
    resolution: float
    truths_needed: int

    def as_dict(self) -> dict:
        """The fields as plain floats, ints and strings."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def __str__(self) -> str:
        return (
            f"{self.estimate:+.3f} ± {self.se:.3f} ({self.label}; p {self.pvalue:.2g}; "
            f"±{self.resolution:g} needs {self.truths_needed} truths)"
        )


def judge(
    per_truth,
    offset: float = 0.0,
    level: float = 0.05,
    tolerance: float = 0.02,
    resolution: float = 0.01,
) -> Verdict:
    """Label ``mean(per_truth) − offset`` against its standard error over truths.

    Parameters
    ----------
    per_truth : array_like
        ``[N]`` one value per independent truth (its mean is the estimate + ``offset``).
    offset : float
        Value of the mean under calibration.
    level : float
        Test level in ``(0, 1)``: the chance that an exact posterior is called over-
        or under-confident is ``level`` (both signs together).
    tolerance : float
        ``> 0``: "calibrated" needs the whole ``1 − level`` interval in ``±tolerance``.
    resolution : float
        ``> 0``: half-width for which ``truths_needed`` is computed.

    Returns
    -------
    Verdict

    Raises
    ------
    InvalidArgumentError
        If fewer than 2 values, or ``level``, ``tolerance``, ``resolution`` out of range.
    """
    from scipy import stats  # lazy: scipy.stats costs ~1 s; importing inference stays cheap

    v = as_float_array("per_truth", per_truth, ndim=1)
    n = check_int("n_truths", v.size, minimum=2)
    level = check_in_range("level", level, 0.0, 1.0, low_open=True, high_open=True)
    tolerance = check_in_range("tolerance", tolerance, 0.0, np.inf, low_open=True)
    resolution = check_in_range("resolution", resolution, 0.0, np.inf, low_open=True)
    est, sd = float(v.mean() - offset), float(v.std(ddof=1))
    se = sd / float(np.sqrt(n))
    q = float(stats.t.ppf(1.0 - level / 2.0, n - 1))
    p = float(2.0 * stats.t.sf(abs(est) / se, n - 1)) if se > 0 else float(est == 0.0)
    if p < level:
        label = "under-confident" if est > 0 else "over-confident"
    elif abs(est) + q * se <= tolerance:
        label = "calibrated"
    else:
        label = f"inconclusive at {n} truths"
    need = int(np.ceil((stats.norm.ppf(1.0 - level / 2.0) * sd / resolution) ** 2))
    return Verdict(est, se, p, label, level, tolerance, n, resolution, max(need, 2))


@dataclass(frozen=True)
class CoverageCurve:
    """Expected coverage :math:`\\mathrm{ECP}(\\alpha)` of credible regions.

    Attributes
    ----------
    levels : numpy.ndarray
        ``[a]`` credibility levels α.
    coverage : numpy.ndarray
        ``[a]`` fraction of truths inside their level-α region.
    area : float
        Signed area ∫(ECP − α)dα, exact. **> 0 under-confident (conservative),
        < 0 over-confident.**
    ks_statistic, ks_pvalue : float
        Sup-distance of the curve to the diagonal and its KS p-value (exact for
        independent values; pooled correlated coordinates make the p-value
        optimistic, the statistic stays right).
    kind : str
        ``"central"``, ``"hpd"`` or ``"tarp"``.
    n_values : int
        Credibility values pooled.
    area_per_coordinate : numpy.ndarray or None
        ``[m]`` signed area per coordinate (credibility given as ``[n, m]`` only).
    per_truth : numpy.ndarray or None
        ``[N]`` mean credibility of each truth (its row); ``area = 1/2 − mean``.
    """

    levels: np.ndarray
    coverage: np.ndarray
    area: float
    ks_statistic: float
    ks_pvalue: float
    kind: str
    n_values: int
    area_per_coordinate: np.ndarray | None = None
    per_truth: np.ndarray | None = None

    @property
    def area_se(self) -> float:
        """Standard error of ``area`` over truths (rows averaged first; ``1/√(12N)``
        for one calibrated value per truth)."""
        return float(self.per_truth.std(ddof=1) / np.sqrt(self.per_truth.size))

    def at(self, level: float) -> float:
        """Coverage at the grid level closest to ``level`` (a float in ``[0, 1]``)."""
        return float(self.coverage[np.argmin(np.abs(self.levels - level))])

    def max_deviation(self, levels: Sequence[float] | None = None) -> float:
        """Largest ``|ECP(α) − α|`` over ``levels`` (default: the whole grid)."""
        if levels is None:
            return float(np.abs(self.coverage - self.levels).max())
        return float(max(abs(self.at(a) - a) for a in levels))

    def assess(
        self, level: float = 0.05, tolerance: float = 0.02, resolution: float = 0.01
    ) -> Verdict:
        """:func:`judge` of the area over truths (arguments as there)."""
        return judge(0.5 - self.per_truth, 0.0, level, tolerance, resolution)

    def verdict(self, tolerance: float = 0.02, level: float = 0.05) -> str:
        """The label of :meth:`assess`: ``"calibrated"`` only when the ``1 − level``
        interval of the area lies inside ``±tolerance``; ``"under-"``/``"over-confident"``
        only when the area differs from 0 at ``level``; else ``"inconclusive at N truths"``."""
        return self.assess(level, tolerance).label


def expected_coverage(
    credibility, levels: Sequence[float] | None = None, kind: str = "central"
) -> CoverageCurve:
    """Expected coverage of credibility levels ``c``.

    Build ``c`` with ``|2u − 1|`` (central), ``1 − u`` (HPD) or ``u`` (TARP) from PIT
    values ``u``.

    Parameters
    ----------
    credibility : array_like
        Credibility levels in ``[0, 1]``: ``[N]``, one per truth, or ``[N, ...]``, a row
        per truth (its values may be correlated; ``[N, m]`` keeps per-column areas).
    levels : sequence of float, optional
        ``[a]`` grid of α; default 101 levels from 0 to 1.
    kind : str
        Label stored in the curve: ``"central"``, ``"hpd"`` or ``"tarp"``.

    Returns
    -------
    CoverageCurve

    Raises
    ------
    InvalidArgumentError
        If fewer than 2 values or any outside ``[0, 1]``.
    """
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
        per_truth=c.reshape(c.shape[0], -1).mean(1),
    )


@dataclass(frozen=True)
class TARPResult:
    """TARP expected coverage (Lemos et al. 2023).

    Attributes
    ----------
    curve : CoverageCurve
        Expected coverage of the TARP credibility (``kind="tarp"``).
    atc : float
        Area to curve over the upper half, ∫_{1/2}^1 (ECP − α) dα, exact; > 0
        under-confident, < 0 over-confident. (sbi's ``check_tarp`` sums ECP − α over
        its bins: divide that by the bins per unit α to compare.)
    ks_statistic, ks_pvalue : float
        KS test of the TARP credibilities against U(0, 1); the statistic is the
        sup-distance of the ECP curve to the diagonal.
    atc_per_truth : numpy.ndarray or None
        ``[N]`` each truth's term ``1 − max(c, 1/2) − 3/8``; ``atc`` is their mean.
    """

    curve: CoverageCurve
    atc: float
    ks_statistic: float
    ks_pvalue: float
    atc_per_truth: np.ndarray | None = None

    @property
    def atc_se(self) -> float:
        """Standard error of ``atc`` over truths (``0.161/√N`` when calibrated)."""
        return float(self.atc_per_truth.std(ddof=1) / np.sqrt(self.atc_per_truth.size))

    def assess(
        self, level: float = 0.05, tolerance: float = 0.02, resolution: float = 0.01
    ) -> Verdict:
        """:func:`judge` of the ATC over truths (arguments as there)."""
        return judge(self.atc_per_truth, 0.0, level, tolerance, resolution)


def tarp_test(credibility, levels: Sequence[float] | None = None) -> TARPResult:
    """TARP test of per-truth credibilities.

    Parameters
    ----------
    credibility : array_like
        ``[n_truths]`` TARP credibilities in ``[0, 1]`` (PIT of the distance ranks).
    levels : sequence of float, optional
        As in :func:`expected_coverage`.

    Returns
    -------
    TARPResult
    """
    curve = expected_coverage(credibility, levels, kind="tarp")
    c = as_float_array("credibility", credibility).ravel()
    terms = 1.0 - np.maximum(c, 0.5) - 0.375
    return TARPResult(curve, float(terms.mean()), curve.ks_statistic, curve.ks_pvalue, terms)
