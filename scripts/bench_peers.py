#!/usr/bin/env python3
"""tc's CPU executor beside every peer a user would pick instead, on every example, in one run.

Sides: tc (`cpubench`, the path `tc bench` takes on the CPU backend), XLA (JAX `jit`),
Inductor (`torch.compile`), torch eager and NumPy. Each side runs each program in its own
fresh process on the same seeded N(0, 1) f32 data (NumPy's default_rng(0), in argument
order), and every side is measured the same way:

- time: best wall time of REPS runs (default 7) after the inputs exist; XLA and Inductor
  get one untimed call first (it compiles; its time is reported as "first call"), tc has
  compiled before its inputs exist, NumPy and eager have nothing to compile;
- rounds: all of that ROUNDS times (default 3), every side on every program in each round,
  the sides' order rotated round to round; a side's figure is its best round (its peak the
  largest of its rounds), so that a machine whose speed drifts over minutes (a shared VM)
  gives every side the same spread of draws rather than one draw each;
- memory: peak resident set (VmHWM) at the end minus the resident set (VmRSS) just before
  the inputs were created, so interpreter and library start-up are not counted (inputs,
  compilation, temporaries and outputs are).

The machine's load (`os.getloadavg`) is recorded before and after. The table is printed
and, unless --no-docs, written into docs/benchmarks.md between the markers
`<!-- bench_peers:LABEL:begin -->` and `<!-- bench_peers:LABEL:end -->` (appended to the
CPU section when absent), with the date, load and versions.

usage: scripts/bench_peers.py [--reps N] [--rounds N] [--only NAME[,NAME]] [--sides tc,xla,...]
       [--cpubench PATH] [--label LABEL] [--json OUT] [--no-docs]
Run it with the python of a venv that has the peers (benchmark dependencies only, never
of the build or tests):
  python3 -m venv /work/venv-perf && /work/venv-perf/bin/pip install jax jaxlib torch numpy scipy
  cargo build --release -p tc-runtime --bin cpubench
  /work/venv-perf/bin/python scripts/bench_peers.py
A side whose library is missing is reported as an error in its cell; the others still run.
"""

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPUBENCH = os.path.join(ROOT, "target", "release", "cpubench")
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")

# name, example file, dims: sizes that take 0.01-0.2 s on a 2-core machine.
CASES = [
    ("chain", "chain.tx", {"N": 16777216}),
    ("softmax", "softmax.tx", {"N": 4096, "V": 4096}),
    ("layernorm", "layernorm.tx", {"N": 4096, "D": 4096}),
    ("mlp", "mlp.tx", {"B": 1024, "D": 1024, "H": 4096, "C": 1024}),
    ("attention", "attention.tx", {"B": 2, "H": 8, "S": 512, "Dh": 64}),
    ("transformer_block", "transformer_block.tx",
     {"B": 1, "S": 512, "D": 512, "H": 8, "Dh": 64, "F": 2048}),
]

SIDES = ["tc", "xla", "inductor", "eager", "numpy"]
TITLES = {"tc": "tc", "xla": "XLA (JAX jit)", "inductor": "Inductor (torch.compile)",
          "eager": "torch eager", "numpy": "NumPy"}

# The inputs of each program, in the order the .tx file declares its inputs and params
# (cpubench draws its own seeded data; every peer draws the same data as every other peer).
INPUTS = {
    "chain": lambda d: [(d["N"],)],
    "softmax": lambda d: [(d["N"], d["V"])],
    "layernorm": lambda d: [(d["N"], d["D"]), (d["D"],), (d["D"],)],
    "mlp": lambda d: [(d["B"], d["D"]), (d["D"], d["H"]), (d["H"],), (d["H"], d["C"]), (d["C"],)],
    "attention": lambda d: [(d["B"], d["H"], d["S"], d["Dh"])] * 3,
    "transformer_block": lambda d: [
        (d["B"], d["S"], d["D"]), (d["D"],), (d["D"],), (d["D"], d["D"]), (d["D"], d["D"]),
        (d["D"], d["D"]), (d["D"], d["D"]), (d["D"],), (d["D"],), (d["D"], d["F"]), (d["F"],),
        (d["F"], d["D"]), (d["D"],)],
}

# One program text per array library: `X` is the module (numpy or jax.numpy), `erf` and
# `D` (the dims) are given. PyTorch semantics: exact-erf gelu, softmax minus the row max,
# layernorm with the biased variance and eps 1e-5.
ARRAY_PROGRAMS = r'''
def gelu(v): return 0.5 * v * (1 + erf(v * 0.7071067811865476))
def sigmoid(v): return 1 / (1 + X.exp(-v))
def softmax(v):
    e = X.exp(v - v.max(axis=-1, keepdims=True)); return e / e.sum(axis=-1, keepdims=True)
def layernorm(v, g, b):
    mu = v.mean(axis=-1, keepdims=True); xc = v - mu
    return xc / X.sqrt((xc * xc).mean(axis=-1, keepdims=True) + 1e-5) * g + b

def chain(x):
    a = x * 1.5 + 0.25
    b = X.tanh(a) * sigmoid(x)
    c = b ** 2 - X.abs(a) / (1 + X.exp(-x))
    d = X.maximum(c, -1.0) + X.minimum(X.sqrt(X.abs(b)), 2.0)
    return [d * sigmoid(d) + gelu(a) * 0.5]

def softmax_prog(x):
    m = x.max(axis=-1, keepdims=True); e = X.exp(x - m)
    return [e / e.sum(axis=-1, keepdims=True), softmax(x)]

def layernorm_prog(x, g, b):
    mu = x.mean(axis=-1, keepdims=True); xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    return [layernorm(x, g, b), xc / X.sqrt(var + 1e-5) * g + b]

def mlp(x, w1, b1, w2, b2):
    return [softmax(gelu(x @ w1 + b1) @ w2 + b2)]

def attention(q, k, v):
    return [softmax(q @ X.swapaxes(k, -1, -2) / float(D["Dh"]) ** 0.5) @ v]

def transformer_block(x, g1, c1, wq, wk, wv, wo, g2, c2, w1, b1, w2, b2):
    B, S, Dm, H, Dh = D["B"], D["S"], D["D"], D["H"], D["Dh"]
    xn = layernorm(x, g1, c1)
    heads = lambda t: X.transpose(X.reshape(t, (B, S, H, Dh)), (0, 2, 1, 3))
    q, k, v = heads(xn @ wq), heads(xn @ wk), heads(xn @ wv)
    att = softmax(q @ X.swapaxes(k, -1, -2) / float(Dh) ** 0.5)
    ctx = X.reshape(X.transpose(att @ v, (0, 2, 1, 3)), (B, S, Dm))
    x1 = x + ctx @ wo
    return [x1 + gelu(layernorm(x1, g2, c2) @ w1 + b1) @ w2 + b2]
'''

TORCH_PROGRAMS = r'''
def chain(x):
    a = x * 1.5 + 0.25
    b = torch.tanh(a) * torch.sigmoid(x)
    c = b ** 2 - torch.abs(a) / (1 + torch.exp(-x))
    d = torch.clamp_min(c, -1.0) + torch.clamp_max(torch.sqrt(torch.abs(b)), 2.0)
    return [F.silu(d) + F.gelu(a) * 0.5]

def softmax_prog(x):
    m = x.amax(-1, keepdim=True); e = torch.exp(x - m)
    return [e / e.sum(-1, keepdim=True), torch.softmax(x, -1)]

def layernorm_prog(x, g, b):
    mu = x.mean(-1, keepdim=True); xc = x - mu; var = (xc * xc).mean(-1, keepdim=True)
    return [F.layer_norm(x, (x.shape[-1],), g, b, eps=1e-5), xc / torch.sqrt(var + 1e-5) * g + b]

def mlp(x, w1, b1, w2, b2):
    return [torch.softmax(F.gelu(x @ w1 + b1) @ w2 + b2, -1)]

def attention(q, k, v):
    return [torch.softmax(q @ k.transpose(-1, -2) / float(D["Dh"]) ** 0.5, -1) @ v]

def transformer_block(x, g1, c1, wq, wk, wv, wo, g2, c2, w1, b1, w2, b2):
    B, S, Dm, H, Dh = D["B"], D["S"], D["D"], D["H"], D["Dh"]
    xn = F.layer_norm(x, (Dm,), g1, c1, eps=1e-5)
    heads = lambda t: t.reshape(B, S, H, Dh).permute(0, 2, 1, 3)
    q, k, v = heads(xn @ wq), heads(xn @ wk), heads(xn @ wv)
    att = torch.softmax(q @ k.transpose(-1, -2) / float(Dh) ** 0.5, -1)
    x1 = x + (att @ v).permute(0, 2, 1, 3).reshape(B, S, Dm) @ wo
    return [x1 + F.gelu(F.layer_norm(x1, (Dm,), g2, c2, eps=1e-5) @ w1 + b1) @ w2 + b2]
'''

ENTRY = {"softmax": "softmax_prog", "layernorm": "layernorm_prog"}


def status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def child(side, name, dims, reps):
    """One peer, one program, in this (fresh) process; prints one JSON object."""
    import numpy as np
    scope = {"D": dims}
    if side in ("eager", "inductor"):
        import torch
        import torch.nn.functional as F
        torch.set_grad_enabled(False)
        scope.update(torch=torch, F=F)
        exec(TORCH_PROGRAMS, scope)
    elif side == "xla":
        import jax
        jax.config.update("jax_enable_x64", False)
        import jax.numpy as jnp
        import jax.scipy.special
        scope.update(X=jnp, erf=jax.scipy.special.erf)
        exec(ARRAY_PROGRAMS, scope)
    else:
        from scipy.special import erf
        scope.update(X=np, erf=erf)
        exec(ARRAY_PROGRAMS, scope)
    f = scope[ENTRY.get(name, name)]
    base = status_bytes("VmRSS:")
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(s, dtype=np.float32) for s in INPUTS[name](dims)]
    first = 0.0
    if side in ("eager", "inductor"):
        xs = [torch.from_numpy(x) for x in xs]
        run = torch.compile(f) if side == "inductor" else f
        if side == "inductor":
            t = time.perf_counter(); run(*xs); first = time.perf_counter() - t
    elif side == "xla":
        xs = [jax.device_put(x) for x in xs]
        jf = jax.jit(f)
        run = lambda *a: jax.block_until_ready(jf(*a))
        t = time.perf_counter(); run(*xs); first = time.perf_counter() - t
    else:
        # NumPy computes in f32 where its inputs are f32 (Python scalars do not promote).
        run = f
    times = []
    for _ in range(reps):
        t = time.perf_counter(); out = run(*xs); times.append(time.perf_counter() - t)
        del out
    times.sort()
    print(json.dumps({"best_s": times[0], "median_s": times[len(times) // 2],
                      "first_call_s": first, "rss_baseline_bytes": base,
                      "peak_rss_bytes": status_bytes("VmHWM:")}))


def run_tc(cpubench, file, dims, reps):
    help_text = subprocess.run([cpubench, "--help"], capture_output=True, text=True).stdout
    # Builds before --reps take tc bench's --runs/--warmup.
    rep = ["--reps", str(reps)] if "--reps" in help_text else ["--runs", str(reps), "--warmup", "0"]
    cmd = [cpubench, os.path.join(ROOT, "examples", file)] + rep
    for k, v in dims.items():
        cmd += ["--dim", f"{k}={v}"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": p.stderr[-400:]}
    return json.loads(p.stdout)


def run_peer(side, name, dims, reps):
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", side, name,
                        json.dumps(dims), str(reps)], capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout)[-400:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def merge_row(name, dims, sides, runs):
    """A program's row: each side's fastest round, with the largest peak of its rounds and
    the first call of its first round (later rounds may find a warm compile cache)."""
    r = {"program": name, "dims": dims}
    for s in sides:
        ok = [x for x in runs[(name, s)] if "best_s" in x]
        if not ok:
            r[s] = (runs[(name, s)] or [{"error": "not run"}])[-1]
            continue
        cell = dict(min(ok, key=lambda x: x["best_s"]))
        worst = max(ok, key=lambda x: x["peak_rss_bytes"] - x["rss_baseline_bytes"])
        cell["peak_rss_bytes"], cell["rss_baseline_bytes"] = worst["peak_rss_bytes"], worst["rss_baseline_bytes"]
        if "first_call_s" in ok[0]:
            cell["first_call_s"] = ok[0]["first_call_s"]
        cell["rounds_best_s"] = [x["best_s"] for x in ok]
        r[s] = cell
    return r


def versions():
    out = {"python": platform.python_version()}
    for mod in ("numpy", "scipy", "jax", "jaxlib", "torch"):
        p = subprocess.run([sys.executable, "-c", f"import {mod}; print({mod}.__version__)"],
                           capture_output=True, text=True)
        out[mod] = p.stdout.strip() if p.returncode == 0 else "missing"
    try:
        rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        out["tc"] = rev + ("+changes" if dirty else "")
    except OSError:
        out["tc"] = "?"
    return out


def table(rows, sides):
    mib = 1 << 20
    def best(r, s):
        return r[s].get("best_s") if isinstance(r.get(s), dict) else None
    def peak(r, s):
        x = r.get(s, {})
        return (x["peak_rss_bytes"] - x["rss_baseline_bytes"]) / mib if "best_s" in x else None
    peers = [s for s in sides if s != "tc"]
    head = "| program | " + " | ".join(TITLES[s] for s in sides)
    lines = []
    if "tc" in sides and peers:
        head += " | tc ÷ best peer"
    short = {"tc": "tc", "xla": "XLA", "inductor": "Inductor", "eager": "eager", "numpy": "NumPy"}
    lines.append(head + " | peak MiB (" + " / ".join(short[s] for s in sides) + ") |")
    lines.append("|---" * (len(sides) + 2 + ("tc" in sides and bool(peers))) + "|")
    for r in rows:
        ts = {s: best(r, s) for s in sides}
        ok = [t for s, t in ts.items() if t is not None]
        fastest = min(ok) if ok else None
        cells = []
        for s in sides:
            t = ts[s]
            cells.append("error" if t is None else (f"**{t:.3f}**" if t == fastest else f"{t:.3f}"))
        line = f"| {r['program']} | " + " | ".join(cells)
        if "tc" in sides and peers:
            pt = [ts[s] for s in peers if ts[s] is not None]
            line += " | " + (f"{ts['tc'] / min(pt):.2f}" if ts["tc"] is not None and pt else "–")
        pk = [peak(r, s) for s in sides]
        least = min(p for p in pk if p is not None) if any(p is not None for p in pk) else None
        line += " | " + " / ".join("–" if p is None else (f"**{p:.0f}**" if p == least else f"{p:.0f}")
                                   for p in pk) + " |"
        lines.append(line)
    return "\n".join(lines)


def write_docs(path, label, text):
    begin, end = f"<!-- bench_peers:{label}:begin -->", f"<!-- bench_peers:{label}:end -->"
    doc = open(path).read()
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        doc = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def main():
    a = sys.argv[1:]
    if a and a[0] == "--child":
        child(a[1], a[2], json.loads(a[3]), int(a[4]))
        return
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0] if __doc__ else None)
    ap.add_argument("--reps", type=int, default=7, help="runs per side and program (best kept)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds over every side and program, interleaved (best round kept)")
    ap.add_argument("--only", default=None, help="comma-separated programs (default: all)")
    ap.add_argument("--sides", default=",".join(SIDES), help="comma-separated sides: " + ",".join(SIDES))
    ap.add_argument("--cpubench", default=CPUBENCH, help="the tc cpubench binary")
    ap.add_argument("--label", default="latest", help="which docs/benchmarks.md block to replace")
    ap.add_argument("--json", default=None, help="also write the measurements to this file")
    ap.add_argument("--no-docs", action="store_true", help="print the table only")
    o = ap.parse_args(a)
    reps, only, cpubench, label, rounds = o.reps, o.only, o.cpubench, o.label, max(1, o.rounds)
    sides = o.sides.split(",")
    load_before = os.getloadavg()
    cases = [c for c in CASES if not only or c[0] in only.split(",")]
    # Every round runs every side on every program once (its best of REPS), the sides in a
    # rotated order each round; a side's cell is its best round. On a shared machine whose
    # speed drifts over minutes, one process per side is a draw of when it ran: rounds give
    # every side the same spread of draws.
    runs = {(name, s): [] for name, _, _ in cases for s in sides}
    for rnd in range(rounds):
        order = sides[rnd % len(sides):] + sides[:rnd % len(sides)]
        for name, file, dims in cases:
            for s in order:
                res = run_tc(cpubench, file, dims, reps) if s == "tc" else run_peer(s, name, dims, reps)
                if "error" in res:
                    print(f"{name} {s}: {res['error']}", file=sys.stderr)
                runs[(name, s)].append(res)
            r = merge_row(name, dims, sides, runs)
            print(f"round {rnd + 1}/{rounds}: " + table([r], sides).splitlines()[-1], file=sys.stderr,
                  flush=True)
    rows = [merge_row(name, dims, sides, runs) for name, _, dims in cases]
    load_after = os.getloadavg()
    v = versions()
    def firsts(s):
        return ", ".join(f"{r['program']} {r[s]['first_call_s']:.1f}"
                         for r in rows if "first_call_s" in r.get(s, {}))
    first = "; ".join(f"{TITLES[s]}: {firsts(s)}" for s in ("xla", "inductor") if s in sides)
    text = "\n".join([
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
        f"`scripts/bench_peers.py --reps {reps} --rounds {rounds}{' --label ' + label if label != 'latest' else ''}`; "
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), load average "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after (1-minute). "
        f"Versions: tc {v['tc']}" + (f" (`{cpubench}`)" if cpubench != CPUBENCH else "") +
        f", Python {v['python']}, NumPy {v['numpy']}, SciPy {v['scipy']}, JAX {v['jax']} "
        f"(jaxlib {v['jaxlib']}), torch {v['torch']}. Best of {reps} runs in each of {rounds} "
        "interleaved rounds (a fresh process each), seconds (fastest in bold); peak MiB = VmHWM − "
        "VmRSS before the inputs, the largest of the rounds (least in bold). "
        "Dims: " + "; ".join(f"{r['program']} " + " ".join(f"{k}={x}" for k, x in r['dims'].items()) for r in rows) + ".",
        "",
        table(rows, sides),
        "",
        f"First calls (compile), seconds: {first}." if first else "",
    ]).rstrip() + "\n"
    print(text)
    if o.json:
        with open(o.json, "w") as f:
            json.dump({"load": [load_before, load_after], "versions": v, "rows": rows}, f, indent=1)
    if not o.no_docs:
        write_docs(DOCS, label, text)


if __name__ == "__main__":
    main()
