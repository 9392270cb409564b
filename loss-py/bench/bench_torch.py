#!/usr/bin/env python3
"""xent against PyTorch's own cross_entropy, from Python, interleaved in one process.

    python loss-py/bench/bench_torch.py [--threads 1] [--quick] [--out results.json]

The process is pinned to `--threads` CPUs and torch runs on as many (`torch.set_num_threads`);
xent runs loss-cpu on one thread, rayon on more. Three measurements, each sampling its two sides
in turn (`A B B A …`, samples of at least 20 ms — 5 with `--quick` — of repeated calls), so that
the machine's drift hits both alike; each figure is a median over pairs, with the ratio's 10th and
90th percentiles over pairs:

1. forward+backward through autograd (`loss.backward()`), weighted mean, float32, on PERF.md's
   cells: `xent.cross_entropy` against `torch.nn.functional.cross_entropy` on the same tensors;
2. the call overhead: a 4×3 forward (no gradient) of each;
3. the binding against the Rust call: on 4096×4096, `xent.cross_entropy` forward+backward
   through autograd, and `xent.compute(..., grad=True)` (NumPy), against the Rust call itself (the
   raw entry the package's Python layer calls, on the same kind of memory), the three sampled in
   turn.
"""
import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import xent
from xent import _core

CELLS = [(65536, 3), (16384, 10), (16384, 100), (1024, 1000), (4096, 4096), (256, 32000),
         (64, 128256)]


def timed(fn, min_s):
    """Seconds per call of `fn`, over repeats lasting at least `min_s`."""
    fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-9)
    reps = max(1, int(min_s / one))
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def interleaved(a, b, pairs, min_s):
    """Medians of seconds per call of `a` and `b`, and the percentiles (10, 50, 90) over pairs of
    `time(b) / time(a)` (above 1: `a` is faster)."""
    ta, tb, ratios = [], [], []
    for i in range(pairs):
        if i % 2 == 0:
            x, y = timed(a, min_s), timed(b, min_s)
        else:
            y, x = timed(b, min_s), timed(a, min_s)
        ta.append(x)
        tb.append(y)
        ratios.append(y / x)
    q = statistics.quantiles(ratios, n=10)
    return statistics.median(ta), statistics.median(tb), (q[0], statistics.median(ratios), q[-1])


def problem(n, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g) * 3).requires_grad_()
    t = torch.randint(0, c, (n,), generator=g)
    w = torch.rand(c, generator=g) + 0.5
    return x, t, w


def fused(fn, x, t, w):
    def run():
        x.grad = None
        fn(x, t, weight=w).backward()
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(args.threads)
    backend = "cpu" if args.threads == 1 else "rayon"
    min_s = 0.005 if args.quick else 0.02
    pairs = 6 if args.quick else 16
    ours = lambda x, t, weight: xent.cross_entropy(x, t, weight=weight, backend=backend,
                                                  threads=None if backend == "cpu" else args.threads)
    report = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "cpus": cpus, "torch": torch.__version__, "xent": xent.__version__,
              "backend": backend, "fused": [], "overhead": None, "binding": None}

    print(f"# xent {xent.__version__} ({backend}) against torch {torch.__version__}, "
          f"{args.threads} thread(s) pinned to CPUs {cpus}\n")
    print("forward+backward through autograd, weighted mean, float32 (G logits/s; ratio: median "
          "over interleaved pairs, [10th, 90th] percentile):\n")
    print("| N×C | xent | PyTorch | xent / PyTorch |")
    print("|---|---|---|---|")
    for n, c in CELLS:
        x, t, w = problem(n, c)
        ta, tb, (lo, mid, hi) = interleaved(fused(ours, x, t, w), fused(F.cross_entropy, x, t, w),
                                            pairs, min_s)
        row = {"batch": n, "classes": c, "xent_s": ta, "torch_s": tb, "ratio": mid,
               "ratio_p10": lo, "ratio_p90": hi}
        report["fused"].append(row)
        print(f"| {n}×{c} | {n * c / ta / 1e9:.3f} | {n * c / tb / 1e9:.3f} | "
              f"{mid:.2f} [{lo:.2f}, {hi:.2f}] |")

    x, t, w = problem(4, 3)
    xd = x.detach()
    ta, tb, (lo, mid, hi) = interleaved(lambda: xent.cross_entropy(xd, t, backend=backend),
                                        lambda: F.cross_entropy(xd, t), pairs, min_s)
    report["overhead"] = {"xent_s": ta, "torch_s": tb, "ratio": mid, "ratio_p10": lo,
                          "ratio_p90": hi}
    print(f"\ncall overhead, 4×3 forward: xent {ta * 1e6:.1f} µs, PyTorch {tb * 1e6:.1f} µs "
          f"(xent / PyTorch time {1 / mid:.2f} [{1 / hi:.2f}, {1 / lo:.2f}])")

    # The binding against the Rust call on 4096×4096.
    n, c = 4096, 4096
    x, t, w = problem(n, c)
    xn, tn, wn = x.detach().numpy(), t.numpy(), w.numpy()
    loss = np.zeros((), dtype=np.float32)
    up = np.ones((), dtype=np.float32)
    buf = lambda a: (a.ctypes.data, a.size)

    def rust():
        # The Rust call itself (the backend's fused pass, ~2 µs of Python), writing into the same
        # kind of memory the binding's outputs come from (the package's pool: see its docs).
        grad = _core.empty((n, c), np.float32)
        _core.call(backend=backend, threads=0 if backend == "cpu" else args.threads,
                   logits=buf(xn), dtype="float32", shape=(n, c), target=buf(tn), probs=False,
                   target_shape=(n,), weight=buf(wn), loss=buf(loss), grad=buf(grad),
                   grad_output=buf(up))

    torch_side = fused(ours, x, t, w)
    numpy_side = lambda: xent.compute(xn, tn, wn, grad=True, backend=backend)
    binding = []
    sides = [rust, torch_side, numpy_side]
    for i in range(pairs):
        # The three in a rotating order, so that none always goes first.
        order = [(i + k) % 3 for k in range(3)]
        got = {}
        for k in order:
            got[k] = timed(sides[k], min_s)
        binding.append((got[0], got[1], got[2]))
    rs = statistics.median(r for r, _, _ in binding)
    a = statistics.median(x for _, x, _ in binding)
    b = statistics.median(x for _, _, x in binding)
    ra = sorted(x / r for r, x, _ in binding)
    rb = sorted(x / r for r, _, x in binding)
    report["binding"] = {"rust_s": rs, "torch_autograd_s": a, "numpy_s": b,
                         "torch_over_rust": statistics.median(ra),
                         "numpy_over_rust": statistics.median(rb)}
    print(f"\nbinding against the Rust call, 4096×4096 forward+backward: Rust {rs * 1e3:.2f} ms, "
          f"xent.cross_entropy + backward {a * 1e3:.2f} ms ({statistics.median(ra):.3f}× Rust), "
          f"xent.compute(grad=True) {b * 1e3:.2f} ms ({statistics.median(rb):.3f}× Rust)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
