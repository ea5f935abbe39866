"""Maximum-likelihood training step of ConditionalImageFlow (issue 13), plain vs frugal.

One step: pairs (m, c) on a 44×24 grid (levels 2, steps 4, hidden 32), loss
``−log q(m | c)`` (``log_prob(m, c, n_pad=1)``), backward, Adam. Configurations: kind hint
and glow, batch 16 and 64, memory_frugal False and True, the condition read directly
(``cond_channels=1``, e.g. Jᵀd) or through ``ImageSummary(1, 8, hidden=32, depth=4)``
(frugal in the frugal runs: its blocks recomputed by ``torch.utils.checkpoint``).
All configurations run interleaved in one process (load from other processes hits them
alike); fastest and median of ``--repeats`` steps. Memory: bytes autograd saves for the
backward pass of one step (a saved-tensors hook, parameters excluded), i.e. the
activations a plain step keeps and a frugal one does not.

Part 2: ``TraceSummary(7, 801, 64, hidden=32)`` (AVP gathers → features) forward and
forward + backward, batch 64.

Usage: ``python benchmarks/bench_conditional.py [--repeats N] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from devito_uq.flows import ConditionalImageFlow, ImageSummary, TraceSummary  # noqa: E402

GRID, LEVELS, STEPS, HIDDEN = (44, 24), 2, 4, 32


def _setup(kind, batch, frugal, summary, device):
    torch.manual_seed(0)
    s = ImageSummary(1, 8, hidden=32, depth=4, memory_frugal=frugal) if summary else None
    q = ConditionalImageFlow(
        GRID, 1, kind, LEVELS, STEPS, HIDDEN, summary=s, memory_frugal=frugal
    ).to(device)
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    c = torch.randn(batch, 1, *GRID, device=device)
    m = 0.5 * c[:, 0] + 0.1 * torch.randn(batch, *GRID, device=device)

    def step():
        loss = -q.log_prob(m, c, n_pad=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return q, step, (m, c)


def _saved_bytes(q, m, c):
    params = {p.untyped_storage().data_ptr() for p in q.parameters()}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = -q.log_prob(m, c, n_pad=1).mean()
    loss.backward()
    return sum(seen.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dev = torch.device(args.device)
    configs = [
        (kind, b, frugal, summary)
        for summary in (False, True)
        for kind in ("hint", "glow")
        for b in (16, 64)
        for frugal in (False, True)
    ]
    runs = {cfg: _setup(*cfg, dev) for cfg in configs}
    mem = {cfg: _saved_bytes(q, *data) for cfg, (q, _, data) in runs.items()}
    times = {cfg: [] for cfg in configs}
    for _, step, _ in runs.values():
        step()  # warm-up (ActNorm initialization, allocator)
    for _ in range(args.repeats):
        for cfg, (_, step, _) in runs.items():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t = time.perf_counter()
            step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            times[cfg].append(time.perf_counter() - t)
    print(
        f"device {dev}, threads {torch.get_num_threads()}, grid {GRID}, levels {LEVELS}, "
        f"steps {STEPS}, hidden {HIDDEN}; ms per ML step (min / median of {args.repeats}), "
        "MB saved for backward"
    )
    print("summary  kind  batch | plain ms        MB    | frugal ms       MB    | time x  mem /")
    for summary in (False, True):
        for kind in ("hint", "glow"):
            for b in (16, 64):
                row = []
                for frugal in (False, True):
                    ts = times[kind, b, frugal, summary]
                    row.append(
                        (
                            min(ts) * 1e3,
                            statistics.median(ts) * 1e3,
                            mem[kind, b, frugal, summary] / 2**20,
                        )
                    )
                (p0, p1, pm), (f0, f1, fm) = row
                print(
                    f"{'cnn' if summary else 'none':7s}  {kind:4s}  {b:5d} | "
                    f"{p0:6.1f} / {p1:6.1f} {pm:6.1f} | {f0:6.1f} / {f1:6.1f} {fm:6.2f} | "
                    f"{f0 / p0:5.2f}  {pm / fm:5.1f}"
                )

    _trace_summary(dev, args.repeats)


def _trace_summary(dev, repeats):
    torch.manual_seed(0)
    s = TraceSummary(7, 801, 64, hidden=32).to(dev)
    d = torch.randn(64, 7, 801, device=dev)
    fwd, both = [], []
    for k in range(3 + 5 * repeats):
        t = time.perf_counter()
        with torch.no_grad():
            s(d)
        t1 = time.perf_counter()
        s.zero_grad()
        s(d).square().sum().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t2 = time.perf_counter()
        if k >= 3:
            fwd.append(t1 - t)
            both.append(t2 - t1)
    print(
        f"TraceSummary(7, 801, 64, hidden=32), batch 64, lengths {s.lengths}: forward "
        f"{min(fwd) * 1e3:.2f} / {statistics.median(fwd) * 1e3:.2f} ms, forward+backward "
        f"{min(both) * 1e3:.2f} / {statistics.median(both) * 1e3:.2f} ms (min / median)"
    )


if __name__ == "__main__":
    main()
