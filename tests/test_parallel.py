"""Tests of devito_uq.parallel and of GaussianLikelihood(comm=...).

In-process tests run "ranks" as threads that share a tiny communicator with
mpi4py's buffer interface (``Allreduce(send, recv)`` sums); the tests marked
``mpi`` launch real ranks with the venv's ``mpiexec`` on a small Devito problem.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cuda_or_skip

from devito_uq.errors import InvalidArgumentError, InvalidDtypeError
from devito_uq.inference import GaussianLikelihood
from devito_uq.parallel import (
    ShotDistribution,
    allreduce_sum,
    allreduce_value,
    my_shots,
    rank_and_size,
    share_gradient,
)

SCRIPTS = Path(__file__).parent / "mpi_scripts"


# ---------------------------------------------------------------- thread "ranks"
class _Group:
    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=30)
        self.slots: list = [None] * size


class ThreadComm:
    """One rank of a group of threads: Get_rank, Get_size and a summing Allreduce."""

    def __init__(self, group: _Group, rank: int) -> None:
        self.group, self.rank = group, rank
        self.calls = 0

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.group.size

    def Allreduce(self, send: np.ndarray, recv: np.ndarray) -> None:
        g = self.group
        self.calls += 1
        g.slots[self.rank] = np.array(send, copy=True)
        g.barrier.wait()
        recv[...] = sum(g.slots[1:], g.slots[0].copy())  # rank order: same on every rank
        g.barrier.wait()


def run_ranks(size: int, fn):
    """Run ``fn(comm)`` on ``size`` thread ranks; return the results in rank order."""
    group = _Group(size)
    results: list = [None] * size
    errors: list = []

    def target(rank: int) -> None:
        try:
            results[rank] = fn(ThreadComm(group, rank))
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


class RankOnly:
    """A communicator stand-in that only knows its rank (enough for shot layouts)."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.size

    def Allreduce(self, send, recv) -> None:  # pragma: no cover - never called
        raise AssertionError("layouts need no communication")


# ------------------------------------------------------------------ shot layouts
@pytest.mark.parametrize("layout", ["cyclic", "block"])
def test_layout_partitions_shots(layout):
    for size in range(1, 6):
        for n in range(0, 10):
            parts = [my_shots(n, RankOnly(r, size), layout) for r in range(size)]
            flat = sorted(s for p in parts for s in p)
            assert flat == list(range(n)), (layout, size, n)
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
            dist = ShotDistribution(n, RankOnly(0, size), layout)
            assert dist.counts == [len(p) for p in parts]
            for r, p in enumerate(parts):
                assert all(dist.owner(s) == r for s in p)


def test_layout_examples():
    assert [my_shots(5, RankOnly(r, 2)) for r in range(2)] == [[0, 2, 4], [1, 3]]
    assert [my_shots(5, RankOnly(r, 2), "block") for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [my_shots(2, RankOnly(r, 3)) for r in range(3)] == [[0], [1], []]


def test_serial_fallback():
    assert my_shots(4) == [0, 1, 2, 3]
    assert rank_and_size(None) == (0, 1)
    x = torch.randn(3, requires_grad=True)
    assert share_gradient(x, None) is x
    assert allreduce_value(x, None) is x
    s = allreduce_sum(x, None)
    assert torch.equal(s, x.detach()) and not s.requires_grad
    one = RankOnly(0, 1)  # size 1: serial path, Allreduce never called
    assert share_gradient(x, one) is x and torch.equal(allreduce_sum(x, one), x.detach())


def test_parallel_import_is_lazy():
    code = "import sys, devito_uq.parallel; print('mpi4py' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "False"


def test_errors():
    with pytest.raises(InvalidArgumentError, match="comm must be an mpi4py communicator.*int"):
        my_shots(4, comm=3)
    with pytest.raises(InvalidArgumentError, match="layout='zigzag'"):
        my_shots(4, layout="zigzag")
    with pytest.raises(InvalidArgumentError, match="nshots=-1"):
        my_shots(-1)
    with pytest.raises(InvalidArgumentError, match="shot 7 is out of range for 4"):
        ShotDistribution(4).owner(7)
    with pytest.raises(InvalidArgumentError, match="needs a torch.Tensor, got list"):
        allreduce_sum([1.0], None)
    with pytest.raises(InvalidDtypeError, match="bool tensor"):
        allreduce_sum(torch.ones(2, dtype=torch.bool), None)
    with pytest.raises(InvalidArgumentError, match="share_gradient needs a torch.Tensor"):
        share_gradient(np.ones(2), None)
    with pytest.raises(InvalidArgumentError, match="allreduce_value needs a torch.Tensor"):
        allreduce_value(2.0, None)


# ------------------------------------------------------------ collectives (threads)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.int64])
def test_allreduce_sum_threads(dtype):
    def fn(comm):
        r = comm.Get_rank()
        return allreduce_sum(torch.arange(4).to(dtype) * (r + 1), comm)

    for out in run_ranks(3, fn):
        assert out.dtype == dtype
        assert torch.equal(out, (torch.arange(4) * 6).to(dtype))


def test_share_gradient_and_allreduce_value_threads():
    """Σ_r f_r(m) through the two Functions: same value and gradient Σ_r f_r' on every rank."""
    w = [torch.randn(5, dtype=torch.float64) for _ in range(3)]
    m0 = torch.randn(5, dtype=torch.float64)

    def f(r, m):
        return torch.sin(w[r] * m).sum() * (r + 1)

    def fn(comm):
        m = m0.clone().requires_grad_(True)
        total = allreduce_value(f(comm.Get_rank(), share_gradient(m, comm)), comm)
        (3.0 * total).backward()  # an outer factor reaches every rank's part
        return total.detach(), m.grad

    m = m0.clone().requires_grad_(True)
    ref = sum(f(r, m) for r in range(3))
    (3.0 * ref).backward()
    for value, grad in run_ranks(3, fn):
        torch.testing.assert_close(value, ref.detach(), rtol=1e-14, atol=0)
        torch.testing.assert_close(grad, m.grad, rtol=1e-14, atol=1e-15)


class MirrorComm(RankOnly):
    """Rank 0 of ``size`` ranks that all hold the same values: Allreduce multiplies by size.

    Lets one thread run a backward through the collective (thread "ranks" cannot run CUDA
    backward passes concurrently: torch runs them all on one device thread).
    """

    def Allreduce(self, send, recv) -> None:
        recv[...] = send * self.size


def test_collectives_on_cuda():
    """GPU tensors go through host memory and come back on their device and dtype."""
    dev = cuda_or_skip()
    for s in run_ranks(
        2, lambda c: allreduce_sum(torch.full((2, 3), c.Get_rank() + 1.0).to(dev), c)
    ):
        assert s.is_cuda and s.dtype == torch.float32 and bool((s == 3).all())
    comm = MirrorComm(0, 2)
    m0 = torch.randn(4, dtype=torch.float64, device=dev)
    m = m0.clone().requires_grad_(True)
    total = allreduce_value((share_gradient(m, comm) ** 2).sum(), comm)
    total.backward()
    assert total.is_cuda and m.grad.is_cuda
    torch.testing.assert_close(total, 2 * (m0**2).sum())
    torch.testing.assert_close(m.grad, 4 * m0)  # 2 m from each of the 2 ranks
    h = allreduce_sum(torch.ones(3, device=dev, dtype=torch.bfloat16), comm)
    assert h.dtype == torch.bfloat16 and h.is_cuda and bool((h == 2).all())


# ------------------------------------------------------- GaussianLikelihood(comm)
class ShotOperator(torch.nn.Module):
    """``d_s = tanh(A_s m)`` per shot; records which shots each call solved."""

    def __init__(self, nshots: int = 5, n: int = 6) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.A = torch.randn(nshots, 4, n, generator=g, dtype=torch.float64)
        self.solved: list[int] = []

    def forward(self, m: torch.Tensor, shots=None) -> torch.Tensor:
        idx = torch.arange(self.A.shape[0]) if shots is None else torch.as_tensor(shots)
        self.solved += idx.tolist()
        return torch.tanh(torch.einsum("sdn,bn->bsd", self.A[idx], m))


def _likelihood(comm=None, shot_batch=None):
    op = ShotOperator()
    d = op(torch.ones(1, 6, dtype=torch.float64))[0] + 0.1
    op.solved.clear()
    return GaussianLikelihood(op, d, sigma=0.3, shot_batch=shot_batch, seed=7, comm=comm)


def _value_grad(lik, calls=1, full=False):
    out = []
    for k in range(calls):
        m = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(2, 6) * (k + 1)
        m.requires_grad_(True)
        v = lik(m, full=full)
        v.sum().backward()
        out.append((v.detach(), m.grad))
    return out


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("shot_batch", [None, 2])
def test_likelihood_comm_matches_serial(size, shot_batch):
    """Full and stochastic (shot_batch=2 of 5: with 3 ranks one rank has no shot)."""
    serial = _value_grad(_likelihood(shot_batch=shot_batch), calls=3)

    def fn(comm):
        lik = _likelihood(comm, shot_batch)
        return _value_grad(lik, calls=3), lik.operator.solved

    results = run_ranks(size, fn)
    solved = [s for _, sv in results for s in sv]
    per_call = 5 if shot_batch is None else shot_batch
    assert len(solved) == 3 * per_call  # each shot of each call solved by one rank only
    for rank_out, _ in results:
        for (v, g), (vs, gs) in zip(rank_out, serial):
            torch.testing.assert_close(v, vs, rtol=1e-13, atol=0)
            torch.testing.assert_close(g, gs, rtol=1e-13, atol=1e-13)


def test_likelihood_comm_full_flag():
    serial = _value_grad(_likelihood(shot_batch=2), full=True)
    for out in run_ranks(2, lambda comm: _value_grad(_likelihood(comm, 2), full=True)):
        torch.testing.assert_close(out[0][0], serial[0][0], rtol=1e-13, atol=0)


def test_likelihood_comm_needs_shots_keyword():
    with pytest.raises(InvalidArgumentError, match="comm with 2 ranks needs an operator"):
        GaussianLikelihood(torch.nn.Identity(), torch.ones(4), sigma=1.0, comm=RankOnly(0, 2))
    lik = GaussianLikelihood(torch.nn.Identity(), torch.ones(4), sigma=1.0, comm=RankOnly(0, 1))
    assert lik.comm is None  # one rank: the serial path


# ------------------------------------------------------------------ real MPI ranks
def _mpiexec() -> Path:
    exe = Path(sys.executable).parent / "mpiexec"
    if not exe.exists():
        pytest.skip(f"no mpiexec next to {sys.executable} (install the 'mpich' package)")
    return exe


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_mpi_likelihood_matches_serial(tmp_path):
    """2 ranks × 2 shots of a 41×41 Devito problem: value and gradient equal the serial ones."""
    exe = _mpiexec()
    out = tmp_path / "mpi.npz"
    env = dict(os.environ, OMP_NUM_THREADS="1", DEVITO_LOGGING="ERROR")
    proc = subprocess.run(
        [str(exe), "-n", "2", sys.executable, str(SCRIPTS / "likelihood_gradient.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = np.load(out)

    sys.path.insert(0, str(SCRIPTS))
    try:
        from _problem import build, value_and_gradient
    finally:
        sys.path.remove(str(SCRIPTS))
    lik, m0 = build()
    value, grad = value_and_gradient(lik, m0)
    lik_sgd, _ = build(shot_batch=1, seed=3)
    value_sgd, grad_sgd = value_and_gradient(lik_sgd, m0, calls=3)

    def rel(a, b):
        return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

    assert int(res["size"]) == 2 and res["nshots"].tolist() == [4]
    assert rel(res["value"], value) < 1e-10
    assert rel(res["grad"], grad) < 1e-10
    assert rel(res["value_sgd"], value_sgd) < 1e-10  # one rank idle on every call
    assert rel(res["grad_sgd"], grad_sgd) < 1e-10
    # Every rank saw the same value and gradient.
    assert np.array_equal(res["rank_values"][0], res["rank_values"][1])
    assert np.array_equal(res["rank_grads"][0], res["rank_grads"][1])
    np.testing.assert_array_equal(res["sums"], 3.0)  # (1 + 2) for each dtype


# ------------------------------------------------- random shot subsets of own shots
def _shot_subsets():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import shot_subsets
    finally:
        sys.path.remove(str(SCRIPTS))
    return shot_subsets


@pytest.mark.parametrize("size", [2, 3])
def test_rank_summed_shot_subsets_match_serial(size):
    """Each rank holding only its own shots draws the serial run's subsets and, summed,
    gives the serial value and gradient; with 3 ranks some rank is idle on every call."""
    ss = _shot_subsets()
    subsets, values, grads = ss.calls(ss.build())
    for drawn, v, g in run_ranks(size, lambda comm: ss.calls(ss.build(comm))):
        assert all(torch.equal(a, b) for a, b in zip(drawn, subsets))
        np.testing.assert_allclose(v, values, rtol=1e-13, atol=0)
        np.testing.assert_allclose(g, grads, rtol=1e-13, atol=1e-13)


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_mpi_ranks_draw_the_same_shot_subsets(tmp_path):
    """``mpiexec -n 2``: every rank draws the same subsets, solves only its own shots of
    them, and sees the serial value and gradient."""
    exe = _mpiexec()
    out = tmp_path / "subsets.npz"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [str(exe), "-n", "2", sys.executable, str(SCRIPTS / "shot_subsets.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = np.load(out)
    ss = _shot_subsets()
    subsets, values, grads = ss.calls(ss.build())
    assert int(res["size"]) == 2
    np.testing.assert_array_equal(res["subsets"][0], res["subsets"][1])
    np.testing.assert_array_equal(res["subsets"][0], torch.stack(subsets).numpy())
    np.testing.assert_array_equal(res["shots"].sum(0), ss.BATCH)  # each shot solved once
    for r in range(2):
        np.testing.assert_allclose(res["values"][r], values, rtol=1e-13, atol=0)
        np.testing.assert_allclose(res["grads"][r], grads, rtol=1e-13, atol=1e-13)
