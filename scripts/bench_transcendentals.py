#!/usr/bin/env python3
"""Elementwise programs of `log`, `sin`·`cos`, `softplus` and `**` over N f32s (default 2^24) on
tc's CPU executor and the peers of `scripts/bench_peers.py` (JAX jit, torch.compile, torch
eager, NumPy), each side in a fresh process, best of `--reps` runs after a first call, the
same seeded normal data: the figures of docs/benchmarks.md's "Logarithms and trigonometry
in f64". Run with the peers installed (`pip install jax jaxlib torch numpy`):

    python3 scripts/bench_transcendentals.py [--n 16777216] [--reps 7] [--cpubench PATH]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = {
    # name: (tc expression of x, NumPy/JAX form, torch form)
    "log": ("log(abs(x) + 0.001)", "X.log(X.abs(x) + X.float32(0.001))", "torch.log(torch.abs(x) + 0.001)"),
    "sin_cos": ("sin(x) * cos(x)", "X.sin(x) * X.cos(x)", "torch.sin(x) * torch.cos(x)"),
    "softplus": ("softplus(x)", "X.logaddexp(X.float32(0), x)", "torch.nn.functional.softplus(x)"),
    "pow": ("abs(x) ** 1.5", "X.abs(x) ** X.float32(1.5)", "torch.abs(x) ** 1.5"),
}
SIDES = ["tc", "xla", "inductor", "eager", "numpy"]


def data(n):
    import numpy as np
    return np.random.default_rng(0).standard_normal(n).astype(np.float32)


def child(side, name, n, reps):
    """One side, one program, in this process: prints the best seconds as JSON."""
    x = data(n)
    _, array_form, torch_form = PROGRAMS[name]
    if side == "numpy":
        import numpy as X
        f = eval("lambda x: " + array_form, {"X": X})
        run = lambda: f(x)
    elif side == "xla":
        import jax
        import jax.numpy as X
        jf = jax.jit(eval("lambda x: " + array_form, {"X": X}))
        xj = jax.device_put(x)
        run = lambda: jf(xj).block_until_ready()
    else:
        import torch
        f = eval("lambda x: " + torch_form, {"torch": torch})
        if side == "inductor":
            f = torch.compile(f)
        xt = torch.from_numpy(x)
        run = lambda: f(xt)
    run()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t)
        del out
    print(json.dumps({"best_s": best}))


def run_tc(cpubench, name, n, reps):
    expr = PROGRAMS[name][0]
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, name + ".tx")
        with open(src, "w") as f:
            f.write(f"dim N = {n}\ninput x : f32[N]\ny = {expr}\noutput y\n")
        npy = os.path.join(d, "x.npy")
        import numpy as np
        np.save(npy, data(n))
        out = subprocess.run([cpubench, src, "--device", "cpu", "--reps", str(reps),
                              "--input", f"x={npy}"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["best_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--cpubench", default=os.path.join(ROOT, "target/release/cpubench"))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], a.child[1], a.n, a.reps)
    print("| program (ms) | " + " | ".join(SIDES) + " |")
    print("|---" * (len(SIDES) + 1) + "|")
    for name in PROGRAMS:
        row = []
        for side in SIDES:
            if side == "tc":
                s = run_tc(a.cpubench, name, a.n, a.reps)
            else:
                out = subprocess.run([sys.executable, __file__, "--n", str(a.n), "--reps",
                                      str(a.reps), "--child", side, name],
                                     capture_output=True, text=True, check=True)
                s = json.loads(out.stdout.strip().splitlines()[-1])["best_s"]
            row.append(s)
        best = min(row)
        cells = [f"**{s * 1e3:.1f}**" if s == best else f"{s * 1e3:.1f}" for s in row]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
