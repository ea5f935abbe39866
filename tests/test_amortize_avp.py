"""The AVP amortized workflow (devito_uq.apps.amortize.avp): training pairs, surveys,
configuration checks, and the whole simulate → train → study run at a tiny size."""

from __future__ import annotations

import json
import math

import pytest
import torch

from devito_uq.apps.amortize.avp import (
    AVPAmortizedSetting,
    BornProjectionSummary,
    build_setting,
    kept_ray_indices,
)
from devito_uq.apps.amortize.config import AmortizeConfig
from devito_uq.errors import InvalidArgumentError

TINY = dict(
    n_train=48,
    n_validation=16,
    shard_size=16,
    flow_steps=1,
    flow_hidden=16,
    summary_features=8,
    summary_hidden=16,
    iterations=6,
    batch_size=16,
    validate_every=3,
    checkpoint_every=3,
    n_samples=24,
    correct_iterations=3,
    vi_iterations=4,
    n_truths=4,
    mala_steps=40,
    mala_chains=2,
    label="test",
)


@pytest.fixture(scope="module")
def setting() -> AVPAmortizedSetting:
    return build_setting(AmortizeConfig(**TINY))


def test_simulate_shard_is_a_function_of_the_generator(setting):
    a = setting.simulate_shard(3, 4, torch.Generator().manual_seed(11))
    torch.manual_seed(123)  # the global state must not matter
    b = setting.simulate_shard(3, 4, torch.Generator().manual_seed(11))
    c = setting.simulate_shard(3, 4, torch.Generator().manual_seed(12))
    assert set(a) == {"model", "condition"}
    assert a["model"].shape == (4, 128) and a["condition"].shape == (4, 7, 801)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model"], c["model"])
    # Truncated prior: above the bound, spread like the prior around the background.
    assert bool((a["model"] > setting.parameterization.lower).all())
    dev = (a["model"].double() - setting.problem.m_background).pow(2).mean().sqrt()
    assert 0.005 < float(dev) < 0.05
    # condition = F(model) + σ ε: the residual is white noise of std σ.
    with torch.no_grad():
        clean = setting.operator(a["model"])
    r = (a["condition"] - clean).double()
    assert abs(float(r.std()) / setting.sigma - 1.0) < 0.05
    assert abs(float(r.mean())) < 3 * setting.sigma / math.sqrt(r.numel())


def test_prior_draws_use_the_generator_only(setting):
    torch.manual_seed(0)
    a = setting.prior_draws(20, torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    b = setting.prior_draws(20, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (20, 128)


@pytest.mark.parametrize(
    "n, fraction, kept",
    [(7, 0.5, [0, 2, 4, 6]), (7, 1.0, list(range(7))), (7, 0.1, [0]), (4, 0.5, [0, 3])],
)
def test_kept_ray_indices(n, fraction, kept):
    assert kept_ray_indices(n, fraction) == kept


def test_half_ray_survey_condition_and_likelihood(setting):
    sv = setting.partial_survey(0.5)
    full = setting.operator
    assert sv.kept == [0, 2, 4, 6]
    # The likelihood models the kept ray parameters only, on the kept traces of the data.
    assert torch.equal(sv.operator.ray_parameters, full.ray_parameters[sv.kept])
    lik = sv.target.likelihood
    assert torch.equal(lik.data, setting.problem.data[sv.kept])
    with torch.no_grad():
        sub = sv.operator(setting.problem.m_true.float())
    assert torch.allclose(sub, setting.problem.data_clean[sv.kept], atol=1e-6)
    # The condition keeps its shape; missing traces are zero, kept ones are the data.
    assert sv.condition.shape == setting.problem.data.shape
    missing = [i for i in range(7) if i not in sv.kept]
    assert bool((sv.condition[missing] == 0).all())
    assert torch.equal(sv.condition[sv.kept], setting.problem.data[sv.kept])


def test_half_ray_survey_filled_from_the_training_mean(setting):
    fill = torch.randn(7, 801)
    sv = setting.partial_survey(0.5, fill=fill)
    assert sv.name == "half_rays_mean_filled"
    assert torch.equal(sv.condition[[1, 3, 5]], fill[[1, 3, 5]])
    assert torch.equal(sv.condition[sv.kept], setting.problem.data[sv.kept])
    assert torch.equal(sv.operator.ray_parameters, setting.operator.ray_parameters[sv.kept])


def test_noisy_survey_has_the_larger_sigma(setting):
    sv = setting.noisy_survey(2.0, torch.Generator().manual_seed(0))
    assert sv.sigma == pytest.approx(2.0 * setting.sigma)
    r = (sv.condition - setting.problem.data_clean).double()
    assert abs(float(r.std()) / sv.sigma - 1.0) < 0.05
    assert sv.target.likelihood.sigma == pytest.approx(sv.sigma)


def test_born_projection_summary_reads_the_born_response(setting):
    basis = setting.born_basis()
    s = BornProjectionSummary(basis, 4, 8, trace_hidden=4)
    assert torch.allclose(s.basis.norm(dim=1), torch.ones(128), atol=1e-5)
    # The projection of the Born data of a spike at depth i peaks near depth i.
    h = basis[60:61].reshape(1, -1) @ s.basis.T
    assert abs(int(h.argmax()) - 60) <= 2
    assert s(torch.zeros(3, 7, 801)).shape == (3, 4)
    assert "basis" not in s.state_dict()  # rebuilt from the setting, not stored
    assert s.traces is not None and BornProjectionSummary(basis, 4, 8, 0).traces is None


@pytest.mark.parametrize(
    "field, value",
    [
        ("mala_chains", 0),
        ("prior_norm_std", -0.1),
        ("shift_fraction", 0.0),
        ("noise_factor", 0.0),
        ("n_truths", 1),
    ],
)
def test_bad_config_is_refused_naming_it(field, value):
    with pytest.raises(InvalidArgumentError, match=field):
        build_setting(AmortizeConfig(**{**TINY, field: value}))


def test_each_problem_has_its_config_and_the_command_offers_all_their_fields():
    """One config class per problem, found by its ``problem`` default; the command's
    AmortizeConfig holds exactly the union of their fields; a problem's config keeps its
    own fields only (an older amortized.pt stored every problem's)."""
    import dataclasses

    from devito_uq.apps.amortize import (
        AVPAmortizeConfig,
        ImagingAmortizeConfig,
        problem_config,
    )
    from devito_uq.apps.amortize.config import PROBLEMS

    assert PROBLEMS == ("avp", "imaging")
    names = {
        c: {f.name for f in dataclasses.fields(c)}
        for c in (AVPAmortizeConfig, ImagingAmortizeConfig)
    }
    union = {f.name for f in dataclasses.fields(AmortizeConfig)}
    assert union == names[AVPAmortizeConfig] | names[ImagingAmortizeConfig]
    assert "mala_steps" not in names[ImagingAmortizeConfig]
    assert "x_start" not in names[AVPAmortizeConfig]
    assert AmortizeConfig().problem == "avp" and ImagingAmortizeConfig().problem == "imaging"
    cfg = AmortizeConfig(**{**TINY, "nshots": 0})  # another problem's field: ignored
    assert cfg.validate() is cfg and cfg.for_problem() == AVPAmortizeConfig(**TINY)
    with pytest.raises(InvalidArgumentError, match="nshots"):
        AmortizeConfig(problem="imaging", nshots=0).validate()
    with pytest.raises(InvalidArgumentError, match="problem"):
        AVPAmortizeConfig(problem="imaging").validate()
    with pytest.raises(InvalidArgumentError, match="problem"):
        problem_config({"problem": "elastic"})
    assert problem_config(AmortizeConfig(problem="imaging").to_dict()) == ImagingAmortizeConfig()


def test_tiny_workflow_writes_summary_and_figures(tmp_path):
    from devito_uq.apps.amortize.run import run_all

    out = tmp_path / "run"
    summary = run_all(AmortizeConfig(**TINY), str(out), progress=False)
    on_disk = json.loads((out / "summary.json").read_text())
    for key in ("sleipner", "shift", "calibration", "costs", "targets", "sample_1000_seconds"):
        assert key in on_disk, key
    for method in ("amortized", "corrected", "vi", "mala"):
        st = on_disk["sleipner"][method]
        for k in ("relative_mean_error", "truth_in_90pct_band", "std_relative_difference"):
            assert math.isfinite(st[k]), (method, k)
    for name in ("noise", "half_rays", "half_rays_mean_filled"):
        for method in ("amortized", "corrected", "vi"):
            assert 0.0 <= on_disk["shift"][name][method]["truth_in_90pct_band"] <= 1.0
    assert on_disk["shift"]["half_rays"]["kept_ray_parameters"] == pytest.approx(
        on_disk["shift"]["noise"]["kept_ray_parameters"][::2]
    )
    costs = on_disk["costs"]
    assert costs["correction"]["iterations"] == 3 and costs["per_survey_vi"]["iterations"] == 4
    assert costs["correction"]["pde_solves"] > 0
    assert on_disk["calibration"]["n_truths"] == 4
    assert summary["time_s"]["total"] > 0
    for name in (
        "amortize_sleipner.png",
        "amortize_shift.png",
        "calibration_amortized_coverage.png",
        "calibration_amortized_ranks.png",
    ):
        assert (out / name).stat().st_size > 1000, name


def test_conditional_affine_inverts_and_its_logdet_is_the_jacobian():
    from devito_uq.apps.amortize.avp import ConditionalAffine

    torch.manual_seed(0)
    layer = ConditionalAffine(3, 5).double()
    with torch.no_grad():  # away from the identity it starts at
        for p in layer.parameters():
            p.normal_(0.0, 0.7)
    x, c = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    z, logdet = layer(x, c)
    back, logdet_inv = layer.inverse(z, c)
    assert torch.allclose(back, x, atol=1e-12)
    assert torch.allclose(logdet, -logdet_inv, atol=1e-12)
    for i in range(4):
        ci = c[i : i + 1]
        jac = torch.autograd.functional.jacobian(lambda v, ci=ci: layer(v[None], ci)[0][0], x[i])
        assert float(torch.linalg.slogdet(jac)[1]) == pytest.approx(float(logdet[i]), abs=1e-10)
