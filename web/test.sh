#!/usr/bin/env bash
# Build the demo, serve web/ on localhost, train in headless Chromium (WebGPU on SwiftShader)
# and fail unless the page reports a test accuracy of at least MIN_ACCURACY (0.9).
set -euo pipefail
cd "$(dirname "$0")"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

./build.sh
if ! command -v "${CHROMIUM:-chromium}" >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && apt-get install -y -qq chromium
    else
        echo "needs Chromium (Debian: apt-get install chromium), or CHROMIUM=/path/to/chrome" >&2
        exit 1
    fi
fi
[ -d node_modules/playwright-core ] || npm install --no-audit --no-fund

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1 &
server=$!
trap 'kill $server' EXIT
# Wait for the server to answer before opening the page.
for _ in $(seq 50); do
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/index.html')" 2>/dev/null && break
    sleep 0.1
done
CHROMIUM=$(command -v "${CHROMIUM:-chromium}") node test.mjs "http://127.0.0.1:$port/index.html${DEMO_QUERY:-}"
