"""Tests of the calibration diagnostics (SBC, expected coverage, TARP, UCE).

The reference is the closed-form linear-Gaussian problem: each truth is a prior
draw, its data are simulated with the problem's operator and noise, and the exact
posterior N(μ(d), Σ) is sampled. Every test must pass on it, and the same tests
must fail, with the right sign, on posteriors made wrong on purpose (std × 0.5,
std × 2, a shifted mean). Seeds are fixed, so each outcome is deterministic.
"""

from __future__ import annotations

import json
import multiprocessing

import numpy as np
import pytest
import torch
from conftest import cuda_or_skip
from scipy import stats

from devito_uq.errors import CheckpointError, DevitoUQError, InvalidArgumentError, InvalidShapeError
from devito_uq.inference.calibration import load_calibration, run_calibration
from devito_uq.inference.diagnostics import (
    expected_coverage,
    expected_z_fraction,
    holm,
    image_metrics,
    pit,
    rank_band,
    sbc_test,
    tarp_test,
    truth_statistics,
    uncertainty_calibration_error,
    window_mean,
    z_fraction,
)
from devito_uq.inference.diagnostics import ranks as diagnostic_ranks
from devito_uq.inference.problems import linear_gaussian_problem

N_EXACT, N_WRONG, L = 1000, 300, 100
NOMINAL = (0.5, 0.68, 0.9, 0.95)


class Gaussian:
    """A posterior N(mean, scale_tril scale_trilᵀ) with sample(n) and log_prob."""

    def __init__(self, mean: torch.Tensor, scale_tril: torch.Tensor) -> None:
        self.dist = torch.distributions.MultivariateNormal(mean, scale_tril=scale_tril)

    def sample(self, n: int) -> torch.Tensor:
        return self.dist.sample((n,))

    def log_prob(self, m: torch.Tensor) -> torch.Tensor:
        return self.dist.log_prob(m)


class Setup:
    """Prior sampler, simulator and exact-posterior builder of a linear-Gaussian problem."""

    def __init__(self) -> None:
        self.problem = linear_gaussian_problem(
            n=16, n_shots=4, rows_per_shot=4, sigma=0.5, prior_std=1.0, dtype=torch.float64
        )
        n = self.problem.posterior_mean.shape[0]
        # A from the operator itself, so the test does not depend on its storage layout.
        self.a = self.problem.operator(torch.eye(n, dtype=torch.float64)).reshape(n, -1).T
        self.n, self.sigma = n, self.problem.sigma
        self.cov = self.problem.posterior_covariance
        self.chol = torch.linalg.cholesky(self.cov)

    def prior(self) -> torch.Tensor:
        return torch.randn(self.n, dtype=torch.float64)  # N(0, τ² I), τ = 1

    def simulate(self, m: torch.Tensor) -> torch.Tensor:
        return self.a @ m + self.sigma * torch.randn(self.a.shape[0], dtype=torch.float64)

    def mean(self, d: torch.Tensor) -> torch.Tensor:
        return self.cov @ (self.a.T @ d) / self.sigma**2

    def builder(self, std_scale: float = 1.0, shift: float = 0.0):
        """Exact posterior, or one with std × ``std_scale`` and mean + ``shift``·std."""

        def build(d: torch.Tensor) -> Gaussian:
            return Gaussian(
                self.mean(d) + shift * self.cov.diagonal().sqrt(), std_scale * self.chol
            )

        return build

    def run(self, n_truths: int, builder=None, **kw):
        kw.setdefault("summaries", {"window": window_mean(slice(4, 12))})
        return run_calibration(
            self.prior,
            self.simulate,
            builder or self.builder(),
            n_truths,
            kw.pop("n_samples", L),
            **kw,
        )


@pytest.fixture(scope="module")
def setup() -> Setup:
    return Setup()


@pytest.fixture(scope="module")
def exact(setup):
    return setup.run(N_EXACT, seed=0)


def test_builder_is_the_closed_form_posterior(setup):
    """The test's posterior mean formula reproduces the problem's own μ for its data."""
    mu = setup.mean(setup.problem.data.reshape(-1))
    assert torch.allclose(mu, setup.problem.posterior_mean, atol=1e-10)


# ----------------------------------------------------------------- exact posterior
def test_exact_posterior_passes_sbc(exact):
    test = exact.sbc(alpha=0.05)
    assert test.names[-2:] == ("window", "log_prob") and len(test.names) == 16 + 2
    assert test.passed, f"family p = {test.family_pvalue}"
    assert test.failed() == []
    assert (test.adjusted_pvalue > 0.05).all()
    assert np.abs(test.pit_offset).max() < 0.05


def test_exact_posterior_coverage_and_tarp(exact):
    central, hpd, tarp = exact.coverage("central"), exact.coverage("hpd"), exact.tarp()
    for curve in (central, hpd):
        assert curve.max_deviation(NOMINAL) <= 0.03, (curve.kind, curve.coverage)
        # an exact posterior is never labelled over-/under-confident here; whether its area can
        # be shown to lie within ±0.02 depends on N (test_diagnostics_verdicts.py)
        assert abs(curve.area) <= 0.02
        assert curve.verdict() not in ("over-confident", "under-confident")
    assert central.max_deviation() <= 0.03  # every level, pooled over 16 000 values
    assert abs(tarp.atc) <= 0.05
    assert tarp.ks_pvalue > 0.05
    report = exact.report()
    assert report["sbc"]["passed"]
    undecided = f"inconclusive at {exact.n_truths} truths"
    assert report["coverage_hpd"]["verdict"] in ("calibrated", undecided)


def test_exact_posterior_image_metrics(exact):
    zf = exact.metrics["z_fraction"].mean()
    assert abs(zf - expected_z_fraction(L)) < 0.006, zf
    rel = exact.metrics["uce_signed"].mean() / exact.metrics["rms_std"].mean()
    assert abs(rel) < 0.05, rel
    assert (exact.metrics["seconds"] > 0).all()


# ----------------------------------------------------------------- wrong posteriors
@pytest.mark.parametrize(
    "std_scale, shift, verdict",
    [(0.5, 0.0, "over-confident"), (2.0, 0.0, "under-confident"), (1.0, 0.5, "over-confident")],
    ids=["std_x0.5", "std_x2", "mean_shift_0.5std"],
)
def test_wrong_posteriors_are_caught_with_the_right_sign(setup, std_scale, shift, verdict):
    res = setup.run(N_WRONG, setup.builder(std_scale, shift), seed=1)
    test = res.sbc()
    assert not test.passed and test.family_pvalue < 1e-6
    central, hpd, tarp = res.coverage("central"), res.coverage("hpd"), res.tarp()
    sign = 1.0 if verdict == "under-confident" else -1.0
    assert central.verdict() == verdict and sign * central.area > 0.02, central.area
    assert hpd.verdict() == verdict and sign * hpd.area > 0.05, hpd.area
    assert central.max_deviation(NOMINAL) > 0.03
    assert tarp.ks_pvalue < 1e-3
    zf = res.metrics["z_fraction"].mean()
    if std_scale != 1.0:  # a width error: TARP's ATC, z-scores and UCE share the sign
        assert sign * tarp.atc > 0.05, tarp.atc
        assert sign * res.metrics["uce_signed"].mean() > 0
        assert (zf > 0.2) if std_scale < 1 else (zf < 0.01)
    else:  # posterior biased high: the truth sits below the draws, low ranks
        coords = [i for i, n in enumerate(test.names) if n.startswith("x[")]
        assert (test.pit_offset[coords] < -0.05).all()
        assert zf > expected_z_fraction(L) + 0.01


# ------------------------------------------------------------------- resume and MPI
class Crash(RuntimeError):
    pass


def _same(a, b):
    np.testing.assert_array_equal(a.ranks, b.ranks)
    np.testing.assert_array_equal(a.summary_ranks, b.summary_ranks)
    np.testing.assert_array_equal(a.log_prob_ranks, b.log_prob_ranks)
    np.testing.assert_array_equal(a.tarp_ranks, b.tarp_ranks)
    for k in ("rmse", "rms_std", "uce", "uce_signed", "z_fraction"):
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k])


def test_resume_after_a_crash_matches_an_uninterrupted_run(setup, tmp_path):
    calls = []

    def crashing(d):
        if len(calls) == 7:
            raise Crash("killed")
        calls.append(1)
        return setup.builder()(d)

    with pytest.raises(Crash):
        setup.run(20, crashing, seed=3, out_dir=tmp_path / "run")
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["calibration.json"] + [f"truth_{i:06d}.npz" for i in range(7)]  # no .tmp
    resumed = setup.run(20, seed=3, out_dir=tmp_path / "run")
    assert resumed.computed == list(range(7, 20))
    fresh = setup.run(20, seed=3)
    _same(resumed, fresh)
    again = setup.run(20, seed=3, out_dir=tmp_path / "run")  # nothing left to do
    assert again.computed == []
    _same(again, fresh)
    _same(load_calibration(tmp_path / "run"), fresh)  # figures later, without the callables
    grown = setup.run(25, seed=3, out_dir=tmp_path / "run")  # N may grow
    assert grown.computed == list(range(20, 25))
    _same(grown, setup.run(25, seed=3))
    with pytest.raises(CheckpointError, match="truth_000025.npz is missing: truth 25 of 30"):
        load_calibration(tmp_path / "run", n_truths=30)
    with pytest.raises(CheckpointError, match="n_samples=100.*this run has 50"):
        setup.run(20, seed=3, out_dir=tmp_path / "run", n_samples=50)


def test_seeds_make_runs_reproducible_and_leave_the_callers_rng(setup):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = setup.run(8, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    _same(a, setup.run(8, seed=5))
    assert not np.array_equal(a.ranks, setup.run(8, seed=6).ranks)


class PipeComm:
    """Rank ``rank`` of 2 forked processes: Allreduce sums over a pipe, in rank order."""

    def __init__(self, rank: int, conn) -> None:
        self.rank, self.conn = rank, conn

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return 2

    def Allreduce(self, send: np.ndarray, recv: np.ndarray) -> None:
        self.conn.send(np.array(send, copy=True))
        other = self.conn.recv()
        recv[...] = send + other if self.rank == 0 else other + send


def _rank_main(setup, rank, conn, out) -> None:
    res = setup.run(9, seed=2, comm=PipeComm(rank, conn))
    out.put((rank, res.computed, res.ranks, res.log_prob_ranks, res.metrics["uce"]))


def test_truths_are_dealt_over_ranks_and_gathered(setup):
    """Two real processes (forked: own torch generators) stand in for MPI ranks."""
    ctx = multiprocessing.get_context("fork")
    a, b = ctx.Pipe()
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(setup, r, c, out)) for r, c in ((0, a), (1, b))]
    for p in procs:
        p.start()
    got = dict((r[0], r[1:]) for r in (out.get(timeout=60), out.get(timeout=60)))
    for p in procs:
        p.join(30)
    assert got[0][0] == [0, 2, 4, 6, 8] and got[1][0] == [1, 3, 5, 7]
    serial = setup.run(9, seed=2)
    for rank in (0, 1):  # every rank holds every truth's result, equal to the serial run
        np.testing.assert_array_equal(got[rank][1], serial.ranks)
        np.testing.assert_array_equal(got[rank][2], serial.log_prob_ranks)
        np.testing.assert_array_equal(got[rank][3], serial.metrics["uce"])


# ------------------------------------------------------------------------ streaming
class StoredDraws:
    """An MCMC-result-like posterior: sample(n) returns stored draws, in order, chunk by chunk."""

    def __init__(self, draws: torch.Tensor) -> None:
        self.draws, self.pos = draws, 0

    def sample(self, n: int) -> torch.Tensor:
        out = self.draws[self.pos : self.pos + n]
        self.pos += n
        return out


def test_streamed_statistics_equal_the_direct_ones(monkeypatch):
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(53, 6, 5, generator=g, dtype=torch.float64) * 2.0 + 1.0
    truth = torch.randn(6, 5, generator=g, dtype=torch.float64)
    monkeypatch.setattr(diagnostic_ranks, "_ELEMENTS_PER_CHUNK", 40)  # 1-row stat chunks
    whole = truth_statistics(truth, draws, 53)
    chunked = truth_statistics(truth, StoredDraws(draws), 53, sample_chunk=7)
    for st in (whole, chunked):
        np.testing.assert_array_equal(st.ranks, (draws < truth).sum(0).numpy())
        np.testing.assert_allclose(st.mean, draws.mean(0).numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(st.std, draws.std(0).numpy(), rtol=1e-10)
    far = truth_statistics(truth + 1e6, draws + 1e6, 53)  # no cancellation far from 0
    np.testing.assert_allclose(far.std, draws.std(0).numpy(), rtol=1e-7)


def test_draws_on_cuda_give_the_cpu_statistics():
    device = cuda_or_skip()
    g = torch.Generator().manual_seed(1)
    draws = torch.randn(40, 12, generator=g, dtype=torch.float64)
    truth = torch.randn(12, generator=g, dtype=torch.float64)
    ref = torch.randn(12, generator=g, dtype=torch.float64)
    kw = {"summaries": {"w": window_mean(slice(2, 6))}, "generator": None}
    cpu = truth_statistics(truth, draws, 40, reference=ref, **kw)
    gpu = truth_statistics(truth.to(device), draws.to(device), 40, reference=ref.to(device), **kw)
    np.testing.assert_array_equal(cpu.ranks, gpu.ranks)
    np.testing.assert_array_equal(cpu.summary_ranks, gpu.summary_ranks)
    assert cpu.tarp_rank == gpu.tarp_rank
    np.testing.assert_allclose(cpu.std, gpu.std, rtol=1e-12)


def test_tarp_scale_makes_the_distance_unit_free():
    """Coordinates in m/s and g/cc: dividing by the scale gives the unit-free TARP ranks."""
    g = torch.Generator().manual_seed(4)
    scale = torch.tensor([1000.0, 1.0, 0.001, 1.0], dtype=torch.float64)
    changed = 0
    for _ in range(30):
        draws, truth, ref = (
            torch.randn(*s, generator=g, dtype=torch.float64) for s in ((50, 4), (4,), (4,))
        )
        plain = truth_statistics(truth, draws, 50, reference=ref).tarp_rank
        args = (truth * scale, draws * scale, 50)
        scaled = truth_statistics(*args, reference=ref * scale, reference_scale=scale)
        raw = truth_statistics(*args, reference=ref * scale).tarp_rank
        assert scaled.tarp_rank == plain
        changed += raw != plain
    assert changed > 5  # without the scale the m/s coordinate decides alone
    with pytest.raises(InvalidArgumentError, match="reference_scale"):
        truth_statistics(truth, draws, 50, reference=ref, reference_scale=0 * scale)


def test_ties_are_broken_at_random():
    truth = torch.zeros(2000)
    st = truth_statistics(truth, torch.zeros(9, 2000), 9)  # every draw equals the truth
    counts = np.bincount(st.ranks, minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3  # uniform on 0..9, not all 0


# ---------------------------------------------------------------------- bad input
def test_bad_input_raises_errors_naming_the_value(setup):
    with pytest.raises(InvalidArgumentError, match="n_truths=1"):
        setup.run(1)
    with pytest.raises(InvalidArgumentError, match="n_samples=0"):
        setup.run(5, n_samples=0)
    with pytest.raises(InvalidArgumentError, match="non-finite sample value nan"):
        setup.run(3, lambda d: torch.full((L, setup.n), float("nan"), dtype=torch.float64))
    draws = torch.zeros(L, setup.n, dtype=torch.float64)
    draws[57, 3] = float("inf")
    with pytest.raises(InvalidArgumentError, match=r"value inf at index \[57, 3\]"):
        truth_statistics(draws[0], StoredDraws(draws), L, sample_chunk=10)
    with pytest.raises(InvalidShapeError, match=r"shape \[100, 15\]; expected \[100, 16\]"):
        setup.run(3, lambda d: torch.zeros(L, setup.n - 1, dtype=torch.float64))
    with pytest.raises(
        InvalidShapeError, match=r"summary 'bad' returned \[1, 16\]; expected \[1\]"
    ):
        setup.run(3, summaries={"bad": lambda x: x})
    sizes = iter([16, 16, 16, 16, 17])  # shape probe, then (reference, truth) per truth
    with pytest.raises(InvalidShapeError, match=r"got \[17\] for truth 1, \[16\] for the first"):
        run_calibration(
            lambda: torch.zeros(next(sizes), dtype=torch.float64),
            setup.simulate,
            setup.builder(),
            3,
            L,
        )
    with pytest.raises(InvalidArgumentError, match="tarp_reference='box'"):
        setup.run(3, tarp_reference="box")
    with pytest.raises(InvalidArgumentError, match="build_posterior must be callable"):
        run_calibration(setup.prior, setup.simulate, None, 3, L)
    with pytest.raises(InvalidArgumentError, match=r"ranks must lie in \[0, n_samples=10\]"):
        sbc_test(np.full((5, 2), 11), 10)
    with pytest.raises(InvalidShapeError, match="error has 3 values and std 2"):
        uncertainty_calibration_error(np.zeros(3), np.ones(2))
    assert issubclass(CheckpointError, DevitoUQError)


# ------------------------------------------------------------------ the statistics
def test_holm_and_ks_agree_with_references():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    ranks = np.random.default_rng(0).integers(0, 51, size=(200, 3))
    test = sbc_test(ranks, 50, seed=4)
    u = pit(ranks, 50, seed=4)
    for j in range(3):
        ref = stats.kstest(u[:, j], "uniform")
        assert test.ks_statistic[j] == pytest.approx(ref.statistic)
        assert test.ks_pvalue[j] == pytest.approx(ref.pvalue, rel=1e-6)
    assert test.passed
    assert not sbc_test(np.zeros((200, 3), int), 50).passed


def test_areas_are_the_integrals_of_the_curves():
    c = np.random.default_rng(1).beta(2, 3, size=500)
    levels = np.linspace(0, 1, 20001)
    curve, tarp = expected_coverage(c, levels), tarp_test(c, levels)
    assert curve.area == pytest.approx(np.trapezoid(curve.coverage - levels, levels), abs=1e-4)
    upper = levels >= 0.5
    atc = np.trapezoid((curve.coverage - levels)[upper], levels[upper])
    assert tarp.atc == pytest.approx(atc, abs=1e-4)
    assert curve.area > 0  # Beta(2, 3) has mean 0.4 < 1/2: truths central, conservative


def test_rank_band_holds_about_its_mass():
    lo, hi = rank_band(500, 25, 0.99)
    counts = np.random.default_rng(2).multinomial(500, np.full(25, 1 / 25), size=400)
    outside = np.mean((counts < lo) | (counts > hi))
    assert lo < 20 < hi and outside < 0.02


def test_uce_and_z_fraction_on_a_10k_pixel_image():
    rng = np.random.default_rng(3)
    std = rng.uniform(0.05, 0.5, size=10_000)  # heteroscedastic, km/s
    error = std * rng.standard_normal(10_000)
    good = uncertainty_calibration_error(error, std)
    assert good.relative < 0.05 and (good.counts == 1000).all()
    narrow = uncertainty_calibration_error(error, 0.5 * std)
    wide = uncertainty_calibration_error(error, 2.0 * std)
    assert narrow.signed < 0 < wide.signed and narrow.relative > 0.5
    in_m = uncertainty_calibration_error(1000 * error, 1000 * std)  # km/s -> m/s
    assert in_m.uce == pytest.approx(1000 * good.uce) and in_m.relative == pytest.approx(
        good.relative
    )
    assert z_fraction(error, std) == pytest.approx(expected_z_fraction(), abs=0.006)
    assert z_fraction(error, 0.5 * std) > 0.25 and z_fraction(error, 2 * std) < 0.001
    assert uncertainty_calibration_error(error, std, binning="uniform").relative < 0.05


def test_image_metrics_of_one_truth():
    g = torch.Generator().manual_seed(5)
    std = 0.1 + torch.rand(100, 100, generator=g)
    truth = std * torch.randn(100, 100, generator=g)  # a draw of N(0, std²)

    class Pixels:
        def __init__(self, scale):
            self.scale = scale

        def sample(self, n):
            return self.scale * std * torch.randn(n, 100, 100)

    good = image_metrics(truth, Pixels(1.0), 200, sample_chunk=50)
    assert abs(good.coverage(0.9) - 0.9) < 0.01
    assert abs(good.z_fraction - expected_z_fraction(200)) < 0.006
    assert good.uce.relative < 0.05 and good.coverage_map(0.9).shape == (100, 100)
    bad = image_metrics(truth, Pixels(0.5), 200, sample_chunk=50)
    assert bad.coverage(0.9) < 0.7 and bad.uce.signed < 0


def test_plots_write_pngs(exact, tmp_path):
    pytest.importorskip("matplotlib")
    from devito_uq.inference.diagnostics import plots as cp

    cp.plot_rank_histograms(exact, max_panels=6, path=tmp_path / "ranks.png")
    cp.plot_coverage([exact.coverage(), exact.coverage("hpd")], path=tmp_path / "cov.png")
    cp.plot_tarp(exact.tarp(), path=tmp_path / "tarp.png")
    std = np.linspace(0.1, 1, 400)
    cp.plot_uce(uncertainty_calibration_error(std * 0.9, std), "km/s", path=tmp_path / "uce.png")
    truth = torch.zeros(20, 20)
    m = image_metrics(truth, torch.randn(30, 20, 20), 30)
    cp.plot_image_metrics(m, path=tmp_path / "image.png")
    for name in ("ranks", "cov", "tarp", "uce", "image"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    paths = cp.save_calibration_figures(exact, tmp_path / "figs")
    assert sorted(p.name for p in paths) == [
        "calibration_coverage.png",
        "calibration_ranks.png",
        "calibration_report.json",
        "calibration_tarp.png",
    ]
    assert json.loads((tmp_path / "figs" / "calibration_report.json").read_text())["sbc"]["passed"]
