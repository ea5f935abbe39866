"""Atomic checkpoint write / validated read (devito_uq.io.checkpoint)."""

import os

import pytest
import torch

from devito_uq.errors import CheckpointError
from devito_uq.io.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint


def test_round_trip_nested_state(tmp_path):
    state = {
        "iteration": 7,
        "flow": {"w": torch.randn(3, 4), "initialized": torch.tensor(True)},
        "history": {"loss": [1.0, 0.5]},
        "rng": torch.get_rng_state(),
    }
    path = save_checkpoint(tmp_path / "sub" / "ck.pt", state)
    back = load_checkpoint(path, required=("iteration", "flow"))
    assert back["format"] == CHECKPOINT_FORMAT
    assert back["iteration"] == 7
    assert torch.equal(back["flow"]["w"], state["flow"]["w"])
    assert torch.equal(back["rng"], state["rng"])
    assert back["history"] == state["history"]


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"iteration": 1})
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial garbage")  # the process dies half-way through the write
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"iteration": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temporary file left behind
    assert load_checkpoint(path)["iteration"] == 1


def test_missing_file_names_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt.*does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_corrupt_file_names_path(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x00not a torch file")
    with pytest.raises(CheckpointError, match=r"bad\.pt.*corrupt"):
        load_checkpoint(path)


def test_foreign_torch_file_rejected(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match=r"other\.pt.*not a devito_uq checkpoint"):
        load_checkpoint(path)


def test_missing_required_entry(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", {"iteration": 3})
    with pytest.raises(CheckpointError, match=r"ck\.pt.*lacks the entries \['optimizer'\]"):
        load_checkpoint(path, required=("iteration", "optimizer"))


def test_state_must_be_dict(tmp_path):
    with pytest.raises(CheckpointError, match="must be a dict, got list"):
        save_checkpoint(tmp_path / "ck.pt", [1, 2])


def test_library_never_unpickles_code():
    """Checkpoints and caches load with weights_only=True only: no module of the package
    calls torch.load with weights_only=False (loading must not run code from a file)."""
    import re
    from pathlib import Path

    import devito_uq

    root = Path(devito_uq.__file__).parent
    unsafe = re.compile(r"weights_only\s*=\s*False")
    offenders = [str(p) for p in root.rglob("*.py") if unsafe.search(p.read_text())]
    assert offenders == []
