"""The AVP run with MAP + MALA in a second process beside VI (apps/avp/baselines.py):
the same numbers as the serial run, failures of the child reported, the child stopped
when VI stops."""

from __future__ import annotations

import os
import time

import pytest
import torch
from test_avp import _tiny  # the tiny schedule of the serial tests

from devito_uq.apps.avp import AVPConfig, build_problem, run_avp
from devito_uq.apps.avp.baselines import (
    BaselinesProcess,
    TakeFreeCores,
    concurrent_baselines,
    data_digest,
    thread_share,
)
from devito_uq.errors import InvalidArgumentError, WorkerError
from devito_uq.io import load_checkpoint


def test_concurrent_run_equals_the_serial_run(tmp_path):
    serial = run_avp(_tiny(concurrent="no"), tmp_path / "a", progress=False, figures=False)
    both = run_avp(_tiny(concurrent="yes"), tmp_path / "b", progress=False, figures=False)
    assert not serial["concurrent_baselines"] and both["concurrent_baselines"]
    a = load_checkpoint(tmp_path / "a" / "posterior_samples.pt")
    b = load_checkpoint(tmp_path / "b" / "posterior_samples.pt")
    for key in ("map", "mala", "vi"):  # bit for bit: same code, seed, one thread each
        assert torch.equal(a[key], b[key]), key
    assert serial["relative_error"] == both["relative_error"]
    assert serial["mala"] == both["mala"]
    # The child's solves are counted: every phase has the serial run's count.
    assert serial["pde_solves"] == both["pde_solves"]
    assert both["time_s"]["wait_for_mala"] >= 0.0
    assert not os.path.exists(tmp_path / "b" / "map_mala.log")  # removed after success
    assert not os.path.exists(tmp_path / "b" / "map_mala.pt.config.json")
    # A rerun with resume reads the cache the child wrote: no second process.
    again = run_avp(_tiny(concurrent="yes"), tmp_path / "b", resume=True, progress=False)
    assert not again["concurrent_baselines"]
    assert again["pde_solves"]["by_phase"]["vi"] == 0


def test_auto_follows_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert not concurrent_baselines(_tiny())
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert not concurrent_baselines(_tiny())  # 8 MALA steps: not worth a second interpreter
    assert concurrent_baselines(_tiny(mala_steps=900, mala_burn_in=100))
    assert not concurrent_baselines(_tiny(mala_steps=899, mala_burn_in=100))
    assert concurrent_baselines(AVPConfig.short())  # make demo's schedule
    assert not concurrent_baselines(_tiny(concurrent="no"))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert concurrent_baselines(_tiny(concurrent="yes"))


def test_concurrent_value_is_checked():
    with pytest.raises(InvalidArgumentError, match="concurrent='maybe'"):
        run_avp(_tiny(concurrent="maybe"), "/nonexistent/never-created")


def test_child_refuses_other_data_and_the_parent_says_why(tmp_path):
    cfg = _tiny()
    cache, log = str(tmp_path / "map_mala.pt"), str(tmp_path / "map_mala.log")
    with BaselinesProcess(cfg, cache, "0" * 64, 1, log) as worker:
        with pytest.raises(WorkerError, match=r"(?s)status 2.*other data than the VI process"):
            worker.wait()
    assert not os.path.exists(cache)  # nothing written
    assert "SHA-256" in open(log).read()  # the log is kept for the user


def test_leaving_the_block_early_stops_the_child(tmp_path):
    cfg = _tiny(mala_steps=100000)  # would run for minutes
    digest = data_digest(build_problem(cfg).data)
    cache, log = str(tmp_path / "map_mala.pt"), str(tmp_path / "map_mala.log")
    with pytest.raises(KeyboardInterrupt):
        with BaselinesProcess(cfg, cache, digest, 1, log) as worker:
            proc = worker._proc
            time.sleep(0.5)
            raise KeyboardInterrupt  # VI interrupted
    assert proc.poll() is not None  # terminated, not orphaned
    assert not os.path.exists(cache)


def test_vi_takes_the_free_cores_once_mala_is_done():
    from devito_uq.threads import solver_threads

    class Child:  # stands in for BaselinesProcess
        finished = False

        def done(self):
            return self.finished

    child = Child()
    hook = TakeFreeCores(child, threads=2, every=4)
    with thread_share(1):
        for it in range(1, 9):
            hook(it, {})
        assert hook.iteration is None and solver_threads() == 1  # MALA still running
        child.finished = True
        for it in range(9, 17):
            hook(it, {})
        assert hook.iteration == 12 and solver_threads() == 2  # the next poll after exit
    assert solver_threads() == 1  # restored after the run (conftest's OMP_NUM_THREADS=1)
