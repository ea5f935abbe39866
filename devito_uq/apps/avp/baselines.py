"""MAP and the MALA reference of the AVP experiment, here or in a second process.

VI and the MAP + MALA reference need nothing from each other but the data, and each is
a single-threaded loop of small solves (a plane-wave kernel of 56 rows does not speed up
with a second thread), so on a machine with two free cores :func:`run_avp
<devito_uq.apps.avp.run.run_avp>` runs them side by side: VI in its own process, MAP +
MALA in a child interpreter started by :class:`BaselinesProcess`
(``python -m devito_uq.apps.avp.baselines``). The child rebuilds the same problem from
the same configuration, checks that its data are bit-identical to the parent's (SHA-256),
runs :func:`run_baselines` and writes ``map_mala.pt`` atomically; the parent reads it
after VI. The results are those of the serial run: the same code, seed and thread count.

A fresh interpreter rather than ``multiprocessing``: a spawned child would re-import the
user's ``__main__`` script, and a forked one would inherit torch's and OpenMP's thread
pools mid-flight.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import torch

import devito_uq
from devito_uq.apps.avp.config import AVPConfig
from devito_uq.apps.avp.problem import AVPProblem, build_problem
from devito_uq.errors import DevitoUQError, InvalidArgumentError, WorkerError
from devito_uq.inference import MALA, map_estimate
from devito_uq.io._files import read_input_json
from devito_uq.io.checkpoint import save_checkpoint
from devito_uq.threads import available_cores, configure_threads, set_solver_threads

__all__ = [
    "BaselinesProcess",
    "TakeFreeCores",
    "concurrent_baselines",
    "data_digest",
    "run_baselines",
    "thread_share",
]

#: How much of the child's log a failure report quotes.
_LOG_TAIL = 4000


def run_baselines(problem: AVPProblem, config: AVPConfig, progress: bool) -> dict[str, Any]:
    """MAP by L-BFGS, then MALA started at the MAP; with timings and solve counts.

    Parameters
    ----------
    problem : AVPProblem
        The Sleipner data and posterior target.
    config : AVPConfig
        ``map_iterations`` and the ``mala_*`` schedule.
    progress : bool
        tqdm bars.

    Returns
    -------
    dict
        ``{"map": [nz], "mala": [draws, nz], "info", "timings", "solves"}`` (the
        ``map_mala.pt`` cache without its configuration; s²/km², seconds, solves).
    """
    op = problem.operator
    target = problem.target
    t0, s0 = time.perf_counter(), op.n_solves
    m_map = map_estimate(
        target,
        x0=problem.m_background.to(problem.data.dtype),
        method="lbfgs",
        iterations=config.map_iterations,
        progress=progress,
    ).model
    timings = {"map": time.perf_counter() - t0}
    solves = {"map": op.n_solves - s0}
    t0, s0 = time.perf_counter(), op.n_solves
    # Start every chain at the MAP: the reference then needs a short burn-in only.
    res = MALA(target, step_size=config.mala_step_size).run(
        config.mala_steps,
        n_chains=config.mala_chains,
        x0=m_map,
        burn_in=config.mala_burn_in,
        thin=config.mala_thin,
        seed=config.seed,
        progress=progress,
    )
    timings["mala"], solves["mala"] = time.perf_counter() - t0, op.n_solves - s0
    mala = res.flat()
    info = {
        "acceptance_rate": res.acceptance_rate,
        "step_size": res.step_size,
        "chains": config.mala_chains,
        "steps": config.mala_steps,
        "burn_in": config.mala_burn_in,
        "kept_draws": int(mala.shape[0]),
        # Geyer's estimator needs a few draws per chain; tiny test runs have none.
        "min_effective_sample_size": (
            float(res.effective_sample_size().min()) if res.samples.shape[0] >= 4 else None
        ),
    }
    return {"map": m_map, "mala": mala, "info": info, "timings": timings, "solves": solves}


def data_digest(data: torch.Tensor) -> str:
    """SHA-256 of the observed data's bytes (and dtype, shape): the child's check."""
    d = data.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{d.dtype}{tuple(d.shape)}".encode())
    h.update(d.numpy().tobytes())
    return h.hexdigest()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when the parent dies (no orphaned MALA run)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class BaselinesProcess:
    """MAP + MALA of ``config`` in a child interpreter, writing ``cache`` (``map_mala.pt``).

    Parameters
    ----------
    config : AVPConfig
        The validated run configuration (sent as JSON).
    cache : str
        Where the child writes the cache (atomically; the parent reads it).
    digest : str
        :func:`data_digest` of the parent's data; the child refuses to run on other data.
    threads : int
        torch and OpenMP threads of the child.
    log : str
        File receiving the child's output (kept for the user on failure).

    Notes
    -----
    Use as a context manager around VI: leaving the block early (an error, Ctrl-C)
    terminates the child; :meth:`wait` blocks until it is done and raises
    :class:`~devito_uq.errors.WorkerError` with the end of its log if it failed.
    """

    def __init__(self, config: AVPConfig, cache: str, digest: str, threads: int, log: str) -> None:
        self.config, self.cache, self.digest = config, os.fspath(cache), digest
        self.threads, self.log = int(threads), os.fspath(log)
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> BaselinesProcess:
        spec = os.fspath(self.cache) + ".config.json"
        with open(spec, "w") as fh:
            json.dump(self.config.to_dict(), fh)
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS=str(self.threads), DEVITO_LOGGING="ERROR")
        # the child imports this very devito_uq, even where the parent found it through a
        # sys.path entry of its own (a script run from a source checkout)
        here = os.path.dirname(os.path.dirname(os.path.abspath(devito_uq.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "devito_uq.apps.avp.baselines"]
        cmd += ["--config", spec, "--cache", self.cache, "--digest", self.digest]
        cmd += ["--threads", str(self.threads)]
        self._spec = spec
        with open(self.log, "w") as log:
            kwargs = {"preexec_fn": _die_with_parent} if sys.platform == "linux" else {}
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                **kwargs,
            )
        return self

    def done(self) -> bool:
        """True once the child has exited (successfully or not)."""
        return self._proc is not None and self._proc.poll() is not None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def wait(self) -> float:
        """Block until the child is done; return the seconds the parent waited for it."""
        assert self._proc is not None, "wait() outside the with-block"
        t0 = time.perf_counter()
        code = self._proc.wait()
        waited = time.perf_counter() - t0
        if code != 0:
            with open(self.log, errors="replace") as fh:
                tail = fh.read()[-_LOG_TAIL:]
            raise WorkerError(
                f"the MAP + MALA process (pid {self._proc.pid}) exited with status {code}; "
                f"its log {self.log!r} ends with:\n{tail}"
            )
        return waited

    def __exit__(self, *exc: Any) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung child
                proc.kill()
                proc.wait()
        if os.path.lexists(self._spec):
            os.remove(self._spec)


def _config_from_json(path: str) -> AVPConfig:
    values = read_input_json(path, "the baselines' configuration", InvalidArgumentError)
    tuples = {f for f, v in AVPConfig().to_dict().items() if isinstance(v, tuple)}
    return AVPConfig(**{k: tuple(v) if k in tuples else v for k, v in values.items()})


def main(argv: list[str] | None = None) -> int:
    """The child's entry point (``python -m devito_uq.apps.avp.baselines``)."""
    parser = argparse.ArgumentParser(description="MAP + MALA of the AVP experiment")
    parser.add_argument("--config", required=True, help="AVPConfig as JSON")
    parser.add_argument("--cache", required=True, help="map_mala.pt to write")
    parser.add_argument("--digest", required=True, help="SHA-256 the data must have")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    configure_threads(threads=args.threads)
    try:
        config = _config_from_json(args.config).validate()
        problem = build_problem(config)
        if data_digest(problem.data) != args.digest:
            raise WorkerError(
                "the MAP + MALA process synthesized other data than the VI process "
                f"(SHA-256 {data_digest(problem.data)} vs {args.digest})"
            )
        base = run_baselines(problem, config, progress=False)
        save_checkpoint(args.cache, {"config": config.to_dict(), **base})
    except DevitoUQError as exc:
        print(f"devito-uq baselines: error: {exc}", file=sys.stderr)
        return 2
    return 0


#: ``concurrent="auto"`` starts the MAP + MALA process only for at least this many MALA
#: steps (burn-in included): ≈ 15 s of MALA, several times the child's start-up.
_CONCURRENT_MIN_MALA_STEPS = 1000


def concurrent_baselines(config: AVPConfig) -> bool:
    """Whether MAP + MALA run in a second process beside VI (``config.concurrent``)."""
    if config.concurrent == "auto":
        # Two single-threaded processes never wait on each other (no barrier between
        # them), so even on a busy machine they cost at most the serial run's time; a
        # short MALA is not worth starting a second interpreter (≈ 3 s of imports).
        steps = config.mala_steps + config.mala_burn_in
        return available_cores() >= 2 and steps >= _CONCURRENT_MIN_MALA_STEPS
    return config.concurrent == "yes"


@contextlib.contextmanager
def thread_share(n: int):
    """torch's intra-op threads and the solvers' threads set to ``n`` inside the block,
    both restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    solver_before = set_solver_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        set_solver_threads(solver_before)


class TakeFreeCores:
    """VI callback: once the MAP + MALA process is done, VI's plane-wave solves take all
    ``threads`` (rows split over threads: bit-identical results, about twice the speed on
    two cores). Polls the child every ``every`` iterations; ``iteration`` records when."""

    def __init__(self, worker: BaselinesProcess, threads: int, every: int = 16) -> None:
        self.worker, self.threads, self.every = worker, threads, every
        self.iteration: int | None = None

    def __call__(self, iteration: int, values: dict) -> None:
        if self.iteration is None and iteration % self.every == 0 and self.worker.done():
            set_solver_threads(self.threads)
            self.iteration = iteration


if __name__ == "__main__":  # pragma: no cover - the child process
    sys.exit(main())
