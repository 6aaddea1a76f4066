#!/usr/bin/env bash
# Build the browser demo: the wasm crate, then wasm-bindgen's `--target web` glue into web/pkg.
set -euo pipefail
cd "$(dirname "$0")"

# The CLI must be the exact version of the wasm-bindgen crate in Cargo.lock.
WB=0.2.130
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $WB"; then
    # --locked can name a dependency version the registry mirror lacks; then resolve afresh.
    cargo install wasm-bindgen-cli --version "$WB" --locked ||
        cargo install wasm-bindgen-cli --version "$WB"
fi
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi

cargo build --release --target wasm32-unknown-unknown
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
wasm-bindgen --target web --out-dir pkg "$target_dir/wasm32-unknown-unknown/release/portagrad_web.wasm"
echo "built: web/index.html + web/pkg ($(du -h pkg/portagrad_web_bg.wasm | cut -f1) of wasm)"
