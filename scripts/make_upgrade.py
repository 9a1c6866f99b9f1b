#!/usr/bin/env python3
"""Write sql/tenant_guard--FROM--TO.sql: the hand-written
sql/upgrade/FROM--TO.pre.sql, then the TO install script (from
`cargo pgrx schema`) made to run over a FROM catalog, then
sql/upgrade/FROM--TO.post.sql. What "made to run over" means:

- CREATE FUNCTION becomes CREATE OR REPLACE FUNCTION;
- CREATE TABLE of a table the FROM install script made is left out (the
  .pre.sql changes it), and CREATE INDEX becomes CREATE INDEX IF NOT EXISTS;
- CREATE POLICY, CREATE TRIGGER and CREATE EVENT TRIGGER drop the object
  of that name first (a CREATE POLICY names its table on its first line);
- the role ladder's INSERT updates what is there;
- pgrx's `-- file.rs:line` comments are left out.

Usage: scripts/make_upgrade.py FROM TO TO-install-script.sql [OUTPUT]
(OUTPUT defaults to sql/tenant_guard--FROM--TO.sql; scripts/install.sh
writes it elsewhere and compares, to catch a stale upgrade script.)
The upgrade test (tests/operations.rs) diffs the updated catalog with a
fresh TO install: whatever this misses shows there.
"""
import re
import sys
from pathlib import Path

frm, to, install = sys.argv[1], sys.argv[2], Path(sys.argv[3])
root = Path(__file__).resolve().parent.parent
old = (root / f"sql/tenant_guard--{frm}.sql").read_text()
existing = set(re.findall(r"CREATE TABLE tenant_guard\.(\w+)", old))
pre = (root / f"sql/upgrade/{frm}--{to}.pre.sql").read_text()
post = (root / f"sql/upgrade/{frm}--{to}.post.sql").read_text()

out = []
skipping = False
trigger = []
for line in install.read_text().splitlines():
    # pgrx's source-location comments: they change with every edit of the
    # Rust code and say nothing to the update.
    if re.match(r"^-- \S+\.rs:\d+$", line):
        continue
    if trigger or re.match(r"^CREATE TRIGGER (\w+)", line):
        trigger.append(line)
        if line.rstrip().endswith(";"):
            stmt = " ".join(trigger)
            m = re.match(r"^CREATE TRIGGER (\w+) .*? ON ([\w.]+)", stmt)
            if not m:
                sys.exit(f"make_upgrade.py: cannot read the trigger: {stmt}")
            out.append(f"DROP TRIGGER IF EXISTS {m.group(1)} ON {m.group(2)};")
            out.extend(trigger)
            trigger = []
        continue
    if skipping:
        if re.match(r"^\).*;\s*$", line):
            skipping = False
        continue
    m = re.match(r"^CREATE TABLE tenant_guard\.(\w+) \(", line)
    if m and m.group(1) in existing and m.group(1) != "request_log":
        skipping = True
        out.append(f"-- (table tenant_guard.{m.group(1)} exists: see the .pre.sql)")
        continue
    line = re.sub(r"^CREATE\s+FUNCTION\b", "CREATE OR REPLACE FUNCTION", line)
    line = re.sub(r"^CREATE (UNIQUE )?INDEX (\w+) ON", r"CREATE \1INDEX IF NOT EXISTS \2 ON", line)
    m = re.match(r"^CREATE POLICY (\w+) ON ([\w.]+)", line)
    if m:
        out.append(f"DROP POLICY IF EXISTS {m.group(1)} ON {m.group(2)};")
    m = re.match(r"^CREATE EVENT TRIGGER (\w+)", line)
    if m:
        out.append(f"DROP EVENT TRIGGER IF EXISTS {m.group(1)};")
    if line.startswith("INSERT INTO tenant_guard.roles (name, rank) SELECT"):
        line = line.rstrip(";") + " ON CONFLICT (name) DO UPDATE SET rank = excluded.rank;"
    out.append(line)

header = f"""-- tenant_guard {frm} -> {to} (ALTER EXTENSION tenant_guard UPDATE TO '{to}').
-- Made by scripts/make_upgrade.py from sql/upgrade/{frm}--{to}.pre.sql, the
-- {to} install script and sql/upgrade/{frm}--{to}.post.sql: edit those, not this.
\\echo Use "ALTER EXTENSION tenant_guard UPDATE TO '{to}'" to load this file. \\quit
"""
target = Path(sys.argv[4]) if len(sys.argv) > 4 else root / f"sql/tenant_guard--{frm}--{to}.sql"
target.write_text(header + "\n" + pre + "\n" + "\n".join(out) + "\n\n" + post)
print(f"wrote {target}")
