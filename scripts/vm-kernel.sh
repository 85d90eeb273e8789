#!/usr/bin/env bash
# Fetches a Debian kernel for the VM tests (tests/vm) and caches what they need:
#
#   <dest>/vmlinuz-<release>   the kernel image qemu boots
#   <dest>/dummy.ko            drivers/net/dummy.ko, uncompressed, for the module-load check
#   <dest>/release             the release string (uname -r inside the VM)
#   <dest>/busybox             for arm64 only: busybox-static's static busybox of that
#                              architecture (amd64 guests get the host's)
#
# Usage: scripts/vm-kernel.sh [<kernel> [<arch> [<dest>]]]
#   <kernel>  5.10 (Debian 11), 6.1 or 6.12 (Debian 12); default 6.1
#   <arch>    amd64 or arm64; default amd64
#   <dest>    default target/vm/kernel-<kernel>-<arch>
#
# Idempotent: does nothing when all three are there. Otherwise it downloads the newest package
# of that kernel line with a private apt configuration (its own sources list, package lists and
# cache under <dest>/../apt-<suite>-<arch>; the machine's apt configuration is neither read nor
# changed), unpacks it with dpkg -x, keeps the two files and removes the rest. The mirror is the
# machine's Debian mirror (/etc/apt/sources.list.d/debian.sources), else deb.debian.org;
# packages are checked against /usr/share/keyrings/debian-archive-keyring.gpg.
set -euo pipefail

log() { printf 'vm-kernel: %s\n' "$*" >&2; }
die() { printf 'vm-kernel: %s\n' "$*" >&2; exit 1; }

cd "$(dirname "$0")/.."
kernel=${1:-6.1}
arch=${2:-amd64}
dest=${3:-target/vm/kernel-$kernel-$arch}
case "$kernel" in
    5.10) suite=bullseye; pattern="^linux-image-5\.10\.0-[0-9]+-$arch\$" ;;
    6.1) suite=bookworm; pattern="^linux-image-6\.1\.0-[0-9]+-$arch\$" ;;
    6.12) suite=bookworm; pattern="^linux-image-6\.12\.[0-9]+\+deb12-$arch\$" ;;
    *) die "unknown kernel $kernel: one of 5.10, 6.1, 6.12" ;;
esac
case "$arch" in
    amd64 | arm64) ;;
    *) die "unknown architecture $arch: amd64 or arm64" ;;
esac
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

# A guest of another architecture than the host's needs that architecture's busybox too.
extra=()
[ "$arch" = amd64 ] || extra=(busybox-static:"$arch")
cached() {
    [ -s "$dest/release" ] && [ -s "$dest/dummy.ko" ] && [ -s "$dest/vmlinuz-$(cat "$dest/release")" ] \
        && { [ "$arch" = amd64 ] || [ -x "$dest/busybox" ]; }
}
if cached; then
    log "cached: $dest/vmlinuz-$(cat "$dest/release")"
    exit 0
fi

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -s "$keyring" ] || die "$keyring is missing (install debian-archive-keyring)"
mirror=http://deb.debian.org/debian
if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    found=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' /etc/apt/sources.list.d/debian.sources)
    mirror=${found:-$mirror}
fi
security=${mirror%/debian}/debian-security

apt_dir="$(dirname "$dest")/apt-$suite-$arch"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
cat > "$apt_dir/sources.list" <<SOURCES
deb [arch=$arch signed-by=$keyring] $mirror $suite main
deb [arch=$arch signed-by=$keyring] $mirror $suite-updates main
deb [arch=$arch signed-by=$keyring] $security $suite-security main
SOURCES
apt_private=(
    -o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=-
    -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
    -o APT::Architectures::=amd64 -o "APT::Architectures::=$arch"
)
search() {
    apt-cache "${apt_private[@]}" search --names-only "$pattern" | awk '{ print $1 }' | sort -V | tail -n 1
}
package=$(search 2>/dev/null || true)
if [ -z "$package" ]; then
    log "updating the private package lists of $suite ($mirror, $arch) in $apt_dir"
    apt-get "${apt_private[@]}" update -qq 2> >(grep -v 'unsandboxed as root' >&2) \
        || die "apt-get update of $suite failed (network? mirror $mirror)"
    package=$(search)
fi
[ -n "$package" ] || die "Debian's $suite ($mirror) has no package matching $pattern"
release=${package#linux-image-}

work=$(mktemp -d "$dest/fetch.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "downloading $package (50 to 110 MB)"
# apt-get download writes into the current directory. As root, apt warns that its _apt user
# cannot write there; the download still happens (unsandboxed), so the warning is dropped.
(cd "$work" && apt-get "${apt_private[@]}" download -q "$package:$arch" "${extra[@]}" 2> >(grep -v 'unsandboxed as root' >&2)) \
    || die "apt-get download $package ${extra[*]} failed"
for deb in "$work"/*.deb; do
    dpkg -x "$deb" "$work/root" || die "dpkg -x $deb failed"
done

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
# (The arm64 package's vmlinuz is the kernel's uncompressed Image, which qemu -kernel boots.)
mv "$vmlinuz" "$dest/vmlinuz-$release"
mv "$work/dummy.ko" "$dest/dummy.ko"
if [ "$arch" != amd64 ]; then
    [ -x "$work/root/bin/busybox" ] || die "busybox-static:$arch holds no bin/busybox"
    mv "$work/root/bin/busybox" "$dest/busybox"
fi
echo "$release" > "$dest/release"
log "cached $package: $dest/vmlinuz-$release and dummy.ko"
