"""Batched acoustic kernels: several models per Devito call (physics/acoustic/batched.py).

The battery (test_physics_battery.py) checks batch == single calls and no recompilation
for the default batched path; here: the dot test of the batched Born pair with a
remainder chunk, the batched nonlinear gradient against one call per model, a short last
chunk padded up to the one kernel size (no kernel built for it), and the chunking under
the wavefield budget.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from checks import dot_test

from devito_uq.errors import InvalidArgumentError
from devito_uq.physics import AcousticModel, AcousticModeling, BornModeling, Survey
from devito_uq.physics.acoustic.batched import BatchedAcousticSolver
from devito_uq.physics.acoustic.solver import AcousticSolver
from devito_uq.physics.batching import OWN_KERNEL_WORK, chunk_size, plan
from devito_uq.physics.solver import cached_solvers, get_solver, total_compiles

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


def _kernels(model) -> set[int]:
    """Batch sizes of the batched solvers cached for ``model``'s geometry."""
    return {s.batch for s in cached_solvers(BatchedAcousticSolver) if s.model.key == model.key}


def test_batched_born_dot_test_with_a_remainder_chunk():
    """5 perturbations: two chunks of 2 and a last one solved alone:
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
    assert 2 in _kernels(model)


@pytest.mark.parametrize("born", [True, False])
def test_short_last_chunk_is_padded_into_the_one_kernel(born):
    """7 models with kernel size 4: a chunk of 4 and a last chunk of 3 padded to 4 (3 ≥
    0.75·4). Only the size-4 kernels are built (born + bornT, or forward with saving +
    gradient), and data and gradient equal one call per model."""
    model, survey, m = _setup()
    if born:
        x, make = _models(7, 3), lambda k: BornModeling(model, survey, m, batch_size=k)
    else:
        x, make = (
            torch.tensor(m) + _models(7, 4).abs(),
            lambda k: AcousticModeling(model, survey, batch_size=k),
        )
    singles = make(1)
    xs = x.clone().requires_grad_(True)
    ds = singles(xs)
    w = torch.randn(ds.shape, dtype=torch.float64)
    (gs,) = torch.autograd.grad(ds, xs, w)
    before, had = total_compiles(), _kernels(model)
    op = make(4)
    four = get_solver(BatchedAcousticSolver, model, np.float64, 4)
    solves = four.n_solves
    xb = x.clone().requires_grad_(True)
    db = op(xb)
    (gb,) = torch.autograd.grad(db, xb, w)
    assert _kernels(model) - had <= {4}
    assert total_compiles() - before <= 2  # one kernel per kind: none for the 3
    # both chunks of each of the 2 shots in the size-4 kernel, forward and backward
    # (a Born call solves the shared background too: 1 + 4 rows)
    assert four.n_solves - solves == (2 * 2 * 5 + 2 * 2 * 4 if born else 2 * 2 * 4 * 2)
    db, ds = db.detach(), ds.detach()
    torch.testing.assert_close(db, ds, rtol=0, atol=1e-12 * float(ds.abs().max()))
    torch.testing.assert_close(gb, gs, rtol=0, atol=1e-12 * float(gs.abs().max()))
    before = total_compiles()
    op(xb[:6]), op(xb[:3])  # a remainder of 2 (one call each) and a padded 3
    assert total_compiles() == before


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
    op = AcousticModeling(model, survey, batch_size=4, max_wavefield_bytes=3 * one)
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


def test_plan_covers_the_batch_with_one_kernel_size():
    for n in range(1, 30):
        for size in range(1, 10):
            calls = plan(n, size)
            assert [i for c, _ in calls for i in range(c.start, c.stop)] == list(range(n))
            assert {k for _, k in calls} <= {1, size}
            for c, k in calls:  # a batched call takes at most k, at least 0.75 k models
                assert k == 1 and c.stop - c.start == 1 or 0.75 * k <= c.stop - c.start <= k
    assert chunk_size(8, None, 0) == 8  # no saved wavefield: the budget does not apply
    assert chunk_size(8, 100, 700) == 5  # B + 2 wavefields per batched buffer
    assert chunk_size(8, 100, 100) == 1


def test_a_recurring_short_chunk_gets_its_own_kernel():
    """Batches of 2 under kernel size 8 are solved one model per call until
    OWN_KERNEL_WORK cell-steps were; then they get a kernel of 2 (counted per kind). A
    larger grid (more work per model) switches after fewer calls."""
    for work in (10**6, 10**7):
        seen = Counter()
        calls = OWN_KERNEL_WORK // (2 * work)
        singles = [(slice(0, 1), 1), (slice(1, 2), 1)]
        assert all(plan(2, 8, seen, "born", work) == singles for _ in range(calls))
        assert plan(2, 8, seen, "born", work) == [(slice(0, 2), 2)]
        assert plan(10, 8, seen, "born", work) == [(slice(0, 8), 8), (slice(8, 10), 2)]
        assert plan(2, 8, seen, "fwd", work)[0] == (slice(0, 1), 1)


def test_the_modules_switch_a_recurring_batch_to_its_own_kernel():
    """Once the solver's count says a batch of 3 came back often enough (set here), Born
    and the nonlinear gradient solve it in a kernel of 3, with the singles' results."""
    model, survey, m = _setup()
    base = get_solver(AcousticSolver, model, np.float64)
    dm, x = _models(3, 5), torch.tensor(m) + _models(3, 6).abs()
    for make, v in (
        (lambda k: BornModeling(model, survey, m, batch_size=k), dm),
        (lambda k: AcousticModeling(model, survey, batch_size=k), x),
    ):
        ref = make(1)(v)
        for kind in ("born", "fwd-save", "fwd"):
            base.small_chunks[(kind, 3)] = OWN_KERNEL_WORK
        three = get_solver(BatchedAcousticSolver, model, np.float64, 3)
        solves = three.n_solves
        with torch.no_grad():
            out = make(8)(v)
        assert three.n_solves > solves
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12 * float(ref.abs().max()))
