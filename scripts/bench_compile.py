#!/usr/bin/env python3
"""Benchmark: how compile time grows with program size (issue 12, item 11).

Writes two families of programs and times `tc emit --plan` on each (parse, check,
decompose, fuse, plan, memory report, plan text; no execution), best of N runs, each in a
fresh process, as wall time and as CPU time (user + system: on a shared, loaded machine
the wall time also counts waiting for a core):

- `sum K`:   `y = x + x*2 + x*3 + ... ` with K terms (one statement, one fused kernel);
- `chain K`: K statements, each reading the one before it (and the input every other line).

Usage: scripts/bench_compile.py [--tc PATH] [--reps N] [--timeout S] [--sum 1000,...] [--chain ...]
(build first: cargo build --release -p tc-runtime --bin tc; --tc times another build,
an older commit's say, for a before/after table). A size that runs past --timeout is
reported as such and the larger sizes of that family are skipped.
"""

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sum_program(k):
    terms = ["x"] + [f"x * {i}" for i in range(2, k + 1)]
    return "input x : f32[16]\ny = " + " + ".join(terms) + "\noutput y\n"


def chain_program(k):
    lines = ["input x : f32[16]", "a0 = x + 1"]
    for i in range(1, k):
        lines.append(f"a{i} = a{i - 1} * 2 + 1" if i % 2 else f"a{i} = a{i - 1} - x")
    lines.append(f"output a{k - 1}")
    return "\n".join(lines) + "\n"


def time_one(tc, path, reps, timeout):
    """Best wall time and best CPU time (user + system) of `reps` runs; None past `timeout`."""
    best = None
    for _ in range(reps):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        try:
            r = subprocess.run(
                [tc, "emit", "--plan", path],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return None
        dt = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if r.returncode != 0:
            sys.exit(f"{path}: exit {r.returncode}\n{r.stderr.decode()[:2000]}")
        best = (dt, cpu) if best is None else (min(best[0], dt), min(best[1], cpu))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tc", default=os.path.join(ROOT, "target", "release", "tc"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--sum", default="1000,2000,4000,8000,100000")
    ap.add_argument("--chain", default="1000,2000,4000,10000")
    args = ap.parse_args()
    print("| program | size | wall s | CPU s |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as d:
        for family, make, sizes in [
            ("sum", sum_program, args.sum),
            ("chain", chain_program, args.chain),
        ]:
            for k in [int(s) for s in sizes.split(",") if s]:
                path = os.path.join(d, f"{family}{k}.tx")
                with open(path, "w") as f:
                    f.write(make(k))
                t = time_one(args.tc, path, args.reps, args.timeout)
                if t is None:
                    shown = f"> {args.timeout:g} | "
                else:
                    shown = f"{t[0]:.2f} | {t[1]:.2f}"
                print(f"| {family} | {k} | {shown} |", flush=True)
                if t is None:
                    break


if __name__ == "__main__":
    main()
