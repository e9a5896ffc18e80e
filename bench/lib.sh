# Shared by the check-service benchmarks (sourced): a free loopback port, and the config of
# a banshare whose check service asks the WAYSCloud emulator, with nothing else running.

KEY="wayscloud_ipintel_test_5ecret5ecret"

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
