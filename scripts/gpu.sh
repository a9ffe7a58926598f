#!/usr/bin/env bash
# scripts/gpu.sh — everything tc checks and measures on a GPU, in ONE device call, on a
# machine with no Rust (binaries prebuilt in .devbin/ by scripts/build-devbin.sh).
#
#   bash scripts/gpu.sh            (the device tool: carry [".devbin"], timeout_s ~450)
#
# Stages run in this order (issue 10), each writing its result to $OUT before the next
# starts, so a run cut off by the time limit still reports what it reached:
#   1 differential      CUDA against the CPU executor: every example variant, >= 200 random
#                       programs, split column reductions, take's gradient (index add) bit for
#                       bit (the test binary's gpu_examples_*, gpu_random_programs_*,
#                       gpu_split_column_reductions_*, gpu_index_add_*); then every float
#                       elementwise op (libdevice's expf, sinf, powf, ...) over a dense f32
#                       sweep against its accuracy contract, ir::eval's f64 meaning
#                       (gpu_elementwise_ops_meet_their_accuracy: a table row per op, in the
#                       summary); the examples and the sweep again under --fast-math
#   2 measured          every example at its default dims: tc's device allocation equals
#                       `planned`, and the driver's free-memory drop agrees
#   3 figures           `tc bench` of every example (chain, softmax, layernorm also with
#                       --fast-math), then scripts/torch_compare.py (PyTorch
#                       eager and torch.compile: CUDA-event median, max_memory_allocated;
#                       device copy bandwidth; for attention also PyTorch's fused
#                       scaled_dot_product_attention, and for two causal attentions
#                       benched here, attention.tx with a causal mask and gpt_block's
#                       attention alone, its is_causal=True, with tc's time over it)
#   4 sanitize          compute-sanitizer memcheck and racecheck, every example, small dims
#   5 start             cold compile (empty kernel cache) and cached start of `tc run`
#   6 reliability       bitwise-identical runs, a plan larger than free memory refused
#                       (exit 3, library and CLI), an NVRTC failure carries log and source
#
# Every stage has a share of one time budget (TC_GPU_BUDGET seconds, default 400, so one
# call fits in 7 minutes with the machine's start outside it); a stage past its share is cut
# by `timeout` and says so. Returns in $OUT (default ./gpu-out) two files: summary.md, and
# logs.tar.gz holding env.txt, differential.log, accuracy.log, accuracy_fast.log,
# memory.jsonl, measured.log, bench.log, bench_fast.log (and the causal attentions it benches, causal/*.tx), torch.json, torch.log,
# sanitizer.log, start.log, reliability.log (`tar xzf logs.tar.gz` to read them).
#
# Without a GPU (a dry run on the build machine: TC_DEVBIN=target/release TC_TESTS_BIN=…)
# every CUDA step must fail cleanly with exit 3, never hang or crash the script:
# tests/gpu_script.rs runs it so on every CI run.
set -uo pipefail
cd "$(dirname "$0")/.."
# What comes back from the device machine is at most 8 files (16 MiB each, 64 MiB in all)
# under $OUT, named in letters, digits, '.', '_' and '-': the script works in a folder of
# its own ($TC_GPU_WORK, else a fresh one under /tmp) and, when each stage starts and at the
# end, copies summary.md to $OUT and packs every other file into $OUT/logs.tar.gz, so a run
# cut off mid-stage still returns the stages before it. Nothing else is written to $OUT.
DEST="${OUT:-$PWD/gpu-out}"
mkdir -p "$DEST"
OUT="${TC_GPU_WORK:-$(mktemp -d /tmp/tc-gpu.XXXXXX)}"
mkdir -p "$OUT"
BIN="${TC_DEVBIN:-.devbin}"
TC="$BIN/tc"
TESTS="${TC_TESTS_BIN:-$BIN/tests/cuda}"
BUDGET="${TC_GPU_BUDGET:-400}"
T0=$(date +%s)
summary="$OUT/summary.md"
note() { echo "$*" | tee -a "$summary"; }
left() { echo $((BUDGET - ($(date +%s) - T0))); }
# limited SECS CMD…: runs CMD for at most SECS (and never past the budget); exit 124 if cut.
limited() {
  local s=$1; shift
  local l; l=$(left)
  [ "$s" -gt "$l" ] && s=$l
  [ "$s" -lt 1 ] && return 124
  timeout --kill-after=5 "$s" "$@"
}
# pack: summary.md, then the rest as logs.tar.gz, into $DEST (each replaced whole).
pack() {
  cp "$summary" "$DEST/summary.md.part" && mv -f "$DEST/summary.md.part" "$DEST/summary.md"
  tar czf "$DEST/logs.tar.gz.part" -C "$OUT" --exclude=./summary.md . 2>/dev/null \
    && mv -f "$DEST/logs.tar.gz.part" "$DEST/logs.tar.gz"
}
stage() { pack; note ""; note "## $1 (at $(($(date +%s) - T0)) s of $BUDGET)"; }
status=0
fail() { note "- $*: FAIL"; status=1; }

# ---- libraries: the driver is on the loader path; cuBLAS and NVRTC may be in the CUDA
# toolkit or in PyTorch's pip wheels.
py_nvidia_libs=$(python3 - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    dirs = set()
    for root in nvidia.__path__:
        for lib in glob.glob(os.path.join(root, "**", "lib"), recursive=True):
            dirs.add(lib)
    print(":".join(sorted(dirs)))
except Exception:
    pass
PY
)
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:${py_nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ -z "${TC_NVRTC_LIB:-}" ]; then
  for c in /usr/local/cuda/lib64/libnvrtc.so.13 $(echo "$py_nvidia_libs" | tr ':' '\n' | sed 's|$|/libnvrtc.so.13|'); do
    if [ -f "$c" ]; then export TC_NVRTC_LIB="$c"; break; fi
  done
fi
export TC_REQUIRE_CUDA=1 TC_REQUIRE_NVRTC=1 TC_EXAMPLES_DIR="$PWD/examples"
# The kernel cache lives outside $OUT (only files under $OUT come back).
mkdir -p /tmp/tc-cache && export XDG_CACHE_HOME=/tmp/tc-cache

gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
echo "# tc on ${gpu_name:-no GPU}, $(date -u +%F), commit $(git rev-parse --short HEAD 2>/dev/null || cat "$BIN/COMMIT" 2>/dev/null || echo '?')" >"$summary"
{
  date -u
  nvidia-smi || true
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "TC_NVRTC_LIB=${TC_NVRTC_LIB:-}"
  ls -la "$BIN" "$BIN/tests" 2>&1
  command -v compute-sanitizer || echo "compute-sanitizer: not found"
  python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)' 2>&1
} >"$OUT/env.txt" 2>&1

if [ ! -x "$TC" ]; then
  note "FAIL: $TC missing: run scripts/build-devbin.sh on the build machine and carry .devbin"
  pack
  exit 1
fi

# Small dims per example (the same table as tests/cuda.rs): only the dims a file declares.
small_dims() {
  local f=$1 args=""
  for kv in B=2 S=8 D=8 H=2 Dh=4 F=16 N=1000 V=24 C=6; do
    local n=${kv%%=*}
    if grep -Eq "^dim +$n +=" "$f"; then args="$args --dim $kv"; fi
  done
  echo "$args"
}

# run_tests LOG SECS FILTER…: the GPU test binary, ignored tests included, one thread.
run_tests() {
  local log=$1 secs=$2; shift 2
  if [ ! -x "$TESTS" ]; then
    echo "$TESTS missing" >>"$log"; return 2
  fi
  limited "$secs" "$TESTS" --include-ignored --test-threads 1 --nocapture "$@" >>"$log" 2>&1
}
tests_verdict() { # LABEL RC LOG
  case $2 in
    0) note "- $1: PASS ($(grep -c '^test .* ok$' "$3") tests)" ;;
    124|137) fail "$1 (cut at its time share; see $(basename "$3"))" ;;
    *) fail "$1 (exit $2; see $(basename "$3"))" ;;
  esac
}

# ---- 1. differential: CUDA against the CPU executor.
stage "1 differential"
: >"$OUT/differential.log"
run_tests "$OUT/differential.log" 120 gpu_examples_match_the_cpu gpu_random_programs_match_the_cpu \
  gpu_split_column_reductions_match_the_cpu gpu_index_add_matches_the_cpu_bit_for_bit
tests_verdict "examples and random programs, CUDA = CPU" $? "$OUT/differential.log"
# The CUDA maths against the accuracy contract (tests/common/accuracy.rs): its own share
# and verdict, and its table (one row per op: the largest error measured, the bound).
: >"$OUT/accuracy.log"
run_tests "$OUT/accuracy.log" 60 gpu_elementwise_ops_meet_their_accuracy
tests_verdict "elementwise ops within their accuracy contract on CUDA" $? "$OUT/accuracy.log"
if grep -q '^|' "$OUT/accuracy.log"; then
  { echo; grep '^|' "$OUT/accuracy.log"; } >>"$summary"
fi
# The same under --fast-math (contraction, approximate / and sqrt: ir::eval's fast-maths
# bounds), on the CPU's sparser sweep. (The examples under --fast-math ran above:
# gpu_examples_match_the_cpu_under_fast_math.)
: >"$OUT/accuracy_fast.log"
run_tests "$OUT/accuracy_fast.log" 30 gpu_elementwise_ops_meet_their_fast_math_accuracy
tests_verdict "elementwise ops within the fast-maths contract (--fast-math)" $? "$OUT/accuracy_fast.log"
if grep -q '^|' "$OUT/accuracy_fast.log"; then
  { echo; echo "Under --fast-math:"; grep '^|' "$OUT/accuracy_fast.log"; } >>"$summary"
fi

# ---- 2. measured == planned, and the driver's free-memory drop agrees.
stage "2 measured == planned"
: >"$OUT/memory.jsonl"; : >"$OUT/measured.log"
for f in examples/*.tx; do
  name=$(basename "$f" .tx)
  mj=$(mktemp); log=$(mktemp)
  limited 40 "$TC" run "$f" --device cuda --report-memory --memory-json "$mj" >"$log" 2>&1
  rc=$?
  { echo "==== $name (exit $rc)"; grep -E '^(measured|planned|error)' "$log"; } >>"$OUT/measured.log"
  if [ $rc -eq 0 ] && [ -s "$mj" ]; then
    driver=$(sed -n 's/.*free memory fell by \([0-9]*\) bytes.*/\1/p' "$log")
    python3 - "$mj" "$name" "${driver:-}" >>"$OUT/memory.jsonl" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["example"] = sys.argv[2]
d["driver_free_drop"] = int(sys.argv[3]) if sys.argv[3] else None
print(json.dumps(d))
PY
  else
    fail "tc run $name --device cuda (exit $rc)"
  fi
  rm -f "$mj" "$log"
done
python3 - "$OUT/memory.jsonl" <<'PY' | tee -a "$summary"
import json, sys
# "measured" is the sum of tc's own cuMemAlloc sizes (the arena, each input and param);
# the driver's free-memory drop is the independent figure. The driver hands out memory in
# 2 MiB pages: an allocation of 2 MiB or more costs its size up to a page more; a smaller
# one may land in a page already taken (cuBLAS's, the module's) and cost nothing, or take
# a page of its own.
print("| example | planned (with inputs) | measured (tc's allocations) | equal | driver's free-memory drop | agrees (each allocation its size to a 2 MiB page more; under 2 MiB, 0 to a page) |")
print("|---|---|---|---|---|---|")
PAGE = 2 << 20
for line in open(sys.argv[1]):
    d = json.loads(line)
    p = d["peaks"]["planned"]["with_inputs"]
    m = (d["peaks"].get("measured") or {}).get("with_inputs")
    drv = d.get("driver_free_drop")
    sizes = [d.get("arena_bytes", 0)] + [b["bytes"] for b in d.get("buffers", []) if b.get("kind") in ("input", "param")]
    sizes = [s for s in sizes if s > 0]
    low = sum(s for s in sizes if s >= PAGE)
    high = sum(s for s in sizes) + len(sizes) * PAGE
    ok = drv is not None and m is not None and low <= drv <= high
    print(f"| {d['example']} | {p} | {m} | {'yes' if p == m else 'NO'} | {drv} | {'yes' if ok else 'NO'} ({low}..{high}) |")
PY

# ---- 3. figures: tc bench, then PyTorch eager and torch.compile on the same GPU.
stage "3 figures beside PyTorch"
: >"$OUT/bench.log"
for f in examples/*.tx; do
  name=$(basename "$f" .tx)
  echo "==== bench $name" >>"$OUT/bench.log"
  limited 20 "$TC" bench "$f" --device cuda >>"$OUT/bench.log" 2>&1 || fail "tc bench $name"
done
# Causal attention on its own, for PyTorch's scaled_dot_product_attention(is_causal=True)
# (issue 15; torch_compare.py's CAUSAL): attention.tx with a causal mask of -inf (the masked
# key tiles are never visited), and gpt_block's attention alone at its dims (the fused QKV
# product's thirds as input, its -1e9 mask: masked tiles skipped by the block vote, the
# heads merged by the kernel's epilogue). Benched like the examples, under these names.
mkdir -p "$OUT/causal"
cat >"$OUT/causal/attention_causal.tx" <<'TX'
# examples/attention.tx with a causal mask (-1e39 rounds to -inf)
dim B  = 8
dim H  = 16
dim S  = 1024
dim Dh = 64
input q : f32[B, H, S, Dh]
input k : f32[B, H, S, Dh]
input v : f32[B, H, S, Dh]
pos    = arange(S)
scores = q @ transpose(k) / sqrt(Dh)
p      = softmax(where(reshape(pos, [S, 1]) >= pos, scores, -1e39), axis=-1)
out    = p @ v
output out
TX
cat >"$OUT/causal/gpt_block_attention.tx" <<'TX'
# examples/gpt_block.tx's causal attention alone: the QKV product's thirds in, heads merged out
dim B  = 4
dim S  = 256
dim D  = 512
dim H  = 8
dim Dh = 64
input qkv : f32[B, S, 3 * D]
pos    = arange(S)
q      = permute(reshape(qkv[:, :, :D], [B, S, H, Dh]), [0, 2, 1, 3])
k      = permute(reshape(qkv[:, :, D:2*D], [B, S, H, Dh]), [0, 2, 1, 3])
v      = permute(reshape(qkv[:, :, 2*D:], [B, S, H, Dh]), [0, 2, 1, 3])
causal = reshape(pos, [S, 1]) >= pos
att    = softmax(where(causal, q @ transpose(k) / sqrt(Dh), -1e9), axis=-1)
ctx    = reshape(permute(att @ v, [0, 2, 1, 3]), [B, S, D])
output ctx
TX
for f in "$OUT"/causal/*.tx; do
  name=$(basename "$f" .tx)
  echo "==== bench $name" >>"$OUT/bench.log"
  limited 20 "$TC" bench "$f" --device cuda >>"$OUT/bench.log" 2>&1
  rc=$?
  echo "(exit $rc)" >>"$OUT/bench.log"
  [ $rc -eq 0 ] || fail "tc bench $name"
done
# The examples torch.compile must be beaten on, again under --fast-math (the numerics
# torch.compile's Triton kernels have: contraction, approximate / and sqrt).
: >"$OUT/bench_fast.log"
for name in chain softmax layernorm; do
  echo "==== bench $name" >>"$OUT/bench_fast.log"
  limited 20 "$TC" bench "examples/$name.tx" --device cuda --fast-math >>"$OUT/bench_fast.log" 2>&1 \
    || fail "tc bench $name --fast-math"
done
python3 - "$OUT/bench.log" <<'PY' | tee -a "$summary"
import re, sys
target = {"chain": 1.15, "softmax": 1.2, "layernorm": 1.2}
print("| example | planned median | x its traffic's floor | x the program's floor | target |\n|---|---|---|---|---|")
name = None
for line in open(sys.argv[1]):
    m = re.match(r"==== bench (\S+)", line)
    if m:
        name = m.group(1)
    m = re.search(r"planned\s+median\s+([\d.]+) ms.*?([\d.]+)x the copy floor of its traffic, ([\d.]+)x the program's floor", line)
    if m and name:
        t = target.get(name)
        verdict = "-" if t is None else (f"<= {t}: " + ("yes" if float(m.group(3)) <= t else "NO"))
        print(f"| {name} | {m.group(1)} ms | {m.group(2)} | {m.group(3)} | {verdict} |")
PY
limited 150 python3 scripts/torch_compare.py --out "$OUT/torch.json" --memory "$OUT/memory.jsonl" \
  --bench "$OUT/bench.log" --bench-fast "$OUT/bench_fast.log" >"$OUT/torch.log" 2>&1
rc=$?
if [ $rc -eq 0 ]; then
  note "- torch_compare: done (torch.json, torch.log)"
else
  fail "torch_compare (exit $rc; what it reached is in torch.json)"
fi
sed -n '/^| example/,$p' "$OUT/torch.log" >>"$summary"

# ---- 4. compute-sanitizer memcheck and racecheck on every example (small dims).
stage "4 compute-sanitizer"
: >"$OUT/sanitizer.log"
if command -v compute-sanitizer >/dev/null; then
  clean=1
  for f in examples/*.tx; do
    for tool in memcheck racecheck; do
      extra=""; [ $tool = memcheck ] && extra="--leak-check full"
      echo "==== $tool $f" >>"$OUT/sanitizer.log"
      # shellcheck disable=SC2046,SC2086
      if limited 25 compute-sanitizer --tool $tool $extra --error-exitcode 9 "$TC" run "$f" --device cuda $(small_dims "$f") \
          >>"$OUT/sanitizer.log" 2>&1; then
        echo "ok" >>"$OUT/sanitizer.log"
      else
        fail "$tool $(basename "$f") (see sanitizer.log)"; clean=0
      fi
    done
  done
  [ $clean = 1 ] && note "- compute-sanitizer memcheck + racecheck: clean on every example"
else
  fail "compute-sanitizer: not found on this machine"
fi

# ---- 5. cold compile (empty cache) and cached start, whole process, small dims.
stage "5 cold and cached start"
: >"$OUT/start.log"
for f in examples/*.tx; do
  name=$(basename "$f" .tx)
  cache=$(mktemp -d)
  dims=$(small_dims "$f")
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  XDG_CACHE_HOME=$cache limited 30 "$TC" run "$f" --device cuda $dims >/dev/null 2>&1; r1=$?
  t1=$(date +%s.%N)
  # shellcheck disable=SC2086
  XDG_CACHE_HOME=$cache limited 30 "$TC" run "$f" --device cuda $dims >/dev/null 2>&1; r2=$?
  t2=$(date +%s.%N)
  if [ $r1 -eq 0 ] && [ $r2 -eq 0 ]; then
    python3 -c "import sys; a,b,c=map(float,sys.argv[1:]); print(f'| $name | {b-a:.3f} s | {c-b:.3f} s |')" \
      "$t0" "$t1" "$t2" >>"$OUT/start.log"
  else
    echo "| $name | FAIL (exit $r1) | FAIL (exit $r2) |" >>"$OUT/start.log"; status=1
  fi
  rm -rf "$cache"
done
{ echo "| example | cold start (empty cache) | cached start |"; echo "|---|---|---|"; cat "$OUT/start.log"; } >>"$summary"

# ---- 6. the GPU cases of reliability.
stage "6 reliability"
: >"$OUT/reliability.log"
run_tests "$OUT/reliability.log" 60 gpu_runs_are_bitwise_deterministic \
  gpu_refuses_a_plan_larger_than_free_memory_before_any_launch nvrtc_failure_carries_log_arch_and_source_file
tests_verdict "determinism, refusal above free memory, NVRTC failure" $? "$OUT/reliability.log"
# Through the CLI: a plan far larger than any GPU is refused before launch with exit 3.
limited 30 "$TC" run examples/mlp.tx --device cuda --dim B=16777216 >>"$OUT/reliability.log" 2>&1
rc=$?
if [ $rc -eq 3 ]; then note "- tc run of a 64 GiB+ mlp on CUDA: refused, exit 3"; else fail "tc run of a 64 GiB+ mlp: exit $rc, expected 3"; fi

# An out-of-range token id on the GPU (SPEC §3.3): the kernel's index check, read back after
# the launch, gives exit 1 naming the tensor, the value and the range; nothing is saved.
BADDIR="$OUT/bad_index_save"; mkdir -p "$BADDIR"
python3 -c "import numpy as np; t=np.zeros((4,256),dtype=np.int64); t[1,7]=9000; np.save('$OUT/bad_tokens.npy', t)" \
  >>"$OUT/reliability.log" 2>&1
limited 30 "$TC" run examples/gpt_block.tx --device cuda --input tokens="$OUT/bad_tokens.npy" \
  --save "$BADDIR" >"$OUT/bad_index.log" 2>&1
rc=$?
cat "$OUT/bad_index.log" >>"$OUT/reliability.log"
if [ $rc -eq 1 ] && grep -q 9000 "$OUT/bad_index.log" && grep -q tokens "$OUT/bad_index.log" \
  && [ -z "$(ls -A "$BADDIR")" ]; then
  note "- out-of-range token 9000 on CUDA: exit 1, named, nothing saved"
else
  fail "out-of-range token on CUDA: exit $rc (expected 1 naming tokens and 9000, nothing saved)"
fi
rm -f "$OUT/bad_tokens.npy"

note ""
note "done at $(($(date +%s) - T0)) s; exit status $status"
pack
exit $status
