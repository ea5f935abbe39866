"""A failure on one MPI rank ends every rank promptly (no hang in a collective).

Each case launches ``mpiexec -n 2`` on tests/mpi_scripts/fault.py, where rank 1 fails
while rank 0 waits in ``Allreduce``; without the abort handler of
:func:`devito_uq.parallel.world` these runs hang until the timeout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "mpi_scripts" / "fault.py"


def _mpiexec() -> Path:
    exe = Path(sys.executable).parent / "mpiexec"
    if not exe.exists():
        pytest.skip(f"no mpiexec next to {sys.executable} (install the 'mpich' package)")
    return exe


def _run(mode: str, timeout: float = 90.0) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, OMP_NUM_THREADS="1", DEVITO_LOGGING="ERROR")
    start = time.perf_counter()
    proc = subprocess.run(
        [str(_mpiexec()), "-n", "2", sys.executable, str(SCRIPT), mode],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return proc, time.perf_counter() - start


@pytest.fixture(scope="module")
def clean_run_seconds() -> float:
    """Wall time of the same script without a fault (both ranks finish)."""
    proc, elapsed = _run("ok")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("finished") == 2
    return elapsed


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "mode, status, message",
    [
        ("raise", 1, "deliberate failure on rank 1"),
        ("exit", 3, r"sys.exit\(3\)"),
        ("between", 1, "between forward and backward"),
        ("badshot", 1, "shot 1 has a receiver outside the model"),
    ],
)
def test_failure_on_one_rank_ends_every_rank(mode, status, message, clean_run_seconds):
    proc, elapsed = _run(mode)
    out = proc.stdout + proc.stderr
    assert proc.returncode == status, out
    assert "rank 1 of 2" in proc.stderr and re.search(message, out), out
    assert "finished" not in proc.stdout  # rank 0 was stopped, not left to finish
    # Prompt: no longer than a clean run plus a few seconds (a hang runs to the timeout).
    assert elapsed < clean_run_seconds + 15.0, (
        f"took {elapsed:.1f} s vs {clean_run_seconds:.1f} s for a clean run"
    )


# --------------------------------------------------------------------------- VI checkpoints
RESUME = Path(__file__).parent / "mpi_scripts" / "vi_resume.py"


def _vi_run(ranks: int, ckpt: Path, result: Path, fail_at: int | None = None):
    env = dict(os.environ, OMP_NUM_THREADS="1", DEVITO_LOGGING="ERROR")
    cmd = [str(_mpiexec()), "-n", str(ranks), sys.executable, str(RESUME), str(ckpt)]
    cmd += [str(result), "6"] + ([] if fail_at is None else [str(fail_at)])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env)


def _result(path: Path) -> dict:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.mpi
@pytest.mark.timeout(600)
def test_vi_aborted_on_2_ranks_resumes_on_1_and_on_2(tmp_path):
    """6 VI iterations, checkpoint every iteration, on the acoustic problem of _problem.py.
    A 2-rank run whose rank 1 fails in iteration 4 ends every rank with its checkpoint at
    iteration 3 (written by rank 0 alone); resumed with 1 rank and with 2 ranks, it starts
    at iteration 3 and ends where the uninterrupted 2-rank run ends (2 ranks: bit for
    bit; 1 rank: up to the order of the shot sum)."""
    import numpy as np

    ref = _vi_run(2, tmp_path / "ref.pt", tmp_path / "ref.npz")
    assert ref.returncode == 0, ref.stdout + ref.stderr
    saves = [ln for ln in ref.stdout.splitlines() if "saved iteration" in ln]
    assert saves == [f"rank 0 saved iteration {i}" for i in range(1, 7)]  # rank 0 only

    ckpt = tmp_path / "run.pt"
    failed = _vi_run(2, ckpt, tmp_path / "never.npz", fail_at=3)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "deliberate failure on rank 1" in failed.stderr and "rank 1 of 2" in failed.stderr
    assert not (tmp_path / "never.npz").exists()
    shutil.copy(ckpt, tmp_path / "run2.pt")

    expected = _result(tmp_path / "ref.npz")
    for ranks, path in ((1, ckpt), (2, tmp_path / "run2.pt")):
        resumed = _vi_run(ranks, path, tmp_path / f"resumed{ranks}.npz")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "resumed_from=3" in resumed.stdout
        saves = [ln for ln in resumed.stdout.splitlines() if "saved iteration" in ln]
        assert saves == [f"rank 0 saved iteration {i}" for i in (4, 5, 6)]
        got = _result(tmp_path / f"resumed{ranks}.npz")
        assert len(got["loss"]) == 6
        np.testing.assert_array_equal(got["loss"][:3], expected["loss"][:3])  # from the file
        for key in ("mu", "log_s", "loss"):
            if ranks == 2:
                np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
            else:
                np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, err_msg=key)


class _MirrorComm:
    """Rank ``rank`` of 2 ranks holding the same values (``Allreduce`` doubles), or, with
    ``other_sees=0.0``, a second rank that contributes zeros (a file it cannot see)."""

    def __init__(self, rank: int, other_sees: float | None = None) -> None:
        self.rank, self.other_sees = rank, other_sees

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return 2

    def Allreduce(self, send, recv) -> None:
        recv[...] = send if self.other_sees is not None else 2 * send


def _mpi_vi(comm):
    import torch

    from devito_uq.flows import HINT, Flow
    from devito_uq.inference import GaussianLikelihood, VariationalPosterior
    from devito_uq.inference import linear_gaussian_problem as problem

    p = problem(n=4, n_shots=2, rows_per_shot=2)
    torch.manual_seed(0)
    flow = Flow(HINT(4, steps=1, hidden=4, memory_frugal=False), (4,))
    return VariationalPosterior(flow, GaussianLikelihood(p.operator, p.data, 0.5, comm=comm))


def test_only_rank_0_writes_the_vi_checkpoint(tmp_path):
    _mpi_vi(_MirrorComm(1)).fit(3, batch_size=2, checkpoint_path=tmp_path / "a.pt", progress=False)
    assert list(tmp_path.iterdir()) == []
    _mpi_vi(_MirrorComm(0)).fit(3, batch_size=2, checkpoint_path=tmp_path / "a.pt", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_checkpoint_seen_by_some_ranks_only_is_refused(tmp_path):
    from devito_uq.errors import CheckpointError

    path = tmp_path / "a.pt"
    _mpi_vi(_MirrorComm(0)).fit(3, batch_size=2, checkpoint_path=path, progress=False)
    before = path.read_bytes()
    vi = _mpi_vi(_MirrorComm(0, other_sees=0.0))
    with pytest.raises(CheckpointError, match=r"a\.pt' is visible on 1 of 2 MPI ranks"):
        vi.fit(3, batch_size=2, checkpoint_path=path, progress=False)
    assert path.read_bytes() == before and vi.iteration == 0
