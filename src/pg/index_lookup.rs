//! One row of a tenant_guard table, fetched through a unique btree index
//! directly: no SPI, no planner, no executor. The per-request paths
//! (authenticate(), get_secret()) use it; an SPI query with a kept plan cost
//! them more than the rest of their work together (see README, Benchmarks).
//!
//! No privilege check and no row-level security apply here: callers are
//! functions whose EXECUTE grant is the access check. Relations are found in
//! schema `tenant_guard` by name (never through search_path), and the index
//! is checked to be unique, valid, not partial and on exactly the expected
//! columns, so a changed schema fails loudly instead of reading the wrong thing.

use crate::pg::errors::raise;
use pgrx::pg_sys::{self, Datum, Oid};
use pgrx::{FromDatum, IntoDatum, PgSqlErrorCode};
use std::ffi::{c_char, CStr};

/// One equality condition of the probe, as `column = value`.
pub enum Key<'a> {
    Bytea(&'a [u8]),
    Uuid(pgrx::Uuid),
    Text(&'a str),
}

impl Key<'_> {
    fn eq_proc(&self) -> u32 {
        match self {
            Key::Bytea(_) => pg_sys::F_BYTEAEQ,
            Key::Uuid(_) => pg_sys::F_UUID_EQ,
            Key::Text(_) => pg_sys::F_TEXTEQ,
        }
    }
    fn type_oid(&self) -> pg_sys::PgBuiltInOids {
        match self {
            Key::Bytea(_) => pg_sys::PgBuiltInOids::BYTEAOID,
            Key::Uuid(_) => pg_sys::PgBuiltInOids::UUIDOID,
            Key::Text(_) => pg_sys::PgBuiltInOids::TEXTOID,
        }
    }
    fn datum(&self) -> Datum {
        match self {
            Key::Bytea(b) => b.into_datum(),
            Key::Uuid(u) => u.into_datum(),
            Key::Text(s) => s.into_datum(),
        }
        .expect("non-null key")
    }
}

fn broken(what: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("tenant_guard's schema is not as expected: {what}"),
        None,
        Some("Run CREATE EXTENSION tenant_guard in this database, or reinstall it."),
    )
}

fn relid(nsp: Oid, name: &CStr) -> Oid {
    // SAFETY: a catalog lookup by name; `name` is NUL-terminated.
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), nsp) };
    if oid == pg_sys::InvalidOid {
        broken(&format!("relation tenant_guard.{} is missing", name.to_string_lossy()));
    }
    oid
}

/// The attribute number of `column` in `rel`'s tuple descriptor, which must
/// have type `typ` (the equality functions and conversions here assume it).
unsafe fn attnum(rel: pg_sys::Relation, column: &CStr, typ: pg_sys::PgBuiltInOids) -> i16 {
    let desc = (*rel).rd_att;
    let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
    for (i, a) in attrs.iter().enumerate() {
        if !a.attisdropped && CStr::from_ptr(a.attname.data.as_ptr()) == column {
            if a.atttypid != typ.value() {
                broken(&format!("column {} has another type", column.to_string_lossy()));
            }
            return i as i16 + 1;
        }
    }
    broken(&format!("column {} is missing", column.to_string_lossy()))
}

thread_local! {
    /// (table, schema oid, table oid, index oid) found by name earlier in
    /// this backend: saves three catalog lookups per call.
    static OIDS: std::cell::RefCell<Vec<(&'static CStr, Oid, Oid, Oid)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Is `rel` still `tenant_guard.<name>` (an OID found earlier may have been
/// dropped, with the extension, and even reused)?
unsafe fn is_named(rel: pg_sys::Relation, nsp: Oid, name: &CStr) -> bool {
    let form = (*rel).rd_rel;
    (*form).relnamespace == nsp && CStr::from_ptr((*form).relname.data.as_ptr()) == name
}

/// Open the table and its index (AccessShareLock, kept to the end of the
/// transaction), by the OIDs cached for this backend when they still name
/// them, else by looking the names up in schema tenant_guard.
unsafe fn open_pair(table: &'static CStr, index: &'static CStr) -> (pg_sys::Relation, pg_sys::Relation) {
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    // Taken out while in use: should opening raise, the entry is gone.
    let cached = OIDS.with(|o| {
        let mut o = o.borrow_mut();
        let pos = o.iter().position(|e| e.0 == table)?;
        Some(o.swap_remove(pos))
    });
    if let Some((_, nsp, t, i)) = cached {
        // try_relation_open, not try_table_open: a reused OID may be another
        // kind of relation, which try_table_open would reject with an error.
        let heap = pg_sys::try_relation_open(t, lock);
        if !heap.is_null() {
            if (*(*heap).rd_rel).relkind == pg_sys::RELKIND_RELATION as c_char && is_named(heap, nsp, table) {
                let idx = pg_sys::try_relation_open(i, lock);
                if !idx.is_null() {
                    if !(*idx).rd_index.is_null() && is_named(idx, nsp, index) {
                        OIDS.with(|o| o.borrow_mut().push((table, nsp, t, i)));
                        return (heap, idx);
                    }
                    pg_sys::relation_close(idx, lock);
                }
            }
            pg_sys::relation_close(heap, lock);
        }
    }
    let nsp = pg_sys::get_namespace_oid(c"tenant_guard".as_ptr(), true);
    if nsp == pg_sys::InvalidOid {
        broken("schema tenant_guard is missing");
    }
    let (t, i) = (relid(nsp, table), relid(nsp, index));
    let heap = pg_sys::table_open(t, lock);
    let idx = pg_sys::index_open(i, lock);
    OIDS.with(|o| o.borrow_mut().push((table, nsp, t, i)));
    (heap, idx)
}

/// Statistics counting switched off on relations for as long as this lives,
/// and restored on drop: also when an error unwinds through the probe
/// (pgrx turns it into a panic), so a relcache entry is never left without
/// its statistics link.
struct NoStats {
    saved: [(pg_sys::Relation, bool, *mut pg_sys::PgStat_TableStatus); 2],
}

impl NoStats {
    unsafe fn new(rels: [pg_sys::Relation; 2]) -> NoStats {
        // SAFETY: the caller passes open relations.
        let saved = rels.map(|r| unsafe { (r, (*r).pgstat_enabled, (*r).pgstat_info) });
        for r in rels {
            // SAFETY: as above; the saved values are put back on drop.
            unsafe {
                (*r).pgstat_enabled = false;
                (*r).pgstat_info = std::ptr::null_mut();
            }
        }
        NoStats { saved }
    }
}

impl Drop for NoStats {
    fn drop(&mut self) {
        for (r, enabled, info) in self.saved {
            // SAFETY: the relations are still open: NoStats lives inside
            // scan_latest, which runs while they are.
            unsafe {
                (*r).pgstat_enabled = enabled;
                (*r).pgstat_info = info;
            }
        }
    }
}

/// The fetched row, valid only inside the closure given to [`fetch_one`].
pub struct Row {
    heap: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
}

impl Row {
    /// The value of `column`, of SQL type `typ`, copied out of the buffer
    /// (so it outlives the row).
    pub fn get<T: FromDatum>(&self, column: &CStr, typ: pg_sys::PgBuiltInOids) -> Option<T> {
        // SAFETY: the slot holds the fetched tuple while the Row exists, and
        // attnum checked the column has type `typ`, which T converts from.
        unsafe {
            let (d, isnull) = self.datum(column, typ);
            T::from_datum(d, isnull)
        }
    }

    /// A bytea column, copied in one go (pgrx's `Vec<u8>` copies byte by byte).
    pub fn bytes(&self, column: &CStr) -> Option<Vec<u8>> {
        // SAFETY: as in get(); the bytes are copied out before the Row ends.
        unsafe {
            let (d, isnull) = self.datum(column, pg_sys::PgBuiltInOids::BYTEAOID);
            <&[u8]>::from_datum(d, isnull).map(<[u8]>::to_vec)
        }
    }

    unsafe fn datum(&self, column: &CStr, typ: pg_sys::PgBuiltInOids) -> (Datum, bool) {
        let n = attnum(self.heap, column, typ);
        let mut isnull = false;
        let d = pg_sys::slot_getattr(self.slot, n as i32, &mut isnull);
        (d, isnull)
    }
}

/// Find the row of `tenant_guard.<table>` whose `keys` (in the column order
/// of the unique index `tenant_guard.<index>`) match, as committed now, and
/// pass it to `read`. `read` must only copy values out: it
/// runs while a buffer is pinned.
pub fn fetch_one<R>(
    table: &'static CStr,
    index: &'static CStr,
    keys: &[(&CStr, Key)],
    read: impl FnOnce(&Row) -> R,
) -> Option<R> {
    // SAFETY: opens two relations by OID with AccessShareLock; both stay
    // open (and locked) until closed at the end of this function.
    let (heap, idx) = unsafe { open_pair(table, index) };
    check_index(heap, idx, index, keys.len());
    let scankeys: Vec<pg_sys::ScanKeyData> =
        keys.iter().enumerate().map(|(i, (column, key))| scan_key(heap, idx, index, i, column, key)).collect();
    let out = scan_latest(heap, idx, scankeys, read);
    // SAFETY: the relations were opened above and are not used after this.
    // Locks are kept to the end of the transaction, as the executor does.
    unsafe {
        pg_sys::index_close(idx, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
    out
}

/// The index must be the unique, valid, complete index on `n_keys` columns
/// of `heap` that the caller expects, or the schema is broken.
fn check_index(heap: pg_sys::Relation, idx: pg_sys::Relation, index: &CStr, n_keys: usize) {
    // SAFETY: `idx` is an open index relation, so rd_index and rd_indextuple
    // are its valid pg_index row; `heap` is an open relation.
    let usable = unsafe {
        let form = (*idx).rd_index;
        (*form).indisunique
            && (*form).indisvalid
            && (*form).indisready
            && (*form).indislive
            && (*form).indrelid == (*heap).rd_id
            && (*form).indnkeyatts as usize == n_keys
            && pg_sys::heap_attisnull((*idx).rd_indextuple, pg_sys::Anum_pg_index_indpred as i32, std::ptr::null_mut())
    };
    if !usable {
        broken(&format!("{} is not the expected unique index", index.to_string_lossy()));
    }
}

/// The scan key for the `i`-th index column, which must be `column`.
fn scan_key(
    heap: pg_sys::Relation,
    idx: pg_sys::Relation,
    index: &CStr,
    i: usize,
    column: &CStr,
    key: &Key,
) -> pg_sys::ScanKeyData {
    // SAFETY: `heap` is open; attnum only reads its tuple descriptor.
    let want = unsafe { attnum(heap, column, key.type_oid()) };
    // SAFETY: `idx` is an open index with at least i + 1 key columns (checked).
    let (have, collation) =
        unsafe { ((*(*idx).rd_index).indkey.values.as_slice(i + 1)[i], *(*idx).rd_indcollation.add(i)) };
    if have != want {
        broken(&format!("{} is not on the expected columns", index.to_string_lossy()));
    }
    // SAFETY: ScanKeyData is a plain C struct, valid when zeroed, and fully
    // initialized by ScanKeyEntryInitialize with a built-in equality function.
    unsafe {
        let mut sk = std::mem::zeroed::<pg_sys::ScanKeyData>();
        pg_sys::ScanKeyEntryInitialize(
            &mut sk,
            0,
            (i + 1) as pg_sys::AttrNumber,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::InvalidOid,
            collation,
            key.eq_proc().into(),
            key.datum(),
        );
        sk
    }
}

/// Run the index scan with the latest snapshot and pass the first match to `read`.
fn scan_latest<R>(
    heap: pg_sys::Relation,
    idx: pg_sys::Relation,
    mut scankeys: Vec<pg_sys::ScanKeyData>,
    read: impl FnOnce(&Row) -> R,
) -> Option<R> {
    // Detoasting values needs an active snapshot; the scan itself uses
    // the latest one, so what it finds is what is committed now (plus
    // this transaction's own changes), whatever the isolation level and
    // whatever snapshot the caller imported (SET TRANSACTION SNAPSHOT):
    // a revoked key must not come back through an old snapshot.
    // SAFETY: snapshot bookkeeping, balanced below.
    let (pushed, snapshot) = unsafe {
        let pushed = !pg_sys::ActiveSnapshotSet();
        if pushed {
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        }
        // In parallel mode no new snapshot may be taken: use the query's.
        // (The context itself was brought up to date when the query started.)
        let latest = if pg_sys::IsInParallelMode() { pg_sys::GetActiveSnapshot() } else { pg_sys::GetLatestSnapshot() };
        (pushed, pg_sys::RegisterSnapshot(latest))
    };
    // No statistics for these scans: the caller could read the counters
    // (pg_stat_get_xact_tuples_returned) before and after a failed
    // authenticate() and learn whether the key exists.
    // SAFETY: both relations are open; NoStats restores them on drop.
    let no_stats = unsafe { NoStats::new([heap, idx]) };
    let n = scankeys.len() as i32;
    // SAFETY: an index scan of open relations with a registered snapshot and
    // initialized scan keys; the slot is made for `heap` and dropped below.
    let (scan, slot, found) = unsafe {
        let scan = pg_sys::index_beginscan(heap, idx, snapshot, n, 0);
        pg_sys::index_rescan(scan, scankeys.as_mut_ptr(), n, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        let found = pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot);
        (scan, slot, found)
    };
    let out = found.then(|| read(&Row { heap, slot }));
    // SAFETY: releases what was acquired above, in reverse order.
    unsafe {
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
    }
    drop(no_stats);
    // SAFETY: the snapshot registered and (maybe) pushed above.
    unsafe {
        pg_sys::UnregisterSnapshot(snapshot);
        if pushed {
            pg_sys::PopActiveSnapshot();
        }
    }
    out
}

/// The OID of table `tenant_guard.<name>`, if it exists.
pub fn table_oid(name: &CStr) -> Option<Oid> {
    // SAFETY: catalog lookups by NUL-terminated names.
    let oid = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"tenant_guard".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return None;
        }
        pg_sys::get_relname_relid(name.as_ptr(), nsp)
    };
    (oid != pg_sys::InvalidOid).then_some(oid)
}
