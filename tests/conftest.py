"""Shared pytest configuration: quiet, single-threaded, reproducible."""

import os

# Set before devito/torch import: one OpenMP thread was the fastest set-up on the
# 2-core CI machine, and Devito's per-operator timing lines only clutter the log.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LANGUAGE", "C")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_thread_each_test():
    """A test that runs the CLI (configure_threads) must not leave more threads behind."""
    from devito_uq import threads

    yield
    threads.set_solver_threads(None)
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def cuda_or_skip():
    """Return the CUDA device, or skip with the reason."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine (CPU-only torch or no GPU)")
    return torch.device("cuda")
