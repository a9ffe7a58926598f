#!/usr/bin/env bash
# scripts/build-devbin.sh — build, on a machine with Rust, everything scripts/gpu.sh runs on
# a GPU machine that has none: the `tc` binary and the test executables, stripped, in
# .devbin/ (git-ignored; the device tool carries it with `carry: [".devbin"]`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.devbin
rm -rf "$out"
mkdir -p "$out/tests"

cargo build --release -p tc-runtime --bin tc
cp target/release/tc "$out/tc"
git rev-parse --short HEAD >"$out/COMMIT" 2>/dev/null || true

# Test executables: `cargo test --no-run` prints one JSON line per artifact.
cargo test --release -p tc-tests --test cuda --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys, shutil
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable")
    if m.get("reason") == "compiler-artifact" and exe and m.get("profile", {}).get("test"):
        name = m["target"]["name"]
        # Only the GPU test travels (the 64 MiB limit on what the device tool carries).
        if m["target"]["kind"] == ["test"] and name == "cuda":
            shutil.copy(exe, f".devbin/tests/{name}")
            print(f"  test binary: {name}")
'
# Debug line tables are not needed there; keep the upload small (64 MiB limit).
for f in "$out/tc" "$out"/tests/*; do
  strip --strip-debug "$f" 2>/dev/null || true
done
du -sh "$out"
echo "built $out; on the GPU machine run: bash scripts/gpu.sh (one device call, timeout_s 450)"
