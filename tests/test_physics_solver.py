"""The shared solver protocol: lazy Devito import, registry, counters, wavefield owners."""

import subprocess
import sys
import textwrap

import numpy as np
import torch

from devito_uq.physics import (
    AcousticModel,
    AcousticModeling,
    AcousticSolver,
    PlaneWaveModeling,
    Survey,
    get_solver,
    total_compiles,
)
from devito_uq.physics.solver import Solver, Wavefield, new_owner


def test_importing_physics_does_not_import_devito():
    code = textwrap.dedent(
        """
        import sys
        import devito_uq.physics as P
        model = P.AcousticModel((11, 11), (10.0, 10.0), nbl=2)
        survey = P.Survey.surface(model, 1, 3, t1=50.0, f0_hz=10.0, vmax=2.0)
        P.AcousticModeling(model, survey)
        P.PlaneWaveModeling([0.1], nz=10, dz=2.0)
        P.bandpass_wavelet(101, 0.5, half_length=10.0)
        P.ricker(survey.time, 10.0)
        assert "devito" not in sys.modules, "importing or configuring physics loaded Devito"
        import torch
        P.AcousticModeling(model, survey)(torch.full((11, 11), 0.25))
        assert "devito" in sys.modules, "a solve must load Devito"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_registry_shares_solvers_of_equal_geometry():
    a = AcousticModel((13, 11), (10.0, 10.0), nbl=3, space_order=2, dtype=np.float64)
    b = AcousticModel((13, 11), (10.0, 10.0), nbl=3, space_order=2, dtype=np.float64)
    c = AcousticModel((13, 11), (10.0, 10.0), nbl=4, space_order=2, dtype=np.float64)
    assert get_solver(AcousticSolver, a) is get_solver(AcousticSolver, b)
    assert get_solver(AcousticSolver, a) is not get_solver(AcousticSolver, c)
    assert get_solver(AcousticSolver, a) is not get_solver(AcousticSolver, a, np.float32)


def test_counters_and_no_recompile_on_both_physics():
    model = AcousticModel((13, 11), (10.0, 10.0), nbl=3, space_order=2, dtype=np.float64)
    survey = Survey.surface(model, nshots=2, nreceivers=4, t1=60.0, f0_hz=20.0, vmax=2.5)
    F = AcousticModeling(model, survey)
    w = np.exp(-(((np.arange(81) - 20) / 5.0) ** 2))
    pw = PlaneWaveModeling([0.0, 0.1], nz=12, dz=2.0, t1=20.0, dt=0.25, wavelet=w, nbl=4)
    m = torch.full((13, 11), 0.25, dtype=torch.float64, requires_grad=True)
    mz = torch.full((3, 12), 0.25, dtype=torch.float64, requires_grad=True)
    F(m).sum().backward()
    pw(mz).sum().backward()
    solver = get_solver(AcousticSolver, model)
    start, compiles, solves = total_compiles(), solver.n_compiles, solver.n_solves
    F(m).sum().backward()
    pw(mz).sum().backward()
    assert total_compiles() == start and solver.n_compiles == compiles
    assert solver.n_solves - solves == 2 * 2  # forward + adjoint per shot
    assert pw.n_solves == 2 * 2 * (3 * 2)  # two calls × (forward + adjoint) × 3 models × 2 p


def test_wavefield_owner_is_compared_by_identity():
    model = AcousticModel((13, 11), (10.0, 10.0), nbl=3, space_order=2, dtype=np.float64)
    solver = get_solver(AcousticSolver, model)
    solver.release_wavefields()
    owner = new_owner()
    buf = solver.acquire_wavefield(20, 1, owner=owner)
    assert solver.find_wavefield(owner) is buf
    assert solver.find_wavefield(new_owner()) is None  # an equal-looking token is not the owner
    buf.owner = None
    assert solver.acquire_wavefield(20, 1, owner=new_owner()) is buf  # free buffers are reused


class _ToySolver(Solver):
    """A solver of no physics: the pool of the Solver base alone (no Devito)."""

    @classmethod
    def cache_key(cls, *args):
        return ()

    def wavefield_nbytes(self, nt, factor=1):
        return 100 * nt // factor

    def _new_buffer(self, nt, factor):
        return Wavefield(object(), nt, factor, None, self.wavefield_nbytes(nt, factor))


def test_any_solver_gets_the_wavefield_pool():
    solver = _ToySolver(max_wavefield_bytes=2500)
    assert solver.wavefield_capacity(10) == 2
    a, b = new_owner(), new_owner()
    buf_a = solver.acquire_wavefield(10, owner=a)
    buf_b = solver.acquire_wavefield(10, owner=b)
    assert solver.find_wavefield(a) is buf_a and solver.find_wavefield(b) is buf_b
    # Over budget: the least recently used buffer of that size is taken from its owner.
    assert solver.acquire_wavefield(10, owner=new_owner()) is buf_a
    assert solver.find_wavefield(a) is None
    assert solver.release_owners([b]) == 1 and solver.find_wavefield(b) is None
    solver.release_wavefields()
    assert solver.find_wavefield(buf_a.owner) is None
