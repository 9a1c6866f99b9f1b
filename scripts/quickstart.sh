#!/usr/bin/env bash
# Builds and installs tenant_guard, starts a throwaway cluster with it
# preloaded and a freshly generated passphrase in a config file only the
# server can read, runs examples/quickstart.sql, and stops the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tenant_guard-target}"
mkdir -p "$CARGO_TARGET_DIR"
export PG_CONFIG=/usr/bin/pg_config
if [ "$(id -u)" -eq 0 ]; then
    cargo pgrx install --pg-config "$PG_CONFIG"
else
    cargo pgrx install --pg-config "$PG_CONFIG" --sudo
fi
cargo run -q -p tenant_guard_harness --bin quickstart -- examples/quickstart.sql
