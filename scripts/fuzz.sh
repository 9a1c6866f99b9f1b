#!/usr/bin/env bash
# Bounded fuzzing of every parser of untrusted input (fuzz/fuzz_targets):
# API-key format, JWT, context token, envelope, webhook signature headers,
# the webhook URL policy, and the log redaction rules.
# Usage: scripts/fuzz.sh [seconds per target, default 10] [target ...]
# Seeds are in fuzz/seeds/<target>; what a run learns goes to fuzz/corpus/
# (not committed), a crash to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
shift || true
export CARGO_TARGET_DIR="${CARGO_FUZZ_TARGET_DIR:-/var/tmp/tenant_guard-fuzz-target}"
# cargo fuzz needs nightly-only compiler flags (sanitizers); the stable
# compiler accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
cd fuzz
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -O >/dev/null
passed=0
failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    if cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" >"/tmp/fuzz_$t.log" 2>&1; then
        echo "fuzz $t: $(grep -E '^Done' "/tmp/fuzz_$t.log" | tail -1)"
        passed=$((passed + 1))
    else
        echo "fuzz $t: FAILED"
        tail -40 "/tmp/fuzz_$t.log"
        failed=$((failed + 1))
    fi
done
echo "test result: $([ "$failed" -eq 0 ] && echo ok || echo FAILED). $passed passed; $failed failed; 0 ignored (fuzz targets, ${secs} s each)"
[ "$failed" -eq 0 ]
