#!/usr/bin/env bash
# Builds the .deb and the .rpm from one set of metadata (shipper/Cargo.toml), prints their paths
# and sizes. From a fresh clone: `sudo make setup && bash scripts/package.sh`
# (docs/PACKAGING.md). Installs cargo-deb and cargo-generate-rpm when they are missing.
#
#   target/debian/ksense_<version>-1_<arch>.deb
#   target/generate-rpm/ksense-<version>-1.<arch>.rpm
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf 'package: %s\n' "$*" >&2; }

# Versions that build with rustc 1.95 (both need 1.85 or newer).
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
    log "installing cargo-deb $CARGO_DEB_VERSION"
    cargo install --locked -q "cargo-deb@$CARGO_DEB_VERSION"
fi
if ! cargo generate-rpm --version 2>/dev/null | grep -qx "cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION"; then
    log "installing cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION"
    cargo install --locked -q "cargo-generate-rpm@$CARGO_GENERATE_RPM_VERSION"
fi

# Reproducible timestamps in the packages and the man pages: the last commit's time.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

log "building ksense (release)"
cargo build --release -p ksense
# Where cargo put it (CARGO_TARGET_DIR moves it; cargo-deb and cargo-generate-rpm follow).
target=${CARGO_TARGET_DIR:-target}

# The metadata names these files under target/package (relative to shipper/: ../target/package).
out=target/package
rm -rf "$out"
log "generating the man pages and shell completions"
cargo run -q -p xtask -- gen-docs "$out" >/dev/null
gzip -9n "$out"/man/*.1

log "building the .deb"
# (cargo-deb warns that the ../target/package assets are not Cargo's to build: expected.)
deb=$(cargo deb -p ksense --no-build)
log "building the .rpm"
# cargo-deb strips the binary it packs; cargo-generate-rpm does not, so it packs this copy.
strip --strip-unneeded -o "$out/ksense" "$target/release/ksense"
cargo generate-rpm -p shipper
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
rpm=$(ls -t "$target"/generate-rpm/ksense-"$version"-*.rpm | head -n 1)

for f in "$deb" "$rpm"; do
    [ -f "$f" ] || { log "missing package: $f"; exit 1; }
    printf '%s\t%s bytes\n' "$f" "$(stat -c %s "$f")"
done
