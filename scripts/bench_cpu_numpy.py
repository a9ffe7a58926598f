#!/usr/bin/env python3
"""Benchmark: tc's CPU executor against the same programs in NumPy.

For chain.tx, softmax.tx, layernorm.tx and mlp.tx at sizes that take 0.1-2 s on a 2-core
machine, runs `cpubench` (`tc bench`'s path on the CPU backend for one plan, see
runtime/src/bin/cpubench.rs) and the NumPy
version of the program, each in a fresh process, and measures both the same way: best and
median wall time of N runs after the inputs exist, and peak resident memory (VmHWM) minus
the resident memory just before the inputs were created (VmRSS), so interpreter and library
start-up are not counted. Prints a Markdown table and writes JSON next to it.

Usage: scripts/bench_cpu_numpy.py [--reps N] [--json out.json] [--cpubench PATH]
(build first: cargo build --release -p tc-runtime --bin cpubench; --cpubench runs another
build, an older commit's say, for a before/after comparison)
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPUBENCH = os.path.join(ROOT, "target", "release", "cpubench")

# name, example file, dims
CASES = [
    ("chain", "chain.tx", {"N": 16777216}),
    ("softmax", "softmax.tx", {"N": 4096, "V": 4096}),
    ("layernorm", "layernorm.tx", {"N": 4096, "D": 4096}),
    ("mlp", "mlp.tx", {"B": 1024, "D": 1024, "H": 4096, "C": 1024}),
]

# The NumPy programs, PyTorch semantics (exact-erf gelu), f32 throughout. Run in a child
# process: `python3 bench_cpu_numpy.py --numpy NAME DIMS_JSON REPS`.
NUMPY_PROGRAMS = {
    "chain": """
def inputs(d):
    return [rng.standard_normal(d["N"], dtype=np.float32)]

def program(x):
    a = x * np.float32(1.5) + np.float32(0.25)
    b = np.tanh(a) * (1 / (1 + np.exp(-x)))
    c = b ** 2 - np.abs(a) / (1 + np.exp(-x))
    d = np.maximum(c, np.float32(-1)) + np.minimum(np.sqrt(np.abs(b)), np.float32(2))
    y = d / (1 + np.exp(-d)) + gelu(a) * np.float32(0.5)
    return [y]
""",
    "softmax": """
def inputs(d):
    return [rng.standard_normal((d["N"], d["V"]), dtype=np.float32)]

def program(x):
    m = x.max(axis=-1, keepdims=True)
    e = np.exp(x - m)
    manual = e / e.sum(axis=-1, keepdims=True)
    mb = x.max(axis=-1, keepdims=True)
    eb = np.exp(x - mb)
    builtin = eb / eb.sum(axis=-1, keepdims=True)
    return [manual, builtin]
""",
    "layernorm": """
def inputs(d):
    return [rng.standard_normal((d["N"], d["D"]), dtype=np.float32),
            rng.standard_normal(d["D"], dtype=np.float32),
            rng.standard_normal(d["D"], dtype=np.float32)]

def program(x, gamma, beta):
    mu0 = x.mean(axis=-1, keepdims=True)
    var0 = x.var(axis=-1, keepdims=True)
    y = (x - mu0) / np.sqrt(var0 + np.float32(1e-5)) * gamma + beta
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    manual = xc / np.sqrt(var + np.float32(1e-5)) * gamma + beta
    return [y, manual]
""",
    "mlp": """
def inputs(d):
    B, D, H, C = d["B"], d["D"], d["H"], d["C"]
    return [rng.standard_normal((B, D), dtype=np.float32),
            rng.standard_normal((D, H), dtype=np.float32),
            rng.standard_normal(H, dtype=np.float32),
            rng.standard_normal((H, C), dtype=np.float32),
            rng.standard_normal(C, dtype=np.float32)]

def program(x, w1, b1, w2, b2):
    h = gelu(x @ w1 + b1)
    logits = h @ w2 + b2
    m = logits.max(axis=-1, keepdims=True)
    e = np.exp(logits - m)
    return [e / e.sum(axis=-1, keepdims=True)]
""",
}

NUMPY_PRELUDE = """
import numpy as np
from scipy.special import erf
rng = np.random.default_rng(0)

def gelu(v):
    return np.float32(0.5) * v * (1 + erf(v * np.float32(0.7071067811865476)))
"""


def status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def numpy_child(name, dims, reps):
    import time

    scope = {}
    exec(NUMPY_PRELUDE + NUMPY_PROGRAMS[name], scope)
    baseline = status_bytes("VmRSS:")
    xs = scope["inputs"](dims)
    times = []
    cpu0 = time.process_time()
    for _ in range(max(reps, 1)):
        t = time.perf_counter()
        outs = scope["program"](*xs)
        times.append(time.perf_counter() - t)
        del outs
    cpu_per_run = (time.process_time() - cpu0) / len(times)
    times.sort()
    print(json.dumps({
        "cpu_s_per_run": cpu_per_run,
        "best_s": times[0], "median_s": times[len(times) // 2],
        "rss_baseline_bytes": baseline, "peak_rss_bytes": status_bytes("VmHWM:"),
        "threads_note": "NumPy ufuncs single-threaded; matmul via its BLAS",
    }))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--cpubench", default=CPUBENCH, help="the cpubench binary to run")
    ap.add_argument("--numpy", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.numpy:
        name, dims, reps = args.numpy
        numpy_child(name, json.loads(dims), int(reps))
        return
    if not os.path.exists(args.cpubench):
        sys.exit("build cpubench first: cargo build --release -p tc-runtime --bin cpubench")
    # cpubench takes `tc bench`'s --runs/--warmup; builds before the backend interface took
    # --reps (and made no warm-up run), so an older build given by --cpubench still works.
    help_text = subprocess.run([args.cpubench, "--help"], capture_output=True, text=True).stdout
    if "--runs" in help_text:
        reps = ["--runs", str(args.reps), "--warmup", "0"]
    else:
        reps = ["--reps", str(args.reps)]
    rows = []
    for name, file, dims in CASES:
        cmd = [args.cpubench, os.path.join(ROOT, "examples", file)] + reps
        for k, v in dims.items():
            cmd += ["--dim", f"{k}={v}"]
        tc = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        npy = json.loads(subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--numpy", name, json.dumps(dims), str(args.reps)],
            check=True, capture_output=True, text=True).stdout)
        rows.append({"program": name, "dims": dims, "tc": tc, "numpy": npy})
    mib = 1024 * 1024
    load = os.getloadavg()[0]
    print(f"load average at the end: {load:.1f} on {os.cpu_count()} cores")
    print("| program | dims | tc best (s) | NumPy best (s) | speed-up | tc CPU s/run | NumPy CPU s/run "
          "| tc peak (MiB) | NumPy peak (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t, n = r["tc"], r["numpy"]
        tp = (t["peak_rss_bytes"] - t["rss_baseline_bytes"]) / mib
        npk = (n["peak_rss_bytes"] - n["rss_baseline_bytes"]) / mib
        dims = ", ".join(f"{k}={v}" for k, v in r["dims"].items())
        print(f"| {r['program']} | {dims} | {t['best_s']:.3f} | {n['best_s']:.3f} | "
              f"{n['best_s'] / t['best_s']:.1f}x | {t['cpu_s_per_run']:.2f} | {n['cpu_s_per_run']:.2f} "
              f"| {tp:.0f} | {npk:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
