#!/usr/bin/env bash
# The test under a real systemd (run by scripts/test.sh, as root): boots Debian in a
# container (systemd-nspawn -b --private-network; a tree made by debootstrap from this
# machine's own Debian source, cached in /var/cache/banshare-tests), installs the package
# built from the repo, and checks what an operator relies on there: Type=notify
# readiness, ban / list / the element in nft with its timeout, reload with a good config,
# a broken one (the old one stays) and back, `systemctl restart nftables`, kill -9,
# fail2ban with `action = banshare` and `banaction = banshare[mode=block]`, the journal's
# lines and no hardening error in them, `systemd-analyze security` (recorded), and purge.
# The host's own ruleset, sets and links are compared before and after.
#
#   scripts/test-systemd.sh [PATH.deb]     (default: builds it with scripts/build-deb.sh)
#
# Commands reach the container with nsenter on its PID 1 (these machines have no
# machined, hence --register=no --keep-unit). BANSHARE_TEST_CACHE moves the cache.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { echo "test-systemd: $*"; }
WORK=""
NSPAWN_PID=""
LEADER=""
fail() {
    echo "test-systemd: FAILED: $*" >&2
    if [[ -n "$LEADER" ]]; then
        echo "--- the container's journal (last 80 lines):" >&2
        ct journalctl -b --no-pager -n 80 >&2 || true
    fi
    exit 1
}
if [[ $(id -u) -ne 0 ]]; then
    [[ "${CI:-}" == true ]] && fail "needs root (debootstrap, systemd-nspawn, nsenter)"
    echo "test-systemd: SKIPPED: needs root" >&2
    exit 0
fi
for tool in systemd-nspawn debootstrap nsenter; do
    command -v "$tool" >/dev/null || fail "$tool is missing (scripts/install-test-deps.sh installs it)"
done

# --- the cached tree --------------------------------------------------------------------

CACHE=${BANSHARE_TEST_CACHE:-/var/cache/banshare-tests}
SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
PACKAGES=systemd,systemd-sysv,dbus,nftables,ipset,iptables,fail2ban,python3,procps,iproute2,ca-certificates
TREE="$CACHE/$SUITE-minbase-$(echo "$PACKAGES" | sha256sum | cut -c1-12)"

# The first Debian archive this machine's apt uses (deb822 or one-line format).
mirror() {
    local uri
    uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
    [[ -z "$uri" ]] && uri=$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

if [[ ! -x "$TREE/usr/lib/systemd/systemd" ]]; then
    step "debootstrap $SUITE (minbase + $PACKAGES) into $TREE, once"
    mkdir -p "$CACHE"
    rm -rf "$TREE.tmp"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$TREE.tmp" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; fail "debootstrap"; }
    chroot "$TREE.tmp" apt-get clean
    mv "$TREE.tmp" "$TREE"
fi

DEB=${1:-}
if [[ -z "$DEB" ]]; then
    step "build the package"
    bash scripts/build-deb.sh >/dev/null
    DEB=$(ls -t target/debian/banshare_*.deb | head -1)
fi
cargo build --example wayscloud-emulator --locked

# --- the host, before ----------------------------------------------------------------------

host_state() {
    nft list ruleset 2>&1
    ipset list -n 2>&1 || true
    iptables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' || true
    ip -o link | awk '{print $2, $3}'
}
HOST_BEFORE=$(host_state)

# --- boot ----------------------------------------------------------------------------------

WORK=$(mktemp -d /var/tmp/banshare-systemd.XXXXXX)
cleanup() {
    if [[ -n "$NSPAWN_PID" ]] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        kill -TERM "$NSPAWN_PID" 2>/dev/null || true # nspawn powers the container off
        for _ in $(seq 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$NSPAWN_PID" 2>/dev/null || true
        wait "$NSPAWN_PID" 2>/dev/null || true
    fi
    [[ -n "$WORK" ]] && rm -rf "$WORK"
}
trap cleanup EXIT

step "boot $SUITE under systemd-nspawn"
ROOT="$WORK/root"
cp -a "$TREE" "$ROOT"
install -m 644 "$DEB" "$ROOT/root/banshare.deb"
install -m 755 target/debug/examples/wayscloud-emulator "$ROOT/usr/local/bin/wayscloud-emulator"
cat > "$ROOT/root/feed.json" <<'FEED'
[{"ip_address": "45.155.205.201", "threat_score": 95, "categories": ["ssh_bruteforce"]},
 {"ip_address": "45.155.205.202", "threat_score": 90}]
FEED
# Debian's default sshd jail has no sshd here: off, so fail2ban starts with the test's jails.
cat > "$ROOT/etc/fail2ban/jail.d/zz-banshare-test.local" <<'JAILS'
[sshd]
enabled = false

[report-sshd]
enabled = true
filter = sshd
backend = polling
logpath = /var/log/test-report.log
maxretry = 3
bantime = 1h
action = banshare

[block-sshd]
enabled = true
filter = sshd
backend = polling
logpath = /var/log/test-block.log
maxretry = 3
bantime = 2h
banaction = banshare[mode=block]
JAILS
touch "$ROOT/var/log/test-report.log" "$ROOT/var/log/test-block.log"

systemd-nspawn -D "$ROOT" -b --private-network --register=no --keep-unit --console=passive -q \
    >"$WORK/nspawn.log" 2>&1 &
NSPAWN_PID=$!
for _ in $(seq 100); do
    LEADER=$(pgrep -P "$NSPAWN_PID" -x systemd || true)
    [[ -n "$LEADER" ]] && break
    sleep 0.1
done
[[ -n "$LEADER" ]] || fail "the container did not start: $(cat "$WORK/nspawn.log")"

# A command inside the container, with a clean environment.
ct() { nsenter -t "$LEADER" -a -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
# Waits up to $1 tenths of a second for the command after it to succeed.
until_ok() {
    local tries=$1
    shift
    for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    return 1
}
# The manager's bus socket comes a moment after PID 1 itself.
until_ok 300 ct test -S /run/systemd/private || fail "systemd in the container did not come up"
booted=$(timeout 120 nsenter -t "$LEADER" -a -- systemctl is-system-running --wait 2>&1 || true)
[[ $booted == running || $booted == degraded ]] || fail "boot did not finish: $booted"
[[ $(ct ip -o link | wc -l) == 1 ]] || fail "the container sees more than its loopback: $(ct ip -o link)"

# --- install ---------------------------------------------------------------------------------

step "install the package; Type=notify readiness"
ct dpkg -i /root/banshare.deb >/dev/null 2>&1 || fail "dpkg -i: $(ct dpkg -i /root/banshare.deb 2>&1)"
[[ $(ct systemctl is-enabled banshare) == enabled ]] || fail "not enabled"
[[ $(ct systemctl show -p Type --value banshare) == notify ]] || fail "not Type=notify"
ct systemctl is-active banshare >/dev/null || fail "not started by the package: $(ct systemctl status banshare --no-pager)"
[[ $(ct systemctl show -p StatusText --value banshare) == ready ]] || fail "no READY status"
ct banshare status >/dev/null || fail "status"

ct systemd-run -q --unit=wayscloud-emulator /usr/local/bin/wayscloud-emulator --port 8099 --feed /root/feed.json
until_ok 100 ct bash -c 'exec 3<>/dev/tcp/127.0.0.1/8099' || fail "the emulator did not start"
sed -i 's|^# base_url = .*|base_url = "http://127.0.0.1:8099"|' "$ROOT/etc/banshare/banshare.toml"
echo "wayscloud_ipintel_test_5ecret5ecret" | ct install -m 600 /dev/stdin /etc/banshare/api-key
ct systemctl restart banshare || fail "restart with the feed configured"
# systemctl returns at READY=1: the socket and the table are there at once, no waiting.
ct banshare status >/dev/null || fail "status right after the restart returned"
ct nft list table inet banshare >/dev/null || fail "no table right after the restart returned"
until_ok 100 bash -c "[[ \$(nsenter -t $LEADER -a -- banshare list --source feed --json | grep -c '\"target\"') == 2 ]]" \
    || fail "the feed was not applied: $(ct banshare list)"
ct nft list set inet banshare feed_v4 | grep 45.155.205.201 >/dev/null || fail "feed entry not in nft"

# --- ban, list, nft --------------------------------------------------------------------------

step "ban / list / nft timeouts"
out=$(ct banshare ban 203.0.113.7 --for 3d --reason scanner) || fail "ban: $out"
[[ $out == "banned 203.0.113.7 (manual) until "* ]] || fail "ban said: $out"
ct banshare ban 203.0.113.8 --for 1h --reason probe >/dev/null || fail "ban 1h"
manual=$(ct nft list set inet banshare manual_v4)
[[ $manual =~ 203\.0\.113\.7\ timeout\ (3d|2d23h59m[0-9ms]+)\ expires\ 2d23h5[0-9]m ]] || fail "3d element: $manual"
[[ $manual =~ 203\.0\.113\.8\ timeout\ (1h|59m[0-9ms]+)\ expires\ 5[0-9]m ]] || fail "1h element: $manual"
ct banshare list | grep "203.0.113.7 .*manual.*scanner" >/dev/null || fail "list: $(ct banshare list)"
ct journalctl -u banshare -o cat | grep "^blocked 203.0.113.7 (manual: scanner) until 20" >/dev/null \
    || fail "no readable journal line for the ban"

# --- reload ----------------------------------------------------------------------------------

step "reload: a good config, a broken one (the old one stays), and back"
CONF="$ROOT/etc/banshare/banshare.toml"
grep '^# allowlist = \[\]' "$CONF" >/dev/null || fail "the installed config has no allowlist line to edit"
sed -i 's|^# allowlist = \[\]|allowlist = ["198.51.100.0/24"]|' "$CONF"
ct systemctl reload banshare || fail "reload of a good config"
out=$(ct banshare ban 198.51.100.5 --for 1h 2>&1) && fail "the reloaded allowlist is not in force: $out"
[[ $out == *allowlist* ]] || fail "refusal without its cause: $out"
sed -i 's|^allowlist = .*|allowlist = ["not-an-address"]|' "$CONF"
ct systemctl reload banshare 2>/dev/null && fail "reload of a broken config succeeded"
ct systemctl is-active banshare >/dev/null || fail "a failed reload stopped the daemon"
ct journalctl -u banshare -o cat | grep 'key `allowlist\[0\]`: expected an IP address' >/dev/null \
    || fail "the journal does not say why the reload failed"
out=$(ct banshare ban 198.51.100.5 --for 1h 2>&1) && fail "the old allowlist is no longer in force: $out"
[[ $out == *"overlaps the allowlist"* ]] || fail "with the file broken, the daemon did not judge the ban: $out"
ct banshare status | grep "last reload FAILED, previous config kept" >/dev/null \
    || fail "status does not tell of the failed reload: $(ct banshare status)"
sed -i 's|^allowlist = .*|allowlist = []|' "$CONF"
ct systemctl reload banshare || fail "reload back"
ct banshare ban 198.51.100.5 --for 1h >/dev/null || fail "the emptied allowlist is not in force"
ct banshare unban 198.51.100.5 >/dev/null

# --- nftables restart, kill -9 ---------------------------------------------------------------

step "systemctl restart nftables: the table and the bans come back"
ct systemctl start nftables
ct systemctl restart nftables
until_ok 100 bash -c "nsenter -t $LEADER -a -- nft list set inet banshare manual_v4 | grep 203.0.113.7" \
    || fail "the bans did not come back after the nftables restart: $(ct nft list ruleset)"
[[ $(ct nft list set inet banshare manual_v4) =~ 203\.0\.113\.7\ timeout\ (3d|2d23h[0-9ms]+)\ expires\ 2d23h ]] \
    || fail "the element came back without its remaining time: $(ct nft list set inet banshare manual_v4)"

step "kill -9: systemd restarts it, the bans stay"
pid=$(ct systemctl show -p MainPID --value banshare)
restarts=$(ct systemctl show -p NRestarts --value banshare)
ct kill -9 "$pid"
until_ok 150 bash -c "[[ \$(nsenter -t $LEADER -a -- systemctl show -p NRestarts --value banshare) -gt $restarts ]] \
    && nsenter -t $LEADER -a -- systemctl is-active banshare" || fail "not restarted after kill -9"
[[ $(ct systemctl show -p MainPID --value banshare) != "$pid" ]] || fail "the same pid"
ct nft list set inet banshare manual_v4 | grep 203.0.113.7 >/dev/null || fail "the ban left the kernel"
ct banshare list | grep 203.0.113.7 >/dev/null || fail "the ban left the store"

# --- fail2ban --------------------------------------------------------------------------------

step "fail2ban: action = banshare (report) and banaction = banshare[mode=block]"
ct systemctl restart fail2ban
until_ok 100 ct fail2ban-client status block-sshd || fail "fail2ban did not start its jails"
failures() { # log ip
    for _ in 1 2 3; do
        echo "$(date '+%b %e %H:%M:%S') vm sshd[1234]: Failed password for invalid user admin from $2 port 4242 ssh2" \
            >>"$ROOT/var/log/$1"
    done
}
failures test-report.log 45.155.205.60
failures test-block.log 45.155.205.61
until_ok 200 bash -c "nsenter -t $LEADER -a -- nft list set inet banshare fail2ban_v4 | grep 45.155.205.61" \
    || fail "the block-mode ban is not in nft: $(ct banshare list)"
[[ $(ct nft list set inet banshare fail2ban_v4) =~ 45\.155\.205\.61\ timeout\ (2h|1h59m[0-9ms]+)\ expires ]] \
    || fail "the block-mode ban without fail2ban's bantime: $(ct nft list set inet banshare fail2ban_v4)"
until_ok 100 bash -c "nsenter -t $LEADER -a -- banshare list --source fail2ban | grep 45.155.205.60" \
    || fail "the report-mode ban is not recorded"
ct nft list set inet banshare fail2ban_v4 | grep 45.155.205.60 >/dev/null && fail "report mode blocked in banshare's sets"
# The second ban of the block jail: its action taught banshare the jail's mode.
failures test-block.log 45.155.205.62
until_ok 200 bash -c "nsenter -t $LEADER -a -- nft list set inet banshare fail2ban_v4 | grep 45.155.205.62" \
    || fail "the second block-mode ban is not in nft"
sleep 2 # the action and the fail2ban.log follower both told it
journal=$(ct journalctl -u banshare -o cat)
lines() { grep -cE "^(blocked|recorded) $1 " <<<"$journal" || true; }
[[ $(lines 45.155.205.60) == 1 ]] || fail "report-mode ban: $(lines 45.155.205.60) journal lines"
[[ $(lines 45.155.205.62) == 1 ]] || fail "block-mode ban: $(lines 45.155.205.62) journal lines"
grep -E "^(blocked|recorded) 45\.155\.205\.6" <<<"$journal" | sed 's/^/test-systemd:   /'
grep "^recorded 45.155.205.60 (fail2ban: fail2ban jail report-sshd" <<<"$journal" >/dev/null || fail "report line"
line62=$(grep "^blocked 45.155.205.62 (fail2ban: fail2ban jail block-sshd" <<<"$journal") || fail "block line"
# That one line tells the ban's real end: fail2ban's 2 h (learnt from the jail's action).
until62=$(date -d "$(sed 's/.* until //' <<<"$line62")" +%s) || fail "no expiry in: $line62"
((until62 > $(date +%s) + 3600)) || fail "the journal line gives an expiry under fail2ban's 2 h: $line62"

# --- the journal, the exposure ----------------------------------------------------------------

step "the journal: no hardening error"
bad=$(grep -iE "permission denied|operation not permitted|read-only file system|bad system call|SIGSYS|journalctl for .* ended|cannot" <<<"$journal" || true)
[[ -z "$bad" ]] || fail "errors in banshare's journal: $bad"
ct journalctl -u banshare -o cat | grep "following" | head -3 | sed 's/^/test-systemd:   /'
security=$(ct systemd-analyze security banshare --no-pager | tail -1)
exposure=$(grep -oE '[0-9]+\.[0-9]+' <<<"$security" | head -1)
echo "test-systemd: systemd-analyze security banshare: exposure $exposure"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.4) }' || fail "exposure $exposure is above the unit's 2.4: $security"

# --- purge -------------------------------------------------------------------------------------

step "purge: service, table, files, group gone"
ct dpkg --purge banshare >/dev/null || fail "dpkg --purge"
[[ -z $(ct systemctl list-unit-files banshare.service --no-legend) ]] || fail "the unit is left"
ct systemctl is-active banshare >/dev/null 2>&1 && fail "still running"
ct nft list table inet banshare >/dev/null 2>&1 && fail "the nftables table survived the purge"
for f in /usr/bin/banshare /etc/banshare /var/lib/banshare /run/banshare /etc/fail2ban/action.d/banshare.conf \
    /usr/lib/systemd/system/banshare.service /lib/systemd/system/banshare.service; do
    [[ -e "$ROOT$f" ]] && fail "$f is left after purge"
done
ct getent group banshare >/dev/null && fail "the banshare group is left"

# --- the host, after ---------------------------------------------------------------------------

[[ "$(host_state)" == "$HOST_BEFORE" ]] || fail "the host's ruleset or links changed: $(diff <(echo "$HOST_BEFORE") <(host_state))"
step "ok"
