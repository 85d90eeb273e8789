#!/usr/bin/env bash
# Builds the .deb and the .rpm from one set of metadata (shipper/Cargo.toml) for x86_64 and,
# cross-compiled, for arm64; prints their paths and sizes. From a fresh clone:
# `sudo make setup && bash scripts/package.sh` (docs/PACKAGING.md). Installs cargo-deb and
# cargo-generate-rpm when they are missing.
#
#   target/debian/ksense_<version>-1_amd64.deb   target/generate-rpm/ksense-<version>-1.x86_64.rpm
#   target/debian/ksense_<version>-1_arm64.deb   target/generate-rpm/ksense-<version>-1.aarch64.rpm
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

# Where cargo puts its builds (CARGO_TARGET_DIR, if set); the packages always go to target/.
build_dir=${CARGO_TARGET_DIR:-target}

# The metadata names these files under target/package (relative to shipper/: ../target/package).
out=target/package
rm -rf "$out"
log "generating the man pages and shell completions"
cargo run -q -p xtask -- gen-docs "$out" >/dev/null
gzip -9n "$out"/man/*.1
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
mkdir -p target/debian target/generate-rpm

# <rust target triple, - for this machine's own> <its strip> <Debian architecture> <rpm architecture>
for arch in "- strip amd64 x86_64" "aarch64-unknown-linux-gnu aarch64-linux-gnu-strip arm64 aarch64"; do
    read -r triple strip deb_arch rpm_arch <<<"$arch"
    # The host's own build stays in target/release (what `make build` and the tests use); a
    # cross build goes to target/<triple>/release.
    target=() release=$build_dir/release
    if [ "$triple" != - ]; then
        target=(--target "$triple") release=$build_dir/$triple/release
    fi
    log "building ksense for $deb_arch (release)"
    cargo build --release -p ksense "${target[@]}"
    log "building the $deb_arch .deb"
    # (cargo-deb warns that the ../target/package assets are not Cargo's to build: expected.)
    # With --target it packs target/<triple>/release/ksense, strips it with the triple's
    # aarch64-linux-gnu-strip and resolves the dependencies against the arm64 C library.
    cargo deb -p ksense --no-build "${target[@]}" -o target/debian/ >/dev/null
    log "building the $rpm_arch .rpm"
    # cargo-deb strips the binary it packs; cargo-generate-rpm does not, so it packs this copy,
    # stripped as cargo-deb strips.
    "$strip" --strip-unneeded --remove-section=.comment --remove-section=.note -o "$out/ksense" "$release/ksense"
    cargo generate-rpm -p shipper "${target[@]}" --arch "$rpm_arch" -o target/generate-rpm/
    for f in "target/debian/ksense_$version-1_$deb_arch.deb" "target/generate-rpm/ksense-$version-1.$rpm_arch.rpm"; do
        [ -f "$f" ] || { log "missing package: $f"; exit 1; }
        printf '%s\t%s bytes\n' "$f" "$(stat -c %s "$f")"
    done
done
