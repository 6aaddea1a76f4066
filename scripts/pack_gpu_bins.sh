#!/usr/bin/env bash
# Build the test binaries and the benchmark examples here, strip them and pack them into .bins/
# for scripts/gpu_check.sh on a machine without Rust. (.bins/ is ignored; carry it with the call.)
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf /tmp/pg-bins && mkdir -p /tmp/pg-bins .bins
for f in $(cargo test --release --no-run --message-format=json 2>/dev/null | python3 -c '
import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])'); do
  n=$(basename "$f"); cp "$f" "/tmp/pg-bins/${n%-*}"
done
cargo build --release --examples
for e in bench shakespeare gpt2 classify; do cp "target/release/examples/$e" "/tmp/pg-bins/ex_$e"; done
strip /tmp/pg-bins/*
tar cf - -C /tmp pg-bins --transform 's/^pg-bins/bins/' | xz -7 -T2 > .bins/bins.tar.xz
pwd > .bins/built_at
ls -la .bins
