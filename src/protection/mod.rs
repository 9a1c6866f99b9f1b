//! `tenant_guard.require_protection` (off | warn | error): an event trigger
//! notes every relation a DDL command touched (and their heirs); those that
//! are tables with an `org_id` column of type uuid (or a domain over it)
//! and, just before the transaction commits (or is prepared), are still
//! without row-level security draw a WARNING or, in `error` mode, abort the
//! commit. Checking at commit lets a migration create a
//! table and protect() it in the same transaction.

use crate::pg::errors::raise;
use crate::pg::settings::{RequireProtection, REQUIRE_PROTECTION};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::ffi::c_void;

// protect(), the self-approval trigger and the guard's event trigger
// (protection.sql): after every other capability, so the guard watches only
// what follows the install.
pgrx::extension_sql_file!(
    "protection.sql",
    name = "protection",
    requires = [
        "organizations",
        "context",
        "api_keys",
        "request_log",
        "rate_limit",
        "secrets",
        "webhooks",
        "audit_trail",
        "citus",
        _note_unprotected_table
    ]
);

thread_local! {
    static PENDING: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
}

/// Called (only) by the event trigger function: check `tbl` at commit.
#[pg_extern(volatile, parallel_unsafe)]
fn _note_unprotected_table(tbl: pg_sys::Oid) {
    PENDING.with(|p| p.borrow_mut().push(tbl));
}

/// One transaction callback for the backend's life: check before commit or
/// PREPARE TRANSACTION, forget at the end of every transaction.
#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => check_pending(),
        XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PREPARE => PENDING.with(|p| p.borrow_mut().clear()),
        _ => {}
    }
}

pub fn init() {
    // SAFETY: registers a static callback once per process (from _PG_init).
    unsafe { pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut()) };
}

/// A policy expression as protect() writes it (with or without the schema,
/// as pg_get_expr prints it under the session's search_path; a column of a
/// domain over uuid is printed with its cast).
const PROTECT_EXPRESSION: &str =
    r"^\((org_id|\(org_id\)::uuid) = (tenant_guard\.)?current_org_id_if\('(viewer|member|admin|owner)'::text\)\)$";

/// Whether table $1 is left open: its name when it has an org_id column
/// and lacks row-level security or what protect() put in place, or is a
/// view that reads a table with row-level security as its owner.
const CHECK_TABLE: &str = "SELECT c.oid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_class c
 WHERE c.oid OPERATOR(pg_catalog.=) $1 AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::pg_catalog.\"char\"[])
 AND c.relpersistence OPERATOR(pg_catalog.<>) 't'
 AND tenant_guard._is_uuid_column(c.oid, 'org_id')
 AND (NOT c.relrowsecurity
      -- A table protect() made (it carries its policies) must
      -- also keep FORCE and its four restrictive policies,
      -- each still checking the org (on a Citus table, whose
      -- shards hold every policy as permissive, they are
      -- permissive, and no other permissive policy may widen them).
      OR (EXISTS (SELECT 1 FROM pg_catalog.pg_policy p
                   WHERE p.polrelid OPERATOR(pg_catalog.=) c.oid AND p.polname OPERATOR(pg_catalog.~~) 'tenant\\_guard\\_%')
          -- (the extension's own tables carry policies of that name
          -- but were never protect()ed: security_audit() checks them)
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                           WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                             AND d.objid OPERATOR(pg_catalog.=) c.oid AND d.deptype OPERATOR(pg_catalog.=) 'e')
          AND (NOT c.relforcerowsecurity
               OR (SELECT pg_catalog.count(*) FROM pg_catalog.pg_policy p
                    WHERE p.polrelid OPERATOR(pg_catalog.=) c.oid
                      AND (NOT p.polpermissive OR tenant_guard._is_citus_table(c.oid))
                      -- exactly what protect() made: for everyone, for its command,
                      -- each expression `org_id = current_org_id_if('<role>')`
                      AND p.polroles OPERATOR(pg_catalog.=) '{0}'::pg_catalog.oid[]
                      AND (p.polname::pg_catalog.text, p.polcmd::pg_catalog.text) IN
                          (('tenant_guard_select', 'r'), ('tenant_guard_insert', 'a'),
                           ('tenant_guard_update', 'w'), ('tenant_guard_delete', 'd'))
                      AND (p.polqual IS NULL) OPERATOR(pg_catalog.=) (p.polcmd OPERATOR(pg_catalog.=) 'a')
                      AND (p.polwithcheck IS NULL) OPERATOR(pg_catalog.=) (p.polcmd OPERATOR(pg_catalog.=) ANY ('{r,d}'::pg_catalog.\"char\"[]))
                      AND COALESCE(pg_catalog.pg_get_expr(p.polqual, p.polrelid), '(org_id = current_org_id_if(''viewer''::text))')
                          OPERATOR(pg_catalog.~) $2
                      AND COALESCE(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), '(org_id = current_org_id_if(''viewer''::text))')
                          OPERATOR(pg_catalog.~) $2) OPERATOR(pg_catalog.<) 4
               OR (tenant_guard._is_citus_table(c.oid) AND EXISTS (
                   SELECT 1 FROM pg_catalog.pg_policy p
                    WHERE p.polrelid OPERATOR(pg_catalog.=) c.oid AND p.polpermissive
                      AND NOT (p.polroles OPERATOR(pg_catalog.=) '{0}'::pg_catalog.oid[]
                               AND (p.polname::pg_catalog.text, p.polcmd::pg_catalog.text) IN
                                   (('tenant_guard_select', 'r'), ('tenant_guard_insert', 'a'),
                                    ('tenant_guard_update', 'w'), ('tenant_guard_delete', 'd'),
                                    ('tenant_guard_allow_select', 'r'), ('tenant_guard_allow_insert', 'a'),
                                    ('tenant_guard_allow_update', 'w'), ('tenant_guard_allow_delete', 'd'))
                               AND COALESCE(pg_catalog.pg_get_expr(p.polqual, p.polrelid), '(org_id = current_org_id_if(''viewer''::text))')
                                   OPERATOR(pg_catalog.~) $2
                               AND COALESCE(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), '(org_id = current_org_id_if(''viewer''::text))')
                                   OPERATOR(pg_catalog.~) $2)))
               -- and nobody but the owner may TRUNCATE it (ignores RLS), put a
               -- trigger on it or reference it (protect() revoked these)
               OR EXISTS (SELECT 1 FROM pg_catalog.aclexplode(c.relacl) a
                           WHERE a.grantee OPERATOR(pg_catalog.<>) c.relowner
                             AND a.privilege_type OPERATOR(pg_catalog.=) ANY ('{TRUNCATE,TRIGGER,REFERENCES}'::pg_catalog.text[]))))
      -- Queried through an ancestor, a table has the ancestor's RLS only:
      -- every ancestor must have RLS too (INHERIT into, ATTACH to a parent).
      OR EXISTS (WITH RECURSIVE up(rel) AS (
                     SELECT i.inhparent FROM pg_catalog.pg_inherits i WHERE i.inhrelid OPERATOR(pg_catalog.=) c.oid
                     UNION
                     SELECT i.inhparent FROM pg_catalog.pg_inherits i JOIN up ON i.inhrelid OPERATOR(pg_catalog.=) up.rel)
                 SELECT 1 FROM up JOIN pg_catalog.pg_class a ON a.oid OPERATOR(pg_catalog.=) up.rel
                  WHERE NOT a.relrowsecurity))
             UNION ALL
             -- A view over a table with RLS that runs as its owner (not
             -- security_invoker) reads every org's rows for whoever may select from it.
             SELECT v.oid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_class v
              WHERE v.oid OPERATOR(pg_catalog.=) $1 AND v.relkind OPERATOR(pg_catalog.=) 'v'
 AND v.relpersistence OPERATOR(pg_catalog.<>) 't'
 AND NOT COALESCE('security_invoker=true' OPERATOR(pg_catalog.=) ANY (v.reloptions), false)
 AND NOT COALESCE('security_invoker=on' OPERATOR(pg_catalog.=) ANY (v.reloptions), false)
 AND EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r
               JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                    AND d.objid OPERATOR(pg_catalog.=) r.oid AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
               JOIN pg_catalog.pg_class t ON t.oid OPERATOR(pg_catalog.=) d.refobjid
              WHERE r.ev_class OPERATOR(pg_catalog.=) v.oid AND t.oid OPERATOR(pg_catalog.<>) v.oid AND t.relrowsecurity)
             LIMIT 1";

/// The check of a 0.1.0 catalog (before the update to 0.2.0): row-level
/// security on, as the 0.1.0 library checked.
const CHECK_TABLE_0_1_0: &str = "SELECT c.oid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_class c
  WHERE c.oid OPERATOR(pg_catalog.=) $1 AND NOT c.relrowsecurity AND c.relpersistence OPERATOR(pg_catalog.<>) 't'
    AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attname OPERATOR(pg_catalog.=) 'org_id'
                   AND a.atttypid OPERATOR(pg_catalog.=) 'pg_catalog.uuid'::pg_catalog.regtype AND NOT a.attisdropped)
    AND $2 IS NOT NULL";

fn check_pending() {
    let pending: Vec<pg_sys::Oid> = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if pending.is_empty() {
        return;
    }
    let mode = REQUIRE_PROTECTION.get();
    if mode == RequireProtection::Off {
        return;
    }
    // A restore (pg_restore creates a table, then loads it, then enables its
    // row-level security, each in its own transaction): a warning at most.
    let mode = if crate::pg::restoring() { RequireProtection::Warn } else { mode };
    let mut unprotected: Vec<String> = vec![];
    // Pre-commit runs outside any statement: give SPI a snapshot, as
    // PostgreSQL does for deferred triggers at this point.
    // SAFETY: balanced by the PopActiveSnapshot below; SPI errors unwind
    // through pgrx and abort the transaction, which pops it.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    // The extension may have been dropped in this very transaction, or its
    // catalog be a 0.1.0 one not updated yet (this library then checks what
    // 0.1.0's did: row-level security on).
    let catalog = Spi::get_one::<i32>(
        "SELECT CASE WHEN pg_catalog.to_regprocedure('tenant_guard._is_uuid_column(oid, name)') IS NOT NULL
                      AND pg_catalog.to_regprocedure('tenant_guard._is_citus_table(oid)') IS NOT NULL THEN 2
                     WHEN pg_catalog.to_regprocedure('tenant_guard._note_unprotected_table(oid)') IS NOT NULL THEN 1
                     ELSE 0 END",
    )
    .ok()
    .flatten()
    .unwrap_or(0);
    let pending = if catalog == 0 { vec![] } else { pending };
    let query = if catalog == 2 { CHECK_TABLE } else { CHECK_TABLE_0_1_0 };
    let mut seen = std::collections::HashSet::new();
    for oid in pending {
        if !seen.insert(oid) {
            continue;
        }
        // Gone (dropped, rolled back), temporary, not a table, or protected by now: fine.
        let name = Spi::get_one_with_args::<String>(query, &[oid.into(), PROTECT_EXPRESSION.into()]).unwrap_or(None);
        if let Some(n) = name {
            unprotected.push(n);
        }
    }
    // SAFETY: pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    if unprotected.is_empty() {
        return;
    }
    unprotected.sort();
    // Names are escaped to ASCII and the list is bounded: a notice that the
    // client's encoding cannot carry, or an unbounded one, would fail the COMMIT.
    let shown: Vec<String> = unprotected.iter().take(10).map(|n| crate::echo::echo_max(n, 200)).collect();
    let more = if unprotected.len() > 10 { format!(" and {} more", unprotected.len() - 10) } else { String::new() };
    let msg = format!("table(s) with an org_id column left without row-level security, or without what protect() put in place: {}{more}", shown.join(", "));
    let hint = "Run SELECT tenant_guard.protect('<table>') in the same transaction (for a new partition: protect() its parent again).";
    match mode {
        RequireProtection::Error => {
            raise(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, msg, None, Some(hint))
        }
        _ => pgrx::ereport!(WARNING, PgSqlErrorCode::ERRCODE_WARNING, format!("{msg} (hint: {hint})")),
    }
}
