#!/usr/bin/env bash
# Builds tenant_guard and installs it into the PostgreSQL of $PG_CONFIG
# (default /usr/bin/pg_config): the library, the control file, the install
# script of this version, every upgrade script (sql/tenant_guard--A--B.sql)
# and the install scripts of earlier versions as they shipped
# (sql/tenant_guard--A.sql), so that `CREATE EXTENSION tenant_guard VERSION
# 'A'` and `ALTER EXTENSION tenant_guard UPDATE` work from any release.
#
# Each file is written beside its destination and renamed over it, as a
# package manager does: a running server keeps the library it has mapped
# (overwriting it in place, as `cargo pgrx install` does, crashes every
# process of a running server that preloads it). Restart to load the new one.
#
# Usage: scripts/install.sh [--release]   (default: the dev build; as root or a sudoer)
set -euo pipefail
cd "$(dirname "$0")/.."
export PG_CONFIG="${PG_CONFIG:-/usr/bin/pg_config}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tenant_guard-target}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

profile=(--debug)
if [ "${1:-}" = "--release" ]; then profile=(--profile release); fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cargo pgrx package --pg-config "$PG_CONFIG" "${profile[@]}" --out-dir "$stage"
ext_dir="$("$PG_CONFIG" --sharedir)/extension"
install -m 644 sql/tenant_guard--*.sql "$stage$ext_dir/"

(cd "$stage" && find . -type f) | while read -r f; do
    dest="/${f#./}"
    mode=644
    case "$dest" in *.so) mode=755 ;; esac
    $SUDO install -D -m "$mode" "$stage/$f" "$dest.tg-new"
    $SUDO mv -f "$dest.tg-new" "$dest"
done

# The upgrade script is made from the install script pgrx just wrote: a
# stale one (an edit to src/ not carried into it) fails here, not in a
# customer's ALTER EXTENSION.
version=$(sed -n 's/^default_version = .\([^'"'"'"]*\).*/\1/p' "$ext_dir/tenant_guard.control")
for up in sql/upgrade/*--"$version".pre.sql; do
    [ -e "$up" ] || continue
    from=$(basename "$up" .pre.sql); from=${from%%--*}
    fresh=$(mktemp)
    python3 scripts/make_upgrade.py "$from" "$version" "$ext_dir/tenant_guard--$version.sql" "$fresh" >/dev/null
    if ! cmp -s "$fresh" "sql/tenant_guard--$from--$version.sql"; then
        diff -u "sql/tenant_guard--$from--$version.sql" "$fresh" | head -40 >&2 || true
        rm -f "$fresh"
        echo "install: sql/tenant_guard--$from--$version.sql is stale; run:" >&2
        echo "  python3 scripts/make_upgrade.py $from $version $ext_dir/tenant_guard--$version.sql" >&2
        exit 1
    fi
    rm -f "$fresh"
done
echo "installed tenant_guard $version into $("$PG_CONFIG" --pkglibdir) and $ext_dir"
