//! `tenant_guard.require_protection` (off | warn | error): an event trigger
//! notes every table created or altered that has a `uuid` column named
//! `org_id`; just before the transaction commits (or is prepared), any of
//! them still without row-level security draws a WARNING or, in `error`
//! mode, aborts the commit. Checking at commit lets a migration create a
//! table and protect() it in the same transaction.

use crate::error::raise;
use crate::gucs::{RequireProtection, REQUIRE_PROTECTION};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::ffi::c_void;

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
    unsafe { pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut()) };
}

fn check_pending() {
    let pending: Vec<pg_sys::Oid> = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if pending.is_empty() {
        return;
    }
    let mode = REQUIRE_PROTECTION.get();
    if mode == RequireProtection::Off {
        return;
    }
    let mut unprotected = vec![];
    // Pre-commit runs outside any statement: give SPI a snapshot, as
    // PostgreSQL does for deferred triggers at this point.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    for oid in pending {
        // Gone (dropped, rolled back), temporary, or protected by now: fine.
        let name = Spi::get_one_with_args::<String>(
            "SELECT c.oid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_class c
              WHERE c.oid OPERATOR(pg_catalog.=) $1 AND NOT c.relrowsecurity AND c.relpersistence OPERATOR(pg_catalog.<>) 't'
                AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                             WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attname OPERATOR(pg_catalog.=) 'org_id'
                               AND a.atttypid OPERATOR(pg_catalog.=) 'pg_catalog.uuid'::pg_catalog.regtype AND NOT a.attisdropped)",
            &[oid.into()],
        )
        .unwrap_or(None);
        if let Some(n) = name {
            if !unprotected.contains(&n) {
                unprotected.push(n);
            }
        }
    }
    unsafe { pg_sys::PopActiveSnapshot() };
    if unprotected.is_empty() {
        return;
    }
    let msg = format!("table(s) with an org_id column left without row-level security: {}", unprotected.join(", "));
    let hint = "Run SELECT tenant_guard.protect('<table>') in the same transaction (for a new partition: protect() its parent again).";
    match mode {
        RequireProtection::Error => raise(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, msg, None, Some(hint)),
        _ => pgrx::ereport!(WARNING, PgSqlErrorCode::ERRCODE_WARNING, format!("{msg} (hint: {hint})")),
    }
}
