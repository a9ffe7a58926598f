#!/usr/bin/env bash
# Fuzzes tc with cargo-fuzz, every target side by side:
#   compile  any bytes as a program: the whole front end and planner (source in, plan out)
#   data     any bytes as an .npy or safetensors file given to --input / --params
# Usage: scripts/fuzz.sh [SECONDS] [JOBS] [TARGET...]   (default 1800 s, 1 job, every target;
# the targets run at the same time, each for SECONDS with JOBS jobs)
# Seeds the corpora from examples/ and tests/in/; crashes land in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1800}
jobs=${2:-1}
shift $(( $# > 2 ? 2 : $# ))
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(compile data)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
mkdir -p fuzz/corpus/compile fuzz/corpus/data
cp examples/*.tx fuzz/corpus/compile/ 2>/dev/null || true
find tests/in -name '*.tx' -exec cp {} fuzz/corpus/compile/ \; 2>/dev/null || true
# A valid .npy and safetensors file to start the data corpus from (the first byte picks
# the reader and the declared type: even = .npy, odd = safetensors; 0/1 = f32 scalar).
python3 - <<'PY'
import json, struct
hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (), }"
hdr += " " * (63 - len(hdr) % 64) + "\n"
npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode() + struct.pack("<f", 1.5)
open("fuzz/corpus/data/npy_f32_scalar", "wb").write(b"\x00" + npy)
meta = json.dumps({"x": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}).encode()
st = struct.pack("<Q", len(meta)) + meta + struct.pack("<f", 2.5)
open("fuzz/corpus/data/st_f32_scalar", "wb").write(b"\x01" + st)
PY
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets stable rustc accept them.
for t in "${targets[@]}"; do RUSTC_BOOTSTRAP=1 cargo fuzz build "$t"; done
# With one job a target's libFuzzer output goes to fuzz-TARGET.log and the targets run at the
# same time; with several, libFuzzer writes fuzz-JOB.log files itself, so they run in turn.
par=$([ "$jobs" -gt 1 ] && echo "-jobs=$jobs -workers=$jobs" || true)
# -timeout=60: under AddressSanitizer the largest seed (examples/train_block.tx, four plans of
# a 50-kernel training step with the recomputation search) takes ~15 s, 1 s in release.
run_one() {
  # shellcheck disable=SC2086
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$1" "fuzz/corpus/$1" -- \
    -max_total_time="$secs" -max_len=4096 -timeout=60 -rss_limit_mb=4096 -malloc_limit_mb=2048 \
    $par -print_final_stats=1 >"fuzz-$1.log" 2>&1
}
verdict() {
  if [ "$2" -eq 0 ]; then echo "$1: clean ($(grep -hE "^stat::number_of_executed_units" "fuzz-$1.log" | tail -1))"
  else echo "$1: FOUND SOMETHING (exit $2; fuzz-$1.log, fuzz/artifacts/$1/)"; status=1; fi
}
status=0
if [ "$jobs" -gt 1 ]; then
  for t in "${targets[@]}"; do rc=0; run_one "$t" || rc=$?; verdict "$t" $rc; done
else
  pids=()
  for t in "${targets[@]}"; do run_one "$t" & pids+=($!); done
  for i in "${!pids[@]}"; do rc=0; wait "${pids[$i]}" || rc=$?; verdict "${targets[$i]}" $rc; done
fi
exit $status
