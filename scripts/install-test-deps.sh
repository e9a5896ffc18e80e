#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real: the firewall tools
# (nftables, ipset, iptables), iproute2 for network namespaces, fail2ban, time (the
# benchmarks measure peak memory with /usr/bin/time), and
# systemd-journal-remote (writes real journal files for the journald tests), and for
# the package test: lintian, man-db (`man banshare`), systemd (`systemd-analyze verify`),
# and for the test under systemd: systemd-container (systemd-nspawn) and debootstrap; for
# the web tests: nginx, Node.js, and (from PyPI and npm, below) Flask, FastAPI, uvicorn
# and Express. Idempotent: what is present is left alone, so a warm machine pays nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nftables ipset iptables iproute2 fail2ban systemd-journal-remote python3 procps time lintian man-db systemd
    systemd-container debootstrap nginx python3-venv)
# Node.js for the Express middleware's test: Debian's, unless one is installed already.
command -v node >/dev/null && command -v npm >/dev/null || packages+=(nodejs npm)

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
    # Services these packages bring (nginx, fail2ban) are not started on the test machine:
    # the tests start their own, on their own ports.
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The web frameworks the middleware tests run (PyPI, npm), pinned, in a cache outside the
# checkout: a venv with Flask, FastAPI and uvicorn, and Express in a node_modules.
WEB=${BANSHARE_TEST_CACHE:-/var/cache/banshare-tests}/web
PY_PINS="flask==3.1.3 fastapi==0.165.0 uvicorn==0.54.0"
if [[ ! -x $WEB/venv/bin/python ]] || [[ $(cat "$WEB/venv/pins" 2>/dev/null) != "$PY_PINS" ]]; then
    echo "install-test-deps: Python venv with $PY_PINS"
    rm -rf "$WEB/venv"
    /usr/bin/python3 -m venv "$WEB/venv"
    # shellcheck disable=SC2086
    "$WEB/venv/bin/pip" install -q --disable-pip-version-check $PY_PINS
    echo "$PY_PINS" >"$WEB/venv/pins"
fi
if ! cmp -s contrib/node/package-lock.json "$WEB/node/package-lock.json"; then
    echo "install-test-deps: Express (contrib/node/package-lock.json)"
    rm -rf "$WEB/node"
    mkdir -p "$WEB/node"
    cp contrib/node/package.json contrib/node/package-lock.json "$WEB/node/"
    npm ci --prefix "$WEB/node" --no-audit --no-fund --silent
fi
