#!/usr/bin/env python3
"""tc's CPU executor beside every peer a user would pick instead, on every example, in one run.

Sides: tc (`cpubench`, the path `tc bench` takes on the CPU backend), XLA (JAX `jit`),
Inductor (`torch.compile`), torch eager and NumPy. Each peer runs each program in its own
fresh process on the same seeded data (tc's cpubench draws its own seeded data of the same
shapes and dtypes), and every side is measured the same way:

- data: the program's inputs and params are read from its `.tx` file (names, dtypes,
  shapes, in declaration order) and drawn one after another from one NumPy
  `default_rng(0)`: a float tensor is `standard_normal(shape, dtype=float32)`, rounded to
  nearest for an f16 (`numpy.float16`) or bf16 (`ml_dtypes.bfloat16`) one; an integer
  tensor (i64: the `tokens` and `labels`) is `integers(0, HI, shape, dtype=int64)`, with HI
  the dim that bounds it (INT_RANGE: gpt_block's tokens and labels in [0, V), train_mlp's
  labels in [0, C), train_block's in [0, D)), so every index is in range;
- training steps (train_mlp, train_block) are written as `../shared/bench/train_anchors.py`
  (beside the repository) writes them: torch eager = forward + `loss.backward()`, the grads then read (and dropped);
  Inductor = `torch.compile(forward)` + `loss.backward()` (AOTAutograd compiles the
  backward); XLA = `jax.jit(jax.value_and_grad(loss))` over the params; NumPy = the backward
  written by hand (it has no autodiff). Each side computes exactly
  the program's outputs: train_mlp the loss and the SGD-updated weights `w - 0.01 * grad`,
  train_block the loss and the 12 gradients;
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
       [--cpubench PATH] [--label LABEL] [--json OUT] [--no-docs] [--check]
--check measures nothing: for each program at small dims (CHECK_DIMS) it writes the seeded
inputs to a temporary folder as .npy (bf16 as f32, exactly), runs `tc run --device cpu
--input NAME=FILE.npy ... --save DIR` (tc next to cpubench), runs every peer side on the same
arrays and compares each output with tc's: it prints the largest absolute and relative
error per program, side and output and exits 1 on any mismatch (an element off by more than
ATOL * max|tc| + RTOL * |tc|: RTOL 1e-4, ATOL 1e-5 for f32 outputs, 2e-2 and 1e-2 for the
f16/bf16 ones of mixed_precision; an SGD-updated weight `w_next` is compared both as it is
and as its step `w_next - w`, so that a wrong gradient cannot hide under lr = 0.01).
Run it with the python of a venv that has the peers (benchmark dependencies only, never
of the build or tests):
  python3 -m venv /work/venv-perf && /work/venv-perf/bin/pip install jax jaxlib torch numpy scipy
  (NumPy's bf16 is `ml_dtypes`, which jax installs)
  cargo build --release -p tc-runtime --bin cpubench --bin tc
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

# name, example file, dims: sizes that take 0.01-0.3 s for tc on a 2-core machine.
CASES = [
    ("chain", "chain.tx", {"N": 16777216}),
    ("softmax", "softmax.tx", {"N": 4096, "V": 4096}),
    ("layernorm", "layernorm.tx", {"N": 4096, "D": 4096}),
    ("mlp", "mlp.tx", {"B": 1024, "D": 1024, "H": 4096, "C": 1024}),
    ("attention", "attention.tx", {"B": 2, "H": 8, "S": 512, "Dh": 64}),
    ("transformer_block", "transformer_block.tx",
     {"B": 1, "S": 512, "D": 512, "H": 8, "Dh": 64, "F": 2048}),
    ("branches", "branches.tx", {"B": 1024, "D": 256, "H": 4096}),
    ("broadcast", "broadcast.tx", {"B": 2048, "D": 4096}),
    ("rotary", "rotary.tx", {"B": 4, "H": 8, "S": 2048, "Dh": 128, "Hf": 64}),
    ("mixed_precision", "mixed_precision.tx", {"N": 1024, "D": 1024}),
    ("gpt_block", "gpt_block.tx",
     {"B": 2, "S": 256, "P": 1024, "V": 8192, "D": 512, "H": 8, "Dh": 64, "F": 2048}),
    ("train_mlp", "train_mlp.tx", {"B": 1024, "D": 512, "H": 2048, "C": 512}),
    ("train_block", "train_block.tx", {"B": 1, "S": 256, "D": 512, "H": 8, "Dh": 64, "F": 1024}),
]
FILES = {name: file for name, file, _ in CASES}

# --check's dims: small, some odd, so that a transcription error (a transposed weight, a
# wrong axis, a missing bias) shows rather than cancels.
CHECK_DIMS = {
    "chain": {"N": 1001},
    "softmax": {"N": 7, "V": 33},
    "layernorm": {"N": 7, "D": 65},
    "mlp": {"B": 6, "D": 17, "H": 40, "C": 11},
    "attention": {"B": 2, "H": 3, "S": 17, "Dh": 8},
    "transformer_block": {"B": 2, "S": 13, "D": 32, "H": 4, "Dh": 8, "F": 48},
    "branches": {"B": 6, "D": 17, "H": 40},
    "broadcast": {"B": 9, "D": 23},
    "rotary": {"B": 2, "H": 3, "S": 11, "Dh": 16, "Hf": 8},
    "mixed_precision": {"N": 9, "D": 64},
    "gpt_block": {"B": 2, "S": 13, "P": 20, "V": 37, "D": 32, "H": 4, "Dh": 8, "F": 48},
    "train_mlp": {"B": 6, "D": 17, "H": 40, "C": 11},
    "train_block": {"B": 2, "S": 13, "D": 32, "H": 4, "Dh": 8, "F": 48},
}
# (rtol, atol as a fraction of the output's largest magnitude) per program; f32 otherwise.
CHECK_TOL = {"mixed_precision": (2e-2, 1e-2)}
F32_TOL = (1e-4, 1e-5)

SIDES = ["tc", "xla", "inductor", "eager", "numpy"]
TITLES = {"tc": "tc", "xla": "XLA (JAX jit)", "inductor": "Inductor (torch.compile)",
          "eager": "torch eager", "numpy": "NumPy"}

# The dim bounding each integer input: its values are drawn in [0, that dim).
INT_RANGE = {"gpt_block": {"tokens": "V", "labels": "V"}, "train_mlp": {"labels": "C"},
             "train_block": {"labels": "D"}}

# Training steps: which outputs follow from (loss, params, grads); the params are the
# program's `param`s, in declaration order (both programs take the gradient of each).
TRAIN = {"train_mlp": lambda loss, ps, gs: [loss] + [p - 0.01 * g for p, g in zip(ps, gs)],
         "train_block": lambda loss, ps, gs: [loss] + list(gs)}

# A side that cannot run a program, with why (its cell reads "n/a").
NOT_APPLICABLE = {}

_DECL = re.compile(r"^\s*(input|param)\s+(\w+)\s*:\s*(\w+)\s*\[([^\]]*)\]", re.M)
_DIM = re.compile(r"^\s*dim\s+(\w+)\s*=\s*(\d+)", re.M)
_OUTPUT = re.compile(r"^\s*output\s+(.+?)\s*$", re.M)


def program(file, dims):
    """What `examples/FILE` declares: [(input|param, name, dtype, shape)] in declaration order,
    its outputs' names in order, and every dim (the file's, overridden by `dims`)."""
    text = re.sub(r"#[^\n]*", "", open(os.path.join(ROOT, "examples", file)).read())
    d = {k: int(v) for k, v in _DIM.findall(text)}
    d.update(dims)
    decls = [(kind, name, dtype, tuple(int(eval(e, {"__builtins__": {}}, dict(d))) for e in shape.split(",")))
             for kind, name, dtype, shape in _DECL.findall(text)]
    outs = [n.strip() for line in _OUTPUT.findall(text) for n in line.split(",")]
    return decls, outs, d


def draw(name, decls, dims):
    """The seeded data every side gets (see the module docstring), as NumPy arrays."""
    import numpy as np
    rng = np.random.default_rng(0)
    xs = []
    for _, n, dtype, shape in decls:
        if dtype in ("i32", "i64"):
            xs.append(rng.integers(0, dims[INT_RANGE[name][n]], size=shape,
                                   dtype=np.int64 if dtype == "i64" else np.int32))
            continue
        v = rng.standard_normal(shape, dtype=np.float32)
        if dtype == "f16":
            v = v.astype(np.float16)
        elif dtype == "bf16":
            import ml_dtypes
            v = v.astype(ml_dtypes.bfloat16)
        elif dtype != "f32":
            raise ValueError(f"{name}: no data drawn for {dtype} ({n})")
        xs.append(v)
    return xs


# One program text per array library: `X` is the module (numpy or jax.numpy), `erf`, `D`
# (the dims), the dtypes `f32`, `f16`, `bf16` and `mm32` (a product of f16/bf16 operands
# accumulated in f32, an f32 result) are given. PyTorch semantics: exact-erf gelu, softmax
# minus the row max, layernorm with the biased variance and eps 1e-5, rmsnorm eps 1e-6.
ARRAY_PROGRAMS = r'''
def gelu(v): return 0.5 * v * (1 + erf(v * 0.7071067811865476))
def sigmoid(v): return 1 / (1 + X.exp(-v))
def softmax(v):
    e = X.exp(v - v.max(axis=-1, keepdims=True)); return e / e.sum(axis=-1, keepdims=True)
def log_softmax(v):
    s = v - v.max(axis=-1, keepdims=True); return s - X.log(X.exp(s).sum(axis=-1, keepdims=True))
def nll(logp, labels):
    return -X.take_along_axis(logp, labels[..., None], axis=-1).mean()
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

def branches(x, w1, w2, w3):
    return [(x @ w1).sum(axis=-1), (x @ w2).sum(axis=-1), (x @ w3).sum(axis=-1)]

def broadcast(x, bias, rowscale):
    implicit = x + bias
    explicit = x * X.broadcast_to(bias, x.shape)
    scaled = (implicit + explicit) * rowscale
    return [scaled, scaled.sum(axis=0)]

def rotary(q, k, cos, sin):
    Hf = D["Hf"]
    def rot(t):
        t1, t2 = t[..., :Hf], t[..., Hf:]
        return X.concatenate([t1 * cos - t2 * sin, t2 * cos + t1 * sin], axis=-1)
    return [rot(q), rot(k)]

def mixed_precision(x, w, g):
    hb = (x.astype(f32) * g).astype(bf16)
    y = mm32(hb, w).astype(bf16)
    y32 = y.astype(f32)
    z = (y32 / X.sqrt((y32 * y32).mean(axis=-1, keepdims=True) + 1e-6)).astype(bf16)
    mix = z.astype(f16) + x
    return [softmax(mix.astype(f32)).astype(f16), y]

def gpt_block(tokens, labels, wte, wpe, ln1_g, ln1_b, w_qkv, wo, ln2_g, ln2_b, w1, w2, lnf_g, lnf_b):
    B, S, Dm, H, Dh = D["B"], D["S"], D["D"], D["H"], D["Dh"]
    pos = X.arange(S)
    x = X.take(wte, tokens, axis=0) + X.take(wpe, pos, axis=0)
    qkv = layernorm(x, ln1_g, ln1_b) @ w_qkv
    heads = lambda t: X.transpose(X.reshape(t, (B, S, H, Dh)), (0, 2, 1, 3))
    q, k, v = heads(qkv[..., :Dm]), heads(qkv[..., Dm:2 * Dm]), heads(qkv[..., 2 * Dm:])
    causal = pos[:, None] >= pos
    att = softmax(X.where(causal, q @ X.swapaxes(k, -1, -2) / float(Dh) ** 0.5, -1e9))
    x1 = x + X.reshape(X.transpose(att @ v, (0, 2, 1, 3)), (B, S, Dm)) @ wo
    x2 = x1 + gelu(layernorm(x1, ln2_g, ln2_b) @ w1) @ w2
    return [nll(log_softmax(layernorm(x2, lnf_g, lnf_b) @ wte.T), labels)]

# The losses of the training steps (the step itself: TRAIN, child()).
def train_mlp_loss(x, labels, w1, b1, w2, b2):
    return nll(log_softmax(gelu(x @ w1 + b1) @ w2 + b2), labels)

def train_block_loss(x, labels, *params):
    return nll(log_softmax(transformer_block(x, *params)[0]), labels)
'''

# NumPy has no autodiff: the training steps' backward passes by hand (in ARRAY_PROGRAMS'
# scope), each returning the loss and the grads of the params in declaration order.
NUMPY_PROGRAMS = r'''
def train_mlp_grads(x, labels, w1, b1, w2, b2):
    a = x @ w1 + b1
    cdf = 0.5 * (1 + erf(a * 0.7071067811865476))
    h = a * cdf                                      # gelu(a)
    logp = log_softmax(h @ w2 + b2)
    rows = X.arange(x.shape[0])
    loss = -logp[rows, labels].mean()
    dz = X.exp(logp)                                 # d loss / d logits: (softmax - one-hot) / B
    dz[rows, labels] -= 1
    dz /= x.shape[0]
    da = (dz @ w2.T) * (cdf + a * X.exp(-0.5 * a * a) * 0.3989422804014327)  # gelu'(a)
    return loss, [x.T @ da, da.sum(axis=0), h.T @ dz, dz.sum(axis=0)]

def train_block_grads(x, labels, g1, c1, wq, wk, wv, wo, g2, c2, w1, b1, w2, b2):
    B, S, Dm, H, Dh = D["B"], D["S"], D["D"], D["H"], D["Dh"]
    N, sc = B * S, 1 / float(Dh) ** 0.5
    def norm(v):                                     # (v - mean) / sqrt(var + eps), and 1/sqrt
        xc = v - v.mean(axis=-1, keepdims=True)
        r = 1 / X.sqrt((xc * xc).mean(axis=-1, keepdims=True) + 1e-5)
        return xc * r, r
    def norm_back(dxh, xh, r):                       # d input from d normalised
        return r * (dxh - dxh.mean(axis=-1, keepdims=True) - xh * (dxh * xh).mean(axis=-1, keepdims=True))
    heads = lambda t: X.transpose(X.reshape(t, (B, S, H, Dh)), (0, 2, 1, 3))
    merge = lambda t: X.reshape(X.transpose(t, (0, 2, 1, 3)), (N, Dm))
    flat = lambda t: X.reshape(t, (N, -1))
    # forward, keeping what the backward reads (rows flattened to N = B*S)
    xh1, r1 = norm(flat(x))
    xn = xh1 * g1 + c1
    q, k, v = heads(xn @ wq), heads(xn @ wk), heads(xn @ wv)
    att = softmax(q @ X.swapaxes(k, -1, -2) * sc)
    ctx = merge(att @ v)
    x1 = flat(x) + ctx @ wo
    xh2, r2 = norm(x1)
    hn = xh2 * g2 + c2
    a = hn @ w1 + b1
    cdf = 0.5 * (1 + erf(a * 0.7071067811865476))
    h = a * cdf
    logp = log_softmax(x1 + h @ w2 + b2)
    rows, lab = X.arange(N), labels.reshape(N)
    loss = -logp[rows, lab].mean()
    # backward
    dout = X.exp(logp)
    dout[rows, lab] -= 1
    dout /= N
    da = (dout @ w2.T) * (cdf + a * X.exp(-0.5 * a * a) * 0.3989422804014327)
    dhn = da @ w1.T
    dx1 = dout + norm_back(dhn * g2, xh2, r2)
    do = heads(dx1 @ wo.T)
    datt = do @ X.swapaxes(v, -1, -2)
    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True)) * sc
    dq, dk, dv = merge(ds @ k), merge(X.swapaxes(ds, -1, -2) @ q), merge(X.swapaxes(att, -1, -2) @ do)
    dxn = dq @ wq.T + dk @ wk.T + dv @ wv.T
    return loss, [(dxn * xh1).sum(axis=0), dxn.sum(axis=0), xn.T @ dq, xn.T @ dk, xn.T @ dv,
                  ctx.T @ dx1, (dhn * xh2).sum(axis=0), dhn.sum(axis=0), hn.T @ da,
                  da.sum(axis=0), h.T @ dout, dout.sum(axis=0)]
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

def nll(logp, labels):
    return -torch.gather(logp, -1, labels[..., None]).mean()

def branches(x, w1, w2, w3):
    return [(x @ w1).sum(-1), (x @ w2).sum(-1), (x @ w3).sum(-1)]

def broadcast(x, bias, rowscale):
    implicit = x + bias
    explicit = x * bias.expand(x.shape)
    scaled = (implicit + explicit) * rowscale
    return [scaled, scaled.sum(0)]

def rotary(q, k, cos, sin):
    Hf = D["Hf"]
    def rot(t):
        t1, t2 = t[..., :Hf], t[..., Hf:]
        return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], -1)
    return [rot(q), rot(k)]

def mixed_precision(x, w, g):
    y = (x.float() * g).to(torch.bfloat16) @ w           # bf16 product, f32 accumulation
    z = F.rms_norm(y, (y.shape[-1],), eps=1e-6)           # bf16 in and out, f32 inside
    mix = z.to(torch.float16) + x
    return [torch.softmax(mix, -1), y]

def gpt_block(tokens, labels, wte, wpe, ln1_g, ln1_b, w_qkv, wo, ln2_g, ln2_b, w1, w2, lnf_g, lnf_b):
    B, S, Dm, H, Dh = D["B"], D["S"], D["D"], D["H"], D["Dh"]
    pos = torch.arange(S)
    x = F.embedding(tokens, wte) + F.embedding(pos, wpe)
    heads = lambda t: t.reshape(B, S, H, Dh).permute(0, 2, 1, 3)
    q, k, v = map(heads, (F.layer_norm(x, (Dm,), ln1_g, ln1_b, eps=1e-5) @ w_qkv).split(Dm, -1))
    causal = pos[:, None] >= pos
    att = torch.softmax(torch.where(causal, q @ k.transpose(-1, -2) / float(Dh) ** 0.5, -1e9), -1)
    x1 = x + (att @ v).permute(0, 2, 1, 3).reshape(B, S, Dm) @ wo
    x2 = x1 + F.gelu(F.layer_norm(x1, (Dm,), ln2_g, ln2_b, eps=1e-5) @ w1) @ w2
    return [nll(F.log_softmax(F.layer_norm(x2, (Dm,), lnf_g, lnf_b, eps=1e-5) @ wte.T, -1), labels)]

def train_mlp_loss(x, labels, w1, b1, w2, b2):
    return nll(F.log_softmax(F.gelu(x @ w1 + b1) @ w2 + b2, -1), labels)

def train_block_loss(x, labels, *params):
    return nll(F.log_softmax(transformer_block(x, *params)[0], -1), labels)
'''

ENTRY = {"softmax": "softmax_prog", "layernorm": "layernorm_prog"}


def status_bytes(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def child(side, name, dims, reps, save=None):
    """One peer, one program, in this (fresh) process; prints one JSON object. With `save`
    (a folder), runs the program once more after the first call and writes each output
    there as NAME.npy (f32) instead of timing it."""
    import numpy as np
    decls, outs, dims = program(FILES[name], dims)
    params = [i for i, d in enumerate(decls) if d[0] == "param"]
    train = TRAIN.get(name)
    scope = {"D": dims}
    if side in ("eager", "inductor"):
        import torch
        import torch.nn.functional as F
        torch.set_grad_enabled(train is not None)
        scope.update(torch=torch, F=F)
        exec(TORCH_PROGRAMS, scope)
    elif side == "xla":
        import jax
        jax.config.update("jax_enable_x64", False)
        import jax.numpy as jnp
        import jax.scipy.special
        scope.update(X=jnp, erf=jax.scipy.special.erf, f32=jnp.float32, f16=jnp.float16,
                     bf16=jnp.bfloat16,
                     mm32=lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
        exec(ARRAY_PROGRAMS, scope)
    else:
        from scipy.special import erf
        import ml_dtypes
        scope.update(X=np, erf=erf, f32=np.float32, f16=np.float16, bf16=ml_dtypes.bfloat16,
                     mm32=lambda a, b: a.astype(np.float32) @ b.astype(np.float32))
        exec(ARRAY_PROGRAMS, scope)
        exec(NUMPY_PROGRAMS, scope)
    f = scope[name + "_loss"] if train else scope[ENTRY.get(name, name)]
    base = status_bytes("VmRSS:")
    xs = draw(name, decls, dims)
    first = 0.0
    if side in ("eager", "inductor"):
        xs = [torch.from_numpy(x) if x.dtype.name != "bfloat16"
              else torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16) for x in xs]
        fwd = torch.compile(f) if side == "inductor" else f
        if train:
            for i in params:
                xs[i].requires_grad_()

            def run(*a):
                # forward (compiled for Inductor) and loss.backward() (AOTAutograd's compiled
                # backward for Inductor); the grads read, then dropped
                loss = fwd(*a)
                loss.backward()
                ps = [a[i] for i in params]
                with torch.no_grad():
                    out = train(loss.detach(), ps, [p.grad for p in ps])
                for p in ps:
                    p.grad = None
                return out
        else:
            run = fwd
        if side == "inductor":
            t = time.perf_counter(); run(*xs); first = time.perf_counter() - t
    elif side == "xla":
        xs = [jax.device_put(x) for x in xs]
        if train:
            vg = jax.value_and_grad(f, argnums=tuple(params))

            def step(*a):
                loss, gs = vg(*a)
                return train(loss, [a[i] for i in params], list(gs))
            jf = jax.jit(step)
        else:
            jf = jax.jit(f)
        run = lambda *a: jax.block_until_ready(jf(*a))
        t = time.perf_counter(); run(*xs); first = time.perf_counter() - t
    else:
        # NumPy computes in f32 where its inputs are f32 (Python scalars do not promote).
        if train:
            grads = scope[name + "_grads"]

            def run(*a):
                loss, gs = grads(*a)
                return train(loss, [a[i] for i in params], gs)
        else:
            run = f
    if save is not None:
        out = run(*xs)
        for n, v in zip(outs, out):
            v = v.detach().float().numpy() if side in ("eager", "inductor") else np.asarray(v)
            np.save(os.path.join(save, n + ".npy"), np.asarray(v, dtype=np.float32))
        print(json.dumps({"saved": outs[:len(out)], "outputs": len(out)}))
        return
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


def run_peer(side, name, dims, reps, save=None):
    if (name, side) in NOT_APPLICABLE:
        return {"na": NOT_APPLICABLE[(name, side)]}
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", side, name,
                        json.dumps(dims), str(reps)] + ([save] if save else []),
                       capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": (p.stderr or p.stdout)[-400:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def check(cases, sides, cpubench):
    """--check: every peer's outputs against tc's (`tc run --save`) on the same seeded
    arrays at CHECK_DIMS; returns whether all agreed."""
    import shutil
    import tempfile
    import numpy as np
    tc_bin = os.path.join(os.path.dirname(os.path.abspath(cpubench)), "tc")
    ok = True
    for name, file, _ in cases:
        decls, outs, dims = program(file, CHECK_DIMS[name])
        rtol, atol = CHECK_TOL.get(name, F32_TOL)
        tmp = tempfile.mkdtemp(prefix=f"bench_peers_{name}_")
        try:
            cmd = [tc_bin, "run", os.path.join(ROOT, "examples", file), "--device", "cpu"]
            for k, v in dims.items():
                cmd += ["--dim", f"{k}={v}"]
            xs = dict(zip((d[1] for d in decls), draw(name, decls, dims)))
            for n, x in xs.items():
                path = os.path.join(tmp, n + ".npy")
                np.save(path, x.astype(np.float32) if x.dtype.name == "bfloat16" else x)
                cmd += ["--input", f"{n}={path}"]
            os.mkdir(os.path.join(tmp, "tc"))
            p = subprocess.run(cmd + ["--save", os.path.join(tmp, "tc")], capture_output=True, text=True)
            if p.returncode != 0:
                print(f"{name}: tc run failed: {(p.stderr or p.stdout)[-600:]}", flush=True)
                ok = False
                continue
            ref = {n: np.load(os.path.join(tmp, "tc", n + ".npy")).astype(np.float64) for n in outs}
            # An SGD update `w - 0.01 * grad` hides a wrong grad within the tolerance of w:
            # the step itself (w_next - w) is compared too, on its own scale.
            steps = {n: n[:-len("_next")] for n in outs if n.endswith("_next") and n[:-len("_next")] in xs}
            print(f"{name} ({' '.join(f'{k}={v}' for k, v in CHECK_DIMS[name].items())}; "
                  f"rtol {rtol:g}, atol {atol:g} x max|tc|):", flush=True)
            for side in sides:
                if side == "tc":
                    continue
                d = os.path.join(tmp, side)
                os.mkdir(d)
                res = run_peer(side, name, CHECK_DIMS[name], 1, save=d)
                if "na" in res:
                    print(f"  {side:9} n/a ({res['na']})", flush=True)
                    continue
                if "error" in res:
                    print(f"  {side:9} FAILED to run: {res['error']}", flush=True)
                    ok = False
                    continue
                cells, bad = [], []
                for n in outs + [n + "-" + w for n, w in steps.items()]:
                    f = os.path.join(d, n.split("-")[0] + ".npy")
                    if not os.path.exists(f):
                        bad.append(f"{n}: no output")
                        continue
                    got, want = np.load(f).astype(np.float64), ref[n.split("-")[0]]
                    slack = 0.0
                    if "-" in n:
                        w = xs[n.split("-")[1]]
                        # both sides rounded w_next to f32: allow an ulp of w each
                        slack = 2 * np.spacing(np.abs(w)).astype(np.float64)
                        got, want = got - w.astype(np.float64), want - w.astype(np.float64)
                    if got.shape != want.shape:
                        bad.append(f"{n}: shape {got.shape}, tc {want.shape}")
                        continue
                    err = np.abs(got - want)
                    scale = float(np.abs(want).max()) or 1.0
                    rel = err / (np.abs(want) + atol * scale)
                    if not np.all(np.isfinite(got)) or np.any(err > atol * scale + rtol * np.abs(want) + slack):
                        i = np.unravel_index(np.argmax(err - rtol * np.abs(want)), err.shape)
                        bad.append(f"{n}: at {tuple(int(j) for j in i)} {got[i]:.6g} vs tc {want[i]:.6g}")
                    cells.append(f"{n} {err.max():.1e}/{rel.max():.1e}")
                print(f"  {side:9} {'MISMATCH' if bad else 'ok':8} max abs/rel: " + ", ".join(cells), flush=True)
                for b in bad:
                    print(f"    MISMATCH {b}", flush=True)
                ok = ok and not bad
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ok


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
            if t is None:
                cells.append("n/a" if "na" in r.get(s, {}) else "error")
            else:
                cells.append(f"**{t:.3f}**" if t == fastest else f"{t:.3f}")
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
        child(a[1], a[2], json.loads(a[3]), int(a[4]), a[5] if len(a) > 5 else None)
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
    ap.add_argument("--check", action="store_true",
                    help="compare every peer's outputs with tc's at small dims instead of timing")
    o = ap.parse_args(a)
    reps, only, cpubench, label, rounds = o.reps, o.only, o.cpubench, o.label, max(1, o.rounds)
    sides = o.sides.split(",")
    unknown = [n for n in (only.split(",") if only else []) if n not in FILES]
    if unknown:
        ap.error(f"unknown program(s) {','.join(unknown)}; known: {','.join(FILES)}")
    cases = [c for c in CASES if not only or c[0] in only.split(",")]
    if o.check:
        if not check(cases, sides, cpubench):
            print("check: MISMATCH (see above)", file=sys.stderr)
            sys.exit(1)
        print("check: every side agrees with tc")
        return
    load_before = os.getloadavg()
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
    na = "; ".join(f"{r['program']} {TITLES[s]}: {r[s]['na']}" for r in rows for s in sides
                   if "na" in r.get(s, {}))
    na = f"n/a: {na}." if na else ""
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
        na,
    ]).rstrip() + "\n"
    print(text)
    if o.json:
        with open(o.json, "w") as f:
            json.dump({"load": [load_before, load_after], "versions": v, "rows": rows}, f, indent=1)
    if not o.no_docs:
        write_docs(DOCS, label, text)


if __name__ == "__main__":
    main()
