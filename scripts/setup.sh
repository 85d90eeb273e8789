#!/usr/bin/env bash
# Idempotent machine setup for building, running and testing ksense.
# Used by the README's commands and by .ci/run. Safe to run again: every step
# checks first and does nothing when its piece is already there.
#
# Needs root (apt-get, mount). Versions and why: docs/DEVELOPMENT.md.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (installs packages and mounts tracefs); try: sudo $0" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
export PATH="$HOME/.cargo/bin:$PATH"

# Debian packages: LLVM 22 for bpf-linker (rustc nightly uses LLVM 22), journald, btrfs-progs (a
# test runs a program from btrfs), a
# shell toolkit for the tests, and for the VM tests (tests/vm) qemu (TCG), cpio and a static
# busybox to build and boot an initramfs on Debian's 5.10, 6.1 and 6.12 kernels, the archive
# keyring their private apt configuration checks against and xz for 6.12's modules; for the packages
# (scripts/package.sh, tests/package.rs) dpkg-dev (cargo-deb's dependency resolution and strip)
# and rpm (to list and check the .rpm); for the arm64 build, its packages and its VM test
# (tests/vm/arm64.rs) the cross C compiler and linker, the arm64 C library and qemu for arm64.
APT_PACKAGES=(llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev systemd python3-venv btrfs-progs
              qemu-system-x86 cpio busybox-static debian-archive-keyring xz-utils dpkg-dev rpm
              gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-arm)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Nightly with rust-src: the eBPF crate is built with -Z build-std=core.
if ! rustup toolchain list | grep -q '^nightly'; then
    log "installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    log "adding rust-src to nightly"
    rustup component add rust-src --toolchain nightly
fi

# The arm64 standard library for the cross build (linked by aarch64-linux-gnu-gcc, as
# .cargo/config.toml says).
if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    log "adding the Rust target aarch64-unknown-linux-gnu"
    rustup target add aarch64-unknown-linux-gnu
fi

# bpf-linker, linked against Debian's LLVM 22.
if ! command -v bpf-linker >/dev/null 2>&1; then
    log "building bpf-linker 0.13.0 against LLVM 22 (about a minute)"
    LLVM_PREFIX=/usr/lib/llvm-22 PATH="/usr/lib/llvm-22/bin:$PATH" \
        cargo install --locked bpf-linker@0.13.0 --no-default-features --features llvm-22 -q \
        || LLVM_PREFIX=/usr/lib/llvm-22 PATH="/usr/lib/llvm-22/bin:$PATH" \
        cargo install bpf-linker@0.13.0 --no-default-features --features llvm-22 -q
fi

# cargo-fuzz for the fuzzing smoke run at the end of scripts/test.sh (docs/FUZZING.md); 0.13.2
# builds with the stable toolchain, the targets themselves with nightly.
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz 0.13.2 (about 45 s)"
    cargo install --locked cargo-fuzz@0.13.2 -q
fi

# A real OpenTelemetry collector for the OTLP tests: rotel (a Rust collector shipped as a PyPI
# wheel holding the binary), installed out of the way of the system Python.
ROTEL_DIR=/opt/ksense-test/rotel
if [ ! -x "$ROTEL_DIR/rotel/rotel-agent" ]; then
    log "installing the rotel OTLP collector into $ROTEL_DIR"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --target "$ROTEL_DIR" rotel
fi

# tracefs: plain tracepoint formats are read from it at run time.
if [ ! -e /sys/kernel/tracing/events ]; then
    log "mounting tracefs at /sys/kernel/tracing"
    mount -t tracefs tracefs /sys/kernel/tracing
fi

log "ready"
