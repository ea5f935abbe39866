"""Hostile input files (issue 22): every path a user can name is opened only when it is
a regular file, read with a size bound and decoded with a one-line error; resume-side
result files carry the run's identity and a SHA-256 and are refused from another run."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import subprocess

import numpy as np
import pytest
import torch

from devito_uq.apps.avp.config import AVPConfig
from devito_uq.cli import load_config_file, main
from devito_uq.errors import CheckpointError, InvalidArgumentError, OutputWriteError
from devito_uq.inference.calibration import load_calibration, run_calibration
from devito_uq.io import _files as files_module
from devito_uq.io import checkpoint as checkpoint_module
from devito_uq.io import records as records_module
from devito_uq.io._files import MAX_NESTING, read_input_bytes, read_input_json
from devito_uq.io.checkpoint import load_checkpoint, save_checkpoint
from devito_uq.io.dataset import ShardedDataset, simulate_dataset
from devito_uq.io.records import load_record, save_record
from devito_uq.io.segy_image import write_image


@contextlib.contextmanager
def _no_hang(seconds: int = 20):
    """A hang guard (not a timing assertion): a read that blocks fails the test."""

    def fail(*_):
        raise AssertionError("the read blocked")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- configs
def test_fifo_config_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    with _no_hang():
        with pytest.raises(InvalidArgumentError, match=r"config\.toml' is a FIFO"):
            load_config_file(fifo, AVPConfig)
        assert main(["avp", str(fifo), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a FIFO, not a regular file" in err[0]
    assert not (tmp_path / "out").exists()


def test_device_config_is_refused_unread(capsys):
    with _no_hang():
        with pytest.raises(InvalidArgumentError, match=r"'/dev/zero' is a device"):
            load_config_file("/dev/zero", AVPConfig)
        assert main(["avp", "/dev/zero", "--out", "/nonexistent/x", "--quiet"]) == 2
    assert "/dev/zero" in capsys.readouterr().err


def test_config_folder_oversized_non_utf8_and_deep_files(tmp_path):
    with pytest.raises(InvalidArgumentError, match="is a folder, not a file"):
        load_config_file(tmp_path, AVPConfig)
    path = tmp_path / "c.toml"
    path.write_bytes(b"seed = 1\n# \xff\xfe latin-1 comment\n")
    with pytest.raises(InvalidArgumentError, match=r"c\.toml' is not UTF-8 text \(byte 11"):
        load_config_file(path, AVPConfig)
    path.write_text("seed = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(InvalidArgumentError, match="too deep|more than 64 deep"):
        load_config_file(path, AVPConfig)
    path.write_text("a = " + "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1) + "\n")
    with pytest.raises(InvalidArgumentError, match=f"more than {MAX_NESTING} deep"):
        load_config_file(path, AVPConfig)
    with open(path, "wb") as fh:  # sparse: 17 MiB on the size, no blocks on the disk
        fh.truncate(17 * 2**20)
    with pytest.raises(InvalidArgumentError, match="has 17825792 bytes; more than"):
        load_config_file(path, AVPConfig)


def test_read_bounds_and_json_errors(tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(b"x" * 11)
    with pytest.raises(CheckpointError, match="has 11 bytes; more than the 10"):
        read_input_bytes(path, "manifest", CheckpointError, max_bytes=10)
    assert read_input_bytes(path, "manifest", CheckpointError, max_bytes=11) == b"x" * 11
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(CheckpointError, match="nests lists or objects too deep|more than 64"):
        read_input_json(path, "manifest", CheckpointError)
    path.write_text('{"a": ')
    with pytest.raises(CheckpointError, match=r"m\.json' is not valid JSON"):
        read_input_json(path, "manifest", CheckpointError)


# --------------------------------------------------------------------------- calibration
def _prior() -> torch.Tensor:
    return torch.randn(3)


class _Posterior:
    def __init__(self, d: torch.Tensor) -> None:
        self.d = d

    def sample(self, n: int) -> torch.Tensor:
        return self.d + torch.randn(n, 3)


def _calibrate(out, n=4, seed=0, identity=None):
    return run_calibration(
        _prior, lambda m: m, _Posterior, n, 9, seed=seed, out_dir=out, identity=identity
    )


def test_foreign_truth_file_is_refused_naming_the_key(tmp_path):
    """A truth file planted from a run with another seed or another caller identity
    (same shapes, so the old code accepted it and changed the report) is refused."""
    _calibrate(tmp_path / "a", seed=0, identity={"snr_db": 0.0})
    _calibrate(tmp_path / "b", seed=1, identity={"snr_db": 0.0})
    _calibrate(tmp_path / "c", seed=0, identity={"snr_db": 5.0})
    victim = tmp_path / "a" / "truth_000002.npz"
    good = victim.read_bytes()
    for other, key in (("b", "seed=1"), ("c", "identity.snr_db=5.0")):
        victim.write_bytes((tmp_path / other / "truth_000002.npz").read_bytes())
        with pytest.raises(CheckpointError, match=rf"truth_000002\.npz.*another run.*{key}"):
            _calibrate(tmp_path / "a", seed=0, identity={"snr_db": 0.0})
        with pytest.raises(CheckpointError, match=key):
            load_calibration(tmp_path / "a")
    victim.write_bytes(good)  # the same run's own file is taken back as it was
    assert _calibrate(tmp_path / "a", seed=0, identity={"snr_db": 0.0}).computed == []
    with pytest.raises(CheckpointError, match="identity.snr_db=0.0, this run has 1.0"):
        _calibrate(tmp_path / "a", seed=0, identity={"snr_db": 1.0})


def test_corrupt_truth_files_are_one_line_errors(tmp_path):
    _calibrate(tmp_path / "a")
    path = tmp_path / "a" / "truth_000001.npz"
    good = path.read_bytes()
    cases = {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "not a zip": b"hello world",
    }
    for pos in np.linspace(0, len(good) - 1, 24).astype(int):
        flipped = bytearray(good)
        flipped[pos] ^= 0x10
        cases[f"bit {pos}"] = bytes(flipped)
    reference = load_calibration(tmp_path / "a")
    refused = 0
    for name, data in cases.items():
        path.write_bytes(data)
        try:
            got = load_calibration(tmp_path / "a")
        except CheckpointError as exc:
            assert "truth_000001.npz" in str(exc), name
            refused += 1
        else:  # a flip in zip metadata nobody reads (a timestamp): the same values
            np.testing.assert_array_equal(got.ranks, reference.ranks, err_msg=name)
            assert got.metrics["rmse"].tolist() == reference.metrics["rmse"].tolist(), name
    assert refused >= 20
    path.unlink()
    path.mkdir()
    with pytest.raises(CheckpointError, match="is a folder"):
        load_calibration(tmp_path / "a")


def test_record_without_identity_and_edited_record(tmp_path):
    path = tmp_path / "r.npz"
    np.savez(path, index=np.int64(0))
    with pytest.raises(CheckpointError, match="carries no run identity"):
        load_record(path, {"seed": 0})
    save_record(path, {"x": np.arange(3)}, {"seed": 0})
    assert load_record(path, {"seed": 0})["x"].tolist() == [0, 1, 2]
    z = dict(np.load(path))
    z["x"] = np.arange(1, 4)  # edited, rewritten as a valid zip
    np.savez(path, **z)
    with pytest.raises(CheckpointError, match="SHA-256 does not match"):
        load_record(path, {"seed": 0})


def test_calibration_manifest_fifo_and_garbage(tmp_path):
    _calibrate(tmp_path / "a")
    meta = tmp_path / "a" / "calibration.json"
    meta.unlink()
    os.mkfifo(meta)
    with _no_hang():
        with pytest.raises(CheckpointError, match="is a FIFO"):
            _calibrate(tmp_path / "a")
        with pytest.raises(CheckpointError, match="is a FIFO"):
            load_calibration(tmp_path / "a")
    meta.unlink()
    meta.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(CheckpointError, match="not UTF-8"):
        load_calibration(tmp_path / "a")


# --------------------------------------------------------------------------- datasets
def _shard(index: int, count: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"x": torch.randn(count, 2, generator=gen)}


def test_dataset_manifest_and_shard_hostile_paths(tmp_path):
    folder = tmp_path / "ds"
    simulate_dataset(folder, 4, _shard, shard_size=2, seed=0, progress=False)
    shard = folder / "shard_000001.pt"
    shard.unlink()
    shard.mkdir()
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(shard)
    with pytest.raises(CheckpointError, match="shard_000001.pt"):
        ShardedDataset(folder).load()
    shard.rmdir()
    os.mkfifo(shard)
    with _no_hang(), pytest.raises(CheckpointError, match="is a FIFO"):
        ShardedDataset(folder).load()
    meta = folder / "dataset.json"
    meta.unlink()
    os.mkfifo(meta)
    with _no_hang(), pytest.raises(CheckpointError, match=r"dataset\.json' is a FIFO"):
        ShardedDataset(folder)


# --------------------------------------------------------------------------- outputs
def test_amortize_train_never_overwrites_a_foreign_checkpoint_path(tmp_path, capsys):
    foreign = tmp_path / "elsewhere" / "notes.txt"
    foreign.parent.mkdir()
    foreign.write_text("my thesis\n")
    out = tmp_path / "out"
    argv = ["amortize", "train", "--checkpoint", str(foreign), "--out", str(out), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.txt" in err[0] and "never overwritten" in err[0], err
    assert foreign.read_text() == "my thesis\n"
    assert not out.exists()  # refused before the output folder is prepared


class _FullDisk(io.FileIO):
    """A file that takes ``budget`` bytes, then fails as a full disk does (ENOSPC)."""

    budget = 0

    def write(self, data):
        if len(data) > _FullDisk.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _FullDisk.budget -= len(data)
        return super().write(data)


def _fill_disk(monkeypatch, module, after: int) -> None:
    """``open(..., "wb")`` in ``module`` gives files that fail after ``after`` bytes."""
    _FullDisk.budget = after
    monkeypatch.setattr(
        module, "open", lambda p, mode="r", *a, **k: _FullDisk(p, "w"), raising=False
    )


def test_disk_full_while_writing_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"w": torch.zeros(4)})
    old = path.read_bytes()
    big = {"w": torch.zeros(2**16)}
    with monkeypatch.context() as m:
        _fill_disk(m, checkpoint_module, 0)
        with pytest.raises(
            OutputWriteError,
            match=r"writing '.*ck\.pt' failed.*No space left on "
            r"device; the previous file is intact",
        ) as exc:
            save_checkpoint(path, big)
    assert exc.value.errno == errno.ENOSPC and isinstance(exc.value, OSError)
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["ck.pt"]  # no temporary file left


def test_disk_full_part_way_names_the_bytes(tmp_path, monkeypatch):
    rec = tmp_path / "out" / "r.npz"
    with monkeypatch.context() as m:
        _fill_disk(m, records_module, 100)
        with pytest.raises(OutputWriteError, match=r"r\.npz' failed after \d+ bytes"):
            save_record(rec, {"x": np.zeros(10000)}, {"seed": 0})
    assert not rec.exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    where = tmp_path / "small"
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_real_full_disk_on_a_small_tmpfs(small_tmpfs):
    path = small_tmpfs / "ck.pt"
    save_checkpoint(path, {"w": torch.zeros(16)})
    old = path.read_bytes()
    with pytest.raises(OutputWriteError, match=r"ck\.pt' failed after \d+ bytes: No space left"):
        save_checkpoint(path, {"w": torch.zeros(2**16)})
    assert path.read_bytes() == old
    assert sorted(os.listdir(small_tmpfs)) == ["ck.pt"]
    with pytest.raises(OutputWriteError, match=r"image\.sgy' failed.*(No space|no space)"):
        write_image(small_tmpfs / "image.sgy", np.ones((200, 200), np.float32), (10.0, 10.0))
    assert sorted(os.listdir(small_tmpfs)) == ["ck.pt"]


def test_amortize_simulate_never_writes_into_a_foreign_dataset_path(tmp_path, capsys):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"\xff\xd8")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for target, match in ((mine, "folder of 1 other files"), (afile, "names an existing file")):
        out = tmp_path / "out"
        argv = ["amortize", "simulate", "--dataset", str(target), "--out", str(out), "--quiet"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
        assert not out.exists()
    assert sorted(os.listdir(mine)) == ["cat.jpg"] and afile.read_text() == "x"


def test_input_larger_than_memory_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    with open(path, "wb") as fh:  # sparse: a large size, no blocks on the disk
        fh.truncate(2**20)
    monkeypatch.setattr(files_module, "available_memory", lambda: 2**19)
    with pytest.raises(CheckpointError, match=r"ck\.pt' has 1048576 bytes, more than the 512"):
        load_checkpoint(path)


def test_absurd_thread_count_is_refused(tmp_path, capsys):
    assert main(["info", str(tmp_path / "x.sgy"), "--threads", "1000000000"]) == 2
    assert "threads=1000000000 must be an integer <=" in capsys.readouterr().err
