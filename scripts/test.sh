#!/usr/bin/env bash
# Runs every test (unit tests, then the end-to-end tests against this kernel) and ends with one
# line totalling them: "N passed, N failed". Assumes scripts/setup.sh has run.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

cargo build -p ksense -p ksense-e2e --bins || exit 1
# The arm64 builds the arm64 VM test boots (tests/vm/arm64.rs): release, as the arm64 packages
# hold (scripts/package.sh reuses this build); ksense on its own, so that its dependencies'
# features are the ones a package build resolves.
cargo build --release --target aarch64-unknown-linux-gnu -p ksense || exit 1
cargo build --release --target aarch64-unknown-linux-gnu -p ksense-e2e --bins || exit 1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Library, binary and integration tests (the crates have no doc tests to run).
cargo test --no-fail-fast --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Each fuzz target for 30 s over its committed corpus (docs/FUZZING.md); counted in the total.
bash scripts/fuzz-smoke.sh 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
# The benchmark's quick run on the debug build (docs/BENCHMARKS.md): fails only when ksense or
# the workloads fail to run, never on timings; its runs are counted in the total.
BENCH_PROFILE=debug bash scripts/bench.sh --quick 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
awk '/^test result:/ { p += $4; f += $6; s += $8 }
     /^fuzz: [0-9]+ passed/ { p += $2; f += $4 }
     /^bench: [0-9]+ passed/ { p += $2; f += $4; s += $6 }
     END { printf "\ntotal: %d passed, %d failed, %d skipped\n", p, f, s }' \
    <(sed 's/;//g' "$log")
exit "$status"
