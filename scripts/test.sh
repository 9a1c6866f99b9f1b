#!/usr/bin/env bash
# Runs every test of tenant_guard: (1) plain `cargo test` of the pure-Rust
# crate (core/), (2) the extension crate's tests under `cargo pgrx test`:
# its #[pg_test]s in a throwaway server, beside the modules they test, and
# its plain unit tests, (3) the black-box tests in tests/ against throwaway
# clusters with the extension preloaded (tests/citus.rs: a Citus coordinator
# and two workers), (4) a bounded fuzzing run of every parser of untrusted input.
# Usage: scripts/test.sh        (as root or a sudoer, on Debian 12)
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Reuse a target directory outside the clone when there is one (CI, repeated runs).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tenant_guard-target}"
mkdir -p "$CARGO_TARGET_DIR"
export PG_CONFIG=/usr/bin/pg_config

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== 1/4 pure-Rust unit tests"
cargo test -p tenant_guard_core 2>&1 | tee -a "$log"

echo "== 2/4 the extension crate's tests, in-database ones included (cargo pgrx test)"
pgdata=/tmp/tenant_guard_pgrx_test
rm -rf "$pgdata"
# cargo pgrx test installs its build over the system's library in place,
# which would crash a running server that preloads it: move the old file
# aside first (a running server keeps it mapped), so the copy is a new file.
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
lib="$("$PG_CONFIG" --pkglibdir)/tenant_guard.so"
if [ -e "$lib" ]; then $SUDO mv -f "$lib" "$lib.tg-old"; $SUDO cp -p "$lib.tg-old" "$lib.tg-copy"; $SUDO mv -f "$lib.tg-copy" "$lib"; $SUDO rm -f "$lib.tg-old"; fi
cargo pgrx test pg15 --runas postgres --pgdata "$pgdata" -p tenant_guard 2>&1 | tee -a "$log"

echo "== 3/4 black-box tests against a real cluster"
# Install the regular (non-test) build into the system PostgreSQL, with the
# scripts of earlier versions (tests/operations.rs updates from 0.1.0).
bash scripts/install.sh
cargo test -p tenant_guard_harness --tests -- --test-threads=4 2>&1 | tee -a "$log"

echo "== 4/4 bounded fuzzing (${TG_FUZZ_SECS:-10} s per target; scripts/fuzz.sh for longer runs)"
bash scripts/fuzz.sh "${TG_FUZZ_SECS:-10}" 2>&1 | tee -a "$log"

# One closing line for all four layers.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "all layers: %d passed, %d failed\n", p, f; exit (f > 0 || p == 0) }' "$log"
