"""Building blocks of devito_uq.inference: likelihood, priors, parameterization, summaries,
plots. Samplers are tested in test_inference_vi.py and test_inference_mcmc.py."""

import itertools
import math

import numpy as np
import pytest
import torch
from checks import slopes, taylor_test

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference import (
    GaussianLikelihood,
    GaussianPrior,
    MatrixOperator,
    Parameterization,
    SmoothnessPrior,
    TotalVariationPrior,
    effective_sample_size,
    linear_gaussian_problem,
    sigma_from_snr,
    summarize,
)

# ---------------------------------------------------------------------------- likelihood


def _problem():
    return linear_gaussian_problem(n=6, n_shots=4, rows_per_shot=3, dtype=torch.float64)


def test_likelihood_matches_closed_form():
    p = _problem()
    lik = p.likelihood()
    m = torch.randn(5, 6, dtype=torch.float64)
    a = p.operator.matrix.reshape(12, 6)
    expected = 0.5 / p.sigma**2 * ((p.data.reshape(12) - m @ a.T) ** 2).sum(1)
    torch.testing.assert_close(lik(m), expected)


def test_likelihood_gradient_taylor():
    p = _problem()
    lik = p.likelihood()
    m0 = torch.randn(1, 6, dtype=torch.float64)
    dm = torch.randn(1, 6, dtype=torch.float64)
    h, e1, e2 = taylor_test(lambda m: lik(m).sum(), m0, dm, h0=1e-2)
    assert np.all(np.abs(slopes(h, e1) - 1) < 0.1)
    assert np.all(np.abs(slopes(h, e2) - 2) < 0.1)


def test_shot_subsets_are_scaled_and_unbiased():
    p = _problem()
    full = p.likelihood()
    lik = p.likelihood(shot_batch=2, seed=3)
    m = torch.randn(3, 6, dtype=torch.float64)
    # Average over every 2-shot subset equals the full likelihood exactly (N/n scaling).
    total = torch.zeros(3, dtype=torch.float64)
    subsets = list(itertools.combinations(range(4), 2))
    for s in subsets:
        r = lik.residual(m, torch.tensor(s))
        total += 2.0 * 0.5 / p.sigma**2 * r.flatten(1).pow(2).sum(1)
    torch.testing.assert_close(total / len(subsets), full(m))
    # The random draws use 2 distinct shots, and full=True uses all of them.
    shots = lik.draw_shots()
    assert shots.shape == (2,) and len(set(shots.tolist())) == 2
    torch.testing.assert_close(lik(m, full=True), full(m))
    mc = torch.stack([lik(m) for _ in range(3000)]).mean(0)
    torch.testing.assert_close(mc, full(m), rtol=0.05, atol=0)


def test_sigma_from_snr_definition():
    torch.manual_seed(1)
    d = torch.randn(200, 100, dtype=torch.float64)
    sigma = sigma_from_snr(d, 10.0)
    assert sigma == pytest.approx(math.sqrt(float((d**2).mean()) / 10.0))
    noise = sigma * torch.randn_like(d)
    snr = 10 * math.log10(float((d**2).sum() / (noise**2).sum()))
    assert snr == pytest.approx(10.0, abs=0.1)
    lik = GaussianLikelihood(MatrixOperator(torch.eye(100, dtype=torch.float64)), d[0], snr_db=10)
    assert lik.sigma == pytest.approx(sigma_from_snr(d[0], 10.0))


def test_likelihood_error_sigma_and_snr():
    with pytest.raises(InvalidArgumentError, match="exactly one of sigma and snr_db"):
        GaussianLikelihood(torch.nn.Identity(), torch.ones(3), sigma=1.0, snr_db=10.0)
    with pytest.raises(InvalidArgumentError, match="exactly one of sigma and snr_db"):
        GaussianLikelihood(torch.nn.Identity(), torch.ones(3))


def test_likelihood_error_bad_sigma():
    with pytest.raises(
        InvalidArgumentError, match="sigma must be a positive finite number, got -1"
    ):
        GaussianLikelihood(torch.nn.Identity(), torch.ones(3), sigma=-1.0)


def test_likelihood_error_zero_data_snr():
    with pytest.raises(InvalidArgumentError, match="data are all zero"):
        GaussianLikelihood(torch.nn.Identity(), torch.zeros(3), snr_db=10.0)


def test_likelihood_error_data_type():
    with pytest.raises(InvalidArgumentError, match="floating-point torch.Tensor, got ndarray"):
        GaussianLikelihood(torch.nn.Identity(), np.ones(3), sigma=1.0)


def test_likelihood_error_operator_not_callable():
    with pytest.raises(InvalidArgumentError, match="operator must be callable"):
        GaussianLikelihood(3, torch.ones(3), sigma=1.0)


def test_likelihood_error_shot_batch_range():
    with pytest.raises(InvalidArgumentError, match=r"shot_batch=9 must lie in \[1, 4\]"):
        _problem().likelihood(shot_batch=9)


def test_likelihood_error_operator_without_shots():
    with pytest.raises(InvalidArgumentError, match="accepts shots=, but Identity does not"):
        GaussianLikelihood(torch.nn.Identity(), torch.ones(4, 3), sigma=1.0, shot_batch=2)


def test_likelihood_error_output_shape():
    lik = GaussianLikelihood(torch.nn.Identity(), torch.ones(4), sigma=1.0)
    with pytest.raises(InvalidShapeError, match=r"operator output \(2, 5\) does not match data"):
        lik(torch.ones(2, 5))


# ---------------------------------------------------------------------------- priors


def test_gaussian_prior_forms_agree_with_torch_mvn():
    torch.manual_seed(2)
    n = 5
    b = torch.randn(n, n, dtype=torch.float64)
    cov = b @ b.T + n * torch.eye(n, dtype=torch.float64)
    mean = torch.randn(n, dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    m = torch.randn(7, n, dtype=torch.float64)
    for prior in (
        GaussianPrior(mean, covariance=cov),
        GaussianPrior(mean, precision=cov.inverse()),
    ):
        diff = prior.negative_log(m) + mvn.log_prob(m)
        torch.testing.assert_close(diff, diff[:1].expand(7))  # equal up to a constant
    iso = GaussianPrior(mean, covariance=2.0)
    diag = GaussianPrior(mean, precision=torch.full((n,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(iso(m), ((m - mean) ** 2).sum(1) / 4.0)
    torch.testing.assert_close(diag(m), iso(m))


def test_gaussian_prior_sample_covariance():
    torch.manual_seed(3)
    b = torch.randn(3, 3, dtype=torch.float64)
    cov = b @ b.T + torch.eye(3, dtype=torch.float64)
    prior = GaussianPrior(torch.ones(3, dtype=torch.float64), covariance=cov)
    s = prior.sample(40000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.cov(s.T), cov, rtol=0.05, atol=0.03)


def test_gaussian_prior_errors():
    m = torch.zeros(3)
    with pytest.raises(InvalidArgumentError, match="exactly one of covariance and precision"):
        GaussianPrior(m)
    with pytest.raises(InvalidArgumentError, match=r"covariance matrix \[3, 3\] is not positive"):
        GaussianPrior(m, covariance=-torch.eye(3))
    with pytest.raises(InvalidArgumentError, match="is not symmetric"):
        GaussianPrior(m, covariance=torch.eye(3) + torch.triu(torch.ones(3, 3), 1))
    with pytest.raises(InvalidShapeError, match=r"got shape \(2, 2\)"):
        GaussianPrior(m, precision=torch.eye(2))
    with pytest.raises(InvalidArgumentError, match="covariance must be a positive finite number"):
        GaussianPrior(m, covariance=0.0)
    with pytest.raises(InvalidShapeError, match=r"models must be \[batch, \*\(3,\)\]"):
        GaussianPrior(m, covariance=1.0)(torch.zeros(2, 4))


def test_smoothness_prior_closed_form():
    torch.manual_seed(4)
    m = torch.randn(2, 4, 5, dtype=torch.float64)
    prior = SmoothnessPrior(0.5, axes=(0, 1), spacing=(2.0, 1.0), sigma_norm=3.0)
    dz = (m[:, 1:] - m[:, :-1]) / 2.0
    dx = m[:, :, 1:] - m[:, :, :-1]
    expected = (dz**2).sum((1, 2)) / 0.5 + (dx**2).sum((1, 2)) / 0.5 + (m**2).sum((1, 2)) / 18
    torch.testing.assert_close(prior(m), expected)
    # A constant shift is free without the norm term (improper prior).
    free = SmoothnessPrior(0.5, axes=0)
    torch.testing.assert_close(free(m + 3.0), free(m))


def test_total_variation_of_a_step():
    m = torch.zeros(1, 10, dtype=torch.float64)
    m[0, 5:] = 2.0  # one jump of 2
    tv = TotalVariationPrior(weight=0.5, axes=0, epsilon=1e-8)
    assert float(tv(m)) == pytest.approx(0.5 * 2.0, rel=1e-6)
    m2 = torch.randn(1, 6, 7, dtype=torch.float64)
    tv2 = TotalVariationPrior(weight=1.0, axes=(0, 1), epsilon=0.1)
    h, e1, e2 = taylor_test(lambda x: tv2(x).sum(), m2, torch.randn_like(m2), h0=0.1)
    assert np.all(np.abs(slopes(h, e2) - 2) < 0.2)


def test_difference_prior_errors():
    with pytest.raises(InvalidArgumentError, match="sigma must be a positive finite number"):
        SmoothnessPrior(-1.0)
    with pytest.raises(InvalidArgumentError, match=r"axes must not repeat, got \(0, 0\)"):
        SmoothnessPrior(1.0, axes=(0, 0))
    with pytest.raises(InvalidArgumentError, match=r"spacing \(1.0,\) must give one value per"):
        TotalVariationPrior(1.0, axes=(0, 1), spacing=(1.0,))
    with pytest.raises(InvalidShapeError, match=r"prior axes \(1,\) do not exist"):
        SmoothnessPrior(1.0, axes=1)(torch.zeros(2, 5))


# ---------------------------------------------------------------------------- parameterization

_CASES = {
    "none": {},
    "both": {"lower": 1.5, "upper": 4.5},
    "lower": {"lower": 1.0},
    "upper": {"upper": 5.0},
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_parameterization_round_trip_and_logdet(case):
    torch.manual_seed(5)
    ref = torch.linspace(2.0, 4.0, 4, dtype=torch.float64)
    scale = torch.tensor([0.3, 0.5, 1.0, 2.0], dtype=torch.float64)
    g = Parameterization(ref, scale=scale, **_CASES[case])
    x = 3.0 * torch.randn(6, 4, dtype=torch.float64)
    m, logdet = g(x)
    torch.testing.assert_close(g.inverse(m), x, rtol=1e-5, atol=1e-6)  # sigmoid tails
    # log|det J| against the autograd Jacobian of one sample.
    jac = torch.autograd.functional.jacobian(lambda v: g(v.unsqueeze(0))[0][0], x[0])
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jac)[1])
    # g(0) = reference and g'(0) = scale: near the reference the map is affine.
    m0, ld0 = g(torch.zeros(1, 4, dtype=torch.float64))
    torch.testing.assert_close(m0[0], ref)
    torch.testing.assert_close(ld0[0], torch.log(scale).sum())
    if "lower" in _CASES[case]:
        assert bool((m > _CASES[case]["lower"]).all())
    if "upper" in _CASES[case]:
        assert bool((m < _CASES[case]["upper"]).all())


def test_parameterization_density_integrates_to_one():
    # q_m(m) = N(x; 0, I) / |det J_g(x)| must integrate to 1 over the box: checks the
    # change of variables that enters the VI objective and the Langevin target.
    g = Parameterization(torch.tensor([0.3, 0.6], dtype=torch.float64), 0.4, lower=0.0, upper=1.0)
    t = (torch.arange(400, dtype=torch.float64) + 0.5) / 400
    mm = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    x = g.inverse(mm)
    log_q = -0.5 * (x**2).sum(1) - math.log(2 * math.pi) - g(x)[1]
    assert float(log_q.exp().sum() / 400**2) == pytest.approx(1.0, abs=1e-3)


def test_parameterization_errors():
    ref = torch.ones(3)
    with pytest.raises(InvalidArgumentError, match="lower bound must lie below the reference"):
        Parameterization(ref, lower=1.0)
    with pytest.raises(InvalidArgumentError, match="upper bound must lie above the reference"):
        Parameterization(ref, upper=torch.tensor([2.0, 0.5, 2.0]))
    with pytest.raises(InvalidArgumentError, match="scale must be positive"):
        Parameterization(ref, scale=0.0)
    with pytest.raises(InvalidShapeError, match=r"scale of shape \(2,\) does not broadcast"):
        Parameterization(ref, scale=torch.ones(2))
    with pytest.raises(InvalidShapeError, match=r"latent x must be \[batch, \*\(3,\)\]"):
        Parameterization(ref)(torch.zeros(3))
    g = Parameterization(ref, lower=0.0, upper=2.0)
    with pytest.raises(InvalidArgumentError, match="model value 2.5 violates the upper bound 2.0"):
        g.inverse(torch.tensor([[1.0, 2.5, 1.0]]))


# ---------------------------------------------------------------------------- summaries


def test_summary_statistics():
    torch.manual_seed(6)
    s = 2.0 + 3.0 * torch.randn(200000, 2, dtype=torch.float64)
    summ = summarize(s)
    torch.testing.assert_close(
        summ.mean, torch.full((2,), 2.0, dtype=torch.float64), atol=0.03, rtol=0
    )
    torch.testing.assert_close(
        summ.std, torch.full((2,), 3.0, dtype=torch.float64), atol=0.03, rtol=0
    )
    lo, hi = summ.credible_interval(0.9)
    torch.testing.assert_close(
        lo, torch.full((2,), 2 - 1.6449 * 3, dtype=torch.float64), atol=0.05, rtol=0
    )
    torch.testing.assert_close(
        hi, torch.full((2,), 2 + 1.6449 * 3, dtype=torch.float64), atol=0.05, rtol=0
    )
    assert summ.quantiles.shape == (3, 2) and summ.n_samples == 200000
    with pytest.raises(InvalidArgumentError, match=r"quantile level 0.25 was not computed"):
        summ.quantile(0.25)
    with pytest.raises(InvalidShapeError, match=r"got \(1, 2\)"):
        summarize(torch.zeros(1, 2))


def test_effective_sample_size_iid_and_ar1():
    torch.manual_seed(7)
    t, c = 4000, 8
    iid = torch.randn(t, c, 1, dtype=torch.float64)
    assert float(effective_sample_size(iid)[0]) == pytest.approx(t * c, rel=0.2)
    rho = 0.9
    x = torch.zeros(t, c, 1, dtype=torch.float64)
    x[0] = torch.randn(c, 1, dtype=torch.float64) / math.sqrt(1 - rho**2)
    for k in range(1, t):
        x[k] = rho * x[k - 1] + torch.randn(c, 1, dtype=torch.float64)
    expected = t * c * (1 - rho) / (1 + rho)  # AR(1): τ = (1 + ρ)/(1 − ρ)
    assert float(effective_sample_size(x)[0]) == pytest.approx(expected, rel=0.25)


# ---------------------------------------------------------------------------- plots


def test_plots_write_png(tmp_path):
    from devito_uq.inference.plotting import plot_images, plot_loss, plot_profiles

    s = torch.randn(100, 12).cumsum(1)
    fig = plot_profiles(
        summarize(s),
        depth=torch.arange(12) * 10.0,
        samples=s[:5],
        truth=s[0],
        path=tmp_path / "p.png",
    )
    ax = fig.axes[0]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # depth increases downwards
    plot_images(
        summarize(torch.randn(20, 6, 5)), samples=torch.randn(2, 6, 5), path=tmp_path / "i.png"
    )
    plot_loss(
        {"loss": [3, 2, 1], "misfit": [1, 1, 1], "prior": [0, 0, 0], "neg_entropy": [2, 1, 0]},
        path=tmp_path / "l.png",
    )
    for name in ("p.png", "i.png", "l.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InvalidShapeError, match="plot_profiles needs 1-D models"):
        plot_profiles(summarize(torch.randn(5, 2, 2)))
    with pytest.raises(InvalidArgumentError, match=r"history lacks the terms \['misfit'"):
        plot_loss({"loss": [1.0]})
