#!/usr/bin/env bash
# The short fuzzing run of CI (docs/FUZZING.md): builds the cargo-fuzz targets in fuzz/ and runs
# each for FUZZ_SECONDS (default 30) from its committed corpus (fuzz/corpus/<target>) and past
# findings (fuzz/regressions/<target>). New inputs go to a temporary directory, so the committed
# corpus is left as it is. Exits non-zero when a target crashes, hangs or does not build; ends
# with one line, "fuzz: N passed, N failed", counting targets. Assumes scripts/setup.sh has run.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
seconds=${FUZZ_SECONDS:-30}
# For the failure lines before the targets are listed: one fuzz_targets/<target>.rs per target.
count=$(find fuzz/fuzz_targets -name '*.rs' | wc -l)

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz (or the nightly toolchain) is missing; install it with: sudo scripts/setup.sh" >&2
    echo "fuzz: 0 passed, $count failed"
    exit 1
fi

# -O -a: optimised, with debug assertions and overflow checks; AddressSanitizer is the default.
build=(-O -a)
targets=$(cd fuzz && cargo +nightly fuzz list) || targets=""
if [ -z "$targets" ] || ! (cd fuzz && cargo +nightly fuzz build "${build[@]}"); then
    echo "fuzz: the fuzz targets did not build" >&2
    echo "fuzz: 0 passed, $count failed"
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
for target in $targets; do
    mkdir -p "$work/$target" "fuzz/regressions/$target"
    log="$work/$target.log"
    # -timeout: an input taking 10 s is a hang; -print_final_stats: executions for the summary.
    (cd fuzz && cargo +nightly fuzz run "${build[@]}" "$target" "$work/$target" \
        "corpus/$target" "regressions/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1) >"$log" 2>&1
    status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
    if [ "$status" -eq 0 ]; then
        passed=$((passed + 1))
        echo "fuzz: $target ok: ${runs:-?} executions in ${seconds} s, ${cov:-cov: ?} edges"
    else
        failed=$((failed + 1))
        echo "fuzz: $target FAILED (exit $status):"
        # The panic or sanitizer report and the top of its backtrace, then where the input went.
        awk '/panicked at|==ERROR|ERROR: libFuzzer|error(\[E[0-9]+\])?:/ && !n { n = 1 } n && n++ <= 40' "$log"
        grep -E 'Test unit written|^Base64:' "$log"
        grep -q 'Test unit written' "$log" || tail -n 40 "$log"
        echo "fuzz: the input is saved under fuzz/artifacts/$target/; reproduce it with"
        echo "      (cd fuzz && cargo +nightly fuzz run -O -a $target artifacts/$target/<file>),"
        echo "      and once fixed, move it to fuzz/regressions/$target/ (tests/fuzz_regressions.rs replays it)"
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
