"""Faults and hostile input outside the physics (issue 9): corrupted and foreign VI
checkpoints, resumes under another configuration, NaN data and starts, diverging SGLD,
absurd sample counts, numpy / 0-d tensor scalars. Each case checks the error type, the
value it names, and that nothing was written or changed."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from devito_uq.errors import CheckpointError, InvalidArgumentError, TrainingDivergedError
from devito_uq.flows import HINT, Flow
from devito_uq.inference import (
    MALA,
    SGLD,
    GaussianLikelihood,
    VariationalPosterior,
    linear_gaussian_problem,
    map_estimate,
)


def _flow(n: int = 8, seed: int = 7) -> Flow:
    torch.manual_seed(seed)
    return Flow(HINT(n, steps=1, hidden=8, memory_frugal=False), (n,))


def _vi(seed: int = 7) -> VariationalPosterior:
    p = linear_gaussian_problem(n=8, n_shots=4, rows_per_shot=2, seed=1)
    return VariationalPosterior(_flow(seed=seed), p.likelihood(shot_batch=2, seed=5), p.prior)


_FIT = dict(iterations=6, batch_size=4, lr=1e-2, lr_schedule="cosine", checkpoint_every=3)


def _weights(vi: VariationalPosterior) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in vi.flow.state_dict().items()}


@pytest.fixture(scope="module")
def vi_checkpoint(tmp_path_factory) -> bytes:
    """The bytes of a real VI checkpoint (HINT flow, Adam, cosine schedule, RNG states)."""
    path = tmp_path_factory.mktemp("ck") / "vi.pt"
    _vi().fit(**_FIT, checkpoint_path=path, seed=3, progress=False)
    return path.read_bytes()


# --------------------------------------------------------------------------- corruption
def test_every_byte_flip_of_a_vi_checkpoint_is_refused(tmp_path, vi_checkpoint):
    """40 positions spread over the file (header, JSON, tensors, end), each flipped two
    ways (one bit, all bits): every resume is a CheckpointError naming the file, the
    flow keeps its own weights (never silently resumed), and the file is not touched."""
    path = tmp_path / "vi.pt"
    positions = np.unique(np.linspace(0, len(vi_checkpoint) - 1, 40).astype(int))
    assert len(positions) == 40
    refused = 0
    for pos in positions:
        for mask in (0x01, 0xFF):
            data = bytearray(vi_checkpoint)
            data[pos] ^= mask
            path.write_bytes(bytes(data))
            vi = _vi(seed=11)
            before = _weights(vi)
            with pytest.raises(CheckpointError, match=r"vi\.pt"):
                vi.fit(**_FIT, checkpoint_path=path, seed=3, progress=False)
            assert path.read_bytes() == bytes(data), pos
            after = _weights(vi)
            assert all(torch.equal(before[k], after[k]) for k in before), pos
            assert vi.iteration == 0 and vi.history["loss"] == []
            refused += 1
    assert refused == 80
    assert sorted(os.listdir(tmp_path)) == ["vi.pt"]  # no temporary file either


def test_truncated_vi_checkpoint_is_refused(tmp_path, vi_checkpoint):
    path = tmp_path / "vi.pt"
    for n in (0, 10, len(vi_checkpoint) // 2, len(vi_checkpoint) - 1):
        path.write_bytes(vi_checkpoint[:n])
        with pytest.raises(CheckpointError, match=r"vi\.pt.*(corrupt|not a devito_uq)"):
            _vi().fit(**_FIT, checkpoint_path=path, seed=3, progress=False)
        assert path.read_bytes() == vi_checkpoint[:n]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(lr=2e-2), r"it has lr=0.01, this run has lr=0.02"),
        (dict(batch_size=2), r"it has batch_size=4, this run has batch_size=2"),
        (
            dict(lr_schedule="exponential"),
            r"it has lr_schedule='cosine'.*lr_schedule='exponential'",
        ),
        (dict(lr_final=0.1), r"it has lr_final=0.01, this run has lr_final=0.1"),
        (dict(clip_grad=1.0), r"it has clip_grad=None, this run has clip_grad=1.0"),
        (
            dict(temper_iterations=3),
            r"it has temper_iterations=0, this run has temper_iterations=3",
        ),
        (dict(iterations=9), r"it has iterations=6, this run has iterations=9"),
        (dict(identity={"angle": 3}), r"it has no value, this run has angle=3"),
    ],
)
def test_resume_under_another_configuration_is_refused(tmp_path, vi_checkpoint, change, message):
    path = tmp_path / "vi.pt"
    path.write_bytes(vi_checkpoint)
    vi = _vi(seed=11)
    before = _weights(vi)
    with pytest.raises(CheckpointError, match=rf"vi\.pt.*belongs to another run: {message}"):
        vi.fit(**{**_FIT, **change}, checkpoint_path=path, seed=3, progress=False)
    assert path.read_bytes() == vi_checkpoint
    assert all(torch.equal(before[k], v) for k, v in vi.flow.state_dict().items())


def test_identity_is_stored_and_compared_key_by_key(tmp_path):
    path = tmp_path / "vi.pt"
    kw = dict(_FIT, iterations=3, checkpoint_path=path, progress=False)
    _vi().fit(**kw, identity={"snr_db": 0.0, "corners": (5, 30, 50, 80)})
    # Same identity (a tuple written, a list read back): resumes (nothing left to do).
    vi = _vi()
    vi.fit(**kw, identity={"snr_db": 0.0, "corners": [5, 30, 50, 80]})
    assert vi.resumed_from == 3
    with pytest.raises(CheckpointError, match=r"it has snr_db=0.0, this run has snr_db=3.0"):
        _vi().fit(**kw, identity={"snr_db": 3.0, "corners": (5, 30, 50, 80)})
    with pytest.raises(InvalidArgumentError, match="identity must be a dict or None, got list"):
        _vi().fit(**kw, identity=[1])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["folder", "FIFO"])
def test_checkpoint_path_that_is_not_a_file(tmp_path, kind):
    path = tmp_path / "vi.pt"
    if kind == "folder":
        path.mkdir()
    else:
        os.mkfifo(path)  # a plain open() for reading would block forever
    with pytest.raises(CheckpointError, match=rf"vi\.pt' is a {kind}, not a"):
        _vi().fit(**_FIT, checkpoint_path=path, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["vi.pt"]


# --------------------------------------------------------------------------- bad values
def test_nan_or_inf_observed_data_refused():
    p = linear_gaussian_problem(n=4, n_shots=2, rows_per_shot=2)
    for bad in (float("nan"), float("inf")):
        data = p.data.clone()
        data[1, 0] = bad
        with pytest.raises(InvalidArgumentError, match=rf"data contains {bad} at index \(1, 0\)"):
            GaussianLikelihood(p.operator, data, sigma=0.5)


def test_nan_start_refused_by_mcmc_and_map():
    p = linear_gaussian_problem(n=4, n_shots=2, rows_per_shot=2)
    x0 = torch.zeros(2, 4)
    x0[1, 2] = float("nan")
    for sampler in (MALA(p.likelihood(), p.prior), SGLD(p.likelihood(), p.prior)):
        with pytest.raises(InvalidArgumentError, match=r"x0 contains nan at index \(1, 2\)"):
            sampler.run(3, n_chains=2, x0=x0, progress=False)
        assert sampler.result is None
    with pytest.raises(InvalidArgumentError, match=r"x0 contains nan at index \(2,\)"):
        map_estimate(p.likelihood(), p.prior, x0=x0[1])


def test_mala_start_with_infinite_potential_refused():
    p = linear_gaussian_problem(n=4, n_shots=2, rows_per_shot=2)

    def lik(m):  # finite except for chain 1's start
        out = p.likelihood()(m)
        return torch.where(m[:, 0] > 5.0, torch.full_like(out, float("inf")), out)

    x0 = torch.zeros(3, 4)
    x0[1, 0] = 10.0
    with pytest.raises(InvalidArgumentError, match=r"x0 of chain 1 is inf"):
        MALA(lik, p.prior).run(3, n_chains=3, x0=x0, progress=False)


def test_diverging_sgld_raises_naming_the_step():
    """A step far beyond the stability limit of this Gaussian (h·λ_max ≫ 2): the chain
    explodes geometrically; SGLD stops at the first non-finite state instead of
    returning inf/NaN draws."""
    p = linear_gaussian_problem(n=4, n_shots=2, rows_per_shot=2, singular_values=(1.0, 4.0))
    sgld = SGLD(p.likelihood(), p.prior, step_size=10.0)
    with pytest.raises(TrainingDivergedError, match=r"SGLD diverged at step (\d+): chains \[0"):
        sgld.run(10_000, n_chains=2, x0=torch.zeros(1, 4), seed=0, progress=False)
    assert sgld.result is None
    # The same chain with a stable step runs to the end with finite draws.
    ok = SGLD(p.likelihood(), p.prior, step_size=1e-3).run(50, x0=torch.zeros(1, 4), seed=0)
    assert bool(torch.isfinite(ok.samples).all())


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(lr_final=-0.1), r"lr_final=-0.1 must lie in \(0, 1\]"),
        (dict(lr_final=0.0), r"lr_final=0.0 must lie in \(0, 1\]"),
        (dict(lr_final=2.0), r"lr_final=2.0 must lie in \(0, 1\]"),
        (dict(lr=1e-200, lr_final=1e-200), r"lr\*lr_final=1e-200\*1e-200 underflows to 0"),
    ],
)
def test_bad_final_learning_rate_refused_before_training(tmp_path, kw, message):
    vi = _vi()
    path = tmp_path / "vi.pt"
    with pytest.raises(InvalidArgumentError, match=message):
        vi.fit(3, lr_schedule="cosine", checkpoint_path=path, progress=False, **kw)
    assert vi.iteration == 0 and not path.exists()


def test_huge_sample_count_refused_before_allocating():
    flow = _flow()
    with pytest.raises(
        InvalidArgumentError, match=r"n=10000000000000 .*needs .*TiB \(.* bytes\) but only"
    ):
        flow.sample(10**13)
    with pytest.raises(InvalidArgumentError, match=r"n=10000000000000 posterior samples"):
        _vi().sample(10**13)
    assert flow.sample(3).shape == (3, 8)  # an ordinary size still works


@pytest.mark.parametrize("make", [lambda v: np.float32(v), lambda v: torch.tensor(v)])
def test_numpy_and_0d_tensor_scalars_accepted(make):
    """np.float32(0.5) and 0-d tensors behave exactly like the float they hold."""
    p = linear_gaussian_problem(n=4, n_shots=2, rows_per_shot=2, dtype=torch.float64)
    m = torch.randn(3, 4, dtype=torch.float64)
    lik = GaussianLikelihood(p.operator, p.data, sigma=make(0.5))
    assert type(lik.sigma) is float and lik.sigma == 0.5
    torch.testing.assert_close(lik(m), GaussianLikelihood(p.operator, p.data, sigma=0.5)(m))
    for cls in (MALA, SGLD):
        sampler = cls(lik, p.prior, step_size=make(0.25))
        assert type(sampler.step_size) is float and sampler.step_size == 0.25
        res = sampler.run(4, x0=torch.zeros(1, 4, dtype=torch.float64), seed=0, progress=False)
        assert bool(torch.isfinite(res.samples).all())
    res = map_estimate(
        lik,
        p.prior,
        x0=torch.zeros(4, dtype=torch.float64),
        method="adam",
        lr=make(0.5),
        iterations=3,
    )
    assert np.isfinite(res.objective)
    vi = _vi()
    vi.fit(2, batch_size=2, lr=make(0.5), lr_final=make(0.5), progress=False)
    assert vi.history["lr"][0] == float(np.float32(0.5))
    with pytest.raises(InvalidArgumentError, match="sigma=True must be a number, not a bool"):
        GaussianLikelihood(p.operator, p.data, sigma=True)
