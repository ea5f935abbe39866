"""The result of a calibration run: per-truth ranks and metrics, and the tests on them.

:func:`devito_uq.inference.calibration.run_calibration` fills a
:class:`CalibrationResult`; its methods apply :mod:`.statistics` to the ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from devito_uq.errors import InvalidArgumentError
from devito_uq.inference.diagnostics.coverage import (
    CoverageCurve,
    TARPResult,
    Verdict,
    expected_coverage,
    judge,
    tarp_test,
)
from devito_uq.inference.diagnostics.statistics import SBCTest, pit, sbc_test

__all__ = ["CalibrationResult"]


@dataclass
class CalibrationResult:
    """Per-truth ranks and metrics of a calibration run, and the tests on them.

    Attributes
    ----------
    ranks : numpy.ndarray
        ``[N, *shape]`` int32 coordinate ranks in ``[0, L]``.
    summary_ranks : numpy.ndarray
        ``[N, k]`` int32 ranks of the summaries.
    summary_names : tuple of str
        ``k`` names of the summaries.
    log_prob_ranks, tarp_ranks : numpy.ndarray
        ``[N]`` int32, −1 where not computed.
    metrics : dict of str to numpy.ndarray
        Name → ``[N]`` float64: ``rmse``, ``rms_std`` (model units), ``uce``,
        ``uce_signed`` (model units; quantile bins of >= 100 pixels, at most 10),
        ``z_fraction``, ``seconds`` (wall time of the truth: prior draw, simulation,
        posterior, statistics).
    n_samples : int
        ``L``, the draws per truth.
    seed : int
        The run's seed (also seeds the PIT jitter).
    computed : list of int
        Truths this process computed in this call (not loaded from ``out_dir``; on
        this rank only).
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
        """``N``, the truths in the run."""
        return int(self.ranks.shape[0])

    def quantity_ranks(self, coordinates: bool = True) -> tuple[np.ndarray, list[str]]:
        """All ranked quantities side by side.

        Parameters
        ----------
        coordinates : bool
            Include the coordinates ``x[i]`` (flattened), before the summaries.

        Returns
        -------
        ranks : numpy.ndarray
            ``[N, m]`` int32: coordinates, summaries, then ``log_prob`` when computed.
        names : list of str
            ``[m]`` names of the columns.
        """
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
        """:func:`.statistics.sbc_test` over the ranked quantities, Holm-corrected.

        Parameters
        ----------
        alpha, bins
            As in :func:`.statistics.sbc_test`.
        coordinates : bool
            As in :meth:`quantity_ranks`; ``False`` tests summaries and ``log_prob``.

        Returns
        -------
        SBCTest
        """
        r, names = self.quantity_ranks(coordinates)
        return sbc_test(r, self.n_samples, names, bins=bins, alpha=alpha, seed=self.seed)

    def pit(self) -> np.ndarray:
        """Randomised PIT values of the coordinates.

        Returns
        -------
        numpy.ndarray
            ``[N, P]`` float64 in ``(0, 1)``, ``P`` the coordinates per truth.
        """
        return pit(self.ranks.reshape(self.n_truths, -1), self.n_samples, self.seed)

    def coverage(self, kind: str = "central", levels=None) -> CoverageCurve:
        """Expected coverage of credible regions.

        Parameters
        ----------
        kind : str
            ``"central"``: per-coordinate central intervals, pooled over truths and
            coordinates; ``"hpd"``: highest-density regions (needs ``log_prob``).
        levels : sequence of float, optional
            As in :func:`~devito_uq.inference.diagnostics.coverage.expected_coverage`.

        Returns
        -------
        CoverageCurve

        Raises
        ------
        InvalidArgumentError
            If ``kind`` is unknown, or ``"hpd"`` without log-density ranks.
        """
        if kind == "central":
            return expected_coverage(np.abs(2.0 * self.pit() - 1.0), levels, kind="central")
        if kind == "hpd":
            if not (self.log_prob_ranks >= 0).all():
                raise InvalidArgumentError("kind='hpd' needs a posterior with log_prob")
            u = pit(self.log_prob_ranks, self.n_samples, self.seed + 1)
            return expected_coverage(1.0 - u, levels, kind="hpd")
        raise InvalidArgumentError(f"kind={kind!r} must be one of ('central', 'hpd')")

    def tarp(self, levels=None) -> TARPResult:
        """:func:`~devito_uq.inference.diagnostics.coverage.tarp_test` of the TARP ranks.

        Parameters
        ----------
        levels : sequence of float, optional
            As in :func:`~devito_uq.inference.diagnostics.coverage.expected_coverage`.

        Returns
        -------
        TARPResult

        Raises
        ------
        InvalidArgumentError
            If the run had no TARP reference.
        """
        if not (self.tarp_ranks >= 0).all():
            raise InvalidArgumentError("tarp needs a run with tarp_reference")
        return tarp_test(pit(self.tarp_ranks, self.n_samples, self.seed + 2), levels)

    def uce_verdict(
        self, level: float = 0.05, tolerance: float = 0.05, resolution: float = 0.02
    ) -> Verdict:
        """Signed UCE over the mean RMS std of the truths, judged over truths.

        Parameters
        ----------
        level, tolerance, resolution
            As in :func:`.coverage.judge`; unitless (fractions of the std).

        Returns
        -------
        Verdict
            ``estimate`` = mean ``uce_signed`` / mean ``rms_std`` (0 in expectation
            for a calibrated posterior; > 0 under-confident); model units where every
            std is 0.
        """
        m = self.metrics
        scale = float(np.mean(m["rms_std"]))
        return judge(
            m["uce_signed"] / (scale if scale > 0 else 1.0), 0.0, level, tolerance, resolution
        )

    def joint_verdict(self, level: float = 0.05, tolerance: float = 0.02) -> dict:
        """Width errors (marginal central intervals) told apart from joint errors.

        The central coverage tests each coordinate's interval, so it sees the
        marginal widths only; the HPD rank of ``log q`` and TARP test the joint
        distribution. A joint error (wrong or missing correlations, a shift along a
        direction) is named when the joint tests reject (KS, Bonferroni over the two,
        at ``level``) while the marginal widths are not wrong, or wrong with the
        opposite sign to a joint test's area.

        Parameters
        ----------
        level, tolerance
            As in :func:`.coverage.judge`.

        Returns
        -------
        dict
            ``width`` (central label), ``joint_pvalue``, ``joint_signs`` (HPD area and
            TARP ATC labels), ``joint_error`` (bool) and ``label`` (one line).
        """
        width = self.coverage("central").assess(level, tolerance)
        pvalues, signs = {}, {}
        if (self.log_prob_ranks >= 0).all():
            hpd = self.coverage("hpd")
            pvalues["HPD rank of log q"], signs["hpd_area"] = (
                hpd.ks_pvalue,
                hpd.verdict(tolerance, level),
            )
        if (self.tarp_ranks >= 0).all():
            tarp = self.tarp()
            pvalues["TARP"], signs["tarp_atc"] = tarp.ks_pvalue, tarp.assess(level, tolerance).label
        p = min(1.0, len(pvalues) * min(pvalues.values())) if pvalues else 1.0
        signed = ("under-confident", "over-confident")
        opposite = width.label in signed and any(
            v in signed and v != width.label for v in signs.values()
        )
        joint = p < level and (width.label not in signed or opposite)
        tests = ", ".join(f"{k} KS p {v:.2g}" for k, v in pvalues.items()) or "none run"
        if joint and opposite:
            label = (
                f"joint error besides the marginal coverage ({width.label}): the joint "
                f"tests reject with the other sign ({tests}; {signs})"
            )
        elif joint:
            label = (
                f"joint error (dependence between coordinates: correlations, or a shift "
                f"along a direction): marginal coverage {width.label}, but the joint tests "
                f"reject ({tests})"
            )
        elif p < level:
            label = f"joint tests reject as the width error does ({tests})"
        else:
            label = f"no joint error detected at {self.n_truths} truths ({tests})"
        return {
            "width": width.label,
            "joint_pvalue": float(p),
            "joint_signs": signs,
            "joint_error": bool(joint),
            "label": label,
        }

    def report(
        self, alpha: float = 0.05, tolerance: float = 0.02, resolution: float = 0.01
    ) -> dict:
        """JSON-ready verdicts: SBC, coverage areas, TARP, UCE, each with its standard error.

        Every area comes with ``area_se`` (over truths), a ``verdict`` of
        :func:`.coverage.judge` and ``truths_needed`` for a ``±resolution`` interval;
        ``joint`` tells width from joint errors (:meth:`joint_verdict`).

        Parameters
        ----------
        alpha : float
            Level of the SBC test and of every verdict.
        tolerance, resolution : float
            As in :func:`.coverage.judge` (areas and ATC; the UCE uses 0.05 and 0.02
            of the std).

        Returns
        -------
        dict
            Plain floats, ints, bools, strings, lists and dicts only.
        """
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
            v = c.assess(alpha, tolerance, resolution)
            out[f"coverage_{kind}"] = {
                "area": c.area,
                "area_se": v.se,
                "ks": c.ks_statistic,
                "ks_pvalue": c.ks_pvalue,
                "at_0.9": c.at(0.9),
                "verdict": v.label,
                "pvalue": v.pvalue,
                "truths_needed": v.truths_needed,
                "resolution": resolution,
                "text": str(v),
            }
        if (self.tarp_ranks >= 0).all():
            t = self.tarp()
            v = t.assess(alpha, tolerance, resolution)
            out["tarp"] = {
                "atc": t.atc,
                "atc_se": v.se,
                "atc_verdict": v.label,
                "atc_pvalue": v.pvalue,
                "truths_needed": v.truths_needed,
                "ks": t.ks_statistic,
                "ks_pvalue": t.ks_pvalue,
                "text": str(v),
            }
        if {"uce_signed", "rms_std"} <= set(self.metrics):
            out["uce_signed_relative"] = self.uce_verdict(alpha).as_dict()
        out["joint"] = self.joint_verdict(alpha, tolerance)
        out["level"], out["tolerance"] = alpha, tolerance
        out["metrics"] = {k: float(np.mean(v)) for k, v in self.metrics.items()}
        return out
