"""One acoustic gradient: full wavefield storage vs optimal checkpointing (revolve).

``AcousticModeling`` with ``max_wavefield_bytes`` above the saved wavefield (full storage,
the baseline) and with a 500 MB budget (the gradient then recomputes the wavefield from
as many two-level snapshots as fit, by a revolve schedule). Default problem: a 4 s shot
on 801 × 301 at 10 m (40-point layer, order 8, float32, 10 Hz, 401 receivers), the
misfit ``½‖F(m) − d‖²`` of a smooth start against data of a model with a lens.

Each case runs in its own process (``/proc/self/status`` ``VmHWM`` is the process' peak
resident memory: Devito's buffers are numpy arrays that tracemalloc would miss, and a
fresh process starts from a clean high-water mark). Reported: peak memory before the
gradient (model, data, compiled operators) and at the end, the time of forward +
backward, the gradient's relative difference to full storage, and the forward steps the
revolve schedule ran against Griewank's optimum for the budget. ``--reps`` alternates
the cases. Prints and writes ``benchmarks/results/bench_checkpointing.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DEVITO_LANGUAGE", "C")
os.environ.setdefault("DEVITO_LOGGING", "ERROR")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

__all__ = ["main", "run_case"]

FULL = 2**40  # a budget no wavefield reaches: full storage


def _vmhwm() -> int:
    """Peak resident memory of this process so far, bytes (Linux ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def run_case(args: argparse.Namespace, budget: int, out: Path) -> dict:
    """One gradient under ``budget`` bytes in this process; its numbers (``out``: the
    gradient, ``.npy``)."""
    import torch

    from devito_uq.physics import AcousticModel, AcousticModeling, Survey
    from devito_uq.physics.acoustic.solver import AcousticSolver
    from devito_uq.physics.revolve import optimal_forward_steps
    from devito_uq.physics.solver import get_solver

    torch.set_num_threads(1)
    nx, nz = args.grid
    model = AcousticModel((nx, nz), (args.h, args.h), nbl=args.nbl, space_order=8)
    survey = Survey.surface(
        model, nshots=1, nreceivers=nx // 2 + 1, t1=args.t1, f0_hz=args.f0, vmax=4.5
    )
    z = np.linspace(0.0, 1.0, nz)[None, :]
    x = np.linspace(-1.0, 1.0, nx)[:, None]
    v0 = np.broadcast_to(1.5 + 3.0 * z, (nx, nz))
    lens = 0.3 * np.exp(-(x**2 + (z - 0.5) ** 2) / 0.02)
    m0 = torch.tensor(1.0 / v0**2, dtype=torch.float32)
    m_true = torch.tensor(1.0 / (v0 + lens) ** 2, dtype=torch.float32)
    F = AcousticModeling(model, survey, max_wavefield_bytes=budget)
    with torch.no_grad():
        d = F(m_true)
    # Build the case's operators outside the timing: a 20 ms gradient (checkpointed by
    # a budget of one snapshot when the case checkpoints).
    short = Survey.surface(
        model, nshots=1, nreceivers=nx // 2 + 1, t1=20.0, f0_hz=args.f0, vmax=4.5
    )
    warm = AcousticModeling(model, short, max_wavefield_bytes=budget if budget >= FULL else 1)
    m = m0.clone().requires_grad_(True)
    warm(m).sum().backward()
    solver = get_solver(AcousticSolver, model, np.float32)
    before = _vmhwm()
    m = m0.clone().requires_grad_(True)
    t = time.perf_counter()
    (0.5 * (F(m) - d).pow(2).sum()).backward()
    elapsed = time.perf_counter() - t
    np.save(out, m.grad.numpy())
    row = {
        "steps": survey.nt - 1,
        "wavefield_bytes": solver.wavefield_nbytes(survey.nt),
        "peak_before": before,
        "peak": _vmhwm(),
        "seconds": elapsed,
    }
    if budget < FULL:
        steps, snaps, run = solver.last_checkpointing
        row.update(snaps=snaps, forward_steps=run, optimum=optimal_forward_steps(steps, snaps))
    return row


def _spawn(args: argparse.Namespace, budget: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--case", str(budget), "--save", str(out)]
    cmd += ["--grid", *map(str, args.grid), "--h", str(args.h), "--t1", str(args.t1)]
    cmd += ["--nbl", str(args.nbl), "--f0", str(args.f0)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"case {budget} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run both cases in subprocesses and write the table (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, nargs=2, default=[801, 301])
    ap.add_argument("--h", type=float, default=10.0, help="grid spacing, m")
    ap.add_argument("--t1", type=float, default=4000.0, help="record length, ms")
    ap.add_argument("--nbl", type=int, default=40)
    ap.add_argument("--f0", type=float, default=10.0)
    ap.add_argument("--budget", type=float, default=500e6, help="checkpointing budget, bytes")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--case", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "bench_checkpointing.md")
    )
    args = ap.parse_args()
    if args.case is not None:  # a child: one case
        print(json.dumps(run_case(args, args.case, args.save)), flush=True)
        return
    budgets = {"full storage": FULL, f"revolve, {args.budget / 1e6:.0f} MB": int(args.budget)}
    rows: dict[str, list[dict]] = {k: [] for k in budgets}
    with tempfile.TemporaryDirectory(prefix="bench-ckp-") as tmp:
        for r in range(args.reps):
            names = list(budgets) if r % 2 == 0 else list(budgets)[::-1]
            for name in names:
                out = Path(tmp) / f"{len(rows[name])}-{budgets[name]}.npy"
                rows[name].append(_spawn(args, budgets[name], out) | {"grad": str(out)})
                print(name, {k: v for k, v in rows[name][-1].items() if k != "grad"}, flush=True)
        full, ckp = (rows[k] for k in budgets)
        g0, g1 = np.load(full[0]["grad"]), np.load(ckp[0]["grad"])
        rel = float(np.linalg.norm(g1 - g0) / np.linalg.norm(g0))
    t_full = min(r["seconds"] for r in full)
    t_ckp = min(r["seconds"] for r in ckp)
    c, f = ckp[0], full[0]
    mb = lambda b: f"{b / 1e6:,.0f}"  # noqa: E731
    lines = [
        "# One acoustic gradient: full storage vs revolve checkpointing",
        "",
        f"{args.grid[0]} × {args.grid[1]} at {args.h:g} m, {args.nbl}-point layer, order 8, "
        f"float32, {args.f0:g} Hz, {args.t1 / 1e3:g} s ({f['steps']} steps), 1 shot, "
        f"{args.grid[0] // 2 + 1} receivers; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs, OMP_NUM_THREADS="
        f"{os.environ['OMP_NUM_THREADS']}; one process per case, fastest of {args.reps} "
        "alternated. Peak = the process' VmHWM (before: model, data and operators).",
        "",
        "| case | saved wavefield / snapshots | peak before (MB) | peak (MB) | gradient (s) |",
        "|---|---|---:|---:|---:|",
        f"| full storage | {mb(f['wavefield_bytes'])} MB | {mb(f['peak_before'])} | "
        f"{mb(f['peak'])} | {t_full:.1f} |",
        f"| revolve, {args.budget / 1e6:.0f} MB | {c['snaps']} snapshots | "
        f"{mb(c['peak_before'])} | {mb(c['peak'])} | {t_ckp:.1f} |",
        "",
        f"Time ratio {t_ckp / t_full:.2f}× (target ≤ 2.5×); gradient relative difference "
        f"{rel:.1e}; revolve ran {c['forward_steps']:,} forward steps for {c['steps']:,} "
        f"(optimum for {c['snaps']} snapshots: {c['optimum']:,}).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
