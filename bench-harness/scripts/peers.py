#!/usr/bin/env python3
"""Times PyTorch and JAX cross-entropy on the CPU, on the exact inputs loss-bench wrote.

Called by `loss-bench run` (never by hand, though it can be):
  peers.py --probe                      -> {"pytorch": "2.x" | null, "jax": "0.x" | null}
  peers.py --manifest M.json --threads T -> one JSON object per line per (peer, cell, op)

The harness starts this script pinned to exactly as many CPUs as `--threads` (its affinity), and
every timing carries the process's CPU time over wall time (`cpu_per_wall`).

Each cell directory holds logits.bin (float32, N*C), targets.bin (int64, N) and, when weighted,
weight.bin (float32, C). Results carry the loss and the gradient's sum of squares so that the
harness can cross-check them against its reference before it reports the timing.
"""
import argparse
import json
import os
import sys
import time


def probe():
    found = {}
    try:
        import torch
        found["pytorch"] = torch.__version__
    except Exception:
        found["pytorch"] = None
    try:
        import jax
        found["jax"] = jax.__version__
    except Exception:
        found["jax"] = None
    print(json.dumps(found))


def time_calls(fn, budget):
    fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-9)
    per = max(1, min(100000, int(20e-6 / one) + 1))
    samples = []
    # The process's CPU time (every thread) over the wall time of the samples: how many CPUs the
    # library kept busy, whatever thread count it was asked for.
    cpu, wall = 0.0, 0.0
    start = time.perf_counter()
    while len(samples) < budget["min_samples"] or (
        len(samples) < budget["max_samples"] and time.perf_counter() - start < budget["target_s"]
    ):
        c = time.process_time()
        t = time.perf_counter()
        for _ in range(per):
            fn()
        dt = time.perf_counter() - t
        cpu += time.process_time() - c
        wall += dt
        samples.append(dt * 1e9 / per)
    samples.sort()
    pick = lambda q: samples[int(round((len(samples) - 1) * q))]
    med = pick(0.5)
    return {"median_ns": med, "min_ns": samples[0], "spread": (pick(0.9) - pick(0.1)) / med,
            "reps": len(samples) * per, "cpu_per_wall": cpu / wall if wall > 0 else None}


def load(cell):
    import numpy as np
    n, c = cell["batch"], cell["classes"]
    x = np.fromfile(os.path.join(cell["dir"], "logits.bin"), dtype=np.float32).reshape(n, c)
    t = np.fromfile(os.path.join(cell["dir"], "targets.bin"), dtype=np.int64)
    w = None
    if cell["weighted"]:
        w = np.fromfile(os.path.join(cell["dir"], "weight.bin"), dtype=np.float32)
    s = None
    if cell.get("position_weights"):
        s = np.fromfile(os.path.join(cell["dir"], "position_weight.bin"), dtype=np.float32)
    return x, t, w, s


def dtype_of(cell):
    return cell.get("dtype", "f32").split("+")[0]


def torch_loss(F, torch, cell, xr, t, w, s, red):
    """PyTorch's cross_entropy, composed by hand with the extensions (soft-cap, z-loss,
    position weights) the way a user would write them."""
    cap, z = cell.get("softcap"), cell.get("z_loss") or 0.0
    # The cap in f32 on the widened logits (as the SPEC and the JAX peer do), back to the type.
    xc = (cap * torch.tanh(xr.float() / cap)).to(xr.dtype) if cap else xr
    if not z and s is None:
        return F.cross_entropy(xc, t, weight=w, reduction=red)
    ce = F.cross_entropy(xc, t, weight=w, reduction="none").float()
    lse = torch.logsumexp(xc.float(), dim=1)
    sw = s if s is not None else torch.ones_like(lse)
    valid = (t != -100).float()
    ce = ce * sw
    zt = z * sw * lse * lse * valid
    if red == "none":
        return ce + zt
    if red == "sum":
        return ce.sum() + zt.sum()
    wy = (w[t] if w is not None else torch.ones_like(lse)) * valid
    return ce.sum() / (sw * wy).sum() + zt.sum() / (sw * valid).sum()


def run_torch(cells, threads, budget, emit):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    types = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
    for cell in cells:
        x, t, w, s = load(cell)
        x = torch.from_numpy(x).to(types[dtype_of(cell)])
        t = torch.from_numpy(t)
        # cross_entropy wants the class weights in the logits' type (a half weight is rounded:
        # the check holds half cells to the half type's tolerance).
        w = None if w is None else torch.from_numpy(w).to(x.dtype)
        s = None if s is None else torch.from_numpy(s)
        red = cell["reduction"]
        ce = lambda xr: torch_loss(F, torch, cell, xr, t, w, s, red)
        with torch.no_grad():
            up = torch.ones_like(ce(x))
        for op in cell["ops"]:
            if op == "forward":
                with torch.no_grad():
                    fn = lambda: ce(x)
                    loss = fn()
                    grad_sq = None
                    note = "cross_entropy under no_grad"
            else:
                xr = x.clone().requires_grad_(True)
                if op == "backward":
                    out = ce(xr)
                    fn = lambda: torch.autograd.grad(out, xr, up, retain_graph=True)
                    note = "autograd.grad of a recorded forward (backward alone)"
                else:
                    def fn():
                        xr.grad = None
                        o = ce(xr)
                        o.backward(up)
                        return o
                    note = "forward then .backward()"
                loss = ce(xr).detach()
                g = torch.autograd.grad(ce(xr), xr, up)[0]
                grad_sq = float((g.double() ** 2).sum())
            timing = time_calls(fn, budget)
            emit("pytorch", cell, op, threads, timing, loss.double().reshape(-1).tolist(), grad_sq,
                 f"torch {torch.__version__}: {note}")


def run_jax(cells, threads, budget, emit):
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", False)
    types = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}
    for cell in cells:
        x, t, w, s = load(cell)
        red = cell["reduction"]
        cap, z = cell.get("softcap"), cell.get("z_loss") or 0.0
        sj = None if s is None else jnp.asarray(s)
        xj = jnp.asarray(x).astype(types[dtype_of(cell)])
        tj = jnp.asarray(t.astype("int32"))
        wj = jnp.ones(x.shape[1], jnp.float32) if w is None else jnp.asarray(w)

        def loss_fn(x):
            # f32 accumulation on the (widened) logits, the soft-cap first.
            x = x.astype(jnp.float32)
            if cap:
                x = cap * jnp.tanh(x / cap)
            lse = jax.nn.logsumexp(x, axis=1)
            picked = jnp.take_along_axis(x, tj[:, None], axis=1)[:, 0]
            sw = jnp.ones_like(lse) if sj is None else sj
            wt = wj[tj]
            per = sw * wt * (lse - picked)
            zt = z * sw * lse * lse
            if red == "none":
                return per + zt if z else per
            if red == "sum":
                return per.sum() + zt.sum() if z else per.sum()
            ce = per.sum() / (sw * wt).sum()
            return ce + zt.sum() / sw.sum() if z else ce

        scalar = (lambda x: loss_fn(x).sum()) if red == "none" else loss_fn
        fwd = jax.jit(loss_fn)
        grad = jax.jit(jax.grad(scalar))
        fused = jax.jit(jax.value_and_grad(scalar))
        loss = fwd(xj)
        g = grad(xj)
        import numpy as np
        grad_sq = float((np.asarray(g, dtype=np.float64) ** 2).sum())
        for op in cell["ops"]:
            f = {"forward": fwd, "backward": grad, "forward_backward": fused}[op]
            fn = lambda: jax.block_until_ready(f(xj))
            timing = time_calls(fn, budget)
            note = {"forward": "jit(logsumexp - picked)", "backward": "jit(grad) (recomputes the forward)",
                    "forward_backward": "jit(value_and_grad)"}[op]
            emit("jax", cell, op, threads, timing, np.asarray(loss, dtype=np.float64).reshape(-1).tolist(),
                 None if op == "forward" else grad_sq, f"jax {jax.__version__}: {note}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--manifest")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--peer", choices=["pytorch", "jax"])
    args = ap.parse_args()
    if args.probe:
        return probe()
    manifest = json.load(open(args.manifest))
    budget = manifest["budget"]

    def emit(peer, cell, op, threads, timing, loss, grad_sq, note):
        rec = {"peer": peer, "batch": cell["batch"], "classes": cell["classes"],
               "dtype": cell.get("dtype", "f32"), "op": op,
               "threads": threads, "loss": loss, "grad_sq": grad_sq, "note": note}
        rec.update(timing)
        print(json.dumps(rec), flush=True)

    if args.peer == "pytorch":
        run_torch(manifest["cells"], args.threads, budget, emit)
    else:
        run_jax(manifest["cells"], args.threads, budget, emit)


if __name__ == "__main__":
    sys.exit(main())
