#!/usr/bin/env bash
# How long `tc plan` takes on programs far larger than this machine (issue 14: a program
# needing 1 TiB answers in under a second). Plans examples/mlp.tx and
# examples/transformer_block.tx at dims that need over 1 TiB with inputs and params, five
# times each, and prints the planned peak and the best wall time. Usage:
#   scripts/bench_plan.sh [path/to/tc]   (default: target/release/tc, built first)
set -euo pipefail
cd "$(dirname "$0")/.."
TC=${1:-target/release/tc}
if [ "$#" -eq 0 ]; then cargo build --release -q; fi
run() {
  local best=""
  for _ in 1 2 3 4 5; do
    local t0 t1 ms
    t0=$(date +%s%N)
    "$TC" plan "$@" --memory-json /tmp/bench_plan.json > /dev/null
    t1=$(date +%s%N)
    ms=$(( (t1 - t0) / 1000000 ))
    if [ -z "$best" ] || [ "$ms" -lt "$best" ]; then best=$ms; fi
  done
  local peak
  peak=$(python3 -c 'import json;print(json.load(open("/tmp/bench_plan.json"))["peaks"]["planned"]["with_inputs"])')
  printf '%-60s planned with inputs %16s bytes (%.2f TiB)   best of 5: %5d ms\n' "$*" "$peak" \
    "$(python3 -c "print($peak/2**40)")" "$best"
}
run examples/mlp.tx --dim B=46000000
run examples/mlp.tx --dim B=46000000 --device cuda
run examples/transformer_block.tx --dim B=4096 --dim S=8192
run examples/mlp.tx --fit B --memory 1TiB
