#!/usr/bin/env bash
# The whole test suite, as the README states it and CI runs it: installs the Debian
# packages the tests drive for real (needs root on a fresh machine), then runs every
# unit and integration test, then the Debian package test (build, lintian, install,
# run, purge), then the same package under a real systemd booted in a container. Tests that need root or a tool and lack it fail under
# CI=true instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
cargo test --lib --bins --tests --locked "$@"
bash scripts/test-package.sh
bash scripts/test-systemd.sh "$(ls -t target/debian/banshare_*.deb | head -1)"
