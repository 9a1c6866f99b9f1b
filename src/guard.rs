//! `tenant_guard.require_protection` (off | warn | error): an event trigger
//! notes every new table that has a `uuid` column named `org_id`; just before
//! the transaction commits, any of them still without row-level security
//! draws a WARNING or, in `error` mode, aborts the commit. Checking at commit
//! lets a migration create a table and protect() it in the same transaction.

use crate::error::raise;
use crate::gucs::{RequireProtection, REQUIRE_PROTECTION};
use pgrx::prelude::*;
use pgrx::{register_xact_callback, PgSqlErrorCode, PgXactCallbackEvent};
use std::cell::{Cell, RefCell};

thread_local! {
    static PENDING: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Called by the event trigger: check `tbl` when this transaction commits.
#[pg_extern(volatile, parallel_unsafe)]
fn _note_unprotected_table(tbl: pg_sys::Oid) {
    PENDING.with(|p| p.borrow_mut().push(tbl));
    if !REGISTERED.with(|r| r.replace(true)) {
        register_xact_callback(PgXactCallbackEvent::PreCommit, check_pending);
        register_xact_callback(PgXactCallbackEvent::Abort, || {
            PENDING.with(|p| p.borrow_mut().clear());
            REGISTERED.with(|r| r.set(false));
        });
    }
}

fn check_pending() {
    let pending: Vec<pg_sys::Oid> = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    REGISTERED.with(|r| r.set(false));
    let mode = REQUIRE_PROTECTION.get();
    if mode == RequireProtection::Off {
        return;
    }
    let mut unprotected = vec![];
    // Pre-commit runs outside any statement: give SPI a snapshot, as
    // PostgreSQL does for deferred triggers at this point.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    for oid in pending {
        // A table dropped (or rolled back) since is simply gone.
        let name = Spi::get_one_with_args::<String>(
            "SELECT c.oid::regclass::text FROM pg_catalog.pg_class c WHERE c.oid = $1 AND NOT c.relrowsecurity",
            &[oid.into()],
        )
        .unwrap_or(None);
        if let Some(n) = name {
            unprotected.push(n);
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
