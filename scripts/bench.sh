#!/usr/bin/env bash
# Runs the benchmarks in bench/ against the release build of the extension.
# Usage: scripts/bench.sh [rls ...]     (default: all)
# Each prints a table of medians and ratios against a baseline measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tenant_guard-target}"
export PG_CONFIG=/usr/bin/pg_config
bash scripts/install.sh --release
benches=("$@"); [ "${#benches[@]}" -gt 0 ] || benches=(rls context apikeys secrets webhooks audit citus purge)
for b in "${benches[@]}"; do
    cargo run --release -q -p tenant_guard_harness --bin "bench_$b"
done
echo "note: the release build is now installed; scripts/test.sh reinstalls the dev build."
