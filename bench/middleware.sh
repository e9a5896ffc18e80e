#!/usr/bin/env bash
# The login middleware's cost: Flask (werkzeug), FastAPI (uvicorn) and Express apps, each
# with a route guarded by banshare's middleware and the same route without it, measured
# in one run (bench/middleware/bench.py) against banshare's check service, whose answer
# for the client is cached; banshare in front of the WAYSCloud emulator. Prints the
# medians over RUNS of each route's p50 and p99 and what the middleware adds.
# Usage: bench/middleware.sh [REQUESTS] [RUNS]   (needs scripts/install-test-deps.sh first)
# AWAKE=1 keeps every CPU busy with a nice-19 loop meanwhile, so no CPU halts between
# requests: the same measurement without the wake-up latency of idle (virtual) CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-2000}
runs=${2:-5}
web=${BANSHARE_TEST_CACHE:-/var/cache/banshare-tests}/web
[[ -x $web/venv/bin/python && -d $web/node/node_modules/express ]] \
    || { echo "run scripts/install-test-deps.sh first (as root)" >&2; exit 1; }
. bench/lib.sh
bench_setup
emu_port=$(free_port)
check_port=$(free_port)
target/release/examples/wayscloud-emulator --port "$emu_port" >"$work/emulator.log" 2>&1 &
pids+=($!)
write_check_config "$work" "$emu_port" "$check_port"
target/release/banshare --config "$work/banshare.toml" run 2>"$work/banshare.log" &
pids+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$check_port/v1/check/11.0.0.1" >/dev/null 2>&1 && break; sleep 0.1; done
if [[ -n "${AWAKE:-}" ]]; then
    for _ in $(seq "$(nproc)"); do nice -n 19 sh -c 'while :; do :; done' & pids+=($!); done
fi
url="http://127.0.0.1:$check_port"
py=$web/venv/bin/python
NODE_PATH=$web/node/node_modules "$py" bench/middleware/bench.py "$url" "$requests" "$runs" \
    "flask=$py bench/middleware/apps.py flask PORT $url" \
    "fastapi=$py bench/middleware/apps.py fastapi PORT $url" \
    "express=node ${NODE_FLAGS:-} bench/middleware/express-app.js PORT $url"
