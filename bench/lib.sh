# Shared by the check-service benchmarks (sourced): a free loopback port, and the config of
# a banshare whose check service asks the WAYSCloud emulator, with nothing else running.

KEY="wayscloud_ipintel_test_5ecret5ecret"

# bench_setup: builds banshare and the emulator, makes the scratch directory $work, and at
# exit kills what was started into $pids and removes $work (KEEP=1 keeps it).
bench_setup() {
    cargo build --release --quiet
    cargo build --release --quiet --example wayscloud-emulator
    work=$(mktemp -d)
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n "${KEEP:-}" ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# write_check_config WORK EMULATOR_PORT CHECK_PORT: WORK/banshare.toml and WORK/api-key.
write_check_config() {
    local work=$1 emu_port=$2 check_port=$3
    install -m 600 /dev/null "$work/api-key"
    echo "$KEY" >"$work/api-key"
    # The one source names a file that does not exist: banshare's default sources would
    # read this machine's logs, and the benchmark wants none.
    cat >"$work/banshare.toml" <<CONF
state_dir = "$work/state"
socket = "$work/banshare.sock"
[firewall]
backend = "dry-run"
[feed]
base_url = "http://127.0.0.1:$emu_port"
api_key_file = "$work/api-key"
pull = false
report = false
[check]
listen = "127.0.0.1:$check_port"
[[source]]
path = "/nonexistent/bench.log"
filters = ["sshd"]
CONF
}
