#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real: the firewall tools
# (nftables, ipset, iptables), iproute2 for network namespaces, fail2ban, time (the
# benchmarks measure peak memory with /usr/bin/time), and
# systemd-journal-remote (writes real journal files for the journald tests), and for
# the package test: lintian, man-db (`man banshare`), systemd (`systemd-analyze verify`),
# and for the test under systemd: systemd-container (systemd-nspawn) and debootstrap.
# Idempotent: packages already present are left alone, so a warm machine pays nothing.
set -euo pipefail

packages=(nftables ipset iptables iproute2 fail2ban systemd-journal-remote python3 procps time lintian man-db systemd
    systemd-container debootstrap)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "install ok installed" >/dev/null || missing+=("$p")
done

if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-test-deps: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "install-test-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
