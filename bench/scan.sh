#!/usr/bin/env bash
# banshare scan vs fail2ban-regex (Debian's fail2ban, stock sshd filter) on the same
# generated 1,000,000-line auth.log, in one run: lines/s, peak memory, and the set of
# addresses each would ban with the same thresholds (maxretry 5 within 10 minutes).
# The same scan with fail2ban's own definition (--fail2ban-filter sshd) is timed too.
# Usage: bench/scan.sh [LINES]   (needs root once to install fail2ban)
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-1000000}
bash scripts/install-test-deps.sh
cargo build --release --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 bench/gen-authlog.py --lines "$lines" --seed 42 > "$work/auth.log"
echo "generated $(wc -l < "$work/auth.log") lines ($(du -h "$work/auth.log" | cut -f1))"

measure() { # name, output file, command...: prints seconds and peak RSS
    local name=$1 out=$2; shift 2
    /usr/bin/time -f "%e %M" -o "$work/$name.time" "$@" > "$out"
    read -r secs kb < "$work/$name.time"
    python3 -c "print(f'$name: {$secs:.2f} s, {$lines / $secs:,.0f} lines/s, peak RSS {$kb / 1024:.1f} MiB')"
}
# banshare takes about a second on a noisy machine whose speed drifts by tens of per cent
# over a minute: each banshare mode runs 6 times, the two modes alternating, 3 rounds
# before fail2ban-regex (a minute long, once) and 3 after it, so both modes and the peer
# see the same phases; the median of each mode's 6 runs is taken. `banshare` runs the
# built-in sshd filter, `banshare-f2b` fail2ban's own sshd definition
# (/etc/fail2ban/filter.d/sshd.conf).
run_banshare() { # name, run number, banshare scan arguments...
    local name=$1 run=$2; shift 2
    measure "$name" "$work/$name.json" target/release/banshare scan --config /dev/null "$@" --json "$work/auth.log"
    cp "$work/$name.time" "$work/$name.time.$run"
}
rounds() { # first run number, last
    for run in $(seq "$1" "$2"); do
        run_banshare banshare "$run" --filter sshd
        run_banshare banshare-f2b "$run" --fail2ban-filter sshd
    done
}
median() { # name: the median time of its 6 runs (the mean of the 3rd and 4th), the peak RSS of all
    local name=$1 secs kb
    secs=$(sort -n "$work/$name".time.? | sed -n '3p;4p' | awk '{s += $1} END {print s / 2}')
    kb=$(sort -n -k2 "$work/$name".time.? | tail -1 | cut -d' ' -f2)
    echo "$secs $kb" > "$work/$name.time"
    read -r secs kb < "$work/$name.time"
    python3 -c "print(f'$name median of 6: {$secs:.2f} s, {$lines / $secs:,.0f} lines/s, peak RSS {$kb / 1024:.1f} MiB')"
}
rounds 1 3
measure fail2ban-regex "$work/f2b.out" fail2ban-regex "$work/auth.log" /etc/fail2ban/filter.d/sshd.conf
rounds 4 6
median banshare
median banshare-f2b
# The addresses fail2ban would ban: its per-failure rows (a slower output mode, not timed).
fail2ban-regex -o row "$work/auth.log" /etc/fail2ban/filter.d/sshd.conf > "$work/f2b.rows"
python3 - "$work" <<'PY'
import sys
w = sys.argv[1]
t = lambda n: float(open(f"{w}/{n}.time").read().split()[0])
f = t("fail2ban-regex")
print(f"banshare scan is {f / t('banshare'):.0f}x faster than fail2ban-regex with its built-in sshd filter, "
      f"{f / t('banshare-f2b'):.0f}x with fail2ban's own sshd definition")
PY
python3 bench/compare-bans.py "$work/banshare.json" "$work/f2b.rows" 5 600
echo "with fail2ban's own sshd definition:"
python3 bench/compare-bans.py "$work/banshare-f2b.json" "$work/f2b.rows" 5 600
