"""Bounded memory, size checks before allocating, strict inputs, private JIT cache."""

import gc
import os
import stat

import numpy as np
import pytest
import torch

from devito_uq.errors import InsufficientMemoryError, InvalidArgumentError, InvalidSurveyError
from devito_uq.physics import (
    AcousticModel,
    AcousticModeling,
    AcousticSolver,
    BornModeling,
    PlaneWaveModeling,
    Survey,
    jitcache,
    total_compiles,
)
from devito_uq.physics.planewave.modeling import MAX_BATCH_SOLVERS
from devito_uq.physics.planewave.solver import PlaneWaveSolver
from devito_uq.physics.solver import cached_solvers, get_solver
from devito_uq.validation import check_allocation


@pytest.fixture(scope="module")
def small():
    model = AcousticModel((21, 17), (7.0, 7.0), nbl=3, space_order=2, dtype=np.float64)
    survey = Survey.surface(model, nshots=2, nreceivers=3, t1=40.0, f0_hz=20.0, vmax=2.2)
    return model, survey, np.full(model.shape, 0.25)


def _pooled(model):
    return sum(1 for b in get_solver(AcousticSolver, model)._pool.values() if b.owner is not None)


# --------------------------------------------------------------------- memory
def test_born_modeling_releases_its_wavefields_when_collected(small):
    model, survey, m0 = small
    get_solver(AcousticSolver, model).release_wavefields()
    J = BornModeling(model, survey, m0)
    dm = torch.zeros(model.shape, dtype=torch.float64, requires_grad=True)
    J(dm).sum().backward()
    assert _pooled(model) == 2  # one background wavefield per shot, pinned for reuse
    del J, dm
    gc.collect()
    assert _pooled(model) == 0


def test_born_pool_is_capped_by_max_wavefield_bytes(small):
    model, survey, m0 = small
    solver = get_solver(AcousticSolver, model)
    solver.release_wavefields()
    one = solver.wavefield_nbytes(survey.nt)
    keep = []
    for _ in range(5):  # alive modules: only the LRU cap bounds the pool
        J = BornModeling(model, survey, m0, max_wavefield_bytes=3 * one)
        dm = torch.zeros(model.shape, dtype=torch.float64, requires_grad=True)
        J(dm).sum().backward()
        keep.append(J)
    assert sum(b.nbytes for b in solver._pool.values()) <= 3 * one


def test_planewave_keeps_a_bounded_number_of_batch_solvers():
    F = PlaneWaveModeling([0.0, 0.1], nz=20, dz=5.0, t1=20.0, dt=0.5, wavelet=np.ones(41))
    for b in range(1, MAX_BATCH_SOLVERS + 3):
        F(torch.full((b, 20), 0.25, dtype=torch.float64))
    assert len(F._solvers) == MAX_BATCH_SOLVERS
    assert len(cached_solvers(PlaneWaveSolver)) <= PlaneWaveSolver.max_cached
    assert (MAX_BATCH_SOLVERS + 2, "float64") in F._solvers and (1, "float64") not in F._solvers


# ----------------------------------------------------------------- size checks
def test_huge_model_refused_before_allocating():
    start = total_compiles()
    model = AcousticModel((100000, 100000), (10.0, 10.0), nbl=10)
    src, rec = [[500.0, 20.0]], [[100.0, 10.0]]
    survey = Survey(src, rec, t1=100.0, dt=1.0, f0_hz=10.0)
    with pytest.raises(InsufficientMemoryError, match=r"padded grid \[100020, 100020\].*needs"):
        AcousticModeling(model, survey)
    with pytest.raises(InsufficientMemoryError, match="needs"):
        BornModeling(model, survey, np.ones((3, 3)))  # refused before m0 is looked at
    assert total_compiles() == start


def test_huge_t1_refused_before_allocating():
    with pytest.raises(InsufficientMemoryError, match=r"a time axis of 1e\+15 steps .*t1=1e\+15"):
        Survey([[0.0, 0.0]], [[1.0, 0.0]], t1=1e15, dt=1.0, f0_hz=10.0)


def test_check_allocation_names_the_size():
    check_allocation("x", 10, available=100)
    with pytest.raises(InsufficientMemoryError, match=r"x needs 1.0 KiB \(1024 bytes\)"):
        check_allocation("x", 1024, available=100)
    assert issubclass(InsufficientMemoryError, MemoryError)


# ------------------------------------------------------------------ bad input
def test_ricker_above_nyquist_refused():
    with pytest.raises(InvalidSurveyError, match="f0_hz=130.*Nyquist frequency 125 Hz"):
        Survey([[0.0, 0.0]], [[1.0, 0.0]], t1=100.0, dt=4.0, f0_hz=130.0)
    with pytest.raises(InvalidSurveyError, match="Nyquist frequency 125 Hz"):
        Survey([[0.0, 0.0]], [[1.0, 0.0]], t1=100.0, dt=4.0, f0_hz=125.0)  # at Nyquist


@pytest.mark.parametrize("shots", [True, [0.9], 0.9, [1.0], "0", [True, 0]])
def test_shot_selection_must_be_integers(small, shots):
    _, survey, _ = small
    with pytest.raises(InvalidSurveyError, match="must be"):
        survey.select(shots)


@pytest.mark.parametrize("shape", [(41.7, 41), (41.0, 41), (True, 41), ("41", 41)])
def test_float_shape_refused_not_truncated(shape):
    with pytest.raises(InvalidArgumentError, match=r"shape\[0\]=.* must be an integer"):
        AcousticModel(shape, (10.0, 10.0))


# ------------------------------------------------------------------- JIT cache
def test_jit_dir_is_private_and_used_by_devito(tmp_path, monkeypatch):
    target = tmp_path / "jit"
    monkeypatch.setenv("DEVITO_UQ_JIT_DIR", str(target))
    jitcache.install()
    from devito import configuration

    assert configuration["compiler"].get_jit_dir() == target
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    assert configuration["compiler"].get_codepy_dir() == target / "codepy"


def test_jit_dir_group_writable_refused(tmp_path):
    d = tmp_path / "jit"
    d.mkdir(mode=0o700)
    os.chmod(d, 0o777)
    with pytest.raises(jitcache.JitCacheError, match="writable by group or others"):
        jitcache.secure_jit_dir(d)


def test_jit_dir_symlink_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(jitcache.JitCacheError, match="is not a directory"):
        jitcache.secure_jit_dir(tmp_path / "link")


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="chown needs root")
def test_jit_dir_foreign_owner_refused(tmp_path):
    d = tmp_path / "jit"
    d.mkdir(mode=0o700)
    os.chown(d, 4242, -1)
    with pytest.raises(jitcache.JitCacheError, match="owned by uid 4242, not by you"):
        jitcache.secure_jit_dir(d)


def test_huge_saved_wavefield_and_planewave_t1_refused(small):
    model, _, _ = small
    solver = get_solver(AcousticSolver, model)
    before = dict(solver._pool)
    with pytest.raises(InsufficientMemoryError, match=r"saved wavefield of 1000000000 time"):
        solver.acquire_wavefield(10**9)
    assert solver._pool == before
    with pytest.raises(InsufficientMemoryError, match=r"a time axis of 2e\+14 steps \(t1=1e\+14"):
        PlaneWaveModeling([0.0, 0.1], nz=20, dz=5.0, t1=1e14, dt=0.5)
