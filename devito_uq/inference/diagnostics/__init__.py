"""Diagnostics of posteriors: one home for every number that judges a posterior.

Where each kind lives (pick by what the diagnostic takes as input)
------------------------------------------------------------------
statistics.py
    Statistics over many truths, on plain numpy ranks: PIT, the SBC uniformity
    tests (KS, χ², Holm), the rank-histogram band; the conventions of all of them.
coverage.py
    Over many truths, on credibility levels: expected coverage (central, HPD),
    TARP, and :func:`judge` — each estimate with its standard error over truths and
    a label only where the evidence exceeds it.
images.py
    Metrics of one image, on plain numpy arrays in model units: quality against
    the truth (relative L2, SSIM, correlation) and uncertainty calibration from
    the error and the predicted std (interval coverage, UCE, z-fraction).
ranks.py
    From a truth and posterior draws (torch tensors or anything with
    ``sample(n)``) to the numbers above: per-truth ranks and moments streamed in
    chunks (:func:`truth_statistics`), per-image diagnostics (:func:`image_metrics`),
    summaries (:func:`window_mean`), draws with cached log-densities.
result.py
    :class:`CalibrationResult`: the ranks and metrics of a run over many truths and
    the tests on them. The runner that fills it (prior draws, simulation, posterior
    fits, MPI, resume) is :mod:`devito_uq.inference.calibration`.
plots.py
    Figures of all of the above. Not imported here (it loads matplotlib); import
    ``devito_uq.inference.diagnostics.plots`` where figures are drawn.

Adding a diagnostic
-------------------
Write it as a function of numpy arrays in ``statistics.py``/``coverage.py`` (many truths) or
``images.py`` (one image), with a numpy-style docstring giving shapes, units and
the sign convention (> 0 under-confident, < 0 over-confident, as the coverage
area), and a test on the linear-Gaussian problem in ``tests/test_calibration.py``
that passes on the exact posterior and fails, with the right sign, on a wrong one.
If it needs posterior draws, reduce them in ``ranks.py`` to the arrays it takes;
its figure goes in ``plots.py``. Keep each module under 450 lines: split by the
input it takes, not by the application that uses it.
"""

from devito_uq.inference.diagnostics.coverage import (
    CoverageCurve,
    TARPResult,
    Verdict,
    expected_coverage,
    judge,
    tarp_test,
)
from devito_uq.inference.diagnostics.images import (
    UCEResult,
    correlation,
    coverage,
    expected_z_fraction,
    relative_l2,
    ssim,
    uncertainty_calibration_error,
    z_fraction,
)
from devito_uq.inference.diagnostics.ranks import (
    CachedDraws,
    ImageMetrics,
    TruthStatistics,
    image_metrics,
    truth_statistics,
    window_mean,
)
from devito_uq.inference.diagnostics.result import CalibrationResult
from devito_uq.inference.diagnostics.statistics import (
    SBCTest,
    holm,
    pit,
    rank_band,
    sbc_test,
)

__all__ = [
    "pit",
    "holm",
    "SBCTest",
    "sbc_test",
    "rank_band",
    "Verdict",
    "judge",
    "CoverageCurve",
    "expected_coverage",
    "TARPResult",
    "tarp_test",
    "relative_l2",
    "ssim",
    "coverage",
    "correlation",
    "UCEResult",
    "uncertainty_calibration_error",
    "z_fraction",
    "expected_z_fraction",
    "TruthStatistics",
    "truth_statistics",
    "window_mean",
    "ImageMetrics",
    "image_metrics",
    "CachedDraws",
    "CalibrationResult",
]
