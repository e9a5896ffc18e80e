#!/bin/sh
# Builds the Debian package: target/debian/banshare_<version>-1_<arch>.deb
#
#   scripts/build-deb.sh
#
# cargo-deb (the Rust ecosystem's packager, metadata in Cargo.toml) is installed if
# missing; the man page and shell completions are generated from the CLI definitions.
set -eu
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep "$CARGO_DEB_VERSION" >/dev/null; then
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi

cargo build --release --locked
mkdir -p target/packaging
./target/release/banshare manpage | gzip -9n > target/packaging/banshare.1.gz
./target/release/banshare completions bash > target/packaging/banshare.bash
./target/release/banshare completions zsh > target/packaging/_banshare
./target/release/banshare completions fish > target/packaging/banshare.fish
cargo deb --no-build
