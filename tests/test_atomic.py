"""Atomic writes (devito_uq.io._atomic): all-or-nothing, no symlink following, umask, sweeping."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from devito_uq.io._atomic import atomic_path, sweep_stale_temporaries


def _write(path, text):
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)


def test_replaces_whole_file(tmp_path):
    target = tmp_path / "out" / "summary.json"
    _write(target, "one")
    _write(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["summary.json"]  # no temp left


def test_failure_keeps_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    _write(target, "old")
    with pytest.raises(RuntimeError, match="mid-write"):
        with atomic_path(target) as tmp, open(tmp, "w") as fh:
            fh.write("half")
            raise RuntimeError("mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_symlink_at_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "out.png"
    target.symlink_to(victim)
    _write(target, "result")
    assert victim.read_text() == "precious"  # the write did not go through the link
    assert not target.is_symlink() and target.read_text() == "result"


def test_permissions_follow_umask_without_touching_it(tmp_path, monkeypatch):
    old = os.umask(0o027)
    try:
        # Changing the process umask opens a window in which other threads create
        # world-writable files: the writer must never call it.
        monkeypatch.setattr(os, "umask", lambda *_: pytest.fail("os.umask was called"))
        target = tmp_path / "ckpt.pt"
        _write(target, "x")
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_stale_temporaries_of_dead_writers_are_swept(tmp_path):
    target = tmp_path / "vi_checkpoint.pt"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".vi_checkpoint.pt.{dead_pid}.deadbeef.tmp"
    live = tmp_path / f".vi_checkpoint.pt.{os.getppid()}.cafebabe.tmp"  # a live writer
    other = tmp_path / f".other.pt.{dead_pid}.deadbeef.tmp"  # another target's temporary
    for p in (stale, live, other):
        p.write_text("partial")
    _write(target, "complete")  # the next write to the target sweeps
    assert not stale.exists() and live.exists() and other.exists()
    stale.write_text("partial")
    assert sweep_stale_temporaries(target) == [stale]
