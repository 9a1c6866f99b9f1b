//! Citus: isolation that holds on every node of a cluster sharded by tenant.
//!
//! - **The context reaches the workers of the distributed transaction.**
//!   When a context is set (or cleared) inside a transaction block on a node
//!   with Citus, it is also signed into a *carried* token
//!   (core/src/carried_context.rs) and set with `SET LOCAL
//!   tenant_guard.carried_context`, which Citus replays on every worker
//!   connection of the distributed transaction. A worker accepts the token
//!   only in a session of that distributed transaction, and claims it for
//!   the first such session to use it; a copy presented later is refused
//!   (and the worker's activity text no longer shows it).
//!   Each worker connection of such a transaction is the only one to its node
//!   (`citus.max_adaptive_executor_pool_size = 1`), so one claim per node is
//!   all a transaction needs.
//! - **Queries stay on the tenant's shard.** Citus prunes shards by the
//!   distribution column's value in the query, and row-level security
//!   quals are not in the query; so before Citus plans, each protect()
//!   policy qual on a Citus table is evaluated and added to the query as
//!   `org_id = '<the org>'` (the policies still apply on every shard).
//!   A plan that holds such a value is dropped from the plan cache when the
//!   context changes, a savepoint rolls back or the transaction ends.
//! - **A distributed transaction belongs to one session per node.** Citus
//!   lets any session of a role join another's distributed transaction by
//!   naming its id (`assign_distributed_transaction_id()`), and so read the
//!   intermediate results it left behind, which hold its org's rows. So
//!   each node records which session a context-bearing distributed
//!   transaction belongs to (the one that set the context, or the one that
//!   claimed its carried context), and Citus's readers of intermediate
//!   results refuse (42501) any other session in that transaction. And only
//!   tenant_guard may set a carried context on the node that made it.

use crate::carried_context::{self, Carried, Claimant, Slot, Transaction, Verdict};
use crate::context_token::Claims;
use crate::kdf::Purpose;
use crate::keyring;
use crate::pg::citus;
use crate::pg::errors::raise;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{PgLwLock, PgSqlErrorCode, Uuid};
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void, CStr};

// _is_citus_table() for the SQL of protect(), the guard and security_audit() (citus.sql).
pgrx::extension_sql_file!("citus.sql", name = "citus", requires = ["schema", _is_citus_table]);

/// Internal: whether `tbl` is a Citus table here (false without Citus).
#[pg_extern(stable, parallel_safe)]
fn _is_citus_table(tbl: pg_sys::Oid) -> bool {
    citus::is_citus_table(tbl)
}

// ---------------------------------------------------------------- the claims table

const CLAIMS: usize = 65_536;

/// The lock over the claims table (the table itself is a zeroed Region).
#[derive(Copy, Clone, Default)]
#[repr(C)]
pub struct ClaimsLock {
    claimed: u64,
    refused: u64,
}
// SAFETY: plain integers.
unsafe impl PGRXSharedMemory for ClaimsLock {}

// SAFETY: a unique name, initialized once by init() in the postmaster.
static LOCK: PgLwLock<ClaimsLock> = unsafe { PgLwLock::new(c"tenant_guard_carried_claims") };
static TABLE: crate::pg::shmem::Region =
    crate::pg::shmem::Region::new(c"tenant_guard_carried_claims_table", std::mem::size_of::<[Slot; CLAIMS]>());
/// For the one registration of shared-memory regions (request_log::init).
pub static CLAIMS_TABLE: &crate::pg::shmem::Region = &TABLE;

fn current_transaction() -> Transaction {
    citus::distributed_transaction()
        .map(|(initiator, number, stamp)| Transaction { initiator, number, stamp })
        .unwrap_or_default()
}

fn judge(c: &Carried, by: Claimant) -> Verdict {
    let tx = current_transaction();
    let mut g = LOCK.exclusive();
    // SAFETY: TABLE holds CLAIMS slots (valid when zeroed), attached at
    // startup; LOCK, held exclusively here, guards it.
    let slots = unsafe { std::slice::from_raw_parts_mut(TABLE.ptr().cast::<Slot>(), CLAIMS) };
    let now = crate::pg::clock::now_us();
    let mut v = carried_context::claim(slots, c, citus::system_identifier(), by, tx, now);
    if v == Verdict::Accepted {
        // The transaction is this session's on this node from now on.
        v = carried_context::record_owner(slots, tx, by, now + OWNED_US, now);
        if v == Verdict::Accepted {
            OWNED.with(|o| o.set(Some((tx, by))));
        }
    }
    match v {
        Verdict::Accepted => g.claimed += 1,
        _ => g.refused += 1,
    }
    v
}

/// How long a node records a distributed transaction's session at most
/// (the record goes when the transaction ends; this bounds what a crashed
/// backend leaves).
const OWNED_US: i64 = 3_600_000_000;

thread_local! {
    /// The distributed transaction this session owns on this node, if any.
    static OWNED: Cell<Option<(Transaction, Claimant)>> = const { Cell::new(None) };
    /// tenant_guard is setting the carried context itself (see check_carried).
    static CARRYING: Cell<bool> = const { Cell::new(false) };
}

/// Record that this session's distributed transaction `tx` belongs to it
/// on this node (the node where it set its request context).
fn own(tx: Transaction) {
    let b = crate::context::current_binding();
    let by = Claimant { pid: b.pid, lxid: b.lxid };
    let now = crate::pg::clock::now_us();
    let verdict = {
        let _g = LOCK.exclusive();
        // SAFETY: as in judge(): the table, under its lock.
        let slots = unsafe { std::slice::from_raw_parts_mut(TABLE.ptr().cast::<Slot>(), CLAIMS) };
        carried_context::record_owner(slots, tx, by, now + OWNED_US, now)
    };
    match verdict {
        Verdict::Accepted => OWNED.with(|o| o.set(Some((tx, by)))),
        // Fail closed: a context carried for a transaction this node cannot
        // record as this session's could be joined by another session.
        Verdict::Full => raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
            "this node's table of distributed transactions is full: the request context cannot be carried now",
            None,
            Some("Retry; records last at most as long as a carried context (10 s)."),
        ),
        Verdict::ClaimedElsewhere => raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "this distributed transaction belongs to another session on this node",
            None,
            None,
        ),
        // No distributed transaction id (Citus loaded, its extension not
        // created in this database): nothing to record, and nothing a
        // worker would accept.
        _ => {}
    }
}

/// When the transaction ends: its record goes, and so do plans that hold
/// an org evaluated from its context.
pub fn transaction_ended() {
    if let Some((tx, by)) = OWNED.with(|o| o.take()) {
        // Kept until the last token carried for it expires: a session that
        // names the ended transaction's id must not find it free while a
        // copy of that token could still be claimed on a worker.
        let now = crate::pg::clock::now_us();
        let until = SENT
            .with(Cell::get)
            .filter(|(lxid, _)| *lxid == by.lxid)
            .map_or(now, |(_, at)| at + carried_context::LIFETIME_US);
        let _g = LOCK.exclusive();
        // SAFETY: as in judge().
        let slots = unsafe { std::slice::from_raw_parts_mut(TABLE.ptr().cast::<Slot>(), CLAIMS) };
        carried_context::release_owner(slots, tx, by, until);
    }
    forget_injected_plans();
}

/// Whether this session is in a distributed transaction that belongs on
/// this node to another session (it named that transaction's id itself).
fn joined_elsewhere() -> bool {
    let tx = current_transaction();
    if tx.number == 0 {
        return false;
    }
    let _g = LOCK.share();
    // SAFETY: as in judge(), read under the shared lock.
    let slots = unsafe { std::slice::from_raw_parts(TABLE.ptr().cast::<Slot>(), CLAIMS) };
    // A parallel worker is its leader's: the leader's pid.
    carried_context::owned_elsewhere(slots, tx, crate::context::current_binding().pid, crate::pg::clock::now_us())
}

// ---------------------------------------------------------------- on a worker

/// The carried context of this session: set and not used yet (it is judged
/// at its first use, once Citus has given the session its distributed
/// transaction id), accepted (its claims, bound to the transaction that
/// claimed it) or refused (why).
enum Held {
    Pending(Carried, crate::context_token::Binding),
    /// In a parallel worker: the leader's value, as restored with its
    /// settings (read at first use, once the keys are restored too).
    Inherited(String),
    Accepted(Claims),
    Refused(Verdict, crate::context_token::Binding),
}

/// Whether this process is a parallel worker (its settings are restored
/// from its leader's, which were checked there).
fn parallel_worker() -> bool {
    // SAFETY: plain reads of PostgreSQL globals, set before a parallel
    // worker restores its leader's settings.
    unsafe { pg_sys::InitializingParallelWorker || pg_sys::ParallelWorkerNumber >= 0 }
}

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
    /// The transaction (local id) whose distributed id this session took
    /// from a query string shaped as Citus's first command of a transaction
    /// on a worker (`BEGIN ...; SET ...; SELECT
    /// assign_distributed_transaction_id(...)`, nothing else). Only such a
    /// transaction takes a carried context: SQL that reached a worker inside
    /// another command Citus wrote (a literal or a name Citus failed to
    /// quote) cannot claim one, even if it names another transaction's id.
    static BEGUN_BY_CITUS: Cell<Option<u32>> = const { Cell::new(None) };
}

/// `tenant_guard.carried_context`'s check hook: empty, or a carried token
/// this cluster signed (the value is never quoted back: PostgreSQL's own
/// message would).
#[pg_guard]
pub unsafe extern "C-unwind" fn check_carried(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL hands a valid (possibly NULL) string pointer.
    let value = unsafe { (*newval).as_ref().map(|p| CStr::from_ptr(p).to_bytes()) }.unwrap_or(b"");
    if value.is_empty() || parallel_worker() {
        return true;
    }
    use pg_sys::GucSource::*;
    let stored = matches!(source, PGC_S_TEST | PGC_S_GLOBAL | PGC_S_DATABASE | PGC_S_USER | PGC_S_DATABASE_USER);
    // A token this node made is set here by tenant_guard only (carry());
    // from anyone else it would be sent on to the workers as theirs.
    let ok = !stored
        && std::str::from_utf8(value).ok().is_some_and(|t| {
            keyring::try_current().is_some_and(|k| {
                carried_context::decode(t, k.subkey(Purpose::Carried)).is_ok_and(|c| {
                    if c.origin == citus::system_identifier() {
                        CARRYING.with(Cell::get)
                    } else {
                        // Elsewhere, only from a query of its own, as Citus
                        // sets it: not set_config(), a function's SET clause
                        // or startup options, which SQL that reached the
                        // node inside another command could use.
                        set_by_a_query_of_its_own()
                    }
                })
            })
        });
    if !ok {
        // SAFETY: GUC check-hook error reporting, as PostgreSQL documents it.
        unsafe {
            pg_sys::GUC_check_errcode(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE as i32);
            pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(
                c"tenant_guard.carried_context takes only a context carried by tenant_guard itself".as_ptr(),
            );
            if citus_connection() {
                // Citus opened a connection to the node that made the context
                // (after an EXPLAIN, or for a data-modifying WITH with a
                // reference table), where it cannot be taken.
                pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(
                    c"Citus opened a connection to this node itself in a transaction with a request context, which it cannot carry there: run EXPLAIN in a transaction of its own (see tenant_guard's docs/citus.md, Limits).".as_ptr(),
                );
            }
        }
    }
    ok
}

/// Whether the carried context is being set by a query string that is a
/// SET alone, or Citus's first command of a transaction (`BEGIN; SET ...;
/// SELECT assign_distributed_transaction_id(...)`), or in a parallel worker
/// restoring its leader's settings.
fn set_by_a_query_of_its_own() -> bool {
    // SAFETY: plain reads of PostgreSQL globals.
    let (parallel, query) = unsafe { (pg_sys::ParallelWorkerNumber >= 0, pg_sys::debug_query_string) };
    if parallel {
        return true;
    }
    if query.is_null() {
        return false;
    }
    // SAFETY: the query string being run, NUL-terminated, parsed already.
    unsafe {
        citus_shaped(query, false)
            || matches!(statements(query)[..], [n] if (*n).type_ == pg_sys::NodeTag::T_VariableSetStmt)
    }
}

/// Its assign hook: remember a carried token for this session's
/// transaction (or forget it), and take it out of what pg_stat_activity
/// shows. Never raises; the token is judged at its first use.
#[pg_guard]
pub unsafe extern "C-unwind" fn assign_carried(newval: *const c_char, _extra: *mut c_void) {
    // SAFETY: as above.
    let value = unsafe { newval.as_ref().map(|p| CStr::from_ptr(p).to_bytes()) }.unwrap_or(b"");
    let c = (!value.is_empty())
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
        .and_then(|t| keyring::try_current().and_then(|k| carried_context::decode(t, k.subkey(Purpose::Carried)).ok()));
    if parallel_worker() {
        let held = (!value.is_empty()).then(|| Held::Inherited(String::from_utf8_lossy(value).into_owned()));
        HELD.with(|h| *h.borrow_mut() = held);
        return;
    }
    let held = match c {
        // The node that made it keeps its own request context.
        Some(c) if c.origin != citus::system_identifier() => {
            citus::report_activity(c"SET LOCAL tenant_guard.carried_context = <carried request context>");
            Some(Held::Pending(c, crate::context::current_binding()))
        }
        _ => None,
    };
    HELD.with(|h| *h.borrow_mut() = held);
}

/// Judge a carried context this session holds and has not used yet: in
/// a parallel worker, the leader's claim of it; otherwise a claim of it
/// now, in a transaction Citus began. Never raises.
fn settle(binding: crate::context_token::Binding) {
    let by = Claimant { pid: binding.pid, lxid: binding.lxid };
    let inherited = HELD.with(|h| match &*h.borrow() {
        Some(Held::Inherited(t)) => Some(t.clone()),
        _ => None,
    });
    let (c, verdict) = if let Some(t) = inherited {
        let Some(c) = keyring::try_current().and_then(|k| carried_context::decode(&t, k.subkey(Purpose::Carried)).ok())
        else {
            HELD.with(|h| *h.borrow_mut() = Some(Held::Refused(Verdict::OtherTransaction, binding)));
            return;
        };
        let claimed = {
            let _g = LOCK.share();
            // SAFETY: as in judge(), read under the shared lock.
            let slots = unsafe { std::slice::from_raw_parts(TABLE.ptr().cast::<Slot>(), CLAIMS) };
            carried_context::claimed_by(slots, &c, by, crate::pg::clock::now_us())
        };
        (c, if claimed { Verdict::Accepted } else { Verdict::NotClaimedByLeader })
    } else {
        let pending = HELD.with(|h| match &*h.borrow() {
            Some(Held::Pending(c, b)) if *b == binding => Some(c.clone()),
            _ => None,
        });
        let Some(c) = pending else { return };
        let begun_by_citus = BEGUN_BY_CITUS.with(Cell::get) == Some(binding.lxid);
        let verdict = if begun_by_citus { judge(&c, by) } else { Verdict::NotBegunByCitus };
        (c, verdict)
    };
    let held = match verdict {
        Verdict::Accepted => Held::Accepted(Claims {
            org_id: c.org_id,
            user_id: c.user_id,
            role: c.role,
            api_key_id: c.api_key_id,
            scopes: c.scopes,
            binding,
        }),
        v => Held::Refused(v, binding),
    };
    HELD.with(|h| *h.borrow_mut() = Some(held));
}

/// Before a statement runs here (not in a parallel worker): a carried
/// context held and not used yet is judged now, once the transaction has
/// its distributed id, so that the claim exists before any parallel worker
/// of the statement looks for its leader's.
pub fn settle_before_statement() {
    let pending = HELD.with(|h| matches!(&*h.borrow(), Some(Held::Pending(..))));
    if pending && citus::loaded() && !parallel_worker() && current_transaction().number != 0 {
        settle(crate::context::current_binding());
    }
}

/// The carried context's claims, when this session holds one for its
/// current transaction (no request context of its own having been set).
/// Its first use judges it: in the distributed transaction it was made for,
/// first on this node, not expired. Raises 42501 when it was refused.
pub fn with_carried<R>(f: impl FnOnce(&Claims) -> R) -> Option<R> {
    let binding = crate::context::current_binding();
    settle(binding);
    HELD.with(|h| match &*h.borrow() {
        Some(Held::Accepted(c)) if c.binding == binding => Some(f(c)),
        Some(Held::Refused(v, b)) if *b == binding => raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "the request context carried to this node was refused",
            Some(match v {
                Verdict::ClaimedElsewhere => {
                    "Another session on this node used it first: a carried context is used once per node."
                }
                Verdict::OtherTransaction => "This session is not in the distributed transaction it was made for.",
                Verdict::Expired => "It expired before it was used.",
                Verdict::NotBegunByCitus => {
                    "This session's distributed transaction was not begun by Citus's own first command here."
                }
                Verdict::NotClaimedByLeader => "This parallel worker's leader holds no claim of it.",
                _ => "This node's table of carried contexts is full.",
            }),
            Some("A carried context is valid only in the distributed transaction it was made for."),
        ),
        _ => None,
    })
}

// ---------------------------------------------------------------- on the coordinator

thread_local! {
    /// (local transaction, when) the last carried token was sent in.
    static SENT: Cell<Option<(u32, i64)>> = const { Cell::new(None) };
}

/// After the request context was set (or cleared, `None`): carry it to the
/// workers of this distributed transaction. Only with Citus loaded, and in a
/// transaction block (Citus replays SET LOCAL there; outside one the context
/// ends with the statement anyway).
pub fn carry(claims: Option<&Claims>) {
    if !citus::loaded() || !citus::in_transaction_block() {
        return;
    }
    let token = match claims {
        None => String::new(),
        Some(c) => {
            let mut nonce = [0u8; 16];
            getrandom::getrandom(&mut nonce).unwrap_or_else(|_| {
                raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "the OS random generator failed", None, None)
            });
            // The distributed transaction id, now (Citus would assign it at the
            // first remote command, and then reuses it): the token is for it.
            citus::use_coordinated_transaction();
            let (initiator, number, stamp) = citus::distributed_transaction().unwrap_or_default();
            if !citus::originated_here() {
                // The session named its distributed transaction id itself
                // (or is a worker's part of another node's): a context set
                // there is not carried, and the transaction is not made
                // its own, or a session could take the number of a
                // transaction yet to start and refuse its owner.
                return carry_nothing();
            }
            own(Transaction { initiator, number, stamp });
            let carried = Carried {
                transaction: Transaction { initiator, number, stamp },
                org_id: c.org_id,
                user_id: c.user_id,
                role: c.role.clone(),
                api_key_id: c.api_key_id,
                scopes: c.scopes.clone(),
                nonce,
                expires_us: crate::pg::clock::now_us() + carried_context::LIFETIME_US,
                origin: citus::system_identifier(),
            };
            carried_context::encode(&carried, keyring::current().subkey(Purpose::Carried))
        }
    };
    send(&token);
    SENT.with(|s| s.set(claims.map(|_| (crate::context::current_binding().lxid, crate::pg::clock::now_us()))));
}

/// Carry no context: the workers of this transaction get none.
fn carry_nothing() {
    send("");
    SENT.with(|s| s.set(None));
}

/// Set the carried context (a token, or empty for none) with SET LOCAL,
/// which Citus replays on every worker connection of the transaction.
fn send(token: &str) {
    let set = crate::pg::settings::set_as_superuser;
    set(c"citus.propagate_set_commands", c"local", true);
    // One connection per worker node: the token is claimed once per node.
    set(c"citus.max_adaptive_executor_pool_size", c"1", true);
    // base64url and dots only: nothing to quote.
    struct Carrying;
    impl Drop for Carrying {
        fn drop(&mut self) {
            CARRYING.with(|c| c.set(false));
        }
    }
    CARRYING.with(|c| c.set(true));
    let carrying = Carrying;
    let r = Spi::run(&format!("SET LOCAL tenant_guard.carried_context TO '{token}'"));
    drop(carrying);
    r.unwrap_or_else(|e| {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("carrying the request context failed: {e}"), None, None)
    });
}

/// Before each statement: a carried token past half its life is replaced
/// (a worker joining the transaction later must still be able to claim one).
pub fn refresh_carried(claims: impl FnOnce() -> Option<Claims>) {
    let Some((lxid, at)) = SENT.with(Cell::get) else { return };
    if lxid != crate::context::current_binding().lxid {
        SENT.with(|s| s.set(None));
        return;
    }
    if crate::pg::clock::now_us() - at > carried_context::LIFETIME_US / 2 {
        if let Some(c) = claims() {
            carry(Some(&c));
        }
    }
}

// ---------------------------------------------------------------- keeping queries on the tenant's shard

thread_local! {
    /// A plan of this backend holds an org evaluated from the context.
    static INJECTED: Cell<bool> = const { Cell::new(false) };
}

/// When the context changes or the transaction ends: plans that hold an org
/// evaluated from the old context must not be used again.
pub fn forget_injected_plans() {
    if INJECTED.with(|i| i.replace(false)) {
        // SAFETY: marks this backend's cached plans invalid; they are
        // re-planned at their next use (a plan in use keeps running).
        unsafe { pg_sys::ResetPlanCache() };
    }
}

/// `=(uuid, uuid)` (pg_operator.dat: oid 2972).
const UUID_EQ_OP: u32 = 2972;

static PREV_PLANNER: std::sync::OnceLock<pg_sys::planner_hook_type> = std::sync::OnceLock::new();

static PREV_NEEDS_FMGR_HOOK: std::sync::OnceLock<pg_sys::needs_fmgr_hook_type> = std::sync::OnceLock::new();
static PREV_FMGR_HOOK: std::sync::OnceLock<pg_sys::fmgr_hook_type> = std::sync::OnceLock::new();

/// Citus's functions that read a distributed transaction's intermediate
/// results (named in pg_catalog).
const RESULT_READERS: [&CStr; 3] =
    [c"read_intermediate_result", c"read_intermediate_results", c"fetch_intermediate_results"];

/// Citus's functions tenant_guard looks at before they run.
#[derive(Copy, Clone, PartialEq)]
enum Watched {
    Not,
    /// A reader of intermediate results.
    Reader,
    /// `assign_distributed_transaction_id()`.
    Assign,
    /// `broadcast_intermediate_result()`, `create_intermediate_result()`:
    /// Citus writes the result id into a command for the workers unescaped.
    Writer,
}

thread_local! {
    /// Functions judged by `needs_fmgr_hook` in this backend.
    static WATCHED: RefCell<std::collections::HashMap<u32, Watched>> = RefCell::new(std::collections::HashMap::new());
}

/// Which of Citus's watched functions `f` is, if any.
fn watched(f: pg_sys::Oid) -> Watched {
    // Built-in functions (and anything made by initdb) are not Citus's.
    if f.to_u32() < pg_sys::FirstNormalObjectId {
        return Watched::Not;
    }
    if let Some(known) = WATCHED.with(|r| r.borrow().get(&f.to_u32()).copied()) {
        return known;
    }
    // SAFETY: catalog lookups of a function by OID (fmgr_info, our caller,
    // has just looked it up too); NULL for a function that is gone.
    let kind = unsafe {
        let name = pg_sys::get_func_name(f);
        if name.is_null() || pg_sys::get_func_namespace(f) != pg_sys::PG_CATALOG_NAMESPACE.into() {
            Watched::Not
        } else if RESULT_READERS.iter().any(|r| CStr::from_ptr(name) == *r) {
            Watched::Reader
        } else if CStr::from_ptr(name) == c"assign_distributed_transaction_id" {
            Watched::Assign
        } else if [c"broadcast_intermediate_result", c"create_intermediate_result"].contains(&CStr::from_ptr(name)) {
            Watched::Writer
        } else {
            Watched::Not
        }
    };
    WATCHED.with(|r| r.borrow_mut().insert(f.to_u32(), kind));
    kind
}

#[pg_guard]
unsafe extern "C-unwind" fn needs_fmgr(f: pg_sys::Oid) -> bool {
    // SAFETY: the previous hook, called as PostgreSQL would.
    let prev = PREV_NEEDS_FMGR_HOOK.get().copied().flatten().is_some_and(|h| unsafe { h(f) });
    prev || (citus::loaded() && watched(f) != Watched::Not)
}

/// Before a reader of intermediate results runs: not in a distributed
/// transaction that belongs on this node to another session. Before
/// `assign_distributed_transaction_id()`: not in a transaction that has an
/// id already (Citus raises that without a SQLSTATE, XX000; signing in
/// gives the transaction its id).
#[pg_guard]
unsafe extern "C-unwind" fn fmgr(
    event: pg_sys::FmgrHookEventType::Type,
    flinfo: *mut pg_sys::FmgrInfo,
    arg: *mut pg_sys::Datum,
) {
    if let Some(prev) = PREV_FMGR_HOOK.get().copied().flatten() {
        // SAFETY: the previous hook, with PostgreSQL's own arguments.
        unsafe { prev(event, flinfo, arg) };
    }
    if event != pg_sys::FmgrHookEventType::FHET_START || !citus::loaded() {
        return;
    }
    // SAFETY: PostgreSQL passes the FmgrInfo of the function being called.
    let f = unsafe { (*flinfo).fn_oid };
    match watched(f) {
        Watched::Reader => refuse_if_joined(),
        Watched::Assign if current_transaction().number != 0 => raise(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            "this transaction already has a distributed transaction id",
            Some("Signing in, or Citus's first remote command, gives a transaction its id."),
            None,
        ),
        Watched::Assign => {
            // SAFETY: a plain global read: the query string being run
            // (NULL outside one).
            let query = unsafe { pg_sys::debug_query_string };
            // SAFETY: a NUL-terminated string PostgreSQL has parsed already.
            let by_citus = !query.is_null() && unsafe { citus_shaped(query, true) };
            BEGUN_BY_CITUS.with(|b| b.set(by_citus.then(|| crate::context::current_binding().lxid)));
        }
        // SAFETY: whether the current user is a superuser (a catalog lookup
        // PostgreSQL caches).
        Watched::Writer if !unsafe { pg_sys::superuser() } => raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "only a superuser may write Citus intermediate results by hand on a node with tenant_guard",
            Some("Citus writes the result id unescaped into the command it sends the workers, where the rest of it would run as SQL."),
            None,
        ),
        _ => {}
    }
}

thread_local! {
    /// Whether this session is a connection Citus opened (its
    /// application_name at the session's first statement), latched.
    static CITUS_CONNECTION: std::cell::OnceCell<bool> = const { std::cell::OnceCell::new() };
}

/// Whether this session is a connection Citus opened to this node: its
/// `application_name` started with Citus's prefix when it first ran a
/// statement (latched then; a session that names itself so only takes
/// stricter rules on itself).
pub fn citus_connection() -> bool {
    CITUS_CONNECTION.with(|c| {
        *c.get_or_init(|| {
            // SAFETY: a plain read of the GUC's current string (or NULL).
            let name = unsafe { pg_sys::application_name };
            // SAFETY: NULL or a NUL-terminated string owned by the GUC.
            !name.is_null() && unsafe { CStr::from_ptr(name) }.to_bytes().starts_with(b"citus_internal gpid=")
        })
    })
}

/// Refuse (0A000) a non-superuser's statement on a Citus node while
/// `standard_conforming_strings` is off. Citus writes the literals of the
/// queries it sends the workers as this node reads them, and a worker
/// reads them as its own setting says: with the two apart (a `SET LOCAL`
/// replayed on the workers and a session `SET` here, or a role's default),
/// a backslash in a value ends a literal on one side only, and the rest of
/// the value runs as SQL on the worker.
pub fn refuse_nonstandard_strings() {
    if citus::loaded() {
        // Latched at the session's first statement.
        citus_connection();
    }
    // SAFETY: plain reads of PostgreSQL globals (this session's setting,
    // and whether the current user is a superuser).
    if citus::loaded() && !unsafe { pg_sys::standard_conforming_strings } && !unsafe { pg_sys::superuser() } {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "standard_conforming_strings must be on on a Citus node",
            Some("Citus writes the literals of the queries it sends the workers as this node reads them; a node that reads them otherwise could run part of a value as SQL."),
            Some("SET standard_conforming_strings = on (and do not turn it off for the application's roles)."),
        );
    }
}

/// Refuse (42501) when this session is in a distributed transaction that
/// belongs on this node to another session: it can only have named that
/// transaction's id itself, and would read (with Citus's readers, or its
/// `COPY ... WITH (format result)`) or write the results that transaction
/// left here, which hold what its request context may read.
pub fn refuse_if_joined() {
    if citus::loaded() && joined_elsewhere() {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "this session joined a distributed transaction that belongs to another session",
            Some("Its intermediate results hold what that session's request context may read."),
            None,
        );
    }
}

static PREV_PROCESS_UTILITY: std::sync::OnceLock<pg_sys::ProcessUtility_hook_type> = std::sync::OnceLock::new();

/// Before Citus sees a utility statement: nothing but ending the
/// transaction in one that belongs to another session; and no SET LOCAL
/// (SET TRANSACTION, RESET, RESET ALL) in a query string that holds more
/// than it, ends inside a line comment or holds a backslash, since Citus
/// sends the whole query string of such a SET to every worker connection
/// of the transaction, where the rest would run as SQL of the caller's
/// choosing (a copied carried context, for one, on a worker its
/// transaction has not used).
#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    if citus::loaded() {
        // Latched at the session's first statement (Citus's BEGIN, on its connections).
        citus_connection();
        // SAFETY: PostgreSQL passes the statement being executed and its source text.
        unsafe {
            let node = (*pstmt).utilityStmt;
            if !node.is_null() && (*node).type_ != pg_sys::NodeTag::T_TransactionStmt {
                refuse_if_joined();
            }
            if !node.is_null()
                && !matches!(
                    (*node).type_,
                    pg_sys::NodeTag::T_TransactionStmt
                        | pg_sys::NodeTag::T_VariableSetStmt
                        | pg_sys::NodeTag::T_VariableShowStmt
                )
            {
                refuse_nonstandard_strings();
            }
            // A superuser's text is not checked: Citus's own maintenance
            // (as the extension's owner) joins commands such as `SET LOCAL
            // lock_timeout` or `RESET ROLE` with others in one string, and a
            // superuser may run anything on a worker anyway.
            if !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_CopyStmt && !pg_sys::superuser() {
                refuse_unsafe_copy_options(node.cast());
            }
            if !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_VacuumStmt && !pg_sys::superuser() {
                refuse_unsafe_vacuum_columns(node.cast());
            }
            if !node.is_null() && !pg_sys::superuser() {
                let set = match (*node).type_ {
                    pg_sys::NodeTag::T_AlterRoleSetStmt => (*node.cast::<pg_sys::AlterRoleSetStmt>()).setstmt,
                    pg_sys::NodeTag::T_AlterDatabaseSetStmt => (*node.cast::<pg_sys::AlterDatabaseSetStmt>()).setstmt,
                    _ => std::ptr::null_mut(),
                };
                if !set.is_null()
                    && !(*set).name.is_null()
                    && CStr::from_ptr((*set).name).to_bytes().eq_ignore_ascii_case(b"standard_conforming_strings")
                {
                    // A role's default reaches every node (Citus copies it),
                    // and with it off every statement of that role is refused
                    // there, the ALTER ROLE that would undo it included.
                    raise(
                        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                        "standard_conforming_strings cannot be given a role or database default on a Citus node",
                        Some(
                            "It must stay on; with it off, every statement of the role would be refused on every node.",
                        ),
                        Some("Ask a superuser."),
                    );
                }
            }
            if !node.is_null()
                && (*node).type_ == pg_sys::NodeTag::T_VariableSetStmt
                && context != pg_sys::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL
                && !CARRYING.with(Cell::get)
                && !pg_sys::superuser()
            {
                let name = (*node.cast::<pg_sys::VariableSetStmt>()).name;
                if !name.is_null()
                    && CStr::from_ptr(name).to_bytes().eq_ignore_ascii_case(b"tenant_guard.carried_context")
                {
                    // Citus sets it with a query of its own; a SET of it
                    // inside a function or EXECUTE is SQL that reached this
                    // node some other way, and Citus would send it on from here.
                    raise(
                        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                        "tenant_guard.carried_context is set only by a query of its own",
                        None,
                        None,
                    );
                }
            }
            if !node.is_null()
                && (*node).type_ == pg_sys::NodeTag::T_TransactionStmt
                && context == pg_sys::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL
                && !query_string.is_null()
                && citus_connection()
                && !pg_sys::superuser()
                && !alone_in(CStr::from_ptr(query_string).to_bytes(), (*pstmt).stmt_location, (*pstmt).stmt_len)
                && !citus_shaped(query_string, false)
            {
                // Citus sends its connections transaction control alone or
                // as its own first command; one in the middle of a longer
                // string is SQL that reached this node inside another
                // command (ending the transaction Citus began, to begin
                // another under an id of its choosing).
                raise(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    "a Citus connection may not end or begin a transaction in the middle of a query string",
                    None,
                    None,
                );
            }
            if !node.is_null()
                && (*node).type_ == pg_sys::NodeTag::T_VariableSetStmt
                && !query_string.is_null()
                && !pg_sys::superuser()
            {
                let set = node.cast::<pg_sys::VariableSetStmt>();
                // What Citus propagates (commands/variableset.c), whatever
                // the setting: SET LOCAL, RESET, RESET ALL, SET TRANSACTION.
                let propagated = (*set).is_local
                    || matches!(
                        (*set).kind,
                        pg_sys::VariableSetKind::VAR_SET_MULTI
                            | pg_sys::VariableSetKind::VAR_RESET
                            | pg_sys::VariableSetKind::VAR_RESET_ALL
                    );
                let text = CStr::from_ptr(query_string).to_bytes();
                if propagated && text.contains(&b'\\') {
                    // A worker may read the text otherwise than this node
                    // did: with another standard_conforming_strings, a
                    // literal here can end at a backslash there.
                    raise(
                        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                        "a SET LOCAL or RESET on a Citus node may not contain a backslash",
                        Some("Citus sends its text on to the workers, which may read a backslash in a literal otherwise (standard_conforming_strings)."),
                        Some("Write the value without backslashes: a dollar-quoted literal ($$...$$) takes them as they are."),
                    );
                }
                if propagated
                    && ((!alone_in(text, (*pstmt).stmt_location, (*pstmt).stmt_len)
                        && !citus_shaped(query_string, false))
                        || swallows_what_follows(text))
                {
                    raise(
                        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                        "SET LOCAL must be sent as a query of its own on a Citus node",
                        Some("Citus sends the whole query string of a SET LOCAL or RESET on to the workers, where the rest of it would run too; a trailing -- comment would swallow what Citus appends."),
                        Some("Send the SET LOCAL alone, then the other statements; end a -- comment with a newline."),
                    );
                }
            }
        }
    }
    match PREV_PROCESS_UTILITY.get().copied().flatten() {
        // SAFETY: the previous hook (Citus's), with PostgreSQL's own arguments.
        Some(prev) => unsafe { prev(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc) },
        // SAFETY: the standard function, with PostgreSQL's own arguments.
        None => unsafe {
            pg_sys::standard_ProcessUtility(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc)
        },
    }
}

/// Citus writes a COPY's option names, unquoted, into the COPY it sends
/// each shard (its values and names of tables and columns are quoted): a
/// quoted name such as `"format text); SELECT ..."` became SQL run on every
/// worker. So an option name must be one plain word (as PostgreSQL's own
/// options are), which reads back as itself (42601 otherwise).
///
/// # Safety
/// `copy` is the CopyStmt being executed.
unsafe fn refuse_unsafe_copy_options(copy: *mut pg_sys::CopyStmt) {
    // SAFETY: the statement's option list, DefElems as the parser made them.
    unsafe {
        for opt in pgrx::PgList::<pg_sys::DefElem>::from_pg((*copy).options).iter_ptr() {
            let name = (*opt).defname;
            let plain = !name.is_null() && plain_word(CStr::from_ptr(name).to_bytes());
            if !plain {
                raise(
                    PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
                    "a COPY option name on a Citus node must be one plain lowercase word",
                    Some("Citus writes COPY option names unquoted into the commands it sends the workers."),
                    Some("Use COPY's own options: format, header, delimiter, null, quote, escape, encoding, force_quote, force_not_null, force_null, freeze."),
                );
            }
        }
    }
}

/// Citus writes the column names of `ANALYZE`/`VACUUM (ANALYZE)` unquoted
/// into the command it sends each shard, and sends it even for a role
/// PostgreSQL skips as not the owner: `ANALYZE docs ("x); SELECT ...")`
/// ran SQL on every worker. So a column name there must be one plain word
/// (42601 otherwise).
///
/// # Safety
/// `vacuum` is the VacuumStmt being executed.
unsafe fn refuse_unsafe_vacuum_columns(vacuum: *mut pg_sys::VacuumStmt) {
    // SAFETY: the statement's relation list and their column name lists
    // (String nodes), as the parser made them.
    unsafe {
        for rel in pgrx::PgList::<pg_sys::VacuumRelation>::from_pg((*vacuum).rels).iter_ptr() {
            for col in pgrx::PgList::<pg_sys::String>::from_pg((*rel).va_cols).iter_ptr() {
                let name = (*col).sval;
                if name.is_null() || !plain_word(CStr::from_ptr(name).to_bytes()) {
                    raise(
                        PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
                        "a column name of ANALYZE or VACUUM on a Citus node must be one plain lowercase word",
                        Some("Citus writes these column names unquoted into the commands it sends the workers."),
                        Some("Analyze the whole table, or ask a superuser."),
                    );
                }
            }
        }
    }
}

/// `[a-z_][a-z0-9_]*`: a word the lexer reads back as one token, itself.
fn plain_word(name: &[u8]) -> bool {
    matches!(name.first(), Some(b'a'..=b'z' | b'_'))
        && name.iter().all(|&b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// Whether `query` has the shape of the command Citus sends a worker to
/// begin its part of a distributed transaction (remote_transaction.c):
/// `BEGIN ...;`, then SETs and `SAVEPOINT`s, then at most one
/// `SELECT assign_distributed_transaction_id(<constants>)`, last. The SETs
/// it replays there each passed the checks above on the node that sent
/// them; nothing else (a COMMIT and a second BEGIN, for one) may ride along.
/// With `assign_required`, the `assign_distributed_transaction_id()` must be
/// there.
unsafe fn citus_shaped(query: *const c_char, assign_required: bool) -> bool {
    /// A constant, or a cast of one.
    unsafe fn constant(n: *mut pg_sys::Node) -> bool {
        // SAFETY: a raw parse tree node.
        unsafe {
            !n.is_null()
                && match (*n).type_ {
                    pg_sys::NodeTag::T_A_Const => true,
                    pg_sys::NodeTag::T_TypeCast => constant((*n.cast::<pg_sys::TypeCast>()).arg),
                    _ => false,
                }
        }
    }
    /// The kind of a transaction statement, if `n` is one.
    unsafe fn transaction_kind(n: *mut pg_sys::Node) -> Option<pg_sys::TransactionStmtKind::Type> {
        // SAFETY: a raw parse tree node.
        unsafe {
            ((*n).type_ == pg_sys::NodeTag::T_TransactionStmt).then(|| (*n.cast::<pg_sys::TransactionStmt>()).kind)
        }
    }
    /// `SELECT assign_distributed_transaction_id(<constants>)`, nothing more.
    unsafe fn assigns(n: *mut pg_sys::Node) -> bool {
        // SAFETY: a raw parse tree node and its children.
        unsafe {
            if (*n).type_ != pg_sys::NodeTag::T_SelectStmt {
                return false;
            }
            let sel = n.cast::<pg_sys::SelectStmt>();
            let targets = pgrx::PgList::<pg_sys::ResTarget>::from_pg((*sel).targetList);
            let plain = (*sel).distinctClause.is_null()
                && (*sel).intoClause.is_null()
                && (*sel).fromClause.is_null()
                && (*sel).whereClause.is_null()
                && (*sel).groupClause.is_null()
                && (*sel).havingClause.is_null()
                && (*sel).windowClause.is_null()
                && (*sel).valuesLists.is_null()
                && (*sel).sortClause.is_null()
                && (*sel).limitOffset.is_null()
                && (*sel).limitCount.is_null()
                && (*sel).lockingClause.is_null()
                && (*sel).withClause.is_null()
                && (*sel).op == pg_sys::SetOperation::SETOP_NONE
                && targets.len() == 1;
            plain
                && targets.get_ptr(0).is_some_and(|t| {
                    let v = (*t).val;
                    if v.is_null() || (*v).type_ != pg_sys::NodeTag::T_FuncCall {
                        return false;
                    }
                    let f = v.cast::<pg_sys::FuncCall>();
                    let name = pgrx::PgList::<pg_sys::Node>::from_pg((*f).funcname);
                    let last = name.get_ptr(name.len().saturating_sub(1));
                    let named = last.is_some_and(|l| {
                        (*l).type_ == pg_sys::NodeTag::T_String
                            && CStr::from_ptr((*l.cast::<pg_sys::String>()).sval)
                                == c"assign_distributed_transaction_id"
                    });
                    named
                        && (*f).agg_order.is_null()
                        && (*f).agg_filter.is_null()
                        && (*f).over.is_null()
                        && pgrx::PgList::<pg_sys::Node>::from_pg((*f).args).iter_ptr().all(|a| constant(a))
                })
        }
    }
    // SAFETY: the nodes of a raw parse, read as the parser made them.
    unsafe {
        let stmts = statements(query);
        let Some((first, rest)) = stmts.split_first() else { return false };
        let begins = matches!(
            transaction_kind(*first),
            Some(pg_sys::TransactionStmtKind::TRANS_STMT_BEGIN | pg_sys::TransactionStmtKind::TRANS_STMT_START)
        );
        let (middle, assigned) = match rest.split_last() {
            Some((last, middle)) if assigns(*last) => (middle, true),
            _ => (rest, false),
        };
        begins
            && (assigned || !assign_required)
            && middle.iter().all(|&n| {
                (*n).type_ == pg_sys::NodeTag::T_VariableSetStmt
                    || transaction_kind(n) == Some(pg_sys::TransactionStmtKind::TRANS_STMT_SAVEPOINT)
            })
    }
}

/// The statements of a query string, raw-parsed (the one home of that parse).
///
/// # Safety
/// `query` is a NUL-terminated query string PostgreSQL has parsed already,
/// so parsing it again raises no new error.
unsafe fn statements(query: *const c_char) -> Vec<*mut pg_sys::Node> {
    // SAFETY: as the caller promises; the list and its RawStmts are the parser's.
    unsafe {
        pgrx::PgList::<pg_sys::RawStmt>::from_pg(pg_sys::raw_parser(query, pg_sys::RawParseMode::RAW_PARSE_DEFAULT))
            .iter_ptr()
            .map(|raw| (*raw).stmt)
            .collect()
    }
}

/// Whether `text` ends inside a line comment, which would swallow what
/// Citus appends to it (`;` and the next command): read as Citus makes it,
/// with a statement appended, it holds no more statements than before.
unsafe fn swallows_what_follows(text: &[u8]) -> bool {
    let count = |t: &[u8]| -> usize {
        let Ok(c) = std::ffi::CString::new(t) else { return 0 };
        // SAFETY: a NUL-terminated copy of a query string PostgreSQL has
        // parsed already (appending a statement to it adds no error).
        unsafe { statements(c.as_ptr()) }.len()
    };
    let mut appended = text.to_vec();
    appended.extend_from_slice(b";SELECT 1");
    count(&appended) <= count(text)
}

/// Whether the statement at `location`, `len` bytes long (0: to the end),
/// is all of `text` but whitespace, semicolons and comments.
fn alone_in(text: &[u8], location: i32, len: i32) -> bool {
    let start = usize::try_from(location).unwrap_or(0).min(text.len());
    let end = if len <= 0 { text.len() } else { (start + len as usize).min(text.len()) };
    only_filler(&text[..start]) && only_filler(&text[end..])
}

/// Whitespace, semicolons and SQL comments only.
fn only_filler(mut t: &[u8]) -> bool {
    loop {
        match t {
            [] => return true,
            [c, rest @ ..] if c.is_ascii_whitespace() || *c == b';' => t = rest,
            // A line comment ends with its newline: without one, it would
            // swallow what Citus appends to the text (the rest of a
            // transaction's first command on a worker).
            [b'-', b'-', rest @ ..] => match rest.iter().position(|&c| c == b'\n') {
                Some(nl) => t = &rest[nl + 1..],
                None => return false,
            },
            [b'/', b'*', rest @ ..] => {
                // Nested, as PostgreSQL's lexer reads them.
                let (mut depth, mut i) = (1usize, 0usize);
                while depth > 0 {
                    match rest.get(i..i + 2) {
                        Some(b"*/") => {
                            depth -= 1;
                            i += 2;
                        }
                        Some(b"/*") => {
                            depth += 1;
                            i += 2;
                        }
                        Some(_) => i += 1,
                        None => return false,
                    }
                }
                t = &rest[i..];
            }
            _ => return false,
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    // ROLLBACK TO brings the context of the savepoint back: plans that hold
    // an org evaluated since then go.
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        forget_injected_plans();
    }
}

pub fn init() {
    pgrx::pg_shmem_init!(LOCK);
    // SAFETY: _PG_init runs once per process; the fmgr hooks are plain
    // global pointers, chained to whatever was there; the callback is static.
    unsafe {
        if PREV_NEEDS_FMGR_HOOK.set(pg_sys::needs_fmgr_hook).is_ok() && PREV_FMGR_HOOK.set(pg_sys::fmgr_hook).is_ok() {
            pg_sys::needs_fmgr_hook = Some(needs_fmgr);
            pg_sys::fmgr_hook = Some(fmgr);
        }
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
        if PREV_PROCESS_UTILITY.set(pg_sys::ProcessUtility_hook).is_ok() {
            pg_sys::ProcessUtility_hook = Some(process_utility);
        }
    }
    // SAFETY: _PG_init runs once per process before any query; the hook is a
    // plain global pointer, chained to whatever was there (Citus's planner,
    // when Citus is loaded first, as it must be).
    let prev = unsafe { pg_sys::planner_hook };
    if PREV_PLANNER.set(prev).is_ok() {
        // SAFETY: as above.
        unsafe { pg_sys::planner_hook = Some(planner) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const c_char,
    cursor_options: std::ffi::c_int,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    if citus::loaded() {
        // Org quals, but not into a query with a data-modifying WITH: Citus
        // fails on such a query (XX000) when a CTE's UPDATE or DELETE is
        // pruned to no shard, as an org that contradicts the query's own
        // filter, or none, would do.
        // SAFETY: `parse` is the query being planned, owned by the caller.
        let mut inject = !unsafe { (*parse).hasModifyingCTE };
        // SAFETY: as above.
        if !inject && carrying_now() && unsafe { reads_undistributed_citus_table(parse) } {
            // Citus runs such a query over a connection to this node
            // itself, which cannot take the request context (only
            // tenant_guard sets a context on the node that made it), and
            // fails it with XX000.
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "a data-modifying WITH with a reference table cannot run in a request context on Citus",
                Some("Citus runs such a query through a connection to the coordinator itself, where the request context cannot be carried."),
                Some("Run the modification as a statement of its own, then read the reference table in the next one."),
            );
        }
        // SAFETY: as above; `inject` outlives the walk.
        unsafe { walk(parse.cast(), (&mut inject as *mut bool).cast()) };
    }
    match PREV_PLANNER.get().copied().flatten() {
        // SAFETY: the previous hook (Citus's), called as PostgreSQL would.
        Some(prev) => unsafe { prev(parse, query_string, cursor_options, bound_params) },
        // SAFETY: the standard planner, with PostgreSQL's own arguments.
        None => unsafe { pg_sys::standard_planner(parse, query_string, cursor_options, bound_params) },
    }
}

/// Every Query of the tree (subqueries, CTEs, sublinks): refuse what Citus
/// would crash planning, and add the org quals when `*ctx` (a bool) says so.
#[pg_guard]
unsafe extern "C-unwind" fn walk(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: `node` is a valid node of the tree being planned; `ctx` is
    // the planner's bool (see planner()).
    unsafe {
        if (*node).type_ == pg_sys::NodeTag::T_Query {
            let q = node.cast::<pg_sys::Query>();
            refuse_what_citus_cannot_plan(q);
            if *ctx.cast::<bool>() {
                add_org_quals(q);
            }
            return pg_sys::query_tree_walker(q, Some(walk), ctx, 0);
        }
        pg_sys::expression_tree_walker(node, Some(walk), ctx)
    }
}

/// Whether this transaction carries a request context to the workers now.
fn carrying_now() -> bool {
    SENT.with(Cell::get).is_some_and(|(lxid, _)| lxid == crate::context::current_binding().lxid)
}

/// Whether a query reads, anywhere in its tree, a Citus table without a
/// distribution column (a reference, single-shard or Citus local table:
/// those that can have a placement on the coordinator).
unsafe fn reads_undistributed_citus_table(q: *mut pg_sys::Query) -> bool {
    #[pg_guard]
    unsafe extern "C-unwind" fn find(node: *mut pg_sys::Node, found: *mut c_void) -> bool {
        if node.is_null() {
            return false;
        }
        // SAFETY: nodes of the query's tree; `found` is the caller's bool.
        unsafe {
            if (*node).type_ == pg_sys::NodeTag::T_Query {
                let q = node.cast::<pg_sys::Query>();
                let rtable = pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
                if rtable.iter_ptr().any(|rte| {
                    (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION
                        && citus::is_citus_table((*rte).relid)
                        && !citus::has_distribution_key((*rte).relid)
                }) {
                    *found.cast::<bool>() = true;
                    return true;
                }
                return pg_sys::query_tree_walker(q, Some(find), found, 0);
            }
            pg_sys::expression_tree_walker(node, Some(find), found)
        }
    }
    let mut found = false;
    // SAFETY: a valid query; `found` outlives the walk.
    unsafe { find(q.cast(), (&mut found as *mut bool).cast()) };
    found
}

// ---------------------------------------------------------------- what Citus cannot plan

/// Citus 13.2 crashes the server (a segfault in the planner, every backend
/// restarting) when it wraps a table that has row-level security into a
/// subquery to plan it apart (its security quals keep pointing at the outer
/// query): a distributed table on the inner side of an outer join whose
/// other side has no distributed table, and a join of a Citus table with a
/// local one, when either has row-level security. Any role could do that
/// with one statement; refused here instead (0A000), before Citus plans.
/// The same query with the table in a subquery of its own plans fine.
unsafe fn refuse_what_citus_cannot_plan(q: *mut pg_sys::Query) {
    // SAFETY: a valid Query of the tree being planned.
    unsafe {
        let rtable = pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
        let (mut rls, mut citus_rel, mut local_rel) = (false, false, false);
        for rte in rtable.iter_ptr() {
            if (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION {
                continue;
            }
            rls |= !(*rte).securityQuals.is_null();
            if citus::is_citus_table((*rte).relid) {
                citus_rel = true;
            } else {
                local_rel = true;
            }
        }
        if !rls || !citus_rel {
            return;
        }
        if local_rel {
            refuse_unplannable(
                "a Citus table joined with a table that is not Citus's, where one of them has row-level security",
            );
        }
        if !(*q).jointree.is_null() {
            outer_join_sides(q, (*q).jointree.cast());
        }
    }
}

/// For a join tree node of `q`: (whether it is made of distributed tables
/// only, scanned directly, whether it scans one with row-level security
/// directly); refuses an outer join whose inner side has the latter and
/// whose other side is anything else: a reference or local table, a
/// function, `VALUES`, or a subquery (which Citus may turn into an
/// intermediate result, as with `LIMIT` or an aggregate), where Citus would
/// plan the inner side apart.
unsafe fn outer_join_sides(q: *mut pg_sys::Query, node: *mut pg_sys::Node) -> (bool, bool) {
    // SAFETY: nodes of `q`'s join tree; range table entries of `q`.
    unsafe {
        if node.is_null() {
            return (false, false);
        }
        match (*node).type_ {
            pg_sys::NodeTag::T_RangeTblRef => {
                let i = (*node.cast::<pg_sys::RangeTblRef>()).rtindex;
                let rtable = pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
                let Some(rte) = rtable.get_ptr((i - 1) as usize) else { return (false, false) };
                match (*rte).rtekind {
                    pg_sys::RTEKind::RTE_RELATION => {
                        let dist = citus::has_distribution_key((*rte).relid);
                        (dist, dist && !(*rte).securityQuals.is_null())
                    }
                    _ => (false, false),
                }
            }
            pg_sys::NodeTag::T_JoinExpr => {
                let j = node.cast::<pg_sys::JoinExpr>();
                let (l, r) = (outer_join_sides(q, (*j).larg), outer_join_sides(q, (*j).rarg));
                use pg_sys::JoinType::*;
                let bad = match (*j).jointype {
                    JOIN_LEFT => r.1 && !l.0,
                    JOIN_RIGHT => l.1 && !r.0,
                    JOIN_FULL => (r.1 && !l.0) || (l.1 && !r.0),
                    _ => false,
                };
                if bad {
                    refuse_unplannable("a distributed table with row-level security on the inner side of an outer join whose other side is not distributed tables alone");
                }
                (l.0 && r.0, l.1 || r.1)
            }
            pg_sys::NodeTag::T_FromExpr => {
                let f = node.cast::<pg_sys::FromExpr>();
                let sides: Vec<(bool, bool)> = pgrx::PgList::<pg_sys::Node>::from_pg((*f).fromlist)
                    .iter_ptr()
                    .map(|n| outer_join_sides(q, n))
                    .collect();
                (!sides.is_empty() && sides.iter().all(|s| s.0), sides.iter().any(|s| s.1))
            }
            _ => (false, false),
        }
    }
}

fn refuse_unplannable(what: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("Citus cannot plan this query: {what}"),
        Some("Citus 13.2 crashes the server planning such a query (see the limits in tenant_guard's docs/citus.md), so tenant_guard refuses it."),
        Some("Put the table with row-level security in a subquery of its own, e.g. LEFT JOIN (SELECT * FROM t) t ON ..., or make the join an inner join."),
    )
}

/// The org-column Var and the role of a protect() policy qual
/// `org_col = tenant_guard.current_org_id_if('<role>')` on range table entry `rti`.
unsafe fn policy_qual(qual: *mut pg_sys::Node, rti: i32) -> Option<(*mut pg_sys::Var, String)> {
    // SAFETY: `qual` is a node of a security qual list.
    unsafe {
        if qual.is_null() || (*qual).type_ != pg_sys::NodeTag::T_OpExpr {
            return None;
        }
        let op = qual.cast::<pg_sys::OpExpr>();
        if (*op).opno != pg_sys::Oid::from(UUID_EQ_OP) {
            return None;
        }
        let args = pgrx::PgList::<pg_sys::Node>::from_pg((*op).args);
        let (mut left, right) = (args.get_ptr(0)?, args.get_ptr(1)?);
        while !left.is_null() && (*left).type_ == pg_sys::NodeTag::T_RelabelType {
            left = (*left.cast::<pg_sys::RelabelType>()).arg.cast();
        }
        if left.is_null()
            || (*left).type_ != pg_sys::NodeTag::T_Var
            || right.is_null()
            || (*right).type_ != pg_sys::NodeTag::T_FuncExpr
        {
            return None;
        }
        let var = left.cast::<pg_sys::Var>();
        if (*var).varno != rti || (*var).varlevelsup != 0 {
            return None;
        }
        let f = right.cast::<pg_sys::FuncExpr>();
        let name = pg_sys::get_func_name((*f).funcid);
        if name.is_null() || CStr::from_ptr(name) != c"current_org_id_if" {
            return None;
        }
        let nsp = pg_sys::get_namespace_oid(c"tenant_guard".as_ptr(), true);
        if pg_sys::get_func_namespace((*f).funcid) != nsp {
            return None;
        }
        let fargs = pgrx::PgList::<pg_sys::Node>::from_pg((*f).args);
        let c = fargs.get_ptr(0)?;
        if (*c).type_ != pg_sys::NodeTag::T_Const || (*c.cast::<pg_sys::Const>()).constisnull {
            return None;
        }
        let role = String::from_datum((*c.cast::<pg_sys::Const>()).constvalue, false)?;
        Some((var, role))
    }
}

/// The same for a security qual that ORs such quals, all on the same column
/// with the same role: what the permissive policies of a table protect()ed
/// after create_distributed_table() add up to (`tenant_guard_select` and
/// `tenant_guard_allow_select` are both permissive there).
unsafe fn policy_quals(qual: *mut pg_sys::Node, rti: i32) -> Option<(*mut pg_sys::Var, String)> {
    // SAFETY: `qual` is a node of a security qual list.
    unsafe {
        if qual.is_null() || (*qual).type_ != pg_sys::NodeTag::T_BoolExpr {
            return policy_qual(qual, rti);
        }
        let b = qual.cast::<pg_sys::BoolExpr>();
        if (*b).boolop != pg_sys::BoolExprType::OR_EXPR {
            return None;
        }
        let mut first: Option<(*mut pg_sys::Var, String)> = None;
        for arg in pgrx::PgList::<pg_sys::Node>::from_pg((*b).args).iter_ptr() {
            let (var, role) = policy_qual(arg, rti)?;
            match &first {
                None => first = Some((var, role)),
                Some((v, r)) if (**v).varattno == (*var).varattno && *r == role => {}
                Some(_) => return None,
            }
        }
        first
    }
}

/// Whether range table entry `rti` is scanned at the top of `q`'s join
/// tree, or under inner joins only (a WHERE qual on it then means the same
/// as a qual on its scan).
unsafe fn scanned_at_top(q: *mut pg_sys::Query, rti: i32) -> bool {
    unsafe fn inner(node: *mut pg_sys::Node, rti: i32) -> bool {
        // SAFETY: nodes of a join tree.
        unsafe {
            if node.is_null() {
                return false;
            }
            match (*node).type_ {
                pg_sys::NodeTag::T_RangeTblRef => (*node.cast::<pg_sys::RangeTblRef>()).rtindex == rti,
                pg_sys::NodeTag::T_JoinExpr => {
                    let j = node.cast::<pg_sys::JoinExpr>();
                    (*j).jointype == pg_sys::JoinType::JOIN_INNER && (inner((*j).larg, rti) || inner((*j).rarg, rti))
                }
                pg_sys::NodeTag::T_FromExpr => {
                    let f = node.cast::<pg_sys::FromExpr>();
                    pgrx::PgList::<pg_sys::Node>::from_pg((*f).fromlist).iter_ptr().any(|n| inner(n, rti))
                }
                _ => false,
            }
        }
    }
    // SAFETY: the query's join tree.
    unsafe { inner((*q).jointree.cast(), rti) }
}

unsafe fn add_org_quals(q: *mut pg_sys::Query) {
    // SAFETY: a valid Query of the tree being planned, in the planner's memory context.
    unsafe {
        if (*q).jointree.is_null() {
            return;
        }
        let rtable = pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg((*q).rtable);
        for (i, rte) in rtable.iter_ptr().enumerate() {
            let rti = i as i32 + 1;
            if (*rte).rtekind != pg_sys::RTEKind::RTE_RELATION || (*rte).securityQuals.is_null() {
                continue;
            }
            if !citus::is_citus_table((*rte).relid) || !scanned_at_top(q, rti) {
                continue;
            }
            let quals = pgrx::PgList::<pg_sys::Node>::from_pg((*rte).securityQuals);
            for qual in quals.iter_ptr() {
                let Some((var, role)) = policy_quals(qual, rti) else { continue };
                let org = crate::context::current_org_id_if(Some(&role));
                let value: Option<Uuid> = org;
                let datum = value.into_datum();
                let c = pg_sys::makeConst(
                    pg_sys::UUIDOID,
                    -1,
                    pg_sys::InvalidOid,
                    16,
                    datum.unwrap_or(pg_sys::Datum::from(0)),
                    datum.is_none(),
                    false,
                );
                let v = pg_sys::copyObjectImpl(var.cast()).cast::<pg_sys::Expr>();
                let eq = pg_sys::make_opclause(
                    pg_sys::Oid::from(UUID_EQ_OP),
                    pg_sys::BOOLOID,
                    false,
                    v,
                    c.cast(),
                    pg_sys::InvalidOid,
                    pg_sys::InvalidOid,
                );
                (*(*q).jointree).quals = pg_sys::make_and_qual((*(*q).jointree).quals, eq.cast());
                INJECTED.with(|i| i.set(true));
            }
        }
    }
}
