#!/usr/bin/env bash
# Fetches Debian 12's 6.1 kernel for the VM test (tests/vm) and caches what the test needs:
#
#   <dest>/vmlinuz-<release>   the kernel image qemu boots
#   <dest>/dummy.ko            drivers/net/dummy.ko, uncompressed, for the module-load check
#   <dest>/release             the release string (uname -r inside the VM)
#
# <dest> is the first argument, default target/vm/kernel. Idempotent: does nothing when all
# three are there. Otherwise downloads the newest linux-image-6.1.0-NN-amd64 that apt knows
# (apt-get download: no install), unpacks it with dpkg -x, keeps the two files and removes the
# rest. Needs apt's package lists (runs `apt-get update` when the search finds nothing, which
# needs root) and, for a fresh machine, scripts/setup.sh for xz.
set -euo pipefail

log() { printf 'vm-kernel: %s\n' "$*" >&2; }
die() { printf 'vm-kernel: %s\n' "$*" >&2; exit 1; }

cd "$(dirname "$0")/.."
dest=${1:-target/vm/kernel}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

cached() {
    [ -s "$dest/release" ] && [ -s "$dest/dummy.ko" ] && [ -s "$dest/vmlinuz-$(cat "$dest/release")" ]
}
if cached; then
    log "cached: $dest/vmlinuz-$(cat "$dest/release")"
    exit 0
fi

search() {
    apt-cache search --names-only '^linux-image-6.1.0-[0-9]+-amd64$' | awk '{ print $1 }' | sort -V | tail -n 1
}
package=$(search)
if [ -z "$package" ]; then
    log "no linux-image-6.1.0-NN-amd64 in apt's lists: running apt-get update"
    apt-get update -qq || die "apt-get update failed (needs root: sudo scripts/setup.sh, then run again)"
    package=$(search)
fi
[ -n "$package" ] || die "apt knows no package matching ^linux-image-6.1.0-[0-9]+-amd64\$ (is this Debian 12 with its main archive in sources.list?)"
release=${package#linux-image-}

work=$(mktemp -d "$dest/fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "downloading $package (about 70 MB)"
# apt-get download writes into the current directory. As root, apt warns that its _apt user
# cannot write there; the download still happens (unsandboxed), so the warning is dropped.
(cd "$work" && apt-get download -q "$package" 2> >(grep -v 'unsandboxed as root' >&2)) \
    || die "apt-get download $package failed"
deb=$(ls "$work"/*.deb)
dpkg -x "$deb" "$work/root" || die "dpkg -x $deb failed"

vmlinuz="$work/root/boot/vmlinuz-$release"
[ -s "$vmlinuz" ] || die "$package holds no boot/vmlinuz-$release"
module_dir="$work/root/lib/modules/$release/kernel/drivers/net"
if [ -s "$module_dir/dummy.ko" ]; then
    cp "$module_dir/dummy.ko" "$work/dummy.ko"
elif [ -s "$module_dir/dummy.ko.xz" ]; then
    # busybox insmod passes the file to init_module as it is: give it the plain ELF.
    xz -dc "$module_dir/dummy.ko.xz" > "$work/dummy.ko"
elif [ -s "$module_dir/dummy.ko.zst" ]; then
    zstd -dcq "$module_dir/dummy.ko.zst" > "$work/dummy.ko"
else
    die "$package holds no drivers/net/dummy.ko (nor .ko.xz, .ko.zst) under lib/modules/$release"
fi

rm -f "$dest"/vmlinuz-*
mv "$vmlinuz" "$dest/vmlinuz-$release"
mv "$work/dummy.ko" "$dest/dummy.ko"
echo "$release" > "$dest/release"
log "cached $package: $dest/vmlinuz-$release and dummy.ko"
