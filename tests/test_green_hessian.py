"""The exact Gauss–Newton Hessian from receiver Green's functions (issue 20).

Reciprocity must give :class:`BornModeling`'s Jacobian to round-off — rows against the Born
operator on random perturbations, the Gram matrix against ``Jᵀ(MJv)`` through the Born
operator and its exact adjoint — on surveys that exercise every index path: data resampled
by windowed sinc onto another axis with a recording delay, dead traces, receivers that
differ between shots, several receiver blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devito_uq.errors import InsufficientMemoryError, InvalidArgumentError
from devito_uq.physics import AcousticModel, BornModeling, Survey
from devito_uq.physics.acoustic.green import born_gram, born_gram_cost, born_rows
from devito_uq.physics.resample import TimeAxis

SHAPE = (17, 11)
N = SHAPE[0] * SHAPE[1]


@pytest.fixture(scope="module")
def model():
    return AcousticModel(SHAPE, (10.0, 10.0), nbl=8, space_order=4, dtype=np.float64)


def background():
    v = np.full(SHAPE, 1.6)
    v[:, 5:] = 2.0
    v += 0.2 * np.exp(-((np.arange(SHAPE[0])[:, None] - 8) ** 2) / 8.0)
    return torch.tensor(1.0 / v**2)


def make_survey(model, per_shot=False, dead=False):
    """Three shots; data on a 3 ms axis from 20 ms (sinc resampling, not point sampling)."""
    src = np.stack([np.array([30.0, 80.0, 140.0]), np.full(3, 10.0)], 1)
    rec = np.stack([np.linspace(5.0, 155.0, 7), np.full(7, 5.0)], 1)
    recs = rec
    if per_shot:  # shot 1 has 5 receivers of its own, shot 2 shares four with shot 0
        recs = [rec, np.stack([np.linspace(12.0, 148.0, 5), np.full(5, 15.0)], 1), rec[1:5]]
    mask = None
    if dead:
        mask = np.ones((3, 7), dtype=bool)
        mask[0, 2] = mask[1, 4] = mask[2, 0] = False
    return Survey.for_data(
        model, src, recs, TimeAxis(20.0, 3.0, 60), vmax=2.5, f0_hz=15.0, trace_mask=mask
    )


@pytest.mark.parametrize("per_shot,dead", [(False, False), (True, True)])
def test_rows_are_the_born_operator(model, per_shot, dead):
    survey = make_survey(model, per_shot, dead)
    assert survey.resampling() is not None
    m0 = background()
    dm = torch.randn(4, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        born = BornModeling(model, survey, m0)(dm)  # [4, shot, time, receiver]
    for s in range(3):
        rows = born_rows(model, survey, m0, s)  # [receiver, time, N]
        assert rows.shape == (survey.nreceivers[s], survey.nt_data, N)
        got = torch.einsum("rtn,bn->btr", rows, dm.flatten(1))
        want = born[:, s, :, : survey.nreceivers[s]]
        assert float((got - want).norm() / want.norm()) < 1e-10
        if dead:
            assert torch.all(rows[~torch.from_numpy(survey.mask([s])[0])] == 0)


@pytest.mark.parametrize("per_shot,dead,block", [(False, False, 8), (True, True, 2)])
def test_gram_is_jt_m_j_through_the_born_operator_and_its_adjoint(model, per_shot, dead, block):
    survey = make_survey(model, per_shot, dead)
    m0 = background()
    gram = born_gram(model, survey, m0, receiver_block=block)
    assert gram.shape == (N, N) and torch.allclose(
        gram, gram.T, rtol=0, atol=1e-12 * gram.abs().max()
    )
    v = torch.randn(3, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v.requires_grad_(True)
    J = BornModeling(model, survey, m0)
    mask = torch.from_numpy(survey.mask())[:, None, :]
    (0.5 * (J(v) * mask).pow(2).sum()).backward()  # v.grad = Jᵀ M J v, per vector
    want = v.grad.flatten(1)
    got = v.detach().flatten(1) @ gram
    assert float((got - want).norm() / want.norm()) < 1e-10
    # a shot subset is the sum of its shots
    parts = sum(born_gram(model, survey, m0, shots=[s]) for s in range(3))
    assert float((parts - gram).norm() / gram.norm()) < 1e-12


def test_cost_counts_solves_rows_and_bytes(model):
    survey = make_survey(model, per_shot=True)
    cost = born_gram_cost(model, survey)
    # 7 + 5 receiver positions (shot 2's four are shot 0's), 3 backgrounds
    assert cost["receiver_positions"] == 12 and cost["wave_solves"] == 15
    assert cost["rows"] == (7 + 5 + 4) * 60
    assert cost["gram_flops"] == cost["rows"] * N * (N + 1024)
    assert cost["bytes"] >= 8 * N * N
    assert born_gram_cost(model, survey, shots=[2])["wave_solves"] == 1 + 4


def test_bad_input_is_refused_before_any_solve(model, monkeypatch):
    survey = make_survey(model)
    with pytest.raises(InvalidArgumentError, match="receiver_block"):
        born_gram(model, survey, background(), receiver_block=0)
    with pytest.raises(InvalidArgumentError, match="AcousticModel"):
        born_rows(object(), survey, background(), 0)
    monkeypatch.setattr("devito_uq.validation.available_memory", lambda device="cpu": 1000)
    with pytest.raises(InsufficientMemoryError, match="Gauss–Newton matrix"):
        born_gram(model, survey, background())
