"""Verdicts that know their sample size; an unbiased signed UCE; joint vs width errors.

All numpy: credibility levels and ranks are simulated directly (closed-form Gaussian
posteriors), so many repeated runs take seconds.
"""

import numpy as np
import pytest
from scipy import stats

from devito_uq.errors import InvalidArgumentError
from devito_uq.inference.diagnostics import (
    CalibrationResult,
    expected_coverage,
    judge,
    tarp_test,
    uncertainty_calibration_error,
)

SIGNED = ("under-confident", "over-confident")
RUNS = 2000


def _mislabel_rate(labels):
    return np.mean([lab in SIGNED for lab in labels])


def _mc_band(p, runs):
    return 3.0 * np.sqrt(p * (1.0 - p) / runs)


def _correlated_uniforms(rng, n, m, rho):
    """``[n, m]`` U(0, 1) per column, Gaussian-copula correlation ``rho`` within a row."""
    cov = np.full((m, m), rho) + (1.0 - rho) * np.eye(m)
    return stats.norm.cdf(rng.standard_normal((n, m)) @ np.linalg.cholesky(cov).T)


# --------------------------------------------------------------- exact posteriors
@pytest.mark.parametrize("n_truths", [100, 500])
def test_exact_posteriors_are_mislabelled_at_the_stated_level(n_truths):
    """Over R runs of exact credibility levels, the over/under labels occur ~5 % of the
    time (both signs together): no more (the stated level holds), and not much less
    (the standard error is not inflated)."""
    rng = np.random.default_rng(0)
    hpd, central, atc = [], [], []
    for _ in range(RUNS):
        hpd.append(expected_coverage(rng.random(n_truths), kind="hpd").verdict())
        u = _correlated_uniforms(rng, n_truths, 8, 0.7)  # 8 correlated coordinates
        central.append(expected_coverage(np.abs(2 * u - 1), kind="central").verdict())
        atc.append(tarp_test(rng.random(n_truths)).assess().label)
    band = _mc_band(0.05, RUNS)
    for name, labels in (("hpd", hpd), ("central", central), ("atc", atc)):
        rate = _mislabel_rate(labels)
        assert 0.05 - band < rate <= 0.05 + band, (name, rate)
        assert "calibrated" not in labels or n_truths >= 500  # ±0.02 unresolved at 100
        assert f"inconclusive at {n_truths} truths" in labels


def test_standard_errors_match_the_spread_over_runs():
    rng = np.random.default_rng(1)
    n = 200
    curves = [expected_coverage(rng.random(n)) for _ in range(RUNS)]
    tarps = [tarp_test(rng.random(n)) for _ in range(RUNS)]
    areas, se = np.array([c.area for c in curves]), np.array([c.area_se for c in curves])
    assert se.mean() == pytest.approx(1 / np.sqrt(12 * n), rel=0.02)  # analytic
    assert areas.std() == pytest.approx(se.mean(), rel=0.05)
    atcs, atc_se = np.array([t.atc for t in tarps]), np.array([t.atc_se for t in tarps])
    assert atcs.std() == pytest.approx(atc_se.mean(), rel=0.05)
    assert atc_se.mean() == pytest.approx(np.sqrt(5 / 192) / np.sqrt(n), rel=0.02)


def test_calibrated_needs_the_interval_inside_the_tolerance():
    rng = np.random.default_rng(2)
    big = expected_coverage(rng.random(40_000)).assess(tolerance=0.02, resolution=0.01)
    assert big.label == "calibrated" and big.se < 0.002
    # ±0.01 at 95 %: (1.96 · 0.2887 / 0.01)² ≈ 3201 truths for one value per truth.
    assert big.truths_needed == pytest.approx(3201, rel=0.02)
    small = judge(rng.random(100) - 0.5)
    assert small.label == "inconclusive at 100 truths" and small.n_truths == 100
    assert "needs" in str(small) and "±" in str(small)
    assert judge(np.full(50, 0.3)).label == "under-confident"  # zero spread, nonzero mean
    assert judge(np.zeros(50)).label == "calibrated"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"level": 1.5}, "level"),
        ({"tolerance": 0.0}, "tolerance"),
        ({"resolution": -1.0}, "resolution"),
    ],
)
def test_judge_rejects_bad_arguments(kwargs, match):
    with pytest.raises(InvalidArgumentError, match=match):
        judge(np.zeros(10), **kwargs)
    with pytest.raises(InvalidArgumentError, match="n_truths"):
        judge([0.1])


# --------------------------------------------------------------- wrong widths
@pytest.mark.parametrize("n_truths", [100, 200])
@pytest.mark.parametrize("scale, label", [(0.6, "over-confident"), (1.6, "under-confident")])
def test_wrong_widths_are_labelled_right_at_100_to_200_truths(n_truths, scale, label):
    """Posterior std × 0.6 / × 1.6 on a 4-d Gaussian: central, HPD and TARP ATC carry
    the right label in >= 95 % of repeated runs."""
    rng = np.random.default_rng(3)
    d, runs, L = 4, 200, 50
    hits = {"central": 0, "hpd": 0, "atc": 0}
    for _ in range(runs):
        z = rng.standard_normal((n_truths, d))  # truth − exact mean, in exact std units
        central = np.abs(2 * stats.norm.cdf(z / scale) - 1)
        hpd = stats.chi2.cdf((z**2).sum(1) / scale**2, d)
        draws = scale * rng.standard_normal((n_truths, L, d))
        ref = rng.standard_normal((n_truths, 1, d))
        closer = np.linalg.norm(draws - ref, axis=2) < np.linalg.norm(z[:, None] - ref, axis=2)
        tarp = (closer.sum(1) + rng.random(n_truths)) / (L + 1)
        hits["central"] += expected_coverage(central).verdict() == label
        hits["hpd"] += expected_coverage(hpd).verdict() == label
        hits["atc"] += tarp_test(tarp).assess().label == label
    assert min(hits.values()) >= 0.95 * runs, hits


# --------------------------------------------------------------- signed UCE
def _correlated_field(rng, runs, pixels, length):
    """``[runs, pixels]`` unit-variance AR(1) fields: few effective pixels."""
    rho = np.exp(-1.0 / length)
    x = np.empty((runs, pixels))
    x[:, 0] = rng.standard_normal(runs)
    for i in range(1, pixels):
        x[:, i] = rho * x[:, i - 1] + np.sqrt(1 - rho**2) * rng.standard_normal(runs)
    return x


def test_signed_uce_is_unbiased_for_an_exact_posterior_with_correlated_pixels():
    rng = np.random.default_rng(4)
    runs, pixels = 1000, 400
    std = np.linspace(0.05, 0.5, pixels)  # heteroscedastic, km/s
    errors = std * _correlated_field(rng, runs, pixels, length=20.0)
    new, old = [], []
    for e in errors:
        u = uncertainty_calibration_error(e, std, n_bins=4)
        new.append(u.signed / np.sqrt(np.mean(std**2)))
        ok = u.counts > 0  # the former estimator: Σ w (rms_std − rmse), Jensen-biased
        old.append(np.sum(u.counts[ok] / pixels * (u.rms_std[ok] - u.rmse[ok])))
    new, old = np.array(new), np.array(old) / np.sqrt(np.mean(std**2))
    se = new.std() / np.sqrt(runs)
    assert abs(new.mean()) < 3 * se, (new.mean(), se)
    assert old.mean() > 0.02 and old.mean() > 5 * old.std() / np.sqrt(runs), old.mean()
    wide = uncertainty_calibration_error(errors[0], 1.5 * std).signed
    narrow = uncertainty_calibration_error(errors[0], 0.6 * std).signed
    assert narrow < 0 < wide


def test_signed_uce_corrects_for_moments_from_few_draws():
    """Mean and std from L draws: E[e²] = σ²(1 + 1/L); ``n_samples`` removes that bias."""
    rng = np.random.default_rng(5)
    runs, pixels, L = 400, 300, 10
    sigma = np.linspace(0.1, 1.0, pixels)
    plain, fixed = [], []
    for _ in range(runs):
        draws = sigma * rng.standard_normal((L, pixels))
        truth = sigma * rng.standard_normal(pixels)
        e, s = draws.mean(0) - truth, draws.std(0, ddof=1)
        plain.append(uncertainty_calibration_error(e, s).signed)
        fixed.append(uncertainty_calibration_error(e, s, n_samples=L).signed)
    plain, fixed = np.array(plain), np.array(fixed)
    se = fixed.std() / np.sqrt(runs)
    assert abs(fixed.mean()) < 3 * se, (fixed.mean(), se)
    assert plain.mean() < -5 * se  # without the correction: over-confident by ~1/(2L)
    with pytest.raises(InvalidArgumentError, match="n_samples"):
        uncertainty_calibration_error(e, s, n_samples=0)


# --------------------------------------------------------------- joint vs width errors
def _gaussian_run(rng, cov_true, cov_q, n_truths=200, L=100):
    """Ranks of truths from N(0, cov_true) among L draws of q = N(0, cov_q), closed form."""
    d = cov_true.shape[0]
    truths = rng.standard_normal((n_truths, d)) @ np.linalg.cholesky(cov_true).T
    draws = rng.standard_normal((n_truths, L, d)) @ np.linalg.cholesky(cov_q).T
    prec = np.linalg.inv(cov_q)

    def log_q(x):
        return -0.5 * np.einsum("...i,ij,...j->...", x, prec, x)

    ref = rng.standard_normal((n_truths, 1, d)) * 1.5
    d_truth = np.linalg.norm(truths[:, None] - ref, axis=2)
    return CalibrationResult(
        ranks=(draws < truths[:, None]).sum(1).astype(np.int32),
        summary_ranks=np.zeros((n_truths, 0), np.int32),
        summary_names=(),
        log_prob_ranks=(log_q(draws) < log_q(truths)[:, None]).sum(1).astype(np.int32),
        tarp_ranks=(np.linalg.norm(draws - ref, axis=2) < d_truth).sum(1).astype(np.int32),
        metrics={},
        n_samples=L,
    )


def test_right_marginals_without_correlations_is_a_joint_error_not_a_width_error():
    d, rho = 4, 0.8
    cov = np.full((d, d), rho) + (1 - rho) * np.eye(d)  # unit marginals, correlated
    rng = np.random.default_rng(6)
    exact_flags = []
    for _ in range(10):
        diag = _gaussian_run(rng, cov, np.eye(d)).joint_verdict()
        assert diag["joint_error"] and diag["width"] not in SIGNED, diag
        assert diag["label"].startswith("joint error") and diag["joint_pvalue"] < 1e-3
        exact = _gaussian_run(rng, cov, cov).joint_verdict()
        exact_flags.append((exact["joint_error"], exact["width"] in SIGNED))
        narrow = _gaussian_run(rng, cov, 0.36 * cov).report()  # std × 0.6: a width error
        assert narrow["joint"]["width"] == "over-confident" and not narrow["joint"]["joint_error"]
        assert narrow["coverage_hpd"]["verdict"] == "over-confident"
        assert narrow["tarp"]["atc_verdict"] == "over-confident"
        for key in ("area_se", "truths_needed", "pvalue"):
            assert key in narrow["coverage_central"] and key in narrow["coverage_hpd"]
    # The exact posterior: each flag is a 5 % test; at most 2 of 10 by chance.
    assert sum(j for j, _ in exact_flags) <= 2 and sum(w for _, w in exact_flags) <= 2
