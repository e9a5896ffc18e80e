#!/usr/bin/env bash
# The Debian package test (run by scripts/test.sh, as root, on the machine itself):
# builds the .deb, checks it with lintian and systemd-analyze, installs it exactly as
# the README's "Install the Debian package" section says, runs the installed binary with
# the installed config against the WAYSCloud emulator in a network namespace (start,
# reconcile, feed pull, a ban, a clean SIGTERM), then purges it and checks that nothing
# is left: no files, no group, no nftables table.
set -euo pipefail
cd "$(dirname "$0")/.."
# Under pipefail, `cmd | grep -q` fails when grep exits at its first match and cmd dies
# of SIGPIPE; pipelines here use `grep >/dev/null`, which reads to the end.

fail() {
    echo "test-package: FAILED: $*" >&2
    [[ -s "${WORK:-}/daemon.log" ]] && { echo "--- daemon log:" >&2; cat "$WORK/daemon.log" >&2; }
    exit 1
}
step() { echo "test-package: $*"; }
if [[ $(id -u) -ne 0 ]]; then
    [[ "${CI:-}" == true ]] && fail "needs root (dpkg -i, network namespaces)"
    echo "test-package: SKIPPED: needs root" >&2
    exit 0
fi
if dpkg-query -W -f='${Status}' banshare 2>/dev/null | grep "install ok installed" >/dev/null; then
    fail "banshare is already installed on this machine; the test would replace it"
fi

NS="bs-pkg-$$"
WORK=$(mktemp -d)
EMU_PID=""
DAEMON_PID=""
cleanup() {
    [[ -n "$DAEMON_PID" ]] && kill -9 "$DAEMON_PID" 2>/dev/null || true
    [[ -n "$EMU_PID" ]] && kill "$EMU_PID" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    dpkg --purge banshare >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

step "build the package"
bash scripts/build-deb.sh
DEB=$(ls -t target/debian/banshare_*.deb | head -1)
cargo build --example wayscloud-emulator --locked

step "lintian"
lintian --fail-on error "$DEB" | tee "$WORK/lintian.txt"
# Warnings kept (listed with reasons in the README): initial-upload-closes-no-bugs.
grep -v -e '^W: banshare: initial-upload-closes-no-bugs' "$WORK/lintian.txt" | grep '^[EW]:' >/dev/null \
    && fail "lintian reports more than the warnings the README lists"

step "install (the README's commands)"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "./$DEB" >/dev/null
echo "wayscloud_ipintel_test_5ecret5ecret" | install -m 600 /dev/stdin /etc/banshare/api-key
banshare --version | grep "^banshare 0" >/dev/null || fail "banshare --version"
banshare config check || fail "config check of the installed config"
man -P cat banshare 2>/dev/null | grep "banshare" >/dev/null || fail "man banshare"
getent group banshare >/dev/null || fail "the banshare group was not created"
[[ $(stat -c %a /var/lib/banshare) == 700 ]] || fail "/var/lib/banshare is not 0700"
for f in /usr/bin/banshare /etc/banshare/banshare.toml /usr/lib/systemd/system/banshare.service \
    /etc/fail2ban/action.d/banshare.conf /usr/share/doc/banshare/examples/jail.d/banshare.local.example \
    /usr/share/man/man1/banshare.1.gz /usr/share/bash-completion/completions/banshare \
    /usr/share/zsh/vendor-completions/_banshare /usr/share/fish/vendor_completions.d/banshare.fish \
    /usr/share/doc/banshare/copyright /usr/share/doc/banshare/examples/nginx/banshare-auth.conf \
    /usr/share/doc/banshare/examples/python/banshare_check.py /usr/share/doc/banshare/examples/node/banshare-check.js; do
    dpkg -L banshare | grep -x "$f" >/dev/null || fail "dpkg -L does not list $f"
done
grep -qx /etc/banshare/banshare.toml /var/lib/dpkg/info/banshare.conffiles || fail "the config is not a conffile"
systemd-analyze verify /usr/lib/systemd/system/banshare.service || fail "systemd-analyze verify"

step "run the installed binary against the emulator in a network namespace"
kernel_set() { ip netns exec "$NS" nft list set inet banshare "$1" 2>&1; }
in_set() { # set address: whether the namespace's kernel set holds the address
    local listing
    listing=$(kernel_set "$1") || return 1
    [[ $listing == *"$2"* ]]
}
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
cat > "$WORK/feed.json" <<'FEED'
[{"ip_address": "45.155.205.201", "threat_score": 95, "categories": ["ssh_bruteforce"]},
 {"ip_address": "45.155.205.202", "threat_score": 90},
 {"ip_address": "10.0.0.1", "threat_score": 99}]
FEED
ip netns exec "$NS" target/debug/examples/wayscloud-emulator --port 8099 --feed "$WORK/feed.json" >"$WORK/emulator.log" 2>&1 &
EMU_PID=$!
sed -i 's|^# base_url = .*|base_url = "http://127.0.0.1:8099"|' /etc/banshare/banshare.toml
banshare config check
ip netns exec "$NS" /usr/bin/banshare run 2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do banshare status >/dev/null 2>&1 && break; sleep 0.1; done
banshare status || fail "the daemon did not start: $(cat "$WORK/daemon.log")"
ip netns exec "$NS" nft list table inet banshare >/dev/null || fail "no nftables table after start"
for _ in $(seq 100); do [[ $(banshare list --source feed --json | grep -c '"target"') == 2 ]] && break; sleep 0.1; done
[[ $(banshare list --source feed --json | grep -c '"target"') == 2 ]] || fail "the feed was not applied: $(banshare list)"
in_set feed_v4 45.155.205.201 || fail "feed entry not in the kernel: $(kernel_set feed_v4)"
banshare ban 45.155.205.210 --for 1h
# `ban` returns once the block is in the kernel: no waiting here.
in_set manual_v4 45.155.205.210 || fail "manual ban not in the kernel: $(kernel_set manual_v4; banshare status)"
banshare query 45.155.205.210 >/dev/null || fail "query"
kill -TERM "$DAEMON_PID"
wait "$DAEMON_PID" || fail "the daemon did not stop cleanly on SIGTERM: $(cat "$WORK/daemon.log")"
DAEMON_PID=""
grep -q "banshare stopped" "$WORK/daemon.log" || fail "no clean stop in the log"
in_set manual_v4 45.155.205.210 \
    || fail "blocks must stay in the kernel while the daemon is stopped"

step "purge (inside the namespace, so the removal's teardown meets the table)"
ip netns exec "$NS" apt-get purge -y -q banshare >/dev/null
ip netns exec "$NS" nft list table inet banshare >/dev/null 2>&1 && fail "the nftables table survived the purge"
for f in /usr/bin/banshare /etc/banshare /var/lib/banshare /run/banshare /etc/fail2ban/action.d/banshare.conf \
    /usr/lib/systemd/system/banshare.service /usr/share/doc/banshare; do
    [[ -e "$f" ]] && fail "$f is left after purge"
done
getent group banshare >/dev/null && fail "the banshare group is left after purge"
dpkg-query -W banshare >/dev/null 2>&1 && dpkg-query -W -f='${Status}' banshare | grep -v "not-installed" >/dev/null \
    && fail "dpkg still knows banshare"
step "ok"
