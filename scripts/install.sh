#!/usr/bin/env bash
# Builds tenant_guard and installs it into the PostgreSQL of $PG_CONFIG
# (default /usr/bin/pg_config): the library, the control file, the install
# script of this version, every upgrade script (sql/tenant_guard--A--B.sql)
# and the install scripts of earlier versions as they shipped
# (sql/tenant_guard--A.sql), so that `CREATE EXTENSION tenant_guard VERSION
# 'A'` and `ALTER EXTENSION tenant_guard UPDATE` work from any release.
# Usage: scripts/install.sh [--release]   (as root or a sudoer)
set -euo pipefail
cd "$(dirname "$0")/.."
export PG_CONFIG="${PG_CONFIG:-/usr/bin/pg_config}"
SUDO=""
sudo_flag=()
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; sudo_flag=(--sudo); fi

cargo pgrx install --pg-config "$PG_CONFIG" "${sudo_flag[@]}" "$@"

ext="$("$PG_CONFIG" --sharedir)/extension"
for f in sql/tenant_guard--*.sql; do
    $SUDO install -m 644 "$f" "$ext/"
done

# The upgrade script is made from the install script pgrx just wrote: a
# stale one (an edit to src/ not carried into it) fails here, not in a
# customer's ALTER EXTENSION.
version=$(sed -n 's/^default_version = .\([^'"'"'"]*\).*/\1/p' "$ext/tenant_guard.control")
for up in sql/upgrade/*--"$version".pre.sql; do
    [ -e "$up" ] || continue
    from=$(basename "$up" .pre.sql); from=${from%%--*}
    fresh=$(mktemp)
    python3 scripts/make_upgrade.py "$from" "$version" "$ext/tenant_guard--$version.sql" "$fresh" >/dev/null
    if ! cmp -s "$fresh" "sql/tenant_guard--$from--$version.sql"; then
        diff -u "sql/tenant_guard--$from--$version.sql" "$fresh" | head -40 >&2 || true
        rm -f "$fresh"
        echo "install: sql/tenant_guard--$from--$version.sql is stale; run:" >&2
        echo "  python3 scripts/make_upgrade.py $from $version $ext/tenant_guard--$version.sql" >&2
        exit 1
    fi
    rm -f "$fresh"
done
