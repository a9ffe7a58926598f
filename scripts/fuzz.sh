#!/usr/bin/env bash
# Fuzzes the whole front end and planner (source in, plan out) with cargo-fuzz.
# Usage: scripts/fuzz.sh [SECONDS] [JOBS]   (default 1800 s, 1 job)
# Seeds the corpus from examples/ and tests/in/; crashes land in fuzz/artifacts/compile/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-1800}
jobs=${2:-1}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
mkdir -p fuzz/corpus/compile
cp examples/*.tx fuzz/corpus/compile/ 2>/dev/null || true
find tests/in -name '*.tx' -exec cp {} fuzz/corpus/compile/ \; 2>/dev/null || true
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets stable rustc accept them.
RUSTC_BOOTSTRAP=1 cargo fuzz run compile fuzz/corpus/compile -- \
  -max_total_time="$secs" -max_len=4096 -timeout=10 -rss_limit_mb=4096 -jobs="$jobs" -workers="$jobs" \
  -print_final_stats=1
