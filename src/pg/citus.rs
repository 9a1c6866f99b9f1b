//! Citus, when it is loaded: found by its exported symbols at run time (no
//! link-time dependency; nothing here runs without it).

use pgrx::pg_sys;
use std::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;

extern "C" {
    fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
}

type IsCitusTable = unsafe extern "C-unwind" fn(pg_sys::Oid) -> bool;
type UseCoordinatedTransaction = unsafe extern "C-unwind" fn();
type GetCurrentDistributedTransactionId = unsafe extern "C-unwind" fn() -> *mut DistributedTransactionId;

/// Citus 13's `DistributedTransactionId` (transaction_identifier.h).
#[repr(C)]
struct DistributedTransactionId {
    initiator_node_identifier: i32,
    transaction_originator: bool,
    transaction_number: u64,
    timestamp: i64,
}

/// The address of a Citus function, when citus.so is loaded (PostgreSQL
/// loads preloaded libraries with RTLD_GLOBAL, so its symbols are the process's).
fn symbol(cell: &'static OnceLock<Option<usize>>, name: &CStr) -> Option<usize> {
    *cell.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT (a null handle on glibc) and a
        // NUL-terminated name only looks a symbol up.
        let p = unsafe { dlsym(std::ptr::null_mut(), name.as_ptr()) };
        (!p.is_null()).then_some(p as usize)
    })
}

fn is_citus_table_fn() -> Option<IsCitusTable> {
    static F: OnceLock<Option<usize>> = OnceLock::new();
    // SAFETY: the address of Citus's `bool IsCitusTable(Oid)`, which has this signature.
    symbol(&F, c"IsCitusTable").map(|a| unsafe { std::mem::transmute::<usize, IsCitusTable>(a) })
}

/// Join (or start) Citus's coordinated transaction, so this transaction has
/// its distributed transaction id now (Citus would assign it at its first
/// remote command, and then reuses it).
pub fn use_coordinated_transaction() {
    static F: OnceLock<Option<usize>> = OnceLock::new();
    if let Some(a) = symbol(&F, c"UseCoordinatedTransaction") {
        // SAFETY: Citus's `void UseCoordinatedTransaction(void)`: idempotent
        // within a transaction; it raises (as PostgreSQL errors) if misused.
        unsafe { std::mem::transmute::<usize, UseCoordinatedTransaction>(a)() };
    }
}

/// This session's Citus distributed transaction id: (initiator node group,
/// transaction number, timestamp); number 0 when it has none.
pub fn distributed_transaction() -> Option<(i32, u64, i64)> {
    distributed_transaction_id().map(|(initiator, number, stamp, _)| (initiator, number, stamp))
}

/// Whether this session's distributed transaction was started here, by
/// Citus (false when its id was given with
/// `assign_distributed_transaction_id()`, as on a worker, or by a session
/// naming an id itself; and when it has none).
pub fn originated_here() -> bool {
    distributed_transaction_id().is_some_and(|(_, number, _, originator)| number != 0 && originator)
}

fn distributed_transaction_id() -> Option<(i32, u64, i64, bool)> {
    static F: OnceLock<Option<usize>> = OnceLock::new();
    let a = symbol(&F, c"GetCurrentDistributedTransactionId")?;
    // SAFETY: Citus's `DistributedTransactionId *GetCurrentDistributedTransactionId(void)`
    // returns a palloc'd copy of this backend's id, laid out as above.
    unsafe {
        let p = std::mem::transmute::<usize, GetCurrentDistributedTransactionId>(a)();
        let d = p.as_ref()?;
        Some((d.initiator_node_identifier, d.transaction_number, d.timestamp, d.transaction_originator))
    }
}

/// Whether Citus is loaded in this server.
pub fn loaded() -> bool {
    is_citus_table_fn().is_some()
}

/// Whether `relid` is a Citus table (distributed, reference or single-shard)
/// in this database. False without Citus, or without its extension here.
pub fn is_citus_table(relid: pg_sys::Oid) -> bool {
    match is_citus_table_fn() {
        // SAFETY: Citus's own lookup; it returns false for any relation it
        // does not manage, and when its extension is not created here.
        Some(f) => unsafe { f(relid) },
        None => false,
    }
}

/// Whether `relid` is a Citus table with a distribution column (hash or
/// range distributed): false for reference tables, Citus local tables,
/// single-shard tables, and anything that is not a Citus table.
pub fn has_distribution_key(relid: pg_sys::Oid) -> bool {
    type HasDistributionKey = unsafe extern "C-unwind" fn(pg_sys::Oid) -> bool;
    static F: OnceLock<Option<usize>> = OnceLock::new();
    if !is_citus_table(relid) {
        return false;
    }
    match symbol(&F, c"HasDistributionKey") {
        // SAFETY: Citus's `bool HasDistributionKey(Oid)`, for a Citus table
        // (checked above: it raises for any other relation).
        Some(a) => unsafe { std::mem::transmute::<usize, HasDistributionKey>(a)(relid) },
        None => false,
    }
}

/// This cluster's system identifier (pg_control): tells the nodes apart.
pub fn system_identifier() -> u64 {
    // SAFETY: a read of the control file data loaded at startup.
    unsafe { pg_sys::GetSystemIdentifier() }
}

/// Replace what pg_stat_activity shows as this backend's current query.
pub fn report_activity(text: &CStr) {
    // SAFETY: updates this backend's own status entry with a NUL-terminated string.
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, text.as_ptr()) };
}

/// Whether the current transaction is an explicit transaction block.
pub fn in_transaction_block() -> bool {
    // SAFETY: a plain read of transaction state.
    unsafe { pg_sys::IsTransactionBlock() }
}
