"""The 2D amortized workflow (devito_uq.apps.amortize.imaging) at a tiny size.

16×10 grid at 30 m (450 m × 270 m of Marmousi-II), 2 shots of 16 receivers, 600 ms: the
normal operator JᵀMJ is 160 columns × 2 shots, the training set 64 + 32 pairs.
"""

import dataclasses
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import segyio
import torch

from devito_uq.apps.amortize.config import AmortizeConfig
from devito_uq.apps.amortize.imaging import build_setting, crop_velocity
from devito_uq.apps.amortize.imaging_invert import invert_amortized
from devito_uq.apps.amortize.imaging_posterior import (
    NormalLikelihood,
    gaussian_factors,
    gaussian_residual_flow,
)
from devito_uq.apps.amortize.imaging_study import (
    adapted_condition,
    gaussian_posterior,
    warn_if_miscalibrated,
)
from devito_uq.apps.amortize.run import load_amortized, run_all
from devito_uq.apps.imaging.config import InvertConfig, SimulateConfig
from devito_uq.apps.imaging.problem import pde_solves
from devito_uq.apps.imaging.run import run_invert
from devito_uq.apps.imaging.simulate import run_simulate
from devito_uq.apps.scenarios import load_marmousi, resample_window
from devito_uq.cli import load_config_file
from devito_uq.errors import DevitoUQWarning, InvalidArgumentError
from devito_uq.inference import GaussianLikelihood
from devito_uq.io import read_image, save_checkpoint

TINY = dict(
    problem="imaging", width=450.0, depth=270.0, nshots=2, nreceivers=16, t1=600.0,
    snr_db=20.0, n_train=64, n_validation=32, shard_size=32, iterations=12, batch_size=16,
    flow_levels=2, flow_steps=1, flow_hidden=8, summary_features=2, summary_hidden=4,
    n_samples=32, correct_iterations=2, correct_batch_size=2, vi_iterations=2, n_truths=4,
    validate_every=6, checkpoint_every=6, heldout_draws=3,
)  # fmt: skip


@pytest.fixture(scope="module")
def setting():
    return build_setting(AmortizeConfig(**TINY))


def test_crops_never_overlap_the_held_out_window(setting):
    c = setting.config
    _, starts = setting.draw_models(300, torch.Generator().manual_seed(3))
    width = (setting.shape[0] - 1) * c.spacing
    lo, hi = np.array(starts) - c.augment_warp, np.array(starts) + width + c.augment_warp
    assert np.all((hi < c.x_start) | (lo > c.x_start + width))
    # both sides of the window are used, and nothing leaves the model
    assert (hi < c.x_start).any() and (lo > c.x_start + width).any()
    assert lo.min() >= 0 and hi.max() <= 12000.0
    # the crop is the imaging app's window when not augmented
    v, _ = resample_window(load_marmousi(), (7.5, 7.5), (0, 0), 5400.0, 450.0, 270.0, 30.0)
    assert np.array_equal(crop_velocity(5400.0, setting.shape, 30.0), v)
    with pytest.raises(InvalidArgumentError, match="x_start"):
        build_setting(AmortizeConfig(**{**TINY, "x_start": 0.0, "width": 11000.0}))


def test_simulate_shard_deterministic_and_leaves_global_rng(setting):
    state = torch.get_rng_state()
    a = setting.simulate_shard(2, 3, torch.Generator().manual_seed(11))
    b = setting.simulate_shard(2, 3, torch.Generator().manual_seed(11))
    other = setting.simulate_shard(2, 3, torch.Generator().manual_seed(12))
    assert torch.equal(torch.get_rng_state(), state)
    assert a["model"].shape == (3, 16, 10) and a["condition"].shape == (3, 1, 16, 10)
    assert a["model"].dtype == a["condition"].dtype == torch.float32
    for k in a:
        assert torch.equal(a[k], b[k])
        assert not torch.equal(a[k], other[k])
    # water is known: the training images are zero there (7 cells of 30 m ≈ 200 m)
    flat = setting.simulate_shard(0, 8, torch.Generator().manual_seed(1))["model"]
    assert float(flat[:, 3:-3, :5].abs().max()) == 0.0


def test_condition_is_adjoint_born_of_noisy_born_data(setting):
    """y = Jᵀ M (J δm + σ ε): dot test against explicit J calls (no autograd), the same ε;
    and the normal operator reproduces Jᵀ M J δm and the noise covariance σ² H."""
    dm, _ = setting.draw_models(2, torch.Generator().manual_seed(4))
    sigma, J = setting.sigma, setting.born
    mask = setting.acquisition["mask"].float()
    y = setting.migrate(dm, torch.Generator().manual_seed(9), sigma=sigma)
    with torch.no_grad():
        d = J(dm.float())
        eps = torch.randn(d.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        r = ((d + sigma * eps.float()) * mask).double()
        v = torch.randn(2, *setting.shape, generator=torch.Generator().manual_seed(1))
        Jv = J(v).double()
    for b in range(2):  # <Jᵀ r, v> = <r, J v>
        lhs, rhs = float((y[b, 0] * v[b]).sum()), float((r[b] * Jv[b]).sum())
        assert lhs == pytest.approx(rhs, rel=1e-4)
    noise_free = setting.migrate(dm, torch.Generator(), sigma=0.0)
    H = setting.normal_matrices().sum(0)
    Hdm = (H @ dm.reshape(2, -1).T).T.reshape(noise_free.shape)
    assert float((Hdm - noise_free).norm() / noise_free.norm()) < 1e-4
    L = setting.noise_factor((0, 1))
    assert float((L @ L.T - H).norm() / H.norm()) < 1e-8


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("amortize2d"))
    return out, run_all(AmortizeConfig(**TINY), out, progress=False)


def test_workflow_writes_summary_and_figures(workflow):
    out, summary = workflow
    with open(os.path.join(out, "summary.json")) as fh:
        saved = json.load(fh)
    for name in ("heldout", "half_shots", "dead_traces", "double_noise"):
        entry = saved["surveys"][name]
        for kind in ("amortized", "corrected", "exact_gaussian"):
            assert np.isfinite(entry[kind]["image_relative_l2"])
            assert 0.0 <= entry[kind]["truth_inside_90pct_band"] <= 1.0
        assert os.path.getsize(os.path.join(out, f"amortized_{name}.png")) > 1000
    held = saved["surveys"]["heldout"]
    # per-survey VI starts at the exact (full-rank Laplace) Gaussian posterior
    assert held["vi"]["image_relative_l2"] == pytest.approx(
        held["exact_gaussian"]["image_relative_l2"], abs=0.05
    )
    assert held["exact_gaussian"]["image_relative_l2"] < 0.6  # the data inform the image
    assert held["exact_gaussian"]["std_correlation_with_vi"] > 0.9
    assert saved["surveys"]["half_shots"]["shots"] == [0]
    # the Gaussian-residual posterior (the default) is told each shifted survey's geometry;
    # what it gives when it is not is reported beside
    for name in ("half_shots", "dead_traces", "double_noise"):
        assert "amortized_training_geometry" in saved["surveys"][name]
    assert "amortized_training_geometry" not in held
    dead = saved["surveys"]["dead_traces"]
    assert dead["live_traces"] == 2 * 8  # half of each shot's 16 traces kept
    assert dead["own_normal_operator"]["pde_solves"] > 0  # its own JᵀMJ, assembled
    assert saved["surveys"]["half_shots"]["own_normal_operator"]["pde_solves"] == 0
    # 160 columns in batched kernels of 8 (physics.acoustic.modeling.BATCH_SIZE) × 2 shots ×
    # (one shared background + 8 Born + 8 adjoint), the pooled background, σ's Born data
    assert 20 * 2 * 17 + 4 <= saved["cost"]["training_set_solves"] <= 20 * 2 * 17 + 2 + 4
    draws = saved["heldout_draws"]
    assert draws["draws"] == 3
    for kind in ("exact_gaussian", "amortized", "corrected"):
        band = draws[kind]["truth_inside_90pct_band"]
        assert len(band["values"]) == 3 and band["se"] >= 0
        assert band["mean"] == pytest.approx(np.mean(band["values"]))
    assert saved["calibration"]["n_truths"] == 4
    assert os.path.exists(os.path.join(out, "calibration.png"))


def test_invert_amortized_writes_segy_and_refuses_other_grid(workflow, tmp_path):
    out, _ = workflow
    survey = os.path.join(out, "survey")
    files = dict(
        shots=f"{survey}/shots.sgy",
        background=f"{survey}/background.sgy",
        truth=f"{survey}/true_model.sgy",
    )
    ckpt = os.path.join(out, "amortized.pt")
    cfg = InvertConfig(**files, amortized=ckpt, correct=True, iterations=2, batch_size=2)
    summary = invert_amortized(cfg, str(tmp_path / "inv"), progress=False, figures=False)
    mean, spacing, origin = read_image(tmp_path / "inv" / "posterior_mean.sgy")
    assert mean.shape == (16, 10) and np.all(np.isfinite(mean))
    assert origin == pytest.approx((5400.0, 0.0))
    assert summary["amortized"]["corrected"] and summary["pde_solves"]["by_phase"]["correction"]
    assert os.path.exists(tmp_path / "inv" / "summary.json")
    assert summary["amortized"]["geometry"]["dead_traces"] == 0

    # dead receivers (all-zero traces): the posterior is conditioned on the survey's own
    # live traces — its JᵀMJ assembled (solves reported) — instead of the training's
    (tmp_path / "dead_survey").mkdir()
    dead_shots = tmp_path / "dead_survey" / "shots.sgy"
    shutil.copy(files["shots"], dead_shots)
    shutil.copy(f"{survey}/acquisition.json", tmp_path / "dead_survey")  # its σ
    with segyio.open(str(dead_shots), "r+", ignore_geometry=True) as f:
        for i in (0, 3, 5, 17, 20):  # shot 0: traces 0, 3, 5; shot 1: 1, 4
            f.trace[i] = np.zeros_like(f.trace[i])
    cfg = InvertConfig(**{**files, "shots": str(dead_shots)}, amortized=ckpt)
    summary = invert_amortized(cfg, str(tmp_path / "dead"), progress=False, figures=False)
    geometry = summary["amortized"]["geometry"]
    assert geometry["dead_traces"] == 5 and geometry["conditioned"]
    assert geometry["pde_solves"] == summary["pde_solves"]["by_phase"]["geometry"] > 0
    mean, _, _ = read_image(tmp_path / "dead" / "posterior_mean.sgy")
    assert np.all(np.isfinite(mean))
    # fewer live traces, a wider Gaussian-posterior covariance: a wider posterior (the flow
    # told the training geometry would keep the full survey's width)
    std_all, _, _ = read_image(tmp_path / "inv" / "posterior_std.sgy")
    std_dead, _, _ = read_image(tmp_path / "dead" / "posterior_std.sgy")
    assert std_dead.mean() > 1.05 * std_all.mean(), (std_dead.mean(), std_all.mean())

    other = tmp_path / "other"
    run_simulate(
        SimulateConfig(width=480.0, depth=270.0, nshots=2, nreceivers=16, t1=600.0, data="born"),
        other, progress=False, figures=False,
    )  # fmt: skip
    bad = InvertConfig(
        shots=str(other / "shots.sgy"), background=str(other / "background.sgy"), truth="",
        amortized=ckpt,
    )  # fmt: skip
    before = pde_solves()
    with pytest.raises(InvalidArgumentError, match=r"grid \(nx, nz\) is \(17, 10\)"):
        invert_amortized(bad, str(tmp_path / "bad"), progress=False, figures=False)
    assert pde_solves() == before  # refused before any solve
    # MAP + VI does not sample an amortized posterior: it names the function that does
    with pytest.raises(InvalidArgumentError, match="imaging_invert.invert_amortized"):
        run_invert(bad, str(tmp_path / "bad"), progress=False, figures=False)


def test_example_file_sets_every_key_of_the_2d_case():
    path = Path(__file__).resolve().parents[1] / "examples" / "amortize_marmousi.toml"
    values = load_config_file(path, AmortizeConfig)
    keys = {f.name for f in dataclasses.fields(AmortizeConfig) if f.metadata.get("cli", True)}
    assert keys - set(values) == set()
    config = AmortizeConfig(**values).validate()
    assert config.problem == "imaging" and build_setting(config).shape == (41, 21)


def test_normal_likelihood_is_the_born_gaussian_likelihood(setting):
    dm, _ = setting.draw_models(3, torch.Generator().manual_seed(6))
    mask = setting.acquisition["mask"]
    with torch.no_grad():
        d = setting.born(dm[0].float()) + 0.05 * torch.randn(2, 151, 16)
    u = torch.zeros(setting.shape, requires_grad=True)
    (y,) = torch.autograd.grad(setting.born(u), u, grad_outputs=d * mask)
    constant = float((d * mask).double().pow(2).sum()) / (2 * 0.05**2)
    H = setting.normal_matrices().sum(0)
    normal = NormalLikelihood(H, y, 0.05, constant)
    exact = GaussianLikelihood(setting.born, d, sigma=0.05, mask=mask)
    m = dm[1:].float()
    assert torch.allclose(normal(m).double(), exact(m).double(), rtol=1e-4)


def test_adapted_condition_is_identity_on_the_training_survey(setting):
    """(H + σ²C⁻¹)(H/σ² + C⁻¹)⁻¹ y/σ² = y; another shot set or σ changes it."""
    dm, _ = setting.draw_models(1, torch.Generator().manual_seed(2))
    y = setting.conditions(dm, torch.Generator().manual_seed(3))[0]
    same = adapted_condition(setting, y, [0, 1], setting.sigma)
    assert float((same - y).norm() / y.norm()) < 1e-6
    other = adapted_condition(setting, y, [0], setting.sigma)
    assert float((other - y).norm() / y.norm()) > 0.1


def test_depth_augmentation_crops_deeper_and_keeps_the_survey_water(setting):
    """A crop starting k cells down is rows k: of a k cells taller crop; deep training
    images are zero in the survey's (known) water and nonzero beneath it; too deep fails."""
    nx, nz = setting.shape
    tall = crop_velocity(900.0, (nx, nz + 4), 30.0)
    assert np.array_equal(crop_velocity(900.0, (nx, nz), 30.0, z_start=120.0), tall[:, 4:])
    deep = build_setting(AmortizeConfig(**{**TINY, "augment_depth": 2000.0}))
    dm, _ = deep.draw_models(16, torch.Generator().manual_seed(5))
    assert deep.water.any()
    assert float(dm[:, torch.from_numpy(deep.water)].abs().max()) == 0.0
    assert float(dm[:, torch.from_numpy(~deep.water)].abs().max()) > 0.0
    with pytest.raises(InvalidArgumentError, match="augment_depth=2800"):
        build_setting(AmortizeConfig(**{**TINY, "augment_depth": 2800.0}))


def _gaussian_logpdf(m, mean, cov):
    """log N(m; mean, cov) ``[batch]`` for flattened ``m`` ``[batch, n]`` (float64)."""
    chol = torch.linalg.cholesky(cov)
    r = torch.linalg.solve_triangular(chol, (m - mean).T, upper=False)
    n = mean.numel()
    return -0.5 * r.pow(2).sum(0) - torch.log(chol.diagonal()).sum() - 0.5 * n * np.log(2 * np.pi)


class _StandardNormalImage(torch.nn.Module):
    """N(0, I) on the grid with ConditionalImageFlow's interface (the condition unused): the
    base a Gaussian-residual flow would have if training learned no departure."""

    def __init__(self, shape, *args, **kwargs):
        super().__init__()
        self.shape = tuple(shape)
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def _check_models(self, m, who):
        assert tuple(m.shape[1:]) == self.shape, who
        return m

    @staticmethod
    def _log_n(w):
        return -0.5 * w.flatten(1).pow(2).sum(1) - 0.5 * w[0].numel() * np.log(2 * np.pi)

    def log_prob(self, w, c=None, n_pad=1):
        return self._log_n(w)

    def rsample_and_log_prob(self, n, c=None):
        w = torch.randn(n, *self.shape, dtype=torch.float64)
        return w, self._log_n(w)


def test_gaussian_residual_flow_around_a_standard_normal_is_the_exact_gaussian_posterior(
    setting,
):
    """With a base that learned no departure (N(0, I)), the flow is the closed-form posterior
    under the per-survey Gaussian prior: log-density = the Gaussian's (mean P y, covariance
    (H/σ² + C⁻¹)⁻¹, latent units) to round-off, draws with its mean and std; and the
    posterior's ``set_geometry`` (one shot of two, 1.5 σ) gives that survey's factors."""
    flow = gaussian_residual_flow(_StandardNormalImage)(setting.shape)
    post = setting.make_posterior()
    shots = setting.normal_matrices()
    dm, _ = setting.draw_models(1, torch.Generator().manual_seed(4))
    prior, scale = setting.gaussian_prior(), setting.config.prior_std
    n = int(np.prod(setting.shape))
    for H, sigma in ((shots.sum(0), setting.sigma), (shots[0], 1.5 * setting.sigma)):
        y = H @ dm[0].double().reshape(-1) + sigma * torch.randn(n, dtype=torch.float64)
        y = y.reshape(1, *setting.shape)
        mean, std = gaussian_posterior(H, y[0], sigma, prior)
        f = gaussian_factors(H, sigma, prior, scale)
        flow.set_factors(f)
        mu = (f["ls_operator"] @ y.reshape(-1)).reshape(1, 1, *setting.shape) / scale
        c = torch.cat([torch.zeros_like(mu), mu], dim=1)  # [summary, mean] channels
        torch.manual_seed(0)
        x, log_q = flow.rsample_and_log_prob(4000, c)
        cov = f["ls_operator"] * sigma**2 / scale**2
        want = _gaussian_logpdf(x[:16].reshape(16, -1), mean.reshape(-1) / scale, cov)
        assert torch.allclose(log_q[:16], want, rtol=1e-6), log_q[:16] - want  # float32 buffers
        assert torch.allclose(flow.log_prob(x[:16], c), want, rtol=1e-6)
        se = std / scale / np.sqrt(4000)
        assert float(((x.mean(0) - mean / scale).abs() / se).max()) < 5.0
        ratio = x.std(0) * scale / std
        assert float((ratio - 1).abs().max()) < 0.07  # 4,000 draws: SE of a std ≈ 1.1 %
        assert torch.allclose(f["std"].reshape(setting.shape), std, rtol=1e-10)
        # the posterior conditioned on this geometry carries the same factors
        post.set_geometry(H, sigma)
        assert torch.allclose(post.flow.cov_sqrt.double(), f["cov_sqrt"], atol=1e-6)
        assert torch.allclose(post.ls_operator.double(), f["ls_operator"].float().double())
        z = post.features(y[None].float())[:, -1]
        assert torch.allclose(z.double(), mu[:, 0], rtol=0, atol=1e-3 * float(mu.abs().max()))


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"heldout_draws": -1}, "heldout_draws=-1 must be an integer >= 0"),
        ({"heldout_draws": 1.5}, "heldout_draws=1.5 must be an integer"),
        ({"residual": "yes"}, "residual='yes' must be True or False"),
    ],
)
def test_new_knobs_refuse_bad_values_by_name(bad, message):
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        build_setting(AmortizeConfig(**{**TINY, **bad}))


def test_residual_needs_deconvolve():
    with pytest.raises(InvalidArgumentError, match="residual=true .* needs deconvolve=true"):
        build_setting(AmortizeConfig(**{**TINY, "deconvolve": False}))


def test_dead_trace_mask_keeps_a_fraction_of_each_shots_traces(setting):
    mask = setting.dead_trace_mask(0.25, torch.Generator().manual_seed(0))
    live = setting.acquisition["mask"]
    assert mask.shape == live.shape and not bool((mask & ~live).any())
    assert mask.sum(-1).flatten().tolist() == [4, 4]  # round(0.25 · 16) per shot
    H = setting.normal_matrices(mask=mask)
    assert float((H - setting.normal_matrices()).norm()) > 0.1 * float(H.norm())


def test_a_posterior_trained_before_the_residual_key_loads_as_the_former_design(tmp_path):
    """An ``amortized.pt`` whose stored config has no ``residual`` was trained with the former
    design: it loads as that (not as the Gaussian-residual default, which it would not fit)."""
    config = AmortizeConfig(**{**TINY, "residual": False})
    posterior = build_setting(config).make_posterior()
    stored = {k: v for k, v in config.to_dict().items() if k != "residual"}
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"config": stored, "posterior": posterior.state_dict()})
    loaded, saved, _ = load_amortized(str(path))
    assert saved.residual is False and not hasattr(loaded, "set_geometry")


def test_the_study_says_in_one_line_when_its_calibration_finds_the_bands_off():
    def report(verdict):
        text = f"+0.133 ± 0.002 ({verdict})"
        return {"n_truths": 200, "coverage_central": {"verdict": verdict, "text": text}}

    with pytest.warns(DevitoUQWarning, match="under-confident on 200 truths .* \\+0.133"):
        warn_if_miscalibrated(report("under-confident"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_miscalibrated(report("calibrated"))
        warn_if_miscalibrated(report("inconclusive at 4 truths"))
