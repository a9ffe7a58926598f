#!/usr/bin/env bash
# scripts/gpu.sh — everything tc checks and measures on a GPU, on a machine with no Rust:
# the GPU tests (CUDA against the CPU executor, TC_REQUIRE_CUDA=1), compute-sanitizer
# memcheck and racecheck on every example, `tc bench` and memory figures on every example,
# cold-compile and cached-start times, and scripts/torch_compare.py (PyTorch eager and
# torch.compile beside tc). Binaries come prebuilt in .devbin/ (scripts/build-devbin.sh).
#
#   bash scripts/gpu.sh [all|tests|sanitize|bench|torch]...     (default: all)
#
# One device command may run 10 minutes: `all` may not fit (torch.compile alone takes
# minutes), so on the device tool run it as `gpu.sh tests sanitize`, then `gpu.sh bench`,
# then `gpu.sh torch` (each call with `carry: [".devbin"]`; the files of the last call are
# what comes back, so copy what you need from each).
#
# Writes at most 8 files to $OUT (default ./gpu-out): env.txt, tests.log, sanitizer.log,
# bench.log, memory.jsonl, torch.json, torch.log, summary.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
BIN=.devbin
TC="$BIN/tc"
stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(all)
want() { for s in "${stages[@]}"; do [ "$s" = all ] || [ "$s" = "$1" ] && return 0; done; return 1; }
summary="$OUT/summary.md"
note() { echo "$*" | tee -a "$summary"; }

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

echo "# tc on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), $(date -u +%F)" >"$summary"
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

status=0

# Appends tc's memory report of example $1 (default dims, on CUDA) to memory.jsonl; the
# run's output goes to file $2.
memory_of() {
  local f=$1 log=$2 name mj
  name=$(basename "$f" .tx)
  mj=$(mktemp)
  if "$TC" run "$f" --device cuda --report-memory --memory-json "$mj" >>"$log" 2>&1 && [ -s "$mj" ]; then
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["example"]=sys.argv[2]; print(json.dumps(d))' \
      "$mj" "$name" >>"$OUT/memory.jsonl"
  else
    note "- tc run $name: FAIL"; status=1
  fi
  rm -f "$mj"
}

# ---- 1. GPU tests: CUDA against the CPU executor on every example and >= 200 random
# programs, measured == planned; the NVRTC compile tests too.
if want tests; then
  if [ -x "$BIN/tests/cuda" ]; then
    if "$BIN/tests/cuda" --include-ignored --test-threads 1 --nocapture gpu_ nvrtc cuda_entry_points cublas_calls >"$OUT/tests.log" 2>&1; then
      note "- GPU tests: PASS ($(grep -c '^test .* ok$' "$OUT/tests.log") tests)"
    else
      note "- GPU tests: FAIL (see tests.log)"; status=1
    fi
  else
    note "- GPU tests: FAIL ($BIN/tests/cuda missing)"; status=1
  fi
fi

# ---- 2. compute-sanitizer memcheck and racecheck on every example (small dims).
if want sanitize; then
  : >"$OUT/sanitizer.log"
  if command -v compute-sanitizer >/dev/null; then
    for f in examples/*.tx; do
      for tool in memcheck racecheck; do
        extra=""; [ $tool = memcheck ] && extra="--leak-check full"
        echo "==== $tool $f" >>"$OUT/sanitizer.log"
        # shellcheck disable=SC2046
        if compute-sanitizer --tool $tool $extra --error-exitcode 9 "$TC" run "$f" --device cuda $(small_dims "$f") \
            >>"$OUT/sanitizer.log" 2>&1; then
          echo "ok" >>"$OUT/sanitizer.log"
        else
          note "- $tool $(basename "$f"): FAIL (see sanitizer.log)"; status=1
        fi
      done
    done
    grep -q FAIL "$summary" || note "- compute-sanitizer memcheck + racecheck: clean on every example"
  else
    note "- compute-sanitizer: not found on this machine"
  fi
fi

# ---- 3. tc bench and memory on every example (default dims), cold compile and cached start.
if want bench; then
  : >"$OUT/bench.log"; : >"$OUT/memory.jsonl"
  for f in examples/*.tx; do
    name=$(basename "$f" .tx)
    echo "==== bench $name" >>"$OUT/bench.log"
    "$TC" bench "$f" --device cuda >>"$OUT/bench.log" 2>&1 || { note "- tc bench $name: FAIL"; status=1; }
    memory_of "$f" "$OUT/bench.log"
    # Cold compile (empty cache) and cached start, whole process, small dims.
    cache=$(mktemp -d)
    dims=$(small_dims "$f")
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    XDG_CACHE_HOME=$cache "$TC" run "$f" --device cuda $dims >/dev/null 2>&1; r1=$?
    t1=$(date +%s.%N)
    # shellcheck disable=SC2086
    XDG_CACHE_HOME=$cache "$TC" run "$f" --device cuda $dims >/dev/null 2>&1; r2=$?
    t2=$(date +%s.%N)
    # shellcheck disable=SC2086
    XDG_CACHE_HOME=$cache "$TC" run "$f" --device cuda $dims >/dev/null 2>&1; r3=$?
    t3=$(date +%s.%N)
    if [ $r1 -eq 0 ] && [ $r2 -eq 0 ] && [ $r3 -eq 0 ]; then
      python3 -c "import sys; a,b,c,d=map(float,sys.argv[1:]); print(f'start $name: cold {b-a:.3f} s, cached {d-c:.3f} s (whole tc run, small dims)')" \
        "$t0" "$t1" "$t2" "$t3" | tee -a "$OUT/bench.log"
    else
      echo "start $name: FAIL (exit $r1/$r2/$r3)" | tee -a "$OUT/bench.log"
    fi
    rm -rf "$cache"
  done
  # The bandwidth targets of issue 5: time against the program's least traffic.
  python3 - "$OUT/bench.log" <<'PY' | tee -a "$summary"
import re, sys
target = {"chain": 1.15, "softmax": 1.2, "layernorm": 1.2}
print("\n| example | planned median | x its traffic's floor | x the program's floor | target |\n|---|---|---|---|---|")
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
  python3 - "$OUT/memory.jsonl" <<'PY' | tee -a "$summary"
import json, sys
print("\n| example | planned (with inputs) | measured | equal |\n|---|---|---|---|")
for line in open(sys.argv[1]):
    d = json.loads(line)
    p = d["peaks"]["planned"]["with_inputs"]
    m = (d["peaks"].get("measured") or {}).get("with_inputs")
    print(f"| {d['example']} | {p} | {m} | {'yes' if p == m else 'NO'} |")
PY
fi

# ---- 4. PyTorch eager and torch.compile on the same programs.
if want torch; then
  # $OUT starts empty on each device call: make tc's figures here if bench did not run.
  if [ ! -s "$OUT/memory.jsonl" ]; then
    for f in examples/*.tx; do memory_of "$f" "$OUT/torch.log"; done
  fi
  if python3 scripts/torch_compare.py --out "$OUT/torch.json" --memory "$OUT/memory.jsonl" >>"$OUT/torch.log" 2>&1; then
    note "- torch_compare: done (torch.json, torch.log)"
    sed -n '/^| example/,$p' "$OUT/torch.log" >>"$summary"
  else
    note "- torch_compare: FAIL (see torch.log)"; status=1
  fi
fi

note ""
note "exit status $status"
exit $status
