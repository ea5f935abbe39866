"""Batched acoustic kernels: several models per Devito call (physics/acoustic/batched.py).

The battery (test_physics_battery.py) checks batch == single calls and no recompilation
for the default batched path; here: the dot test of the batched Born pair with a
remainder chunk, the batched nonlinear gradient against one call per model, and the
chunking under the wavefield budget.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checks import dot_test

from devito_uq.errors import InvalidArgumentError
from devito_uq.physics import AcousticModel, AcousticModeling, BornModeling, Survey
from devito_uq.physics.acoustic.batched import BatchedAcousticSolver
from devito_uq.physics.acoustic.solver import AcousticSolver
from devito_uq.physics.solver import cached_solvers, get_solver

SHAPE = (31, 25)


def _setup():
    model = AcousticModel(SHAPE, (10.0, 10.0), nbl=8, space_order=4, dtype=np.float64)
    survey = Survey.surface(model, nshots=2, nreceivers=7, t1=200.0, f0_hz=15.0, vmax=2.6)
    m = np.full(SHAPE, 0.25)
    m[:, 12:] = 0.16
    return model, survey, m


def _models(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.01 * torch.randn(n, *SHAPE, generator=g, dtype=torch.float64)


def test_batched_born_dot_test_with_a_remainder_chunk():
    """5 perturbations in chunks of 2 and 3 (a last single joins the chunk before):
    ⟨J δm, y⟩ = ⟨δm, Jᵀ y⟩."""
    model, survey, m = _setup()
    born = BornModeling(model, survey, m, batch_size=2)
    dm = _models(5, 0)
    with torch.no_grad():
        y = torch.randn(born(dm).shape, dtype=torch.float64)

    def adjoint(yy):
        x = torch.zeros_like(dm).requires_grad_(True)
        (g,) = torch.autograd.grad(born(x), x, yy)
        return g

    assert dot_test(born, adjoint, dm, y) < 1e-13
    assert len([s for s in cached_solvers(BatchedAcousticSolver) if s.model is model]) == 2


def test_batched_gradient_equals_one_call_per_model():
    model, survey, m = _setup()
    x = (torch.tensor(m) + _models(3, 1).abs()).requires_grad_(True)
    w = torch.randn(3, 2, survey.nt_data, 7, dtype=torch.float64)
    batched = AcousticModeling(model, survey, batch_size=3)
    singles = AcousticModeling(model, survey, batch_size=1)
    (gb,) = torch.autograd.grad(batched(x), x, w)
    (gs,) = torch.autograd.grad(singles(x), x, w)
    torch.testing.assert_close(gb, gs, rtol=0, atol=1e-12 * float(gs.abs().max()))


def test_batch_is_split_to_respect_the_wavefield_budget():
    """A budget of 3 wavefields: a batched saving forward solves one model per call
    (``B + 2`` wavefields per buffer never fit); without saving, one kernel."""
    model, survey, m = _setup()
    one = get_solver(AcousticSolver, model, np.float64).wavefield_nbytes(survey.nt)
    op = AcousticModeling(model, survey, batch_size=8, max_wavefield_bytes=3 * one)
    x = (torch.tensor(m) + _models(4, 2).abs()).requires_grad_(True)
    before = {s.batch: s.n_solves for s in cached_solvers(BatchedAcousticSolver)}
    op(x).sum().backward()
    after = {s.batch: s.n_solves for s in cached_solvers(BatchedAcousticSolver)}
    assert after == before
    with torch.no_grad():  # no wavefield saved: the whole batch in one kernel
        op(x)
    assert any(s.batch == 4 for s in cached_solvers(BatchedAcousticSolver))


def test_bad_batch_size_is_refused():
    model, survey, m = _setup()
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        BornModeling(model, survey, m, batch_size=0)
    with pytest.raises(InvalidArgumentError, match="batch >= 2; got 1"):
        BatchedAcousticSolver(model, np.float64, 1)


def test_chunks_cover_the_batch_and_never_leave_one_model_alone():
    from devito_uq.physics.batching import chunk_size, chunks

    for n in range(1, 30):
        for size in range(2, 10):  # size 1 is one call per model, never chunked
            cuts = chunks(n, size)
            assert [i for c in cuts for i in range(c.start, c.stop)] == list(range(n))
            if len(cuts) > 1:
                assert all(c.stop - c.start >= 2 for c in cuts)
    assert chunk_size(8, 5, None, 0) == 5  # no saved wavefield: the budget does not apply
    assert chunk_size(8, 20, 100, 700) == 4  # B + 2 wavefields, and one model more
    assert chunk_size(8, 20, 100, 100) == 1
