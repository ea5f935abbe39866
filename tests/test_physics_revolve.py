"""Optimal (revolve) checkpointing: the schedule and the checkpointed acoustic gradient.

The schedule's forward steps must equal Griewank's binomial optimum (closed form),
checked against a small dynamic programme; the checkpointed gradient must equal the
full-storage one, and engage by itself when one wavefield exceeds the byte budget.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch

from devito_uq.errors import InvalidArgumentError
from devito_uq.physics import AcousticModel, AcousticModeling, BornModeling, Survey
from devito_uq.physics.acoustic.solver import AcousticSolver
from devito_uq.physics.revolve import forward_steps, optimal_forward_steps, schedule
from devito_uq.physics.solver import get_solver


@lru_cache(None)
def _dp(length: int, free: int) -> int:
    """Fewest forward steps to deliver x_length … x_0 from a held x_0, ``free`` more slots."""
    if length == 0:
        return 0
    if free == 0:
        return length * (length + 1) // 2
    return min(j + _dp(length - j, free - 1) + _dp(j - 1, free) for j in range(1, length + 1))


def _replay(actions: list[tuple], snaps: int) -> list[int]:
    """Run a schedule on indices; return the adjoint steps in order (asserting validity)."""
    slots: dict[int, int] = {}
    work, done = 0, []
    for act in actions:
        if act[0] == "takeshot":
            assert work == act[2]
            slots[act[1]] = act[2]
        elif act[0] == "restore":
            assert slots[act[1]] == act[2]
            work = act[2]
        elif act[0] == "advance":
            assert work == act[1] < act[2]
            work = act[2]
        else:
            assert work == act[1] - 1
            done.append(act[1])
    assert len(slots) <= snaps
    return done


@pytest.mark.parametrize("snaps", [1, 2, 3, 5])
def test_closed_form_is_the_dynamic_programme_optimum(snaps):
    for steps in range(1, 40):
        assert optimal_forward_steps(steps, snaps) == _dp(steps - 1, snaps - 1)


@pytest.mark.parametrize(
    ("steps", "snaps"), [(1, 1), (7, 1), (30, 2), (100, 4), (128, 10), (500, 20), (64, 80)]
)
def test_schedule_is_valid_and_optimal(steps, snaps):
    actions = schedule(steps, snaps)
    assert _replay(actions, snaps) == list(range(steps, 0, -1))
    assert forward_steps(actions) == optimal_forward_steps(steps, min(snaps, steps))


def test_bad_schedule_arguments_are_refused():
    with pytest.raises(InvalidArgumentError, match="snaps >= 1; got 5, 0"):
        schedule(5, 0)


def _setup():
    shape = (41, 41)
    model = AcousticModel(shape, (10.0, 10.0), nbl=10, space_order=4, dtype=np.float64)
    survey = Survey.surface(model, nshots=2, nreceivers=11, t1=300.0, f0_hz=15.0, vmax=2.6)
    m = np.full(shape, 0.25)
    m[:, 20:] = 0.16
    return model, survey, m


@pytest.mark.parametrize("snaps", [1, 4, 17])
def test_checkpointed_gradient_equals_full_storage(snaps):
    model, survey, m = _setup()
    solver = get_solver(AcousticSolver, model, np.float64)
    r = np.random.default_rng(1).standard_normal((survey.nt, 11))
    shot = survey.shot(0)
    full = solver.jacobian_adjoint(m, shot, survey.dt, r)
    ck = solver.jacobian_adjoint_checkpointed(m, shot, survey.dt, r, snaps)
    np.testing.assert_allclose(ck, full, rtol=0, atol=1e-13 * np.abs(full).max())
    steps = survey.nt - 1
    assert solver.last_checkpointing == (steps, snaps, optimal_forward_steps(steps, snaps))


def test_checkpointing_engages_by_itself_over_the_budget():
    """A budget below one wavefield: the gradients (nonlinear and Born) are checkpointed
    with the snapshots that fit, and equal the full-storage ones."""
    model, survey, m = _setup()
    solver = get_solver(AcousticSolver, model, np.float64)
    budget = 6 * solver.state_nbytes()
    assert solver.wavefield_nbytes(survey.nt) > budget
    x = torch.tensor(m).requires_grad_(True)
    w = torch.randn(
        2, survey.nt_data, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    for make in (
        lambda b: AcousticModeling(model, survey, max_wavefield_bytes=b),
        lambda b: BornModeling(model, survey, m, max_wavefield_bytes=b),
    ):
        (g_full,) = torch.autograd.grad(make(2**30)(x), x, w)
        solver.last_checkpointing = None
        (g_ck,) = torch.autograd.grad(make(budget)(x), x, w)
        assert solver.last_checkpointing[1] == 6
        torch.testing.assert_close(g_ck, g_full, rtol=0, atol=1e-13 * float(g_full.abs().max()))
