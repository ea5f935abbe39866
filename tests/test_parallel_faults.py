"""A failure on one MPI rank ends every rank promptly (no hang in a collective).

Each case launches ``mpiexec -n 2`` on tests/mpi_scripts/fault.py, where rank 1 fails
while rank 0 waits in ``Allreduce``; without the abort handler of
:func:`devito_uq.parallel.world` these runs hang until the timeout.
"""

from __future__ import annotations

import os
import re
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
