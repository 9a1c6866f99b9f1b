#!/usr/bin/env bash
# Builds the Debian package of tenant_guard for PostgreSQL 15:
# postgresql-15-tenant-guard_<version>-1_<arch>.deb, holding the library,
# the control file, the install script, the install scripts of earlier
# releases and every upgrade script (what scripts/install.sh installs).
#
# Usage: scripts/package.sh [--debug] [OUTPUT-DIR]
#   --debug     package the dev build (quick; what the test suite uses)
#   OUTPUT-DIR  where the .deb goes (default: $CARGO_TARGET_DIR/debian)
# Then, on the database server: apt-get install ./postgresql-15-tenant-guard_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."
export PG_CONFIG="${PG_CONFIG:-/usr/bin/pg_config}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tenant_guard-target}"

profile=(--profile release)
if [ "${1:-}" = "--debug" ]; then profile=(--debug); shift; fi
out="${1:-$CARGO_TARGET_DIR/debian}"

pgmajor=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
name="postgresql-$pgmajor-tenant-guard"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/root"
cargo pgrx package --pg-config "$PG_CONFIG" "${profile[@]}" --out-dir "$root" >/dev/null

ext="$root$("$PG_CONFIG" --sharedir)/extension"
lib="$root$("$PG_CONFIG" --pkglibdir)"
test -f "$lib/tenant_guard.so" || { echo "package: no library under $lib" >&2; exit 1; }
test -f "$ext/tenant_guard--$version.sql" || { echo "package: no install script for $version" >&2; exit 1; }
# The earlier releases' install scripts (pgrx copies only the upgrade scripts).
install -m 644 sql/tenant_guard--*.sql "$ext/"
chmod 755 "$lib/tenant_guard.so"

doc="$root/usr/share/doc/$name"
mkdir -p "$doc"
install -m 644 README.md "$doc/README.md"
cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tenant_guard
License: Apache-2.0

Files: *
Copyright: the tenant_guard developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
EOF

mkdir -p "$root/DEBIAN"
# (for dpkg --verify)
(cd "$root" && find usr -type f -print0 | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: $name
Version: $version-1
Architecture: $arch
Maintainer: tenant_guard developers <tenant-guard@localhost>
Depends: postgresql-$pgmajor, libc6
Section: database
Priority: optional
Installed-Size: $size
Description: multi-tenant SaaS security model inside PostgreSQL $pgmajor
 tenant_guard isolates organizations with row-level security, stores API
 keys as SHA-256 hashes, encrypts secrets at rest under a superuser-only
 passphrase, verifies and signs webhooks, rate-limits and logs API traffic
 and keeps a tamper-evident audit trail. After installing: add tenant_guard
 to shared_preload_libraries, set tenant_guard.passphrase, restart, then
 CREATE EXTENSION tenant_guard (or ALTER EXTENSION tenant_guard UPDATE).
EOF
# Every file root-owned and world-readable, whoever builds it.
find "$root" -type d -exec chmod 755 {} +
mkdir -p "$out"
deb="$out/${name}_${version}-1_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
