"""Flow training steps, side by side: a VI step on vectors against zuko and normflows, and
Glow's memory-frugal step against plain autograd and normflows.

Part ``vi`` (issue 11): one variational-inference step on an n-vector — draw a batch with
its log-density (``rsample_and_log_prob``), a Gaussian likelihood, backward, fused Adam
(``torch.optim.Adam(..., fused=True)``, what ``VariationalPosterior.fit`` uses, for every
implementation) — for

- ``hint``: ``HINT(n, steps=4, hidden=64)`` (one full-width coupling per step,
  ``memory_frugal="auto"``);
- ``hint-ag``: the same network with its dense LU mixing run through plain autograd
  (``devito_uq.flows.mixing.autograd_forward``/``autograd_inverse``, the layer before
  its hand-written backward): the baseline of that change (n ≥ 257);
- ``zuko-rnvp``: zuko ``RealNVP(n, transforms=4, hidden_features=(64, 64))``;
- ``zuko-nsf``: zuko ``NSF(n, transforms=4, hidden_features=(64, 64), passes=2)`` (coupling
  splines; the fully autoregressive default needs n sequential passes to sample);
- ``nf-rnvp``: normflows RealNVP (``AffineCouplingBlock`` with an MLP [n/2, 64, 64, n]
  and a swap permutation, 4 blocks);

equal depth (4 transforms) and width (two hidden layers of 64), n ∈ {40, 128, 1024},
batch 8 and 64, 1 torch thread; and the AVP flow (``devito_uq.apps.avp.make_flow``:
``HINT(128, steps=5, hidden=64)``, batch 8) against the RealNVPs at 5 transforms. All
implementations of one row run in one process, round-robin with the order rotated every
round, so load from other processes and the position in the round hit them alike; the
fastest and the median of ``--repeats`` steps are reported. Below n = 257 ``hint`` runs
the same autograd mixing as ``hint-ag`` (``devito_uq.flows.mixing.FUNCTION_MIN_SIZE``):
those two columns then differ by noise only.

Part ``glow`` (issue 3): peak memory and time of one Glow training step, memory-frugal vs
plain autograd vs normflows (see its functions below).

Usage::

    python benchmarks/bench_flows.py [vi|glow|all] [--repeats N] [--device cpu|cuda] [--ks ...]
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

__all__ = ["main", "vi_step_times"]

VI_IMPLS = ("hint", "hint-ag", "zuko-rnvp", "zuko-nsf", "nf-rnvp")
AVP_IMPLS = ("hint", "hint-ag", "zuko-rnvp", "nf-rnvp")
VI_SIZES = (40, 128, 1024)
VI_BATCHES = (8, 64)
VI_STEPS, VI_HIDDEN = 4, 64


def _autograd_mixing(net):
    """Run every vector LU mixing of ``net`` through the plain-autograd formulation."""
    from devito_uq.flows import InvertibleConv1x1, mixing

    def bind(layer, reference):
        def run(v, c=None):
            args = (layer.lu, layer.log_s, layer.sign, layer.perm_index, layer.perm_inverse)
            return reference(v, *args)

        return run

    for m in net.modules():
        if isinstance(m, InvertibleConv1x1) and m.ndim == 0:
            m._forward = bind(m, mixing.autograd_forward)
            m._inverse = bind(m, mixing.autograd_inverse)
    return net


def _vi_flow(impl: str, n: int, steps: int = VI_STEPS):
    """(parameters, draw) of one implementation; ``draw(b)`` returns samples, log q."""
    if impl in ("hint", "hint-ag"):
        from devito_uq.flows import HINT, Flow

        net = HINT(n, steps=steps, hidden=VI_HIDDEN)
        q = Flow(_autograd_mixing(net) if impl == "hint-ag" else net, (n,))
        return q.parameters(), q.rsample_and_log_prob
    if impl.startswith("zuko"):
        import zuko

        hidden = (VI_HIDDEN, VI_HIDDEN)
        if impl == "zuko-rnvp":
            f = zuko.flows.RealNVP(n, transforms=steps, hidden_features=hidden)
        else:
            f = zuko.flows.NSF(n, transforms=steps, hidden_features=hidden, passes=2)
        return f.parameters(), lambda b: f().rsample_and_log_prob((b,))
    import normflows as nf

    blocks = []
    for _ in range(steps):
        mlp = nf.nets.MLP([n // 2, VI_HIDDEN, VI_HIDDEN, n], init_zeros=True)
        blocks += [nf.flows.AffineCouplingBlock(mlp), nf.flows.Permute(n, mode="swap")]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(n), blocks)
    return model.parameters(), model.sample


def vi_step_times(
    n: int, batch: int, impls, repeats: int, depth: int = VI_STEPS
) -> dict[str, dict[str, float]]:
    """Seconds per VI step (fastest and median of ``repeats``, interleaved) per impl."""
    import torch

    mean = torch.linspace(-1, 1, n)
    steps = {}
    for impl in impls:
        torch.manual_seed(0)
        params, draw = _vi_flow(impl, n, depth)
        opt = torch.optim.Adam(params, lr=1e-4, fused=True)

        def step(draw=draw, opt=opt):
            opt.zero_grad(set_to_none=True)
            m, log_q = draw(batch)
            # reverse KL against N(mean, 0.5² I): likelihood + entropy term
            loss = (2.0 * ((m - mean) ** 2).sum(1) + log_q).mean()
            loss.backward()
            opt.step()

        for _ in range(3):  # ActNorm initialization, allocator warm-up
            step()
        steps[impl] = step
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    order = list(steps)
    for r in range(repeats):
        # rotate the order every round: the implementation that runs right after another
        # library's step measured up to 10 % slower than the same code running second
        for impl in order[r % len(order) :] + order[: r % len(order)]:
            t0 = time.perf_counter()
            steps[impl]()
            times[impl].append(time.perf_counter() - t0)
    return {k: {"min": min(t), "median": statistics.median(t)} for k, t in times.items()}


def vi_main(repeats: int, sizes, batches) -> None:
    import torch

    torch.set_num_threads(1)
    load0 = os.getloadavg()
    avp = vi_step_times(128, 8, AVP_IMPLS, 4 * repeats, depth=5)
    cells = " ".join(f"{k} {v['min'] * 1e3:.2f}" for k, v in avp.items())
    print(f"  AVP flow: {cells} ms", flush=True)
    res = {}
    for n in sizes:
        for b in batches:
            r = repeats if n < 1024 else max(3, repeats // 2)
            res[n, b] = vi_step_times(n, b, VI_IMPLS, r)
            cells = " ".join(f"{k} {v['min'] * 1e3:.1f}" for k, v in res[n, b].items())
            print(f"  n={n} batch={b}: {cells} ms", flush=True)
    load1 = os.getloadavg()
    print()
    print(
        f"VI step, {VI_STEPS} transforms x {VI_HIDDEN} hidden, fused Adam, 1 torch thread, "
        f"torch {torch.__version__}, {platform.machine()} {os.cpu_count()} cores; load "
        f"average {load0[0]:.1f} at start, {load1[0]:.1f} at end"
    )
    print("ms per step: fastest (median) of interleaved repeats; ratio = hint / fastest peer")
    print()
    print("| n | batch | " + " | ".join(VI_IMPLS) + " | hint / fastest peer | ag / hint |")
    print("|---:|---:|" + "---:|" * (len(VI_IMPLS) + 2))
    for (n, b), r in res.items():
        cells = [f"{r[k]['min'] * 1e3:.1f} ({r[k]['median'] * 1e3:.1f})" for k in VI_IMPLS]
        peer = min(r[k]["min"] for k in VI_IMPLS if not k.startswith("hint"))
        ratio = r["hint"]["min"] / peer
        ag = r["hint-ag"]["min"] / r["hint"]["min"]
        print(f"| {n} | {b} | " + " | ".join(cells) + f" | {ratio:.2f}x | {ag:.2f}x |")
    print()
    print(
        f"AVP flow, HINT 128 x 5 steps x 64 hidden and the peers at 5 transforms, batch 8, "
        f"{4 * repeats} interleaved repeats:"
    )
    print()
    print("| n | batch | " + " | ".join(AVP_IMPLS) + " | hint / fastest peer |")
    print("|---:|---:|" + "---:|" * (len(AVP_IMPLS) + 1))
    cells = [f"{avp[k]['min'] * 1e3:.2f} ({avp[k]['median'] * 1e3:.2f})" for k in AVP_IMPLS]
    peer = min(avp[k]["min"] for k in AVP_IMPLS if not k.startswith("hint"))
    print("| 128 | 8 | " + " | ".join(cells) + f" | {avp['hint']['min'] / peer:.2f}x |")


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
    ap.add_argument("part", nargs="?", default="all", choices=("vi", "glow", "all"))
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(VI_SIZES))
    ap.add_argument("--batches", type=int, nargs="+", default=list(VI_BATCHES))
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
    if args.part in ("vi", "all"):
        vi_main(max(args.repeats, 7), args.sizes, args.batches)
        print()
    if args.part in ("glow", "all"):
        glow_main(args)


def glow_main(args) -> None:
    """Part ``glow``: Glow memory and time, one fresh process per memory row."""
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
