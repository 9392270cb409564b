#!/usr/bin/env python3
"""Renders the README's tables from the files `scripts/figures.sh` writes.

  tables.py DIR                         -> Markdown on stdout, one section per figure found in DIR
  tables.py --merge-commands OLD NEW    -> OLD keeps its sections, each replaced by NEW's when NEW has it

Only the standard library: it runs with any python3.
"""
import glob
import json
import os
import re
import sys

OPS = ["forward", "backward", "forward_backward"]
OP_NAME = {"forward": "forward", "backward": "backward", "forward_backward": "fused"}


def load(path):
    with open(path) as f:
        return json.load(f)


def gs(r):
    return r["elements_per_second"] / 1e9


def ceilings(report):
    return {b["threads"]: b for b in report["machine"]["bandwidth"]}


def ceiling_line(report):
    parts = [f"{t}T read {b['read_gbps']:.1f} GB/s, copy {b['copy_gbps']:.1f}"
             for t, b in sorted(ceilings(report).items())]
    return "ceilings in that run: " + "; ".join(parts)


def honest_mark(r):
    cw = r.get("cpu_per_wall")
    if cw is None:
        return ""
    mark = f" ({cw:.2f} CPU)"
    return mark + (" NOT HONEST" if r.get("honest") is False else "")


def table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def find(results, **kw):
    for r in results:
        if all(r.get(k) == v for k, v in kw.items()) and not r.get("variant"):
            return r
    return None


def cells_of(results):
    seen = []
    for r in results:
        c = (r["batch"], r["classes"])
        if c not in seen:
            seen.append(c)
    return sorted(seen, key=lambda c: (c[1], c[0]))


def peers_table(report):
    res = [r for r in report["results"] if r.get("agrees") and r.get("dtype", "f32") == "f32"]
    rows = []
    for (n, c) in cells_of(res):
        for op in OPS:
            line = [f"{n}×{c}", OP_NAME[op]]
            for ours, t in (("cpu", 1), ("rayon", 2)):
                me = find(res, backend=ours, batch=n, classes=c, op=op, threads=t)
                peers = [r for r in res if r["backend"] in ("pytorch", "jax") and r["batch"] == n
                         and r["classes"] == c and r["op"] == op and r["threads"] == t
                         and r.get("honest") is not False]
                best = max(peers, key=gs) if peers else None
                if me is None:
                    line += ["-", "-", "-"]
                    continue
                line.append(f"{gs(me):.3f}")
                if best is None:
                    line += ["-", "-"]
                else:
                    line.append(f"{best['backend']} {gs(best):.3f}{honest_mark(best)}")
                    line.append(f"{gs(me) / gs(best):.2f}")
            rows.append(line)
    headers = ["N×C", "op", "cpu 1T G/s", "best peer 1T (CPUs used)", "cpu / peer",
               "rayon 2T G/s", "best peer 2T (CPUs used)", "rayon / peer"]
    return table(headers, rows)


def all_peer_rows(report):
    res = [r for r in report["results"] if r["backend"] in ("pytorch", "jax")]
    rows = []
    for r in sorted(res, key=lambda r: (r["classes"], r["batch"], OPS.index(r["op"]), r["backend"], r["threads"])):
        cw = r.get("cpu_per_wall")
        rows.append([f"{r['batch']}×{r['classes']}", OP_NAME[r["op"]], r["backend"], r["threads"],
                     f"{gs(r):.3f}", "-" if cw is None else f"{cw:.2f}",
                     "no" if r.get("honest") is False else "yes", "yes" if r["agrees"] else "NO"])
    return table(["N×C", "op", "peer", "threads (pinned CPUs)", "G/s", "CPU/wall", "honest", "agrees"], rows)


def ab_table(report):
    by = {}
    for r in report["results"]:
        p = r.get("paired")
        cell = f"{r['batch']}×{r['classes']}"
        txt = "-" if p is None else f"{p['ratio']:.2f} [{p['low']:.2f}, {p['high']:.2f}] {r['verdict']}"
        by.setdefault(cell, {})[r["op"]] = txt
    rows = [[cell] + [ops.get(op, "-") for op in OPS] for cell, ops in by.items()]
    return table(["N×C", "forward", "backward", "fused"], rows)


def fraction_table(report):
    ceil = ceilings(report)
    rows = []
    for r in sorted(report["results"], key=lambda r: (r["classes"], r["batch"], OPS.index(r["op"]))):
        if r["backend"] != "cpu" or r.get("variant"):
            continue
        rows.append([f"{r['batch']}×{r['classes']}", OP_NAME[r["op"]], f"{gs(r):.3f}",
                     f"{100 * r['bandwidth_fraction']:.0f} %" + (" (fits in cache)" if r["in_cache"] else "")])
    return ceiling_line(report) + ". cpu, 1 thread.\n\n" + table(
        ["N×C", "op", "G logits/s", "of the ceiling (read: forward, copy: else)"], rows)


def dtype_table(report):
    res = [r for r in report["results"] if r["backend"] == "cpu"]
    types = []
    for r in res:
        d = r.get("dtype", "f32")
        if d not in types:
            types.append(d)
    rows = []
    for (n, c) in cells_of(res):
        line = [f"{n}×{c}"]
        for op in ("forward", "forward_backward"):
            base = find(res, batch=n, classes=c, op=op, dtype=types[0])
            for d in types:
                r = find(res, batch=n, classes=c, op=op, dtype=d)
                if r is None:
                    line.append("-")
                elif d == types[0] or base is None:
                    line.append(f"{gs(r):.2f}")
                else:
                    line.append(f"{gs(r):.2f} ({gs(r) / gs(base):.2f}×)")
        rows.append(line)
    headers = ["N×C"] + [f"{d} {OP_NAME[op]}" for op in ("forward", "forward_backward") for d in types]
    return table(headers, rows)


def runs_table(report):
    res = [r for r in report["results"] if r.get("agrees")]
    rows = []
    for r in sorted(res, key=lambda r: (r["classes"], r["batch"], OPS.index(r["op"]), r["backend"], r.get("dtype", ""), r["threads"])):
        rows.append([f"{r['batch']}×{r['classes']}", OP_NAME[r["op"]], r["backend"] + (f"/{r['variant']}" if r.get("variant") else ""),
                     r.get("dtype", "f32"), r["threads"], f"{gs(r):.3f}", "-" if r.get("cpu_per_wall") is None else f"{r['cpu_per_wall']:.2f}"])
    return table(["N×C", "op", "backend", "dtype", "threads", "G logits/s", "CPU/wall"], rows)


def ab_gate(d):
    exits = open(os.path.join(d, "exits.txt")).read().split("\n")
    same = [l for l in exits if l.startswith("same")]
    slowed = [l for l in exits if l.startswith("slowed")]
    same_fail = sum(1 for l in same if not l.endswith("exit 0"))
    slowed_fail = sum(1 for l in slowed if l.endswith("exit 1"))
    verdicts, other = 0, []
    for f in sorted(glob.glob(os.path.join(d, "same-*.json"))):
        for r in load(f)["results"]:
            verdicts += 1
            if r["verdict"] != "same":
                p = r["paired"]
                other.append(f"{r['backend']} {r['op']} {r['batch']}×{r['classes']} {r['threads']}T: "
                             f"{r['verdict']} {p['ratio']:.3f} [{p['low']:.3f}, {p['high']:.3f}]")
    caught = []
    for f in sorted(glob.glob(os.path.join(d, "slowed-*.json"))):
        for r in load(f)["results"]:
            if r["backend"] == "cpu" and r.get("paired"):
                caught.append((f"{r['batch']}×{r['classes']}", r["paired"]["ratio"], r["verdict"], r["fails"]))
    lines = [
        f"- identical build, {len(same)} runs: {same_fail} exited non-zero; "
        f"{len(other)} of {verdicts} verdicts other than `same` ({100 * len(other) / max(verdicts, 1):.2f} %)"
        + ("" if not other else ": " + "; ".join(other)),
        f"- planted ~10 % forward slowdown, {len(slowed)} runs: {slowed_fail} exited 1",
    ]
    cells = sorted(set(c for c, *_ in caught))
    for c in cells:
        xs = [x for x in caught if x[0] == c]
        ratios = [x[1] for x in xs]
        lines.append(f"  - cpu forward {c}: ratio {min(ratios):.3f}–{max(ratios):.3f}, "
                     f"`slower` in {sum(1 for x in xs if x[2] == 'slower')} of {len(xs)}, "
                     f"FAIL in {sum(1 for x in xs if x[3])} of {len(xs)}")
    return "\n".join(lines)


def python_table(report):
    rows = [[f"{r['batch']}×{r['classes']}", f"{r['batch'] * r['classes'] / r['xent_s'] / 1e9:.3f}",
             f"{r['batch'] * r['classes'] / r['torch_s'] / 1e9:.3f}",
             f"{r['ratio']:.2f} [{r['ratio_p10']:.2f}, {r['ratio_p90']:.2f}]"] for r in report["fused"]]
    o, b = report["overhead"], report["binding"]
    return "\n".join([
        f"xent {report['xent']} ({report['backend']}) against torch {report['torch']}, "
        f"{report['threads']} thread(s) pinned; forward+backward through autograd, weighted mean, "
        "float32, G logits/s:",
        "",
        table(["N×C", "xent", "PyTorch", "xent / PyTorch (10th–90th pct over pairs)"], rows),
        "",
        f"- call overhead, 4×3 forward: xent {o['xent_s'] * 1e6:.1f} µs, PyTorch "
        f"{o['torch_s'] * 1e6:.1f} µs: xent takes {1 / o['ratio']:.2f}× PyTorch's time",
        f"- 4096×4096 forward+backward: the Rust call {b['rust_s'] * 1e3:.2f} ms; "
        f"`xent.compute(grad=True)` {b['numpy_s'] * 1e3:.2f} ms ({b['numpy_over_rust']:.3f}× Rust); "
        f"`xent.cross_entropy` + `backward()` {b['torch_autograd_s'] * 1e3:.2f} ms "
        f"({b['torch_over_rust']:.3f}× Rust)",
    ])


SECTIONS = [
    ("peers.json", "Against the peers (peers pinned to their thread count)", peers_table),
    ("peers.json", "Every peer row, with the CPUs it kept busy", all_peer_rows),
    ("rayon-vs-cpu.json", "rayon 2T against loss-cpu 1T, interleaved (`ab`, cpu time / rayon time)", ab_table),
    ("small-classes.json", "Small classes", fraction_table),
    ("large-rows.json", "Large rows", fraction_table),
    ("dtype.json", "Element types (cpu, 1 thread; ratio to the first type in the same run)", dtype_table),
    ("zloss.json", "z-loss 1e-4 (cpu, 1 thread)", dtype_table),
    ("softcap.json", "Soft-cap 30 (cpu, 1 thread)", dtype_table),
    ("peers-bf16.json", "bf16 against the peers", runs_table),
    ("peers-ext.json", "bf16 + z-loss + soft-cap against the peers", runs_table),
    ("wgpu-lavapipe.json", "wgpu on lavapipe (correctness only)", runs_table),
    ("python.json", "xent from Python against PyTorch (`loss-py/bench/bench_torch.py`)", python_table),
]


def render(d):
    out = ["# Tables rendered from this folder's figures (`scripts/figures.sh`)", ""]
    for name, title, fn in SECTIONS:
        path = os.path.join(d, name)
        if os.path.exists(path):
            out += [f"## {title}", "", f"From `{name}`.", "", fn(load(path)), ""]
    if os.path.exists(os.path.join(d, "ab-gate", "exits.txt")):
        out += ["## `ab` as a CI gate", "", ab_gate(os.path.join(d, "ab-gate")), ""]
    return "\n".join(out)


def merge_commands(old, new):
    def sections(text):
        parts = re.split(r"(?m)^## ", text)
        return {p.split("\n", 1)[0]: "## " + p for p in parts[1:]}
    cur = sections(open(old).read()) if os.path.exists(old) else {}
    cur.update(sections(open(new).read()) if os.path.exists(new) else {})
    with open(old, "w") as f:
        f.write("# The commands behind each figure (latest run of each section)\n\n")
        for k in sorted(cur):
            f.write(cur[k].rstrip() + "\n\n")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--merge-commands":
        return merge_commands(sys.argv[2], sys.argv[3])
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    print(render(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
