#!/usr/bin/env bash
# Runs packaging/ksense.service under a real systemd: boots Debian 12's 6.1 kernel under qemu
# with an initramfs whose PID 1 is this machine's systemd (252), holding the files of the .deb as
# dpkg installs them, journald, and a check service that drives ksense and prints what it sees
# as "CHECK key=value" lines on the console. Used by tests/package.rs (docs/PACKAGING.md).
#
#   scripts/unit-vm-check.sh DEB WORKDIR [no-ptrace]
#
# no-ptrace adds a drop-in taking CAP_SYS_PTRACE out of the unit, to show what it is for.
# Needs: qemu-system-x86, busybox-static, systemd, cpio (scripts/setup.sh) and the kernel that
# scripts/vm-kernel.sh caches in target/vm/kernel-6.1-amd64. About 20 s of wall time under TCG.
set -euo pipefail
cd "$(dirname "$0")/.."

deb=$(realpath "$1")
work=$2
variant=${3:-}
bash scripts/vm-kernel.sh 6.1 amd64 target/vm/kernel-6.1-amd64 >&2
kernel_dir=$(realpath target/vm/kernel-6.1-amd64)
release=$(cat "$kernel_dir/release")

mkdir -p "$work"
work=$(realpath "$work")
R=$work/root
rm -rf "$R"
mkdir -p "$R"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc/systemd/system/ksense.service.d,proc,sys,dev,run,tmp,root}
ln -s usr/bin "$R/bin"; ln -s usr/sbin "$R/sbin"; ln -s usr/lib "$R/lib"; ln -s usr/lib64 "$R/lib64"

# A file and the shared libraries it loads, at the same paths.
libs() {
    { ldd "$1" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
        [ -e "$R$lib" ] || { mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"; }
    done
}
copy() {
    for f in "$@"; do
        mkdir -p "$R$(dirname "$f")"
        cp -L "$f" "$R$f"
        libs "$f"
    done
}
copy /usr/lib/systemd/systemd /usr/lib/systemd/systemd-journald /usr/lib/systemd/systemd-shutdown \
     /usr/bin/systemctl /usr/bin/journalctl /usr/bin/systemd-cat /usr/bin/kill /usr/bin/setpriv /bin/busybox
for applet in sh sleep cat grep head tail tr cut sed awk readlink insmod wc stat; do
    ln -sf busybox "$R/usr/bin/$applet"
done
dpkg-deb -x "$deb" "$R"
libs "$R/usr/bin/ksense"
# The file sink on, at its default path: LogsDirectory= must make it work under
# ProtectSystem=strict.
sed -i '/^\[sinks.file\]/,/^\[/ s/^enabled = false/enabled = true/' "$R/etc/ksense/ksense.toml"
grep -q '^enabled = true' "$R/etc/ksense/ksense.toml"
cp "$kernel_dir/dummy.ko" "$R/root/dummy.ko"
for unit in systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket \
            sysinit.target basic.target sockets.target paths.target timers.target slices.target \
            local-fs.target swap.target shutdown.target poweroff.target final.target umount.target \
            systemd-poweroff.service sys-kernel-tracing.mount; do
    cp "/usr/lib/systemd/system/$unit" "$R/usr/lib/systemd/system/"
done
cp /usr/lib/os-release "$R/etc/os-release"
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1234:1234::/:/bin/sh\n' > "$R/etc/passwd"
printf 'root:x:0:\n' > "$R/etc/group"
: > "$R/etc/machine-id"

# The boot target: journald, tracefs (sysinit.target mounts it on a full system), ksense, a
# process of another user started before ksense, and the check.
cat > "$R/etc/systemd/system/ksense-check.target" <<'EOF'
[Unit]
Description=ksense unit check
Requires=basic.target
Wants=systemd-journald.socket sys-kernel-tracing.mount other-user.service ksense.service ksense-check.service
After=basic.target
EOF
printf '[Unit]\nAfter=sys-kernel-tracing.mount systemd-journald.socket other-user.service\n' \
    > "$R/etc/systemd/system/ksense.service.d/vm.conf"
if [ "$variant" = no-ptrace ]; then
    printf '[Service]\nCapabilityBoundingSet=~CAP_SYS_PTRACE\nAmbientCapabilities=~CAP_SYS_PTRACE\n' \
        > "$R/etc/systemd/system/ksense.service.d/no-ptrace.conf"
fi
cat > "$R/etc/systemd/system/other-user.service" <<'EOF'
[Unit]
Description=A process of user 1234 that forks every second, running before ksense starts
[Service]
ExecStart=/usr/bin/setpriv --reuid=1234 --regid=1234 --clear-groups /usr/bin/busybox sh -c 'while :; do /usr/bin/busybox sleep 1; done'
EOF
cat > "$R/etc/systemd/system/ksense-check.service" <<'EOF'
[Unit]
Description=Drive and inspect ksense.service
After=ksense.service systemd-journald.service
[Service]
Type=oneshot
ExecStart=/usr/bin/ksense-check
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
EOF
# The guest's driver (busybox sh: applets are preferred, so full paths for util-linux's setpriv).
cat > "$R/usr/bin/ksense-check" <<'EOF'
#!/bin/sh
check() { echo "CHECK $1=$2"; }
show() { systemctl show ksense -p "$1" --value; }
entries() { journalctl --sync; journalctl -o json SYSLOG_IDENTIFIER=ksense "$@" --no-pager | wc -l; }
check active "$(show ActiveState)/$(show SubState)"
check status "$(show StatusText)"
pid=$(show MainPID)
check capeff "$(grep '^CapEff:' /proc/$pid/status | cut -f2)"
check nnp "$(grep '^NoNewPrivs:' /proc/$pid/status | cut -f2)"
check seccomp "$(grep '^Seccomp:' /proc/$pid/status | cut -f2)"
[ "$(readlink /proc/1/ns/mnt)" != "$(readlink /proc/$pid/ns/mnt)" ] && check own_mount_namespace yes
check root_mount "$(awk '$5 == "/" { split($6, o, ","); print o[1] }' /proc/$pid/mountinfo | tail -1)"

# What /proc of another user's process gives root without and with CAP_SYS_PTRACE, here.
other=$(systemctl show other-user -p MainPID --value)
bounded() { caps=$1; shift; /usr/bin/setpriv --bounding-set=-all,"$caps" "$@" 2>/dev/null; }
check exe_without_ptrace "$(bounded +bpf,+perfmon readlink /proc/$other/exe || echo denied)"
check maps_without_ptrace "$(bounded +bpf,+perfmon head -c 1 /proc/$other/maps >/dev/null && echo readable || echo denied)"
check exe_with_ptrace "$(bounded +bpf,+perfmon,+sys_ptrace readlink /proc/$other/exe || echo denied)"

/usr/bin/busybox true ksense-vm-marker
insmod /root/dummy.ko && check insmod ok
systemctl reload ksense
check reload "$(show ActiveState)/$(show SubState) pid-kept=$([ "$(show MainPID)" = "$pid" ] && echo yes || echo no)"
sleep 3
check exec_marker "$(entries KSENSE_EVENT=process.exec PROCESS_COMMAND_ARGS=ksense-vm-marker)"
check exec_marker_by_unit "$(entries _SYSTEMD_UNIT=ksense.service KSENSE_EVENT=process.exec PROCESS_COMMAND_ARGS=ksense-vm-marker)"
# The file sink under the unit: /var/log/ksense made by LogsDirectory=, the file 0640.
check logs_dir "$(stat -c '%U %a' /var/log/ksense)"
check file_mode "$(stat -c %a /var/log/ksense/events.json)"
check file_marker "$(grep -c ksense-vm-marker /var/log/ksense/events.json)"
# Memory limits as the kernel enforces them.
check memory_high "$(cat /sys/fs/cgroup/system.slice/ksense.service/memory.high)"
check memory_max "$(cat /sys/fs/cgroup/system.slice/ksense.service/memory.max)"
# A user forges a ksense entry: the identifier alone matches it, the unit or _UID=0 do not.
/usr/bin/setpriv --reuid=1234 --regid=1234 --clear-groups /usr/bin/systemd-cat -t ksense /usr/bin/busybox echo ksense-vm-forged
check forged "$(entries MESSAGE=ksense-vm-forged)"
check forged_by_unit "$(entries _SYSTEMD_UNIT=ksense.service MESSAGE=ksense-vm-forged)"
check forged_by_uid "$(entries _UID=0 MESSAGE=ksense-vm-forged)"
check module_events "$(entries KSENSE_EVENT=kernel.module.load KSENSE_KERNEL_MODULE_NAME=dummy)"
kill "$other"
sleep 2
check other_user_exe "$(journalctl -o json SYSLOG_IDENTIFIER=ksense KSENSE_EVENT=process.exit PROCESS_PID=$other --no-pager \
    | grep -o '"PROCESS_EXECUTABLE_PATH":"[^"]*"' | cut -d'"' -f4 | head -1)"
check reloaded_logged "$(journalctl -u ksense --no-pager | grep -c 'configuration reloaded')"
# Without OBJECT_PID, ksense's entries about a service's processes are not filed under it.
check other_unit_ksense_entries "$(journalctl -u other-user -o json --no-pager | grep -c '"SYSLOG_IDENTIFIER":"ksense"')"
# Restart=always: ksense is restarted even after a clean exit nobody asked systemd for.
pid=$(show MainPID)
kill -TERM "$pid"
i=0
while [ $i -lt 60 ] && { [ "$(show MainPID)" = "$pid" ] || [ "$(show MainPID)" = 0 ] || [ "$(show ActiveState)" != active ]; }; do
    sleep 1; i=$((i + 1))
done
check restarted "$(show NRestarts) $(show ActiveState)"
systemctl stop ksense
check stop "$(show Result) exit=$(show ExecMainStatus)"
# A start that fails: the error is in the unit's journal at priority err.
printf '[probes]\nforkk = true\n' > /etc/ksense/ksense.toml
systemctl start ksense
sleep 1
check start_error "$(journalctl -p err -u ksense -o cat --no-pager | grep -c forkk)"
check done yes
systemctl poweroff -ff
EOF
chmod 755 "$R/usr/bin/ksense-check"
ln -s /usr/lib/systemd/systemd "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet) | gzip -1 > "$work/initrd.gz"

timeout 600 qemu-system-x86_64 -accel tcg -cpu max -m 1536 -smp 1 -nographic -no-reboot \
    -kernel "$kernel_dir/vmlinuz-$release" -initrd "$work/initrd.gz" \
    -append "console=ttyS0 panic=-1 quiet systemd.unit=ksense-check.target systemd.show_status=0" \
    > "$work/console.log" 2>&1 || true
grep -a '^CHECK ' "$work/console.log" | tr -d '\r'
