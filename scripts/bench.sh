#!/usr/bin/env bash
# The benchmark (docs/BENCHMARKS.md): installs the peers it compares with (bpftrace, auditd),
# builds ksense and the harness in release mode, copies both to a private directory (so a rebuild
# during the run cannot change them), and runs ksense-bench with the arguments given, e.g.
#   sudo scripts/bench.sh                      # full run, about 20 minutes on 2 cores
#   sudo scripts/bench.sh --quick              # 1 pair, small counts, under 2 minutes
#   sudo scripts/bench.sh --out report.md      # also write the markdown report to a file
# The harness starts the rotel collector (scripts/setup.sh installs it) and a journald itself.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/sbin"

if [ "$(id -u)" -ne 0 ]; then
    echo "bench: must run as root (installs packages, loads eBPF programs and audit rules); try: sudo $0" >&2
    exit 1
fi

missing=()
for p in bpftrace auditd; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "bench: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Without them the harness reports those arms as not run and goes on.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
        || echo "bench: could not install ${missing[*]}: those arms will not run" >&2
fi
# The package's postinst may start auditd where a service manager runs; the harness starts and
# stops its own.
if pid=$(auditctl -s 2>/dev/null | awk '$1 == "pid" { print $2 }') && [ "${pid:-0}" != 0 ]; then
    echo "bench: an auditd (pid $pid) runs; the auditd arm needs it stopped (systemctl stop auditd)" >&2
fi

# BENCH_PROFILE=debug reuses the debug build scripts/test.sh makes (its quick run checks that
# every arm runs; the timings of a debug build mean nothing).
profile=${BENCH_PROFILE:-release}
case "$profile" in
    release) cargo build --release -q -p ksense -p ksense-e2e --bin ksense --bin ksense-bench ;;
    debug) cargo build -q -p ksense -p ksense-e2e --bin ksense --bin ksense-bench ;;
    *) echo "bench: BENCH_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac
bin=$(mktemp -d /tmp/ksense-bench-bin.XXXXXX)
trap 'rm -rf "$bin"' EXIT
cp "target/$profile/ksense" "target/$profile/ksense-bench" "$bin/"
"$bin/ksense-bench" "$@"
