#!/usr/bin/env python3
"""scripts/sass_inductor.py — the SASS an element of examples/chain.tx as torch.compile
(Inductor) writes it in Triton, compiled ahead of time for sm_90 with no GPU, beside tc's own
figure (tests/cuda/sass.rs's snapshot). Static evidence for issue 17's "the elementwise chain
is limited by instruction issue": both kernels are counted the same way (instructions on the
common path over the elements they handle).

The Triton kernel is written as Inductor lowers the chain's ops (its decompositions as of
torch 2.x: `libdevice.tanh`, `libdevice.erf`, `libdevice.sqrt`, `tl.sigmoid`, `/`, NaN-
propagating `maximum`/`minimum`, `silu` as `x * sigmoid(x)`, `gelu` as `0.5·x·(1 + erf(x/√2))`),
one tile of XBLOCK elements a program, as Inductor's pointwise template does; Triton's
`div.full.f32` for `/` and approximate `ex2`, with FMA contraction ("FP fusion") on and off. On a GPU,
scripts/gpu.sh times the real torch.compile kernel; this only counts instructions.

    python3 scripts/sass_inductor.py [--nvdisasm PATH]

Needs `pip install torch` (Triton comes with it) and `nvidia-cuda-nvdisasm`.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.language.extra import libdevice

XBLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _maximum(a, b):
    # Inductor's triton_helpers.maximum: NaN propagates.
    return tl.where((a > b) | (a != a), a, b)


@triton.jit
def _minimum(a, b):
    return tl.where((a < b) | (a != a), a, b)


@triton.jit
def chain(in_ptr, out_ptr, xnumel, XBLOCK: tl.constexpr):
    xindex = tl.program_id(0) * XBLOCK + tl.arange(0, XBLOCK)
    xmask = xindex < xnumel
    x = tl.load(in_ptr + xindex, xmask)
    a = x * 1.5 + 0.25
    b = libdevice.tanh(a) * tl.sigmoid(x)
    c = b * b - tl.abs(a) / (1.0 + tl.exp(-x))
    d = _maximum(c, -1.0) + _minimum(libdevice.sqrt(tl.abs(b)), 2.0)
    y = d * tl.sigmoid(d) + (0.5 * a * (1.0 + libdevice.erf(a * 0.7071067811865476))) * 0.5
    tl.store(out_ptr + xindex, y, xmask)


def find_nvdisasm(given):
    if given:
        return given
    found = shutil.which("nvdisasm")
    if found:
        return found
    import nvidia  # the pip wheels' namespace package

    for d in nvidia.__path__:
        p = os.path.join(d, "cu13", "bin", "nvdisasm")
        if os.path.exists(p):
            return p
    sys.exit("nvdisasm not found: pip install nvidia-cuda-nvdisasm, or --nvdisasm PATH")


def count(fusion, nvdisasm):
    """(SASS instructions, of them MUFU, PTX operation counts) of the chain's kernel."""
    src = triton.compiler.ASTSource(
        fn=chain,
        signature={"in_ptr": "*fp32", "out_ptr": "*fp32", "xnumel": "i32", "XBLOCK": "constexpr"},
        constexprs={"XBLOCK": XBLOCK},
    )
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": NUM_WARPS, "enable_fp_fusion": fusion})
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "chain.cubin")
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        listing = subprocess.run(
            [nvdisasm, "-c", path], check=True, capture_output=True, text=True
        ).stdout
    ins = [m.group(1).strip() for m in re.finditer(r"/\*[0-9a-f]{4}\*/\s*(.*?)\s*;", listing)]
    ptx = k.asm["ptx"]
    kinds = {
        op: len(re.findall(rf"\b{re.escape(op)}\b", ptx))
        for op in ["div.rn.f32", "div.full.f32", "rcp.approx.ftz.f32", "sqrt.rn.f32",
                   "sqrt.approx.ftz.f32", "ex2.approx.f32", "ex2.approx.ftz.f32", "fma.rn.f32"]
    }
    return len(ins), sum("MUFU" in t for t in ins), kinds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nvdisasm")
    args = ap.parse_args()
    nvdisasm = find_nvdisasm(args.nvdisasm)
    # No loop: every instruction of the kernel runs once (bar the predicated-off ones), for
    # XBLOCK / threads elements a thread. The few index instructions are counted too.
    per_thread = XBLOCK // (32 * NUM_WARPS)
    print(f"triton {triton.__version__}, sm_90, XBLOCK {XBLOCK}, {NUM_WARPS} warps: "
          f"{per_thread} elements a thread")
    # FP fusion (contracting a*b + c into one FMA): on by default up to Triton 3.9, off from
    # 3.10 (Triton's own warning); tc never contracts across ops.
    for fusion in (True, False):
        n, mufu, kinds = count(fusion, nvdisasm)
        print(f"FP fusion {'on ' if fusion else 'off'}: {n} SASS = {n / per_thread:.1f} an element, "
              f"MUFU {mufu / per_thread:.1f} an element; PTX an element: " + ", ".join(
                  f"{op} {c / per_thread:g}" for op, c in kinds.items() if c))


if __name__ == "__main__":
    main()
