#!/usr/bin/env bash
# The check service under load: wrk against banshare's GET /v1/check/{ip} for cached
# addresses, and in the same run against the baseline of the pattern apps use today (a
# Flask app under gunicorn with a Redis cache, bench/check-baseline/app.py), both in
# front of the same WAYSCloud emulator. Runs alternate (banshare, baseline, ...) and the
# medians are printed: requests/s, p50/p99 latency, and the memory each side holds.
# wrk runs on one thread: on a 2-core machine the load generator and the server each get
# one core (WRK_THREADS=2 makes them fight for both; p99 then measures the scheduler).
# Usage: bench/check.sh [RUNS] [SECONDS] [CONNECTIONS]   (needs root once to install wrk,
# redis-server, python3-flask, python3-redis, python3-requests, gunicorn)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
secs=${2:-10}
conns=${3:-16}
addresses=1000
workers=5 # gunicorn's advice for 2 cores: 2 x cores + 1

need=()
for p in wrk redis-server python3-flask python3-redis python3-requests gunicorn; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || need+=("$p")
done
if ((${#need[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
. bench/lib.sh
bench_setup
emu_port=$(free_port)
check_port=$(free_port)
base_port=$(free_port)
redis_port=$(free_port)
key=$KEY

target/release/examples/wayscloud-emulator --port "$emu_port" >"$work/emulator.log" 2>&1 &
pids+=($!)
redis-server --port "$redis_port" --save "" --appendonly no --bind 127.0.0.1 >"$work/redis.log" 2>&1 &
pids+=($!)
redis_pid=$!

write_check_config "$work" "$emu_port" "$check_port"
${BANSHARE_CPUS:+taskset -c "$BANSHARE_CPUS"} env ${WORKERS:+TOKIO_WORKER_THREADS=$WORKERS} target/release/banshare --config "$work/banshare.toml" run 2>"$work/banshare.log" &
pids+=($!)
banshare_pid=$!
(cd bench/check-baseline && UPSTREAM="http://127.0.0.1:$emu_port" API_KEY="$key" REDIS_PORT="$redis_port" \
    exec gunicorn -w "$workers" -b "127.0.0.1:$base_port" --log-level warning app:app) >"$work/gunicorn.log" 2>&1 &
pids+=($!)
gunicorn_pid=$!

wait_for() { for _ in $(seq 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; for l in "$work"/*.log; do echo "== $l" >&2; tail -n 5 "$l" >&2; done; exit 1; }
wait_for "http://127.0.0.1:$check_port/v1/check/11.0.0.1"
wait_for "http://127.0.0.1:$base_port/v1/check/11.0.0.1"

# Requests rotate over $addresses public addresses (11.0.x.y); a first pass fills both caches.
cat >"$work/rotate.lua" <<EOF
local n = 0
request = function()
  n = n + 1
  local i = n % $addresses
  return wrk.format("GET", "/v1/check/11.0." .. math.floor(i / 250) .. "." .. (i % 250 + 1))
end
EOF
for port in "$check_port" "$base_port"; do
    wrk -t"${WRK_THREADS:-1}" -c"$conns" -d3s -s "$work/rotate.lua" "http://127.0.0.1:$port" >/dev/null
done

measure() { # name port run: one wrk run, its figures appended to $work/NAME
    ${WRK_CPUS:+taskset -c "$WRK_CPUS"} wrk -t"${WRK_THREADS:-1}" -c"$conns" -d"${secs}s" --latency -s "$work/rotate.lua" "http://127.0.0.1:$2" >"$work/$1.$3.txt"
    python3 - "$work/$1.$3.txt" >>"$work/$1" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(label):
    m = re.search(label + r"\s+([\d.]+)(us|ms|s|m)\b", t)
    if not m:
        sys.exit(f"cannot read the {label} latency from wrk's output:\n{t}")
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[m.group(2)]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms("50%")
p99 = ms("99%")
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(rps, p50, p99, errors.group(1) if errors else 0)
PY
}
for run in $(seq "$runs"); do
    measure banshare "$check_port" "$run"
    measure baseline "$base_port" "$run"
done

rss_kib() { awk '/^VmRSS/ {s += $2} END {print s}' $(for p in "$@"; do echo /proc/"$p"/status; done) 2>/dev/null; }
banshare_rss=$(rss_kib "$banshare_pid")
baseline_rss=$(rss_kib "$gunicorn_pid" $(pgrep -P "$gunicorn_pid") "$redis_pid")
python3 - "$work/banshare" "$work/baseline" "$runs" "$secs" "$conns" "$workers" "$banshare_rss" "$baseline_rss" "${WRK_THREADS:-1}" <<'PY'
import statistics, sys
def load(path):
    rows = [list(map(float, l.split())) for l in open(path)]
    return [statistics.median(c) for c in zip(*rows)]
b, f = load(sys.argv[1]), load(sys.argv[2])
runs, secs, conns, workers = sys.argv[3:7]
brss, frss = int(sys.argv[7]) / 1024, int(sys.argv[8]) / 1024
print(f"wrk -t{sys.argv[9]} -c{conns} -d{secs}s, {runs} alternating runs, medians; cached addresses")
print(f"{'':32} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'RSS MiB':>8}")
print(f"{'banshare /v1/check':32} {b[0]:>10,.0f} {b[1]:>8.2f} {b[2]:>8.2f} {b[3]:>8.0f} {brss:>8.1f}")
print(f"{'Flask+Redis, gunicorn -w ' + workers:32} {f[0]:>10,.0f} {f[1]:>8.2f} {f[2]:>8.2f} {f[3]:>8.0f} {frss:>8.1f}")
print(f"banshare/baseline: {b[0] / f[0]:.1f}x the requests/s, p99 {f[2] / b[2]:.1f}x lower")
PY
