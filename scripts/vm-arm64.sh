#!/usr/bin/env bash
# Fetches what the arm64 VM test (tests/vm/arm64.rs) boots, from Debian 12's arm64 archive, and
# caches it:
#
#   <dest>/vmlinuz-<release>   Debian's arm64 6.1 kernel (linux-image-6.1.0-NN-arm64, the newest)
#   <dest>/dummy.ko            its drivers/net/dummy.ko, uncompressed, for the module-load check
#   <dest>/busybox             busybox-static:arm64's static busybox
#   <dest>/release             the release string (uname -r inside the VM)
#
# <dest> is the first argument, default target/vm/arm64. Idempotent: does nothing when all four
# are there. The packages are found and downloaded with a private apt configuration (its own
# sources list, package lists and cache under <dest>/apt), so the machine's apt configuration is
# neither read nor changed; they are unpacked with dpkg -x (no install). The mirror is the
# machine's Debian mirror (/etc/apt/sources.list.d/debian.sources), else deb.debian.org;
# packages are checked against /usr/share/keyrings/debian-archive-keyring.gpg.
set -euo pipefail

log() { printf 'vm-arm64: %s\n' "$*" >&2; }
die() { printf 'vm-arm64: %s\n' "$*" >&2; exit 1; }

cd "$(dirname "$0")/.."
dest=${1:-target/vm/arm64}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

cached() {
    [ -s "$dest/release" ] && [ -s "$dest/dummy.ko" ] && [ -x "$dest/busybox" ] \
        && [ -s "$dest/vmlinuz-$(cat "$dest/release")" ]
}
if cached; then
    log "cached: $dest/vmlinuz-$(cat "$dest/release")"
    exit 0
fi

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -s "$keyring" ] || die "$keyring is missing (install debian-archive-keyring)"
mirror=http://deb.debian.org/debian
if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    found=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
        /etc/apt/sources.list.d/debian.sources)
    mirror=${found:-$mirror}
fi

apt_dir=$dest/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
echo "deb [arch=arm64 signed-by=$keyring] $mirror bookworm main" > "$apt_dir/sources.list"
apt_private=(
    -o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
    -o APT::Architectures::=arm64
)
pattern='^linux-image-6\.1\.0-[0-9]+-arm64$'
search() {
    apt-cache "${apt_private[@]}" search --names-only "$pattern" 2>/dev/null | awk '{ print $1 }' | sort -V | tail -n 1
}
package=$(search || true)
if [ -z "$package" ]; then
    log "updating the private package lists of bookworm arm64 ($mirror) in $apt_dir"
    apt-get "${apt_private[@]}" update -qq 2> >(grep -v 'unsandboxed as root' >&2) \
        || die "apt-get update of bookworm arm64 failed (network? mirror $mirror)"
    package=$(search)
fi
[ -n "$package" ] || die "Debian's bookworm ($mirror) has no arm64 package matching $pattern"
release=${package#linux-image-}

work=$(mktemp -d "$dest/fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "downloading $package (about 60 MB) and busybox-static"
# apt-get download writes into the current directory. As root, apt warns that its _apt user
# cannot write there; the download still happens (unsandboxed), so the warning is dropped.
(cd "$work" && apt-get "${apt_private[@]}" download -q "$package:arm64" busybox-static:arm64 \
    2> >(grep -v 'unsandboxed as root' >&2)) || die "apt-get download $package busybox-static failed"
for deb in "$work"/*.deb; do
    dpkg -x "$deb" "$work/root" || die "dpkg -x $deb failed"
done

vmlinuz="$work/root/boot/vmlinuz-$release"
[ -s "$vmlinuz" ] || die "$package holds no boot/vmlinuz-$release"
[ -x "$work/root/bin/busybox" ] || die "busybox-static:arm64 holds no bin/busybox"
module_dir="$work/root/lib/modules/$release/kernel/drivers/net"
if [ -s "$module_dir/dummy.ko" ]; then
    cp "$module_dir/dummy.ko" "$work/dummy.ko"
elif [ -s "$module_dir/dummy.ko.xz" ]; then
    # busybox insmod passes the file to init_module as it is: give it the plain ELF.
    xz -dc "$module_dir/dummy.ko.xz" > "$work/dummy.ko"
else
    die "$package holds no drivers/net/dummy.ko (nor .ko.xz) under lib/modules/$release"
fi

rm -f "$dest"/vmlinuz-*
# The arm64 package's vmlinuz is the kernel's uncompressed Image, which qemu -kernel boots.
mv "$vmlinuz" "$dest/vmlinuz-$release"
mv "$work/dummy.ko" "$dest/dummy.ko"
mv "$work/root/bin/busybox" "$dest/busybox"
echo "$release" > "$dest/release"
log "cached $package: $dest/vmlinuz-$release, dummy.ko and busybox"
