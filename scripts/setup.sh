#!/usr/bin/env bash
# Installs what building and testing tenant_guard needs on Debian 12 (as root,
# or as a user with sudo). Quick when everything is already there.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

packages=(postgresql-15 postgresql-contrib postgresql-server-dev-15 libclang-dev clang sudo pkg-config pgbouncer
          postgresql-15-cron postgresql-15-plpgsql-check)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python's `cryptography` decrypts one envelope independently in tests/secrets.rs.
if ! python3 -c 'import cryptography' 2>/dev/null; then
    echo "setup: installing Python cryptography"
    python3 -m pip install -q cryptography 2>/dev/null || python3 -m pip install -q --break-system-packages cryptography
fi

# .ci/run checks formatting and lints before the tests.
for c in rustfmt clippy; do
    if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
        echo "setup: installing the $c component"
        rustup component add "$c"
    fi
done

if ! cargo pgrx --version 2>/dev/null | grep -q "0.18.1"; then
    echo "setup: installing cargo-pgrx 0.18.1 (about 7 minutes)"
    cargo install cargo-pgrx --version 0.18.1 --locked
fi

# The bounded fuzzing layer of scripts/test.sh (about 30 s to install).
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "setup: installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

# Citus 13.2 (the last series for PostgreSQL 15) for the Citus layer of the
# tests (tests/citus.rs, bench/citus.rs). It is not in Debian's packages:
# built from the source kept beside this repository (../shared/citus), or
# from TG_CITUS_BUILD; see the README for installing it from Citus's packages.
if ! grep -qs "default_version = '13.2" "$(pg_config --sharedir)/extension/citus.control"; then
    here=$(cd "$(dirname "$0")/.." && pwd)
    build="${TG_CITUS_BUILD:-}"
    if [ -z "$build" ]; then
        # The source build kept beside the repository (our CI's layout).
        for b in "$here/../shared/citus/build.sh" /work/shared/citus/build.sh; do
            if [ -f "$b" ]; then build="$b"; break; fi
        done
    fi
    if [ -z "$build" ] || [ ! -f "$build" ]; then
        echo "setup: Citus 13.2 is not installed and no build script was found (set TG_CITUS_BUILD, or install Citus 13.2 for PostgreSQL 15)" >&2
        exit 1
    fi
    echo "setup: building and installing Citus 13.2 (about a minute)"
    $SUDO bash "$build"
fi

if ! grep -q '^pg15' "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
    cargo pgrx init --pg15 /usr/bin/pg_config
fi
