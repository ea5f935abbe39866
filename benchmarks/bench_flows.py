"""Peak memory and time of one Glow training step: memory-frugal vs plain autograd vs normflows.

Configuration (issue 3): Glow with L=3 levels, K steps per level (K = 4, 8, 16, 32), 64×64×1
images, batch 8, hidden 64; one training step = forward, loss (½‖y‖² − logdet for devito_uq;
normflows' own ``forward_kld`` negative log-likelihood for normflows), backward.

Every (implementation, K) runs in a fresh subprocess so that no allocator cache is shared:
the model is built, ActNorm initialized, one warm-up step taken and the gradients set to
None (as ``optimizer.zero_grad()`` does); then

- CPU: peak memory = growth of the resident set during one step: the kernel's RSS high-water
  mark (VmHWM) is reset through ``/proc/self/clear_refs`` before the step and read after it,
  minus the RSS just before the step;
- CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` during the step minus
  ``torch.cuda.memory_allocated`` before it.

Time: the fastest of ``--repeats`` steps, taken round-robin over the implementations in
one process (so load from other processes hits them alike); medians are printed too. Usage::

    python benchmarks/bench_flows.py [--device cpu|cuda] [--repeats 3] [--ks 4 8 16 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

__all__ = ["main"]

IMPLS = ("frugal", "plain", "normflows")
LEVELS, HIDDEN, BATCH, SIZE = 3, 64, 8, 64


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _build(impl: str, k: int):
    import torch

    if impl == "normflows":
        import normflows as nf

        # normflows' own multiscale Glow recipe (examples/glow.ipynb), unconditional.
        flows, merges, q0 = [], [], []
        for i in range(LEVELS):
            ch = 2 ** (LEVELS + 1 - i)
            flows.append(
                [nf.flows.GlowBlock(ch, HIDDEN, split_mode="channel", scale=True) for _ in range(k)]
                + [nf.flows.Squeeze()]
            )
            if i > 0:
                merges.append(nf.flows.Merge())
                s = 2 ** (LEVELS - i)
                shape = (s, SIZE // s, SIZE // s)
            else:
                shape = (2 ** (LEVELS + 1), SIZE // 2**LEVELS, SIZE // 2**LEVELS)
            q0.append(nf.distributions.DiagGaussian(shape))
        model = nf.MultiscaleFlow(q0, flows, merges, class_cond=False)

        def step(x):
            loss = model.forward_kld(x)
            loss.backward()

        return model, step

    from devito_uq.flows import Glow

    model = Glow(1, levels=LEVELS, steps=k, hidden=HIDDEN, memory_frugal=impl == "frugal")

    def step(x):
        y, logdet = model(x)
        loss = (0.5 * (y**2).sum() - logdet.sum()) / x.shape[0]
        loss.backward()

    del torch
    return model, step


def _setup(impl: str, k: int, dev):
    import torch

    torch.manual_seed(0)
    model, step = _build(impl, k)
    model = model.to(dev)
    x = torch.rand(BATCH, 1, SIZE, SIZE, device=dev)
    with torch.no_grad():  # data-dependent ActNorm initialization
        model(x) if impl != "normflows" else model.forward_kld(x)
    step(x)  # warm-up: kernels, allocator pools
    model.zero_grad(set_to_none=True)
    return model, step, x


def memory_worker(impl: str, k: int, device: str) -> dict:
    """Peak-memory growth (MB) of one training step, in this fresh process."""
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    dev = torch.device(device)
    model, step, x = _setup(impl, k, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        step(x)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(dev) - before
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        before = _status_kb("VmRSS")
        step(x)
        peak = (_status_kb("VmHWM") - before) * 1024
    nparams = sum(p.numel() for p in model.parameters())
    return {"peak_mb": peak / 2**20, "params": nparams}


def time_worker(impls: list[str], k: int, device: str, repeats: int) -> dict:
    """Step times of all implementations for one K, interleaved round-robin in one process
    so that load from other processes on a shared machine hits them alike; reports the
    minimum and the median over ``repeats`` rounds."""
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    setups = {impl: _setup(impl, k, dev) for impl in impls}
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl, (model, step, x) in setups.items():
            model.zero_grad(set_to_none=True)
            sync()
            t0 = time.perf_counter()
            step(x)
            sync()
            times[impl].append(time.perf_counter() - t0)
    return {impl: {"time_s": min(t), "median_s": statistics.median(t)} for impl, t in times.items()}


def _run(cmd: list[str], env: dict) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "K"), help=argparse.SUPPRESS)
    ap.add_argument("--time-worker", type=int, metavar="K", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(memory_worker(args.worker[0], int(args.worker[1]), args.device)))
        return
    if args.time_worker:
        res = time_worker(args.impls, args.time_worker, args.device, args.repeats)
        print(json.dumps(res))
        return

    res = {}
    base = [sys.executable, __file__, "--device", args.device]
    for k in args.ks:
        for impl in args.impls:
            # Memory run: every allocation of 4 KiB or more is its own mmap, returned to the
            # OS when freed, and the heap is trimmed, so RSS follows live memory; otherwise
            # glibc keeps the warm-up step's freed pages resident and the measured step
            # reuses them (growth ~0).
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="4096", MALLOC_TRIM_THRESHOLD_="0")
            res[impl, k] = _run(base + ["--worker", impl, str(k)], env)
        cmd = base + ["--repeats", str(args.repeats), "--impls", *args.impls]
        for impl, r in _run(cmd + ["--time-worker", str(k)], dict(os.environ)).items():
            res[impl, k].update(r)
        for impl in args.impls:
            r = res[impl, k]
            print(
                f"  {impl:9s} K={k:2d}: {r['peak_mb']:8.1f} MB, step min {r['time_s']:.3f} s, "
                f"median {r['median_s']:.3f} s",
                flush=True,
            )

    import torch

    if args.device == "cuda":
        machine = torch.cuda.get_device_name(0)
        how = "torch.cuda.max_memory_allocated growth during one step"
    else:
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        how = "RSS high-water-mark growth during one step (fresh process per row)"
    threads = os.environ.get("BENCH_THREADS", "1")
    print()
    print(
        f"Glow L={LEVELS}, {SIZE}x{SIZE}x1, batch {BATCH}, hidden {HIDDEN}; device {args.device} "
        f"({machine}), torch threads {threads}, torch {torch.__version__}"
    )
    print(f"peak memory: {how}; time: fastest of {args.repeats} interleaved steps")
    print()
    head = "|  K | frugal MB | plain MB | normflows MB | normflows/frugal mem "
    head += "| frugal s | plain s | normflows s | frugal/plain time |"
    print(head)
    print("|---:" + "|---:" * 8 + "|")
    for k in args.ks:
        f, p, n = (res.get((i, k)) for i in IMPLS)
        cells = [f"{k:2d}"]
        cells += [f"{r['peak_mb']:.1f}" if r else "-" for r in (f, p, n)]
        cells.append(f"{n['peak_mb'] / f['peak_mb']:.1f}x" if f and n else "-")
        cells += [f"{r['time_s']:.3f}" if r else "-" for r in (f, p, n)]
        cells.append(f"{f['time_s'] / p['time_s']:.2f}x" if f and p else "-")
        print("| " + " | ".join(cells) + " |")
    if ("frugal", 4) in res and ("frugal", 32) in res:
        ratio = res["frugal", 32]["peak_mb"] / res["frugal", 4]["peak_mb"]
        print()
        print(f"frugal peak memory K=32 / K=4: {ratio:.2f}x (target <= 1.3x)")
        if ("normflows", 32) in res:
            r = res["normflows", 32]["peak_mb"] / res["frugal", 32]["peak_mb"]
            print(f"normflows / frugal peak memory at K=32: {r:.1f}x (target >= 4x)")
        if ("plain", 32) in res:
            r = res["frugal", 32]["time_s"] / res["plain", 32]["time_s"]
            print(f"frugal / plain step time at K=32: {r:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
