"""GaussianLikelihood and sigma_from_snr (devito_uq.inference.likelihood)."""

import itertools
import math

import numpy as np
import pytest
import torch
from checks import slopes, taylor_test

from devito_uq.errors import InvalidArgumentError, InvalidShapeError
from devito_uq.inference import (
    GaussianLikelihood,
    MatrixOperator,
    RankSummedLikelihood,
    linear_gaussian_problem,
    sigma_from_snr,
)


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
    with pytest.raises(InvalidArgumentError, match=r"sigma=-1.0 must be finite and positive"):
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
    with pytest.raises(InvalidArgumentError, match=r"shot_batch=9 must be an integer <= 4"):
        _problem().likelihood(shot_batch=9)


def test_likelihood_error_operator_without_shots():
    with pytest.raises(InvalidArgumentError, match="accepts shots=, but Identity does not"):
        GaussianLikelihood(torch.nn.Identity(), torch.ones(4, 3), sigma=1.0, shot_batch=2)


def test_likelihood_error_output_shape():
    lik = GaussianLikelihood(torch.nn.Identity(), torch.ones(4), sigma=1.0)
    with pytest.raises(InvalidShapeError, match=r"operator output \(2, 5\) does not match data"):
        lik(torch.ones(2, 5))


def test_trace_mask_drops_dead_samples_from_misfit_gradient_and_snr():
    """Masked samples count nowhere: the misfit equals the closed form over live rows only,
    their garbage data cannot move the gradient, and snr_db uses live power only."""
    p = _problem()
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[1, 2] = mask[3, 0] = False  # two dead "traces"
    data = p.data.clone()
    data[~mask] = 1e3  # garbage where nothing was recorded
    lik = GaussianLikelihood(p.operator, data, sigma=p.sigma, mask=mask)
    m = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    a = p.operator.matrix.reshape(12, 6)[mask.reshape(12)]
    expected = 0.5 / p.sigma**2 * ((p.data[mask] - m @ a.T) ** 2).sum(1)
    torch.testing.assert_close(lik(m), expected)
    (g,) = torch.autograd.grad(lik(m).sum(), m)
    (g_ref,) = torch.autograd.grad(expected.sum(), m)
    torch.testing.assert_close(g, g_ref)
    # Shot subsets take their rows of the mask; snr over live samples only.
    sub = GaussianLikelihood(p.operator, data, sigma=p.sigma, mask=mask, shot_batch=2)
    r = sub.residual(m.detach(), torch.tensor([1, 3]))
    assert r[:, 0, 2].abs().max() == 0 and r[:, 1, 0].abs().max() == 0
    power = float((p.data[mask].double() ** 2).mean())
    assert math.isclose(sigma_from_snr(data, 0.0, mask), math.sqrt(power), rel_tol=1e-12)
    # A data-shaped mask broadcast over a [shot, time, receiver]-like middle axis works too.
    lik3 = GaussianLikelihood(
        torch.nn.Identity(),
        torch.ones(2, 4, 3),
        sigma=1.0,
        mask=torch.tensor([[True, False, True]] * 2)[:, None, :],
    )
    assert float(lik3(torch.zeros(1, 2, 4, 3))) == 0.5 * 2 * 4 * 2


def test_trace_mask_errors():
    p = _problem()
    with pytest.raises(InvalidArgumentError, match="mask must be a bool torch.Tensor.*float32"):
        GaussianLikelihood(p.operator, p.data, sigma=1.0, mask=torch.ones(4, 3))
    with pytest.raises(InvalidShapeError, match=r"mask of shape \[5, 3\] does not broadcast"):
        GaussianLikelihood(p.operator, p.data, sigma=1.0, mask=torch.ones(5, 3, dtype=torch.bool))
    with pytest.raises(InvalidArgumentError, match="marks every sample dead"):
        GaussianLikelihood(p.operator, p.data, sigma=1.0, mask=torch.zeros(4, 3, dtype=torch.bool))


# --------------------------------------------------------------- RankSummedLikelihood
class _MirrorComm:
    """Rank 0 of 2 ranks holding the same values: every Allreduce doubles."""

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 2

    def Allreduce(self, send, recv) -> None:
        recv[...] = send * 2


def _value_and_grad(lik, m0):
    m = m0.clone().requires_grad_(True)
    value = lik(m)
    value.sum().backward()
    return value.detach(), m.grad


def test_rank_summed_likelihood_serial_is_the_local_one():
    local = _problem().likelihood()
    m0 = torch.randn(3, 6, dtype=torch.float64)
    lik = RankSummedLikelihood(local, None)
    assert lik.comm is None
    value, grad = _value_and_grad(lik, m0)
    ref_value, ref_grad = _value_and_grad(local, m0)
    assert torch.equal(value, ref_value) and torch.equal(grad, ref_grad)
    # Summed over two ranks holding the same shots: twice the value and the gradient.
    value, grad = _value_and_grad(RankSummedLikelihood(local, _MirrorComm()), m0)
    torch.testing.assert_close(value, 2 * ref_value, rtol=1e-15, atol=0)
    torch.testing.assert_close(grad, 2 * ref_grad, rtol=1e-15, atol=0)


@pytest.mark.parametrize("comm", [None, _MirrorComm()], ids=["serial", "two-ranks"])
def test_rank_summed_likelihood_without_shots_is_a_zero_on_m(comm):
    """A rank without shots (local=None) contributes zeros that still depend on m, so
    that it joins the collective gradient sum in backward."""
    m0 = torch.randn(3, 6, dtype=torch.float64)
    value, grad = _value_and_grad(RankSummedLikelihood(None, comm), m0)
    assert value.shape == (3,) and not value.any()
    assert grad is not None and grad.shape == m0.shape and not grad.any()


def _own_shots(p, shots, comm=None, shot_batch=2, seed=3):
    """A RankSummedLikelihood whose local likelihood holds only the global ``shots``."""
    a = p.operator.matrix[shots]
    op = MatrixOperator(a.reshape(-1, a.shape[-1]), len(shots))
    local = GaussianLikelihood(op, p.data[shots], sigma=p.sigma)
    n = p.operator.matrix.shape[0]
    return RankSummedLikelihood(local, comm, shots, n, shot_batch=shot_batch, seed=seed)


def test_rank_summed_shot_subsets_are_unbiased_by_enumeration():
    """Forcing each of the C(4, 2) subsets in turn, the mean of the scaled subset value
    and of its gradient equals the all-shot value and gradient exactly; ``full=True``
    is the all-shot one."""
    p = _problem()
    m0 = torch.randn(3, 6, dtype=torch.float64)
    full_value, full_grad = _value_and_grad(p.likelihood(), m0)
    lik = _own_shots(p, [0, 1, 2, 3])
    assert lik.stochastic
    values, grads = [], []
    for s in itertools.combinations(range(4), 2):
        lik.draw_shots = lambda s=s: torch.tensor(s)
        v, g = _value_and_grad(lik, m0)
        assert not torch.allclose(v, full_value)  # one subset alone is not the answer
        values.append(v)
        grads.append(g)
    torch.testing.assert_close(torch.stack(values).mean(0), full_value, rtol=1e-13, atol=0)
    torch.testing.assert_close(torch.stack(grads).mean(0), full_grad, rtol=1e-12, atol=1e-12)
    m = m0.clone().requires_grad_(True)
    torch.testing.assert_close(lik(m, full=True), full_value, rtol=1e-14, atol=0)


def test_rank_summed_subsets_map_global_shots_to_own_ones():
    """Two "ranks" holding global shots [3, 0] and [1, 2] (out of order) draw the same
    subsets from one seed; their sum is the all-shot holder's value, call after call, and
    restoring the generator state repeats the draws."""
    p = _problem()
    m = torch.randn(2, 6, dtype=torch.float64)
    whole = _own_shots(p, [0, 1, 2, 3])
    parts = [_own_shots(p, [3, 0]), _own_shots(p, [1, 2])]
    state = whole.get_rng_state()
    first = [whole(m) for _ in range(5)]
    for v in first:
        torch.testing.assert_close(parts[0](m) + parts[1](m), v, rtol=1e-14, atol=0)
    whole.set_rng_state(state)
    assert all(torch.equal(whole(m), v) for v in first)


def test_rank_summed_shot_batch_errors():
    p = _problem()
    with pytest.raises(InvalidArgumentError, match="shot_batch=5 must be an integer <= 4"):
        _own_shots(p, [0, 1, 2, 3], shot_batch=5)
    with pytest.raises(InvalidArgumentError, match="shot_batch=0 must be an integer >= 1"):
        _own_shots(p, [0, 1], shot_batch=0)
    with pytest.raises(InvalidArgumentError, match="accepts shots="):
        RankSummedLikelihood(torch.nn.Identity(), None, [0], 2, shot_batch=1)
    # All shots per call: not stochastic, the local likelihood itself.
    assert not _own_shots(p, [0, 1, 2, 3], shot_batch=4).stochastic
