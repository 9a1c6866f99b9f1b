//! The audit trail: one append-only entry per security event in
//! `tenant_guard.audit_log`, written through the log queue
//! (request_log/) by the same background writer as the request log, so an
//! entry survives its caller's rollback; chained and sealed with the
//! passphrase-derived audit key (core/src/audit_chain.rs), so an entry
//! altered, removed or inserted behind the extension's back shows in
//! `verify_audit_log()`.
//!
//! What is recorded, and when:
//! - reads (`assume`, `get_secret`, `get_wordpress_credentials`,
//!   `wordpress_authorization`, `decrypt`) at once, allowed or refused: a
//!   read stays recorded whatever its transaction does next;
//! - writes (members, API keys, secrets, webhook endpoints, organizations:
//!   the row triggers of audit_trail.sql; `protect`, `unprotect`,
//!   `rotate_secrets`, `purge_audit_log`) when their transaction ends:
//!   `allowed` once it commits, `rolled_back` when it (or their savepoint)
//!   rolls back;
//! - a refusal (an error raised inside one of those functions) at once, with
//!   its SQLSTATE.
//!
//! No entry holds a secret, a key or a token: only names, ids, roles and
//! outcomes.

use crate::audit_chain::{self, Anchor, Stored};
use crate::context;
use crate::echo::echo;
use crate::kdf::Purpose;
use crate::keyring;
use crate::pg::errors::raise;
use crate::pg::settings;
use crate::request_log::{self, Entry};
use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, PgTryBuilder, Uuid};
use std::cell::{Cell, RefCell};

// The audit_log table, its anchor, policies, row triggers and grants (audit_trail.sql).
pgrx::extension_sql_file!(
    "audit_trail.sql",
    name = "audit_trail",
    requires = [
        "organizations",
        "api_keys",
        "secrets",
        "webhooks",
        "request_log",
        _trail_note,
        _trail_protect,
        verify_audit_log,
        purge_audit_log,
        audit_log_queue,
        context::current_org_id_if
    ]
);

// ---------------------------------------------------------------- entries

const KIND_MAX: usize = 100;
const NAME_MAX: usize = 400;
const DETAIL_MAX: usize = 256;
const TEXT_MAX: usize = KIND_MAX + NAME_MAX + DETAIL_MAX;
const ROLE_MAX: usize = 64;

const HAS_CTX_ORG: u8 = 1;
const HAS_CTX_USER: u8 = 2;
const HAS_OBJECT_ID: u8 = 4;
const HAS_KIND: u8 = 8;
const HAS_NAME: u8 = 16;
const HAS_DETAIL: u8 = 32;
const HAS_SQLSTATE: u8 = 64;

/// An audit entry's own fields in the shared queue (plain bytes: it lives
/// in shared memory). Names longer than their room are cut at a character
/// boundary: kinds at 100 bytes, names at 400, details at 256.
#[derive(Copy, Clone)]
#[repr(C)]
pub struct Fields {
    flags: u8,
    object_type: u8,
    role_len: u8,
    session_len: u8,
    sqlstate: [u8; 5],
    kind_len: u16,
    name_len: u16,
    detail_len: u16,
    ctx_org: [u8; 16],
    ctx_user: [u8; 16],
    object_id: [u8; 16],
    role: [u8; ROLE_MAX],
    session: [u8; ROLE_MAX],
    text: [u8; TEXT_MAX],
}

impl Fields {
    pub const EMPTY: Fields = Fields {
        flags: 0,
        object_type: 0,
        role_len: 0,
        session_len: 0,
        sqlstate: [0; 5],
        kind_len: 0,
        name_len: 0,
        detail_len: 0,
        ctx_org: [0; 16],
        ctx_user: [0; 16],
        object_id: [0; 16],
        role: [0; ROLE_MAX],
        session: [0; ROLE_MAX],
        text: [0; TEXT_MAX],
    };
}

/// The outcome of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    Allowed = 1,
    Refused = 2,
    RolledBack = 3,
}

impl Outcome {
    fn as_str(v: u8) -> &'static str {
        match v {
            1 => "allowed",
            3 => "rolled_back",
            _ => "refused",
        }
    }
}

/// What an event is about.
pub const OBJECT_TYPES: [&str; 11] = [
    "organization",
    "member",
    "api_key",
    "secret",
    "wordpress_credentials",
    "webhook_secret",
    "webhook_endpoint",
    "table",
    "ciphertext",
    "secrets",
    "audit_log",
];

fn object_code(name: &str) -> u8 {
    OBJECT_TYPES.iter().position(|t| *t == name).map(|i| i as u8).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown object type \"{}\"", echo(name)),
            None,
            None,
        )
    })
}

/// One security event, as the code that sees it describes it.
pub struct Event<'a> {
    pub action: &'a str,
    /// The organization the event concerns (org admins see its entries).
    pub org: Option<[u8; 16]>,
    pub object_type: &'static str,
    pub object_id: Option<[u8; 16]>,
    pub object_kind: Option<&'a str>,
    pub object_name: Option<&'a str>,
    pub detail: Option<String>,
}

impl<'a> Event<'a> {
    pub fn new(action: &'a str, org: Option<[u8; 16]>, object_type: &'static str) -> Event<'a> {
        Event { action, org, object_type, object_id: None, object_kind: None, object_name: None, detail: None }
    }
    pub fn id(mut self, id: Option<[u8; 16]>) -> Self {
        self.object_id = id;
        self
    }
    pub fn kind(mut self, kind: &'a str) -> Self {
        self.object_kind = Some(kind);
        self
    }
    pub fn name(mut self, name: &'a str) -> Self {
        self.object_name = Some(name);
        self
    }
}

fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The name of a role, by oid ("" when it is gone).
fn role_name(oid: pg_sys::Oid) -> String {
    // SAFETY: a syscache lookup; with noerr it returns NULL for a missing role.
    let p = unsafe { pg_sys::GetUserNameFromId(oid, true) };
    if p.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated palloc'd name.
    unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The request context of an entry: (org, user, API key).
type Ctx = Option<([u8; 16], Option<[u8; 16]>, Option<[u8; 16]>)>;

fn current_ctx() -> Ctx {
    context::with_claims(|c| (c.org_id, c.user_id, c.api_key_id))
}

/// The queue entry for `ev`, stamped now with who is acting: the role in
/// effect outside any SECURITY DEFINER function (SET ROLE and SET SESSION
/// AUTHORIZATION count), the session's login role, and the request context
/// `ctx` they had.
fn entry(ev: &Event, outcome: Outcome, sqlstate: Option<&str>, ctx: Ctx) -> Entry {
    let mut e = request_log::audit_entry(ev.action, outcome != Outcome::Allowed);
    e.set_outcome(outcome as u8, outcome != Outcome::Allowed);
    e.set_org(ev.org);
    e.set_key(ctx.and_then(|c| c.2));
    let f = &mut e.audit;
    if let Some((org, user, _)) = ctx {
        f.flags |= HAS_CTX_ORG;
        f.ctx_org = org;
        if let Some(u) = user {
            f.flags |= HAS_CTX_USER;
            f.ctx_user = u;
        }
    }
    // SAFETY: plain reads of this backend's user ids. The login role is the
    // authenticated one (SET SESSION AUTHORIZATION changes the session user).
    let (outer, session) = unsafe { (pg_sys::GetOuterUserId(), pg_sys::GetAuthenticatedUserId()) };
    for (oid, buf, len) in [(outer, &mut f.role, &mut f.role_len), (session, &mut f.session, &mut f.session_len)] {
        let n = role_name(oid);
        let n = cut(&n, ROLE_MAX);
        buf[..n.len()].copy_from_slice(n.as_bytes());
        *len = n.len() as u8;
    }
    f.object_type = object_code(ev.object_type);
    if let Some(id) = ev.object_id {
        f.flags |= HAS_OBJECT_ID;
        f.object_id = id;
    }
    let mut at = 0;
    for (value, max, flag, len) in [
        (ev.object_kind, KIND_MAX, HAS_KIND, &mut f.kind_len),
        (ev.object_name, NAME_MAX, HAS_NAME, &mut f.name_len),
        (ev.detail.as_deref(), DETAIL_MAX, HAS_DETAIL, &mut f.detail_len),
    ] {
        if let Some(v) = value {
            let v = cut(v, max);
            f.flags |= flag;
            f.text[at..at + v.len()].copy_from_slice(v.as_bytes());
            *len = v.len() as u16;
            at += v.len();
        }
    }
    if let Some(code) = sqlstate {
        if code.len() == 5 && code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
            f.flags |= HAS_SQLSTATE;
            f.sqlstate.copy_from_slice(code.as_bytes());
        }
    }
    e
}

/// Replace a queued entry's detail (cut to its room).
fn set_detail(e: &mut Entry, detail: &str) {
    let f = &mut e.audit;
    let at = (f.kind_len + f.name_len) as usize;
    let d = cut(detail, DETAIL_MAX);
    f.text[at..at + d.len()].copy_from_slice(d.as_bytes());
    f.detail_len = d.len() as u16;
    f.flags |= HAS_DETAIL;
}

/// The chain's view of a queued entry, at position `seq`.
fn chain_entry(e: &Entry, seq: i64) -> audit_chain::Entry {
    let f = &e.audit;
    let text = |from: usize, len: u16| String::from_utf8_lossy(&f.text[from..from + len as usize]).into_owned();
    let has = |flag: u8| f.flags & flag != 0;
    let kind_at = 0;
    let name_at = f.kind_len as usize;
    let detail_at = name_at + f.name_len as usize;
    audit_chain::Entry {
        seq,
        at_us: e.at(),
        db_role: String::from_utf8_lossy(&f.role[..f.role_len as usize]).into_owned(),
        session_role: String::from_utf8_lossy(&f.session[..f.session_len as usize]).into_owned(),
        org_id: e.org(),
        ctx_org_id: has(HAS_CTX_ORG).then_some(f.ctx_org),
        ctx_user_id: has(HAS_CTX_USER).then_some(f.ctx_user),
        ctx_api_key_id: e.key(),
        action: e.action().to_string(),
        object_type: OBJECT_TYPES.get(f.object_type as usize).copied().unwrap_or("audit_log").to_string(),
        object_id: has(HAS_OBJECT_ID).then_some(f.object_id),
        object_kind: has(HAS_KIND).then(|| text(kind_at, f.kind_len)),
        object_name: has(HAS_NAME).then(|| text(name_at, f.name_len)),
        detail: has(HAS_DETAIL).then(|| text(detail_at, f.detail_len)),
        outcome: Outcome::as_str(e.outcome()).to_string(),
        sqlstate: has(HAS_SQLSTATE).then(|| String::from_utf8_lossy(&f.sqlstate).into_owned()),
    }
}

// ---------------------------------------------------------------- recording

/// The trail is on, and this database has one (a 0.1.0 catalog, before
/// ALTER EXTENSION ... UPDATE, has none: nothing is queued, or lost, for it).
fn enabled() -> bool {
    settings::AUDIT.get() && crate::pg::index_lookup::table_oid(c"audit_log").is_some()
}

/// Record `ev` now (it survives the transaction's rollback). Waits for room
/// in the queue when it is full (back-pressure), as the request log does.
pub fn record(ev: &Event, outcome: Outcome, sqlstate: Option<&str>) -> bool {
    record_as(ev, outcome, sqlstate, current_ctx())
}

/// Queue `ev` now; false when it could not be queued (and was counted lost).
fn record_as(ev: &Event, outcome: Outcome, sqlstate: Option<&str>, ctx: Ctx) -> bool {
    if !enabled() || crate::pg::in_recovery() {
        return true;
    }
    request_log::enqueue(entry(ev, outcome, sqlstate, ctx), true)
}

/// An allowed read: queued, or (no room) counted as a refusal's loss, for
/// the caller refuses the read.
fn record_read(ev: &Event, ctx: Ctx) -> bool {
    if !enabled() || crate::pg::in_recovery() {
        return true;
    }
    request_log::enqueue_read(entry(ev, Outcome::Allowed, None, ctx))
}

/// Audited writes of one transaction that get an entry each; past this,
/// further writes are counted into one entry per action, org and kind
/// ("and N more"). Their entries are queued together at commit, into room
/// reserved for them just before it.
pub const DETAILED_WRITES_PER_TRANSACTION: usize = 1000;

thread_local! {
    /// Writes of this transaction, by the subtransaction that made them,
    /// recorded when it ends (allowed at commit, rolled_back otherwise).
    static PENDING: RefCell<Vec<(pg_sys::SubTransactionId, Entry)>> = const { RefCell::new(Vec::new()) };
    /// Room reserved in the queue for PENDING at pre-commit, not used yet.
    static RESERVED: Cell<usize> = const { Cell::new(0) };
    /// Writes past DETAILED_WRITES_PER_TRANSACTION: an entry standing for
    /// them (its detail written at the end) and how many, by subtransaction.
    static SUMMARIZED: RefCell<Vec<(pg_sys::SubTransactionId, Entry, u64)>> = const { RefCell::new(Vec::new()) };
    /// rotate_secrets() is re-encrypting: its row writes are one event, the run.
    static REKEYING: Cell<bool> = const { Cell::new(false) };
}

/// Record a write once its transaction ends: `allowed` if it commits,
/// `rolled_back` if it (or the savepoint it was made in) rolls back.
pub fn note_write(ev: &Event) {
    // A restore's rows are not new events (and its audit_log is being
    // restored too: entries of its own would collide with it).
    if !enabled() || crate::pg::in_recovery() || crate::pg::restoring() {
        return;
    }
    // SAFETY: a plain read of transaction state.
    let sub = unsafe { pg_sys::GetCurrentSubTransactionId() };
    if PENDING.with(|p| p.borrow().len()) < DETAILED_WRITES_PER_TRANSACTION {
        let e = entry(ev, Outcome::Allowed, None, current_ctx());
        PENDING.with(|p| p.borrow_mut().push((sub, e)));
        return;
    }
    // Past the detailed ones: counted, by subtransaction, action, org and kind.
    let same = |e: &Entry| {
        let c = chain_entry(e, 0);
        c.action == ev.action
            && c.org_id == ev.org
            && c.object_type == ev.object_type
            && c.object_kind.as_deref() == ev.object_kind.map(|k| cut(k, KIND_MAX))
    };
    let counted = SUMMARIZED.with(|s| {
        let mut s = s.borrow_mut();
        match s.iter_mut().find(|(x, e, _)| *x == sub && same(e)) {
            Some((_, _, n)) => {
                *n += 1;
                true
            }
            None => false,
        }
    });
    if !counted {
        let mut summary = Event::new(ev.action, ev.org, ev.object_type);
        summary.object_kind = ev.object_kind;
        let e = entry(&summary, Outcome::Allowed, None, current_ctx());
        SUMMARIZED.with(|s| s.borrow_mut().push((sub, e, 1)));
    }
}

/// The entries standing for summarized writes (of `sub`, or all), taken
/// out, each with its count in its detail.
fn take_summaries(sub: Option<pg_sys::SubTransactionId>) -> Vec<Entry> {
    SUMMARIZED.with(|s| {
        let mut s = s.borrow_mut();
        let (take, keep): (Vec<_>, Vec<_>) = s.drain(..).partition(|(x, _, _)| sub.is_none_or(|y| *x == y));
        *s = keep;
        take.into_iter()
            .map(|(_, mut e, n)| {
                let detail = format!(
                    "and {n} more like it, not listed one by one (past {DETAILED_WRITES_PER_TRANSACTION} audited changes in one transaction)"
                );
                set_detail(&mut e, &detail);
                e
            })
            .collect()
    })
}

/// Before commit (where waiting and failing are still allowed): reserve
/// room in the queue for this transaction's audited writes, so that at
/// commit, where nothing may wait or fail, none is lost. Refuses the commit
/// when no room comes within a second.
fn reserve_for_commit() {
    let n = PENDING.with(|p| p.borrow().len()) + SUMMARIZED.with(|s| s.borrow().len());
    if n == 0 {
        return;
    }
    if !request_log::reserve(n) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
            "the audit trail has no room to record this transaction's changes now",
            Some("The log queue stayed full for a second: its writer is not keeping up, or cannot write."),
            Some("Retry; if it persists, look at tenant_guard.audit_log_queue() and the server log."),
        );
    }
    RESERVED.with(|r| r.set(r.get() + n));
}

/// Queue pending writes (those of `sub`, or all) with `outcome`, without
/// waiting: this runs in commit and abort callbacks, where nothing may
/// wait or fail. Room reserved before commit is used first; an entry that
/// finds no room is counted as lost, and the trail records the loss.
fn flush(sub: Option<pg_sys::SubTransactionId>, outcome: Outcome) {
    let mut taken: Vec<Entry> = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let (take, keep): (Vec<_>, Vec<_>) = p.drain(..).partition(|(s, _)| sub.is_none_or(|x| *s == x));
        *p = keep;
        take.into_iter().map(|(_, e)| e).collect()
    });
    taken.extend(take_summaries(sub));
    for mut e in taken {
        e.set_outcome(outcome as u8, outcome != Outcome::Allowed);
        if RESERVED.with(|r| r.get()) > 0 {
            RESERVED.with(|r| r.set(r.get() - 1));
            request_log::enqueue_reserved(e);
        } else {
            request_log::enqueue(e, false);
        }
    }
    if sub.is_none() {
        let left = RESERVED.with(|r| r.replace(0));
        if left > 0 {
            request_log::unreserve(left);
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => reserve_for_commit(),
        // PREPARE: recorded as allowed (a COMMIT PREPARED may come from elsewhere).
        XACT_EVENT_COMMIT | XACT_EVENT_PREPARE => {
            REKEYING.with(|r| r.set(false));
            flush(None, Outcome::Allowed);
        }
        XACT_EVENT_ABORT => {
            REKEYING.with(|r| r.set(false));
            flush(None, Outcome::RolledBack);
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    match event {
        SUBXACT_EVENT_ABORT_SUB => flush(Some(my), Outcome::RolledBack),
        SUBXACT_EVENT_COMMIT_SUB => {
            PENDING.with(|p| {
                for (s, _) in p.borrow_mut().iter_mut().filter(|(s, _)| *s == my) {
                    *s = parent;
                }
            });
            SUMMARIZED.with(|p| {
                for (s, _, _) in p.borrow_mut().iter_mut().filter(|(s, _, _)| *s == my) {
                    *s = parent;
                }
            });
        }
        _ => {}
    }
}

pub fn init() {
    // SAFETY: registers static callbacks once per process (from _PG_init).
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
}

/// The five-character SQLSTATE of an error code.
fn sqlstate_of(code: PgSqlErrorCode) -> String {
    let v = code as i32 as u32;
    (0..5).map(|i| char::from(((v >> (6 * i)) & 0x3f) as u8 + b'0')).collect()
}

/// How `guarded` records an allowed call.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A read: recorded at once, allowed or refused.
    Read,
    /// A write: its row triggers record it at commit; only a refusal here.
    Write,
    /// A write the triggers do not see (a run, a table): allowed at commit.
    WriteRun,
}

/// Run `body` as the audited event `ev`: a refusal (any error it raises)
/// is recorded at once with its SQLSTATE, then raised again; success is
/// recorded as `kind` says. `body` may add a detail to the event.
pub fn guarded<R>(kind: Kind, mut ev: Event, body: impl FnOnce(&mut Event) -> R) -> R {
    if kind == Kind::Read && enabled() && crate::pg::in_recovery() {
        // Nothing can be written on a standby: an audited read there would
        // leave no trace. Fail closed.
        raise(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            format!("{} is audited and cannot be recorded on a standby", ev.action),
            None,
            Some("Call it on the primary. (A superuser may turn the trail off for a role on standbys: tenant_guard.audit = off.)"),
        )
    }
    // The context the caller had (assume() changes it).
    let ctx = current_ctx();
    let ev_cell = RefCell::new(&mut ev);
    let (cell, in_body) = (std::panic::AssertUnwindSafe(&ev_cell), std::panic::AssertUnwindSafe(&ev_cell));
    let r = PgTryBuilder::new(std::panic::AssertUnwindSafe(move || body(&mut in_body.0.borrow_mut())))
        .catch_others(move |e| {
            // The whole wrapper, not its field (closures capture fields apart).
            let cell = &cell;
            let code = match &e {
                pg_sys::panic::CaughtError::PostgresError(r)
                | pg_sys::panic::CaughtError::ErrorReport(r)
                | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r.sql_error_code(),
            };
            let _ = record_as(&cell.0.borrow(), Outcome::Refused, Some(&sqlstate_of(code)), ctx);
            e.rethrow()
        })
        .execute();
    match kind {
        // A read the trail cannot record is not returned: it fails closed.
        Kind::Read if !record_read(&ev, ctx) => raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
            format!("{} is audited, and the audit trail has no room to record it now", ev.action),
            Some("The log queue stayed full for a second: its writer is not keeping up, or cannot write."),
            Some("Retry; if it persists, look at tenant_guard.audit_log_queue() and the server log."),
        ),
        Kind::Read | Kind::Write => {}
        Kind::WriteRun => note_write(&ev),
    }
    r
}

/// rotate_secrets(): while it re-encrypts, the secrets' row triggers stay quiet.
pub fn rekeying<R>(body: impl FnOnce() -> R) -> R {
    REKEYING.with(|r| r.set(true));
    let r = body();
    REKEYING.with(|r| r.set(false));
    r
}

/// Internal (row triggers and the PL/pgSQL functions): an event. Without
/// `sqlstate` it is a write, recorded when the transaction ends; with one,
/// a refusal, recorded at once.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::too_many_arguments)] // one per field of the entry
pub fn _trail_note(
    action: &str,
    org_id: Option<Uuid>,
    object_type: &str,
    object_id: Option<Uuid>,
    object_kind: Option<&str>,
    object_name: Option<&str>,
    detail: Option<&str>,
    sqlstate: default!(Option<&str>, "NULL"),
) {
    let secret_write = matches!(object_type, "secret" | "wordpress_credentials" | "webhook_secret");
    if sqlstate.is_none() && secret_write && REKEYING.with(Cell::get) {
        return;
    }
    let ev = Event {
        action: cut(action, 63),
        org: org_id.map(|u| *u.as_bytes()),
        object_type: OBJECT_TYPES[object_code(object_type) as usize],
        object_id: object_id.map(|u| *u.as_bytes()),
        object_kind,
        object_name,
        detail: detail.map(str::to_string),
    };
    match sqlstate {
        None => note_write(&ev),
        Some(code) => {
            let _ = record(&ev, Outcome::Refused, Some(code));
        }
    }
}

/// The schema-qualified name of a relation, or its oid when it is gone.
fn relation_name(oid: pg_sys::Oid) -> String {
    // SAFETY: catalog lookups that return NULL for a missing relation or schema.
    unsafe {
        let rel = pg_sys::get_rel_name(oid);
        if rel.is_null() {
            return oid.to_u32().to_string();
        }
        let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(oid));
        let q = |p: *mut std::ffi::c_char| {
            if p.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(pg_sys::quote_identifier(p)).to_string_lossy().into_owned()
            }
        };
        format!("{}.{}", q(nsp), q(rel))
    }
}

/// Called by protect() and unprotect() (which run with their caller's
/// rights, so any role may call this): record the call on `tbl`. Allowed
/// (no `sqlstate`) only for the table's owner, and only as it now stands
/// (protect()'s policies in place, or none left), so nobody can file a
/// false entry. A refusal is the caller's own report, recorded as theirs,
/// and only for a table that exists (or none given). Temporary tables are
/// not recorded.
#[pg_extern(volatile, parallel_unsafe)]
pub fn _trail_protect(tbl: Option<pg_sys::Oid>, action: Option<&str>, sqlstate: default!(Option<&str>, "NULL")) {
    let action = match action {
        Some(a @ ("protect" | "unprotect")) => a,
        _ => raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "action must be protect or unprotect", None, None),
    };
    // SAFETY: catalog lookups: the relkind of a relation ('\0' when it is
    // missing), and then (it exists) its persistence.
    let (kind, persistence) = tbl.map_or((0, 0), |t| unsafe {
        let k = pg_sys::get_rel_relkind(t) as u8;
        (k, if k == 0 { 0 } else { pg_sys::get_rel_persistence(t) as u8 })
    });
    if persistence == b't' {
        return;
    }
    let name = tbl.filter(|_| kind != 0).map(relation_name);
    let ev = Event::new(action, None, "table");
    let mut ev = match &name {
        Some(n) => ev.name(n),
        None => ev,
    };
    if let Some(code) = sqlstate {
        if tbl.is_some() && kind == 0 {
            return;
        }
        ev.detail = Some("reported by the caller".into());
        let _ = record(&ev, Outcome::Refused, Some(cut(code, 5)));
        return;
    }
    let Some(tbl) = tbl else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "tbl must not be NULL", None, None)
    };
    // SAFETY: an ownership check against the catalog.
    let owner = unsafe { pg_sys::pg_class_ownercheck(tbl, pg_sys::GetUserId()) };
    let protected = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_policy p
                         WHERE p.polrelid OPERATOR(pg_catalog.=) $1 AND p.polname OPERATOR(pg_catalog.=) 'tenant_guard_select')",
        &[tbl.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !owner || protected != (action == "protect") {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "only protect() and unprotect() record these events",
            None,
            None,
        );
    }
    note_write(&ev);
}

// ---------------------------------------------------------------- the writer's side

/// Where a database's chain ends, kept in shared memory by the writer that
/// last committed to it (request_log::with_head). `state`: 0 unknown (read
/// it from the table), 1 valid, 2 a writer (`pid`) is writing after it.
#[derive(Copy, Clone)]
#[repr(C)]
pub struct Head {
    pub db: u32,
    /// The audit_log table it belongs to (a re-created extension has another).
    pub rel: u32,
    pub state: u8,
    pub pid: i32,
    pub seq: i64,
    pub chain: [u8; 32],
    pub used_at: i64,
}

impl Head {
    pub const EMPTY: Head = Head { db: 0, rel: 0, state: 0, pid: 0, seq: 0, chain: [0; 32], used_at: 0 };
}

/// What a batch leaves the chain at: (table, position, chain value).
pub type Written = (u32, i64, [u8; 32]);

fn audit_log_oid() -> pg_sys::Oid {
    crate::pg::index_lookup::table_oid(c"audit_log").unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "tenant_guard.audit_log is missing",
            None,
            Some("Run CREATE EXTENSION tenant_guard in this database."),
        )
    })
}

fn bytes32(b: Option<Vec<u8>>) -> [u8; 32] {
    b.and_then(|v| v.try_into().ok()).unwrap_or(audit_chain::GENESIS)
}

/// Where the table's chain ends: its last entry, or the purge anchor, or the start.
fn head_from_table() -> (i64, [u8; 32]) {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT h.seq, h.chain FROM (
                 (SELECT l.seq, l.chain FROM tenant_guard.audit_log l ORDER BY l.seq DESC, l.id DESC LIMIT 1)
                 UNION ALL
                 (SELECT a.seq, a.chain FROM tenant_guard.audit_log_anchor a)
             ) h ORDER BY h.seq DESC LIMIT 1",
            None,
            &[],
        )?;
        if t.is_empty() {
            return Ok::<_, pgrx::spi::SpiError>((0, audit_chain::GENESIS));
        }
        let r = t.first();
        Ok((r.get::<i64>(1)?.unwrap_or(0), bytes32(r.get::<Vec<u8>>(2)?)))
    })
    .expect("reading the audit chain's head")
}

/// An entry the writer itself adds: `lost` entries could not be recorded.
fn lost_entry(lost: u64) -> Entry {
    let detail = format!(
        "{lost} audit entr{} could not be recorded (the queue was full at commit, or a writer failed)",
        if lost == 1 { "y" } else { "ies" }
    );
    let mut ev = Event::new("audit_entries_lost", None, "audit_log");
    ev.detail = Some(detail);
    // The writer has no request context; its roles are its own.
    entry(&ev, Outcome::Allowed, None, None)
}

/// The log writer (request_log/), in its transaction: append `entries` to
/// this database's chain, after a record of `lost` entries when there were
/// any. Returns where the chain now ends, for [`committed`].
pub fn write_batch(entries: &[Entry], lost: u64) -> Option<Written> {
    let db = crate::pg::database_id();
    // An older schema (a 0.1.0 catalog before ALTER EXTENSION ... UPDATE)
    // has no trail: its entries are lost, and counted, not a failed batch.
    let Some(rel) = crate::pg::index_lookup::table_oid(c"audit_log") else {
        request_log::count_lost(db, entries.len() as u64);
        return None;
    };
    // The writers of one database take turns: the one that holds the head
    // (in shared memory, where no role can take it) writes, the next waits
    // for it to commit or die. Each continues the chain where the last one
    // committed it.
    let me = crate::pg::pid();
    let known = loop {
        let taken = request_log::with_head(db, |h| {
            if h.state == 2 && h.pid != me && h.pid != 0 && crate::pg::backend_alive(h.pid) {
                return None;
            }
            let v = (h.state == 1 && h.rel == rel.to_u32()).then_some((h.seq, h.chain));
            h.state = 2;
            h.pid = me;
            Some(v)
        });
        match taken {
            Some(v) => break v,
            None => {
                // SAFETY: a plain sleep.
                unsafe { pg_sys::pg_usleep(10_000) };
                pg_sys::check_for_interrupts!();
            }
        }
    };
    let (mut seq, prev) = known.unwrap_or_else(head_from_table);
    let mut all: Vec<audit_chain::Entry> = Vec::with_capacity(entries.len() + 1);
    if lost > 0 {
        seq = seq.saturating_add(1);
        all.push(chain_entry(&lost_entry(lost), seq));
    }
    for e in entries {
        seq = seq.saturating_add(1);
        all.push(chain_entry(e, seq));
    }
    let keys = keyring::try_current();
    let (sealed, last) = audit_chain::seal(prev, &all, keys.as_ref().map(|k| k.subkey(Purpose::Audit)));
    let key_id = keys.as_ref().map(|k| k.key_id() as i64);
    insert(&all, &sealed, key_id);
    Some((rel.to_u32(), seq, last))
}

/// After the writer's transaction committed: its head is the database's.
pub fn committed(db: u32, written: Option<Written>) {
    let Some((rel, seq, chain)) = written else { return };
    let me = crate::pg::pid();
    request_log::with_head(db, |h| {
        if h.state == 2 && h.pid == me {
            *h = Head { db, rel, state: 1, pid: 0, seq, chain, used_at: h.used_at };
        }
    });
}

fn uuids(v: impl Iterator<Item = Option<[u8; 16]>>) -> Vec<Option<Uuid>> {
    v.map(|o| o.map(Uuid::from_bytes)).collect()
}

const INSERT_SQL: &str = "INSERT INTO tenant_guard.audit_log (seq, at, db_role, session_role, org_id, ctx_org_id,
        ctx_user_id, ctx_api_key_id, action, object_type, object_id, object_kind, object_name, detail, outcome,
        sqlstate, chain, key_id, mac)
     SELECT * FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.timestamptz[]),
        pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]),
        pg_catalog.unnest($5::pg_catalog.uuid[]), pg_catalog.unnest($6::pg_catalog.uuid[]),
        pg_catalog.unnest($7::pg_catalog.uuid[]), pg_catalog.unnest($8::pg_catalog.uuid[]),
        pg_catalog.unnest($9::pg_catalog.text[]), pg_catalog.unnest($10::pg_catalog.text[]),
        pg_catalog.unnest($11::pg_catalog.uuid[]), pg_catalog.unnest($12::pg_catalog.text[]),
        pg_catalog.unnest($13::pg_catalog.text[]), pg_catalog.unnest($14::pg_catalog.text[]),
        pg_catalog.unnest($15::pg_catalog.text[]), pg_catalog.unnest($16::pg_catalog.text[]),
        pg_catalog.unnest($17::pg_catalog.bytea[]), pg_catalog.unnest($18::pg_catalog.int8[]),
        pg_catalog.unnest($19::pg_catalog.bytea[]))";

fn insert(all: &[audit_chain::Entry], sealed: &[audit_chain::Seal], key_id: Option<i64>) {
    let at: Vec<TimestampWithTimeZone> = all
        .iter()
        .map(|e| {
            TimestampWithTimeZone::try_from(e.at_us).unwrap_or_else(|_| TimestampWithTimeZone::positive_infinity())
        })
        .collect();
    let text = |f: &dyn Fn(&audit_chain::Entry) -> Option<String>| all.iter().map(f).collect::<Vec<Option<String>>>();
    let args: Vec<pgrx::datum::DatumWithOid> = vec![
        all.iter().map(|e| e.seq).collect::<Vec<i64>>().into(),
        at.into(),
        text(&|e| Some(e.db_role.clone())).into(),
        text(&|e| Some(e.session_role.clone())).into(),
        uuids(all.iter().map(|e| e.org_id)).into(),
        uuids(all.iter().map(|e| e.ctx_org_id)).into(),
        uuids(all.iter().map(|e| e.ctx_user_id)).into(),
        uuids(all.iter().map(|e| e.ctx_api_key_id)).into(),
        text(&|e| Some(e.action.clone())).into(),
        text(&|e| Some(e.object_type.clone())).into(),
        uuids(all.iter().map(|e| e.object_id)).into(),
        text(&|e| e.object_kind.clone()).into(),
        text(&|e| e.object_name.clone()).into(),
        text(&|e| e.detail.clone()).into(),
        text(&|e| Some(e.outcome.clone())).into(),
        text(&|e| e.sqlstate.clone()).into(),
        sealed.iter().map(|(c, _)| c.to_vec()).collect::<Vec<Vec<u8>>>().into(),
        sealed.iter().map(|(_, m)| m.map(|_| key_id).flatten()).collect::<Vec<Option<i64>>>().into(),
        sealed.iter().map(|(_, m)| m.map(|m| m.to_vec())).collect::<Vec<Option<Vec<u8>>>>().into(),
    ];
    Spi::run_with_args(INSERT_SQL, &args).expect("writing the audit log");
}

// ---------------------------------------------------------------- SQL functions

/// Audit entries queued now; lost since the server started: allowed ones
/// (a writer that failed), and refusals or rollbacks (the queue's share for
/// them was full); and lost but not yet recorded in their trail. Service role.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)] // the SQL result row
fn audit_log_queue() -> TableIterator<
    'static,
    (name!(queued, i64), name!(lost, i64), name!(lost_failures, i64), name!(lost_unrecorded, i64)),
> {
    let (_, audit) = request_log::queued();
    let (lost, failures, unrecorded) = request_log::audit_losses();
    TableIterator::once((audit as i64, lost as i64, failures as i64, unrecorded as i64))
}

fn stored_from(r: &pgrx::spi::SpiHeapTupleData) -> Result<Stored, pgrx::spi::SpiError> {
    let uuid =
        |i: usize| -> Result<Option<[u8; 16]>, pgrx::spi::SpiError> { Ok(r.get::<Uuid>(i)?.map(|u| *u.as_bytes())) };
    let entry = audit_chain::Entry {
        seq: r.get::<i64>(1)?.unwrap_or(0),
        at_us: r.get::<TimestampWithTimeZone>(2)?.map(i64::from).unwrap_or(0),
        db_role: r.get::<String>(3)?.unwrap_or_default(),
        session_role: r.get::<String>(4)?.unwrap_or_default(),
        org_id: uuid(5)?,
        ctx_org_id: uuid(6)?,
        ctx_user_id: uuid(7)?,
        ctx_api_key_id: uuid(8)?,
        action: r.get::<String>(9)?.unwrap_or_default(),
        object_type: r.get::<String>(10)?.unwrap_or_default(),
        object_id: uuid(11)?,
        object_kind: r.get::<String>(12)?,
        object_name: r.get::<String>(13)?,
        detail: r.get::<String>(14)?,
        outcome: r.get::<String>(15)?.unwrap_or_default(),
        sqlstate: r.get::<String>(16)?,
    };
    Ok(Stored {
        entry,
        chain: r.get::<Vec<u8>>(17)?.unwrap_or_default(),
        key_id: r.get::<i64>(18)?.unwrap_or(i64::MIN),
        mac: r.get::<Vec<u8>>(19)?,
    })
}

const COLUMNS: &str = "seq, at, db_role, session_role, org_id, ctx_org_id, ctx_user_id, ctx_api_key_id, action,
    object_type, object_id, object_kind, object_name, detail, outcome, sqlstate, chain, key_id, mac";

fn read_anchor(c: &pgrx::spi::SpiClient) -> Result<Option<Anchor>, pgrx::spi::SpiError> {
    let t = c.select("SELECT seq, chain, key_id, mac FROM tenant_guard.audit_log_anchor LIMIT 1", None, &[])?;
    if t.is_empty() {
        return Ok(None);
    }
    let r = t.first();
    Ok(Some(Anchor {
        seq: r.get::<i64>(1)?.unwrap_or(0),
        chain: r.get::<Vec<u8>>(2)?.unwrap_or_default(),
        key_id: r.get::<i64>(3)?.unwrap_or(i64::MIN),
        mac: r.get::<Vec<u8>>(4)?.unwrap_or_default(),
    }))
}

/// The audit key of the configured passphrase (current or old) with this key id.
fn audit_key(id: i64) -> Option<[u8; 32]> {
    let id = u32::try_from(id).ok()?;
    keyring::by_id(id).map(|k| *k.subkey(Purpose::Audit))
}

/// Check the whole trail: every entry's position, chain value and MAC, from
/// the purge anchor (or the first entry) to the last. Reports the first
/// entry that was altered, removed or inserted out of order, where the
/// chain ends (keep `head_seq` and `head_chain` outside the database and
/// pass them back as `known_seq` and `known_chain` next time), and what
/// the verdict covers.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)] // the SQL result row
fn verify_audit_log(
    known_seq: default!(Option<i64>, "NULL"),
    known_chain: default!(Option<&[u8]>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(verified, bool),
        name!(entries, i64),
        name!(first_bad_seq, Option<i64>),
        name!(problem, Option<String>),
        name!(head_seq, i64),
        name!(head_chain, Vec<u8>),
        name!(covers, String),
    ),
> {
    let known = match (known_seq, known_chain) {
        (None, None) => None,
        (Some(s), Some(c)) if c.len() == 32 && s >= 0 => Some((s, c.try_into().expect("32 bytes"))),
        _ => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "known_seq and known_chain go together: a position (0 or more) and the 32-byte head_chain an earlier verification gave",
            None,
            None,
        ),
    };
    keyring::current(); // raises 55000 without a passphrase
    let rel = audit_log_oid().to_u32();
    // Read before the rows' snapshot: a batch committed meanwhile is in the
    // rows, never missing from them.
    let head = request_log::with_head(crate::pg::database_id(), |h| (h.state != 0 && h.rel == rel).then_some(h.seq));
    let (anchor, report) = Spi::connect(|c| {
        let anchor = read_anchor(c)?;
        let mut cursor = c.open_cursor(&format!("SELECT {COLUMNS} FROM tenant_guard.audit_log ORDER BY seq, id"), &[]);
        let mut buf: std::collections::VecDeque<Stored> = Default::default();
        let mut failed: Option<pgrx::spi::SpiError> = None;
        let rows = std::iter::from_fn(|| {
            if buf.is_empty() && failed.is_none() {
                match cursor.fetch(10_000) {
                    Ok(t) => {
                        for r in t {
                            match stored_from(&r) {
                                Ok(s) => buf.push_back(s),
                                Err(e) => failed = Some(e),
                            }
                        }
                    }
                    Err(e) => failed = Some(e),
                }
            }
            buf.pop_front()
        });
        let report = audit_chain::verify(anchor.as_ref(), rows, audit_key, head, known);
        if let Some(e) = failed {
            return Err(e);
        }
        Ok::<_, pgrx::spi::SpiError>((anchor, report))
    })
    .unwrap_or_else(|e| {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("reading the audit log failed: {e}"), None, None)
    });
    let first = anchor.as_ref().map_or(1, |a| a.seq.saturating_add(1));
    let mut covers = format!(
        "Entries {first} to {} ({} verified): their content, order and completeness, against anyone who does not hold the \
         passphrase (a superuser can read it, and so could re-seal a forged log). Entries removed from the end are caught \
         against the writer's position since the server started",
        report.last_seq, report.verified
    );
    match (known, &anchor) {
        (Some((k, _)), Some(a)) if k < a.seq => {
            covers.push_str(&format!(" (the known position {k} was purged, so it could not be checked)"))
        }
        (Some((k, _)), _) => covers.push_str(&format!(" and against the known position {k}")),
        _ => {}
    }
    covers.push('.');
    if let Some(a) = &anchor {
        covers.push_str(&format!(
            " Entries up to {} were purged; the purge anchor vouches for where the rest begins.",
            a.seq
        ));
    }
    TableIterator::once((
        report.problem.is_none(),
        report.verified as i64,
        report.problem.as_ref().and_then(|p| p.seq()),
        report.problem.as_ref().map(|p| format!("{}: {p}", p.kind())),
        report.last_seq,
        report.last_chain.to_vec(),
        covers,
    ))
}

fn require_superuser(what: &str) {
    // SAFETY: a catalog check of the current user.
    if !unsafe { pg_sys::superuser() } {
        raise(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("{what} must be run by a superuser"), None, None);
    }
}

/// Superuser only: remove the entries older than `older_than` (a prefix of
/// the chain) and keep the chain verifiable: the position and chain value of
/// the last entry removed become the purge anchor, sealed with the current
/// key. Refuses (XX001) when that entry does not verify. The purge itself
/// is recorded in the trail. Returns how many entries it removed.
#[pg_extern(volatile, parallel_unsafe)]
fn purge_audit_log(older_than: Option<Interval>) -> i64 {
    require_superuser("purge_audit_log()");
    let Some(older_than) = older_than else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "older_than must not be NULL", None, None)
    };
    // The rule of both purges (22023 when the cut would be in the future).
    Spi::run_with_args("SELECT tenant_guard._purge_cut($1)", &[older_than.into()])
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{e}"), None, None));
    let key = keyring::current();
    guarded(Kind::WriteRun, Event::new("purge_audit_log", None, "audit_log"), |ev| {
        let removed = Spi::connect_mut(|c| {
            // One purge at a time (the anchor row is the lock).
            c.update("LOCK TABLE tenant_guard.audit_log_anchor IN EXCLUSIVE MODE", None, &[])?;
            let anchor_seq = read_anchor(c)?.map_or(0, |a| a.seq);
            // Through the last entry before the first one to keep.
            let t = c.select(
                "SELECT coalesce((SELECT min(l.seq) FROM tenant_guard.audit_log l WHERE l.at >= now() - $1) - 1,
                                 (SELECT max(l.seq) FROM tenant_guard.audit_log l))",
                None,
                &[older_than.into()],
            )?;
            let through = t.first().get::<i64>(1)?.unwrap_or(0);
            if through <= anchor_seq {
                return Ok::<_, pgrx::spi::SpiError>((0, through));
            }
            let t = c.select(
                &format!("SELECT {COLUMNS} FROM tenant_guard.audit_log WHERE seq = $1 ORDER BY id LIMIT 1"),
                None,
                &[through.into()],
            )?;
            let last = t.into_iter().next().map(|r| stored_from(&r)).transpose()?;
            let ok = last.as_ref().is_some_and(|s| {
                let chain: Option<[u8; 32]> = s.chain.as_slice().try_into().ok();
                match (chain, &s.mac, audit_key(s.key_id)) {
                    (Some(chain), Some(tag), Some(k)) => audit_chain::mac_ok(&k, &chain, tag),
                    _ => false,
                }
            });
            if !ok {
                raise(
                    PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                    format!("the audit log entry at position {through}, where the purge would anchor the chain, does not verify"),
                    None,
                    Some("Run SELECT * FROM tenant_guard.verify_audit_log() and investigate before purging."),
                );
            }
            let chain: [u8; 32] = last.expect("checked").chain.as_slice().try_into().expect("checked");
            let mac = audit_chain::anchor_mac(key.subkey(Purpose::Audit), through, &chain);
            c.update("DELETE FROM tenant_guard.audit_log_anchor", None, &[])?;
            c.update(
                "INSERT INTO tenant_guard.audit_log_anchor (seq, chain, key_id, mac) VALUES ($1, $2, $3, $4)",
                None,
                &[through.into(), chain.to_vec().into(), (key.key_id() as i64).into(), mac.to_vec().into()],
            )?;
            let n = c.update("DELETE FROM tenant_guard.audit_log WHERE seq <= $1", None, &[through.into()])?.len() as i64;
            c.update(
                "INSERT INTO tenant_guard.maintenance_runs AS m (task, last_run_at, last_count)
                 VALUES ('purge_audit_log', now(), $1)
                 ON CONFLICT (task) DO UPDATE SET last_run_at = excluded.last_run_at, last_count = excluded.last_count",
                None,
                &[n.into()],
            )?;
            Ok((n, through))
        })
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("purging the audit log failed: {e}"), None, None));
        ev.detail = Some(format!("removed {} entries, through position {}", removed.0, removed.1));
        removed.0
    })
}

/// An entry's id, chain value, key id and MAC, as re-keying reads them.
type Sealed = (i64, Vec<u8>, i64, Option<Vec<u8>>);

/// rotate_secrets(): re-seal up to `limit` entries (and the purge anchor)
/// that are sealed under an old passphrase's key with the current one. An
/// entry whose MAC does not verify under its key keeps it, marked with key
/// id -1 (verify_audit_log() reports it). Entries under a key no
/// configured passphrase has are left alone. Returns how many it re-sealed.
pub fn rekey(limit: i64) -> i64 {
    let current = keyring::current();
    let old: Vec<i64> =
        keyring::old().iter().map(|k| k.key_id() as i64).filter(|&k| k != current.key_id() as i64).collect();
    if old.is_empty() {
        return 0;
    }
    let new_key = current.subkey(Purpose::Audit);
    Spi::connect_mut(|c| {
        let t = c.update(
            "SELECT id, chain, key_id, mac FROM tenant_guard.audit_log WHERE key_id = ANY ($1) ORDER BY id LIMIT $2 FOR UPDATE",
            None,
            &[old.clone().into(), limit.into()],
        )?;
        let rows: Vec<Sealed> = t
            .into_iter()
            .map(|r| {
                Ok((
                    r.get::<i64>(1)?.unwrap_or(0),
                    r.get::<Vec<u8>>(2)?.unwrap_or_default(),
                    r.get::<i64>(3)?.unwrap_or(0),
                    r.get::<Vec<u8>>(4)?,
                ))
            })
            .collect::<Result<_, pgrx::spi::SpiError>>()?;
        let mut n = 0;
        for (id, chain, key_id, tag) in rows {
            let chain: Option<[u8; 32]> = chain.as_slice().try_into().ok();
            let ok = match (chain, &tag, audit_key(key_id)) {
                (Some(c), Some(t), Some(k)) => audit_chain::mac_ok(&k, &c, t),
                _ => false,
            };
            let (new_id, new_mac) = match (ok, chain) {
                (true, Some(c)) => (current.key_id() as i64, Some(audit_chain::mac(new_key, &c).to_vec())),
                _ => (audit_chain::KEY_ID_FAILED_REKEY, tag),
            };
            c.update(
                "UPDATE tenant_guard.audit_log SET key_id = $2, mac = $3 WHERE id = $1",
                None,
                &[id.into(), new_id.into(), new_mac.into()],
            )?;
            n += 1;
        }
        if let Some(a) = read_anchor(c)?.filter(|_| n < limit) {
            if old.contains(&a.key_id) {
                let chain: Option<[u8; 32]> = a.chain.as_slice().try_into().ok();
                if let (Some(ch), Some(k)) = (chain, audit_key(a.key_id)) {
                    if audit_chain::anchor_mac_ok(&k, a.seq, &ch, &a.mac) {
                        let mac = audit_chain::anchor_mac(new_key, a.seq, &ch);
                        c.update(
                            "UPDATE tenant_guard.audit_log_anchor SET key_id = $1, mac = $2",
                            None,
                            &[(current.key_id() as i64).into(), mac.to_vec().into()],
                        )?;
                        n += 1;
                    }
                }
            }
        }
        Ok::<_, pgrx::spi::SpiError>(n)
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("re-keying the audit log failed: {e}"), None, None))
}
