"""The result of a calibration run: per-truth ranks and metrics, and the tests on them.

:func:`devito_uq.inference.calibration.run_calibration` fills a
:class:`CalibrationResult`; its methods apply :mod:`.statistics` to the ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from devito_uq.errors import InvalidArgumentError
from devito_uq.inference.diagnostics.statistics import (
    CoverageCurve,
    SBCTest,
    TARPResult,
    expected_coverage,
    pit,
    sbc_test,
    tarp_test,
)

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
            As in :func:`.statistics.expected_coverage`.

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
        """:func:`.statistics.tarp_test` of the TARP ranks.

        Parameters
        ----------
        levels : sequence of float, optional
            As in :func:`.statistics.expected_coverage`.

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

    def report(self, alpha: float = 0.05) -> dict:
        """JSON-ready verdicts: SBC family p-value, coverage areas, TARP, mean metrics.

        Parameters
        ----------
        alpha : float
            Level of the SBC test.

        Returns
        -------
        dict
            Plain floats, ints, bools, strings and lists only.
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
