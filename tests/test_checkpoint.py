"""Checkpoints and caches (devito_uq.io.checkpoint): tensors + JSON with a SHA-256, written
atomically, never unpickled; every corruption, truncation, foreign or planted file is a
CheckpointError naming the file, and the file on disk is left as it was."""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from devito_uq.errors import CheckpointError
from devito_uq.io.checkpoint import (
    CHECKPOINT_FORMAT,
    check_identity,
    load_checkpoint,
    save_checkpoint,
)


def _adam_state():
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    opt = torch.optim.Adam(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    opt.step()
    return params, opt


def test_round_trip_nested_state(tmp_path):
    params, opt = _adam_state()
    state = {
        "iteration": 7,
        "flow": {"w": torch.randn(3, 4), "initialized": torch.tensor(True)},
        "history": {"loss": [1.0, 0.5, float("nan")]},
        "rng": torch.get_rng_state(),
        "optimizer": opt.state_dict(),  # integer keys, tuples (betas), None entries
        "half": torch.randn(4).bfloat16(),
        "empty": torch.zeros(0, 3),
        "noncontiguous": torch.arange(12.0).reshape(3, 4).t(),
        "numpy_scalar": np.float32(0.25),
        "odd_keys": {"__tensor__": 1, 2: "two", (1, "a"): None},
    }
    path = save_checkpoint(tmp_path / "sub" / "ck.pt", state)
    back = load_checkpoint(path, required=("iteration", "flow"))
    assert back["format"] == CHECKPOINT_FORMAT
    assert back["iteration"] == 7
    assert torch.equal(back["flow"]["w"], state["flow"]["w"])
    assert back["flow"]["initialized"].dtype == torch.bool
    assert torch.equal(back["rng"], state["rng"]) and back["rng"].dtype == torch.uint8
    assert back["history"]["loss"][:2] == [1.0, 0.5] and np.isnan(back["history"]["loss"][2])
    assert torch.equal(back["half"], state["half"]) and back["half"].dtype == torch.bfloat16
    assert back["empty"].shape == (0, 3)
    assert torch.equal(back["noncontiguous"], state["noncontiguous"])
    assert back["numpy_scalar"] == 0.25
    assert back["odd_keys"] == {"__tensor__": 1, 2: "two", (1, "a"): None}
    # The optimizer state comes back usable: integer parameter ids and tuple betas.
    assert set(back["optimizer"]["state"]) == {0, 1}
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    other = torch.optim.Adam(params, lr=1e-3)
    other.load_state_dict(back["optimizer"])
    assert torch.equal(other.state[params[0]]["exp_avg"], opt.state[params[0]]["exp_avg"])


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"iteration": 1})
    before = path.read_bytes()

    def disk_full(fd):  # the temporary file is written; the flush to disk fails
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"iteration": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temporary file left behind
    assert load_checkpoint(path)["iteration"] == 1


def test_unstorable_entry_named_and_nothing_written(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\['cfg'\]\['f'\] is a function"):
        save_checkpoint(tmp_path / "ck.pt", {"cfg": {"f": lambda: 0}})
    with pytest.raises(CheckpointError, match=r"state\['s'\]: torch.sparse_coo"):
        save_checkpoint(tmp_path / "ck.pt", {"s": torch.eye(2).to_sparse()})
    with pytest.raises(CheckpointError, match="must be a dict, got list"):
        save_checkpoint(tmp_path / "ck.pt", [1, 2])
    assert list(tmp_path.iterdir()) == []


def test_missing_file_names_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt.*does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("kind", ["folder", "fifo", "device"])
def test_path_that_is_not_a_file(tmp_path, kind):
    if kind == "folder":
        path, message = tmp_path / "ck.pt", "is a folder"
        path.mkdir()
    elif kind == "fifo":
        path, message = tmp_path / "ck.pt", "is a FIFO"
        os.mkfifo(path)  # opening it for reading would block forever
    else:
        path, message = Path("/dev/null"), "is a device"
    with pytest.raises(CheckpointError, match=rf"checkpoint '{path}' {message}"):
        load_checkpoint(path)


def test_corrupt_file_names_path(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pt.*not a devito_uq checkpoint"):
        load_checkpoint(path)


class _Planted:
    """A pickle that runs code on load (creates a marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_files_are_never_unpickled(tmp_path, monkeypatch):
    """A torch.save / pickle file planted under a checkpoint name (older versions wrote
    torch.save files) is refused without being unpickled: its code never runs."""
    marker = tmp_path / "pwned"

    def forbidden(*args, **kwargs):
        raise AssertionError("the loader unpickled a file")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    for name, write in [
        ("torch.pt", lambda p: torch.save({"x": _Planted(str(marker))}, p)),
        ("pickle.pt", lambda p: p.write_bytes(pickle.dumps(_Planted(str(marker))))),
    ]:
        path = tmp_path / name
        write(path)
        before = path.read_bytes()
        with pytest.raises(CheckpointError, match=rf"{name}.*not a devito_uq checkpoint"):
            load_checkpoint(path)
        assert path.read_bytes() == before
    assert not marker.exists()


def test_hash_mismatch_and_truncation(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", {"w": torch.randn(50), "step": 3})
    data = path.read_bytes()
    # Edited content with the old hash: refused.
    edited = bytearray(data)
    edited[-4:] = b"\x00\x00\x00\x00"
    path.write_bytes(bytes(edited))
    with pytest.raises(CheckpointError, match=r"ck\.pt.*corrupt: its SHA-256 does not match"):
        load_checkpoint(path)
    # Every truncation (a write cut short by a full disk or a kill) is refused.
    for n in range(0, len(data), 7):
        path.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match=r"ck\.pt"):
            load_checkpoint(path)
    path.write_bytes(data + b"\x00")  # appended garbage
    with pytest.raises(CheckpointError, match=r"ck\.pt.*corrupt"):
        load_checkpoint(path)


def test_missing_required_entry(tmp_path):
    path = save_checkpoint(tmp_path / "ck.pt", {"iteration": 3})
    with pytest.raises(CheckpointError, match=r"ck\.pt.*lacks the entries \['optimizer'\]"):
        load_checkpoint(path, required=("iteration", "optimizer"))


def test_symlink_at_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "out" / "ck.pt"
    link.parent.mkdir()
    link.symlink_to(victim)
    save_checkpoint(link, {"x": torch.ones(2)})
    assert victim.read_text() == "keep me"
    assert not link.is_symlink() and load_checkpoint(link)["x"].sum() == 2


def test_check_identity_names_file_and_key(tmp_path):
    path = tmp_path / "ck.pt"
    check_identity(path, {"a": (1, 2), "b": 3}, {"a": [1, 2], "b": 3})  # tuple == list
    with pytest.raises(CheckpointError, match=r"ck\.pt.*another run: it has b=3, this run has b=4"):
        check_identity(path, {"a": 1, "b": 3}, {"a": 1, "b": 4})
    with pytest.raises(CheckpointError, match=r"it has no value, this run has c=1"):
        check_identity(path, {"a": 1}, {"a": 1, "c": 1})
    check_identity(path, {"a": 1, "x": 2}, {"a": 1, "x": 5}, keys=["a"])  # only the keys asked


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Name):
                yield owner.id, node.func.attr, node


def test_library_never_unpickles():
    """No module of the package calls torch.load, pickle.load(s) or marshal.loads, and
    every np.load passes allow_pickle=False: loading must never run code from a file."""
    import devito_uq

    root = Path(devito_uq.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for owner, attr, node in _calls(ast.parse(path.read_text())):
            where = f"{path.relative_to(root)}:{node.lineno}"
            if owner == "torch" and attr == "load":
                offenders.append(f"{where} torch.load")
            if owner in ("pickle", "marshal", "dill", "cloudpickle") and "load" in attr:
                offenders.append(f"{where} {owner}.{attr}")
            if owner in ("np", "numpy") and attr == "load":
                safe = any(
                    k.arg == "allow_pickle"
                    and isinstance(k.value, ast.Constant)
                    and k.value.value is False
                    for k in node.keywords
                )
                if not safe:
                    offenders.append(f"{where} np.load without allow_pickle=False")
    assert offenders == []


def test_valid_hash_but_foreign_layout_is_refused(tmp_path):
    """A file with a correct SHA-256 that devito_uq did not write (JSON of another shape, a
    dtype outside the allow-list, a tensor table pointing past the end) is refused."""
    import hashlib
    import json
    import struct

    from devito_uq.io import checkpoint as ck

    def write(meta: dict, blob: bytes = b"") -> Path:
        text = json.dumps(meta).encode()
        payload = struct.pack("<Q", len(text)) + text + blob
        digest = hashlib.sha256(payload).hexdigest().encode()
        path = tmp_path / "forged.pt"
        path.write_bytes(ck._MAGIC + b"sha256 " + digest + b"\n" + payload)
        return path

    base = {"format": CHECKPOINT_FORMAT, "byteorder": "little", "tensors": [], "state": {}}
    cases = [
        ({**base, "format": "v0"}, b"", r"has format 'v0'"),
        ({**base, "byteorder": "big"}, b"", r"written on a big-endian machine"),
        ({**base, "state": [1]}, b"", r"unreadable: ValueError"),
        (
            {**base, "tensors": [{"dtype": "object", "shape": [1], "offset": 0, "nbytes": 8}]},
            b"\0" * 8,
            r"unreadable: KeyError: 'object'",
        ),
        (
            {**base, "tensors": [{"dtype": "float64", "shape": [4], "offset": 0, "nbytes": 32}]},
            b"\0" * 8,
            r"unreadable: ValueError: tensor entry .* does not fit the file",
        ),
        ({**base, "state": {"x": {"__tensor__": 3}}}, b"", r"unreadable: IndexError"),
    ]
    for meta, blob, message in cases:
        with pytest.raises(CheckpointError, match=rf"forged\.pt.*{message}"):
            load_checkpoint(write(meta, blob))
    # The same forger writing a well-formed file gets exactly its data back.
    assert load_checkpoint(write({**base, "state": {"a": [1, 2]}}))["a"] == [1, 2]
