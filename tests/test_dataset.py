"""Sharded simulated datasets (devito_uq.io.dataset): shards equal to what the simulator
returned, resume after a kill recomputing only the missing shards, identity checks,
corruption, rank independence, the train/validation split and input errors."""

import json
import re
import warnings

import numpy as np
import pytest
import torch

from devito_uq.errors import CheckpointError, InvalidArgumentError, InvalidShapeError
from devito_uq.io import ShardedDataset, simulate_dataset
from devito_uq.io.dataset import shard_generator

A = torch.linspace(-1.0, 1.0, 15).reshape(5, 3)


class Simulator:
    """``{"model": [k, 3], "condition": [k, 5]}`` from the generator only; records calls;
    raises at shard ``fail_at`` (a killed run)."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = [], fail_at

    def __call__(self, index, count, generator):
        if index == self.fail_at:
            raise RuntimeError(f"killed at shard {index}")
        self.calls.append(index)
        m = torch.randn(count, 3, generator=generator)
        d = m @ A.T + 0.1 * torch.randn(count, 5, generator=generator)
        return {"model": m, "condition": d}


def _expected(n_pairs, shard_size, seed):
    parts = [
        Simulator()(k, min(shard_size, n_pairs - k * shard_size), shard_generator(seed, k))
        for k in range(-(-n_pairs // shard_size))
    ]
    return {f: torch.cat([p[f] for p in parts]) for f in ("model", "condition")}


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_shards_written_and_loaded(tmp_path):
    ds = simulate_dataset(tmp_path / "d", 10, Simulator(), shard_size=4, seed=3, progress=False)
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert names == ["dataset.json", "shard_000000.pt", "shard_000001.pt", "shard_000002.pt"]
    assert ds.complete and len(ds) == 10 and ds.n_shards == 3
    assert ds.fields == {
        "condition": {"shape": [5], "dtype": "float32"},
        "model": {"shape": [3], "dtype": "float32"},
    }
    full = ds.load()
    _same(full, _expected(10, 4, 3))
    assert not torch.equal(full["model"][:2], full["model"][4:6])  # one stream per shard
    part = ds.load(fields=["model"], shards=[1])
    assert list(part) == ["model"] and torch.equal(part["model"], full["model"][4:8])
    # Another seed gives other pairs (the generator is the only randomness).
    other = simulate_dataset(tmp_path / "e", 10, Simulator(), shard_size=4, seed=4, progress=False)
    assert not torch.equal(other.load()["model"], full["model"])


def test_resume_after_kill_recomputes_only_missing_shards(tmp_path):
    ref = simulate_dataset(tmp_path / "ref", 20, Simulator(), shard_size=4, progress=False)
    with pytest.raises(RuntimeError, match="killed at shard 2"):
        simulate_dataset(tmp_path / "d", 20, Simulator(fail_at=2), shard_size=4, progress=False)
    half = ShardedDataset(tmp_path / "d")
    assert not half.complete
    with pytest.raises(CheckpointError, match="incomplete"):
        half.load()
    again = Simulator()
    ds = simulate_dataset(tmp_path / "d", 20, again, shard_size=4, progress=False)
    assert again.calls == [2, 3, 4]
    _same(ds.load(), ref.load())
    for a, b in zip(ref.shards, ds.shards):
        assert a.read_bytes() == b.read_bytes(), a.name
    # A finished dataset is verified and nothing is simulated.
    idle = Simulator()
    simulate_dataset(tmp_path / "d", 20, idle, shard_size=4, progress=False)
    assert idle.calls == []


def test_resume_refuses_another_dataset(tmp_path):
    kw = dict(shard_size=4, progress=False, identity={"sigma": 0.5})
    simulate_dataset(tmp_path, 8, Simulator(), seed=1, **kw)
    before = (tmp_path / "dataset.json").read_text()
    with pytest.raises(CheckpointError, match=r"it has seed=1, this run has seed=2.*resume=False"):
        simulate_dataset(tmp_path, 8, Simulator(), seed=2, **kw)
    with pytest.raises(CheckpointError, match=r"it has n_pairs=8, this run has n_pairs=9"):
        simulate_dataset(tmp_path, 9, Simulator(), seed=1, **kw)
    with pytest.raises(CheckpointError, match=r"shard_size=4, this run has shard_size=2"):
        simulate_dataset(tmp_path, 8, Simulator(), seed=1, **{**kw, "shard_size": 2})
    with pytest.raises(CheckpointError, match=r"identity=\{'sigma': 0.5\}.*'sigma': 1.0"):
        simulate_dataset(tmp_path, 8, Simulator(), seed=1, **{**kw, "identity": {"sigma": 1.0}})
    assert (tmp_path / "dataset.json").read_text() == before  # refused: nothing written
    ds = simulate_dataset(tmp_path, 8, Simulator(), seed=2, resume=False, **kw)
    _same(ds.load(), _expected(8, 4, 2))


def test_corrupt_shard_detected_and_recomputed(tmp_path):
    ds = simulate_dataset(tmp_path, 12, Simulator(), shard_size=4, progress=False)
    good = ds.load()
    path = ds.shards[1]
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x40  # one flipped bit in the tensor bytes
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"shard_000001\.pt.*corrupt"):
        ds.load()
    ds.load(shards=[0, 2])  # the others still load
    again = Simulator()
    with pytest.warns(UserWarning, match=r"recomputing shard 1: .*corrupt"):
        ds = simulate_dataset(tmp_path, 12, again, shard_size=4, progress=False)
    assert again.calls == [1]
    _same(ds.load(), good)


class _FakeComm:
    """One rank of ``size``, run one after the other in this process: an Allreduce that
    only sees its own contribution is enough for the shard dealing under test."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Allreduce(self, send, recv):
        np.copyto(recv, send)


def test_dataset_does_not_depend_on_the_number_of_ranks(tmp_path):
    serial = simulate_dataset(tmp_path / "s", 18, Simulator(), shard_size=4, progress=False)
    calls = []
    for rank in range(2):
        sim = Simulator()
        simulate_dataset(
            tmp_path / "p", 18, sim, shard_size=4, comm=_FakeComm(rank, 2), progress=False
        )
        calls.append(sim.calls)
    assert calls == [[0, 2, 4], [1, 3]]  # round-robin
    par = ShardedDataset(tmp_path / "p")
    assert par.complete
    for a, b in zip(serial.shards, par.shards):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_split_whole_shards(tmp_path):
    ds = simulate_dataset(tmp_path, 18, Simulator(), shard_size=4, progress=False)  # 5 shards
    train, val = ds.split(0.2)
    full = ds.load()
    assert torch.equal(train["model"], full["model"][:16])
    assert torch.equal(val["condition"], full["condition"][16:])
    train, val = ds.split(0.5, fields=["model"])
    assert train["model"].shape[0] == 12 and val["model"].shape[0] == 6 and list(val) == ["model"]
    with pytest.raises(InvalidArgumentError, match=r"validation_fraction=1.0 must lie in"):
        ds.split(1.0)
    with pytest.raises(InvalidArgumentError, match=r"fields=\['data'\] must be a non-empty"):
        ds.load(fields=["data"])
    with pytest.raises(InvalidArgumentError, match=r"shards=\[5\]"):
        ds.load(shards=[5])
    one = simulate_dataset(tmp_path / "one", 3, Simulator(), shard_size=4, progress=False)
    with pytest.raises(InvalidArgumentError, match="has 1 shard; a split needs at least 2"):
        one.split(0.5)


def test_bad_input_refused_before_writing(tmp_path):
    sim = Simulator()
    with pytest.raises(InvalidArgumentError, match=r"n_pairs=0 must be an integer >= 1"):
        simulate_dataset(tmp_path / "a", 0, sim, progress=False)
    with pytest.raises(InvalidArgumentError, match=r"shard_size=2.5 must be an integer"):
        simulate_dataset(tmp_path / "a", 4, sim, shard_size=2.5, progress=False)
    with pytest.raises(InvalidArgumentError, match=r"seed=-1 must be an integer >= 0"):
        simulate_dataset(tmp_path / "a", 4, sim, seed=-1, progress=False)
    with pytest.raises(InvalidArgumentError, match="simulate_shard must be callable"):
        simulate_dataset(tmp_path / "a", 4, "sim", progress=False)
    with pytest.raises(InvalidArgumentError, match="identity must be a dict"):
        simulate_dataset(tmp_path / "a", 4, sim, identity=[1], progress=False)
    assert sim.calls == [] and not (tmp_path / "a").exists()

    def short(index, count, g):
        return {"model": torch.zeros(count - 1, 3)}

    with pytest.raises(InvalidShapeError, match=r"index=0, count=4\) field 'model' has shape"):
        simulate_dataset(tmp_path / "b", 4, short, progress=False)

    def nan(index, count, g):
        return {"model": torch.full((count, 3), float("nan"))}

    with pytest.raises(InvalidArgumentError, match=r"field 'model' contains nan"):
        simulate_dataset(tmp_path / "c", 4, nan, progress=False)
    assert not list((tmp_path / "c").glob("shard_*"))

    def drifting(index, count, g):
        return {"model": torch.zeros(count, 3 + index)}

    with pytest.raises(InvalidShapeError, match=r"index=1\) returned fields"):
        simulate_dataset(tmp_path / "d", 8, drifting, shard_size=4, progress=False)
    with pytest.raises(CheckpointError, match="no dataset"):
        ShardedDataset(tmp_path / "nothing")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "dataset.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="has format 'other'"):
        ShardedDataset(tmp_path / "e")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean run warns about nothing
        simulate_dataset(tmp_path / "f", 4, Simulator(), progress=False)


# ------------------------------------------------------------------ real MPI ranks
@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_mpi_ranks_write_the_serial_dataset(tmp_path):
    """2 real ranks: a run killed at shard 3 keeps what was written; the rerun simulates only
    the missing shards, dealt round-robin, and the files equal a serial run's byte for byte."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    scripts = Path(__file__).parent / "mpi_scripts"
    exe = Path(sys.executable).parent / "mpiexec"
    if not exe.exists():
        pytest.skip(f"no mpiexec next to {sys.executable} (install the 'mpich' package)")
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(*args):
        cmd = [str(exe), "-n", "2", sys.executable, str(scripts / "dataset_ranks.py"), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=100, env=env)

    folder = tmp_path / "mpi"
    killed = run(str(folder), "3")
    # The abort handler ends both ranks; it may end them before the traceback is printed,
    # so only the exit status is reliable.
    assert killed.returncode != 0, killed.stdout + killed.stderr
    assert not ShardedDataset(folder).complete
    proc = run(str(folder))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The ranks' lines may interleave: find them anywhere in the output.
    found = re.findall(r"rank (\d) simulated \[([\d, ]*)\]", proc.stdout)
    assert sorted(r for r, _ in found) == ["0", "1"], proc.stdout
    done = {r: [int(k) for k in ks.split(",") if k.strip()] for r, ks in found}
    # Round-robin: rank 0 owns shards 0, 2, 4 and rank 1 owns 1, 3; only what the killed
    # run had not written is simulated again (shard 3 at least).
    assert set(done["0"]) <= {0, 2, 4} and set(done["1"]) <= {1, 3} and 3 in done["1"]
    sys.path.insert(0, str(scripts))
    try:
        from dataset_ranks import N_PAIRS, SHARD_SIZE, simulator
    finally:
        sys.path.remove(str(scripts))
    serial = simulate_dataset(
        tmp_path / "serial", N_PAIRS, simulator, shard_size=SHARD_SIZE, progress=False
    )
    par = ShardedDataset(folder)
    assert par.complete
    for a, b in zip(serial.shards, par.shards):
        assert a.read_bytes() == b.read_bytes(), a.name
