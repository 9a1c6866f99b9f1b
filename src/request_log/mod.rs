//! The log queue and its writer: authenticate() queues each outcome in
//! shared memory, and so does the audit trail (audit_trail/) each security
//! event; a background worker per database writes the queue to
//! `tenant_guard.request_log` and `tenant_guard.audit_log` in its own
//! transactions, so what was queued is recorded even when the caller's
//! transaction rolls back. The same worker records `api_keys.last_used_at`,
//! so authenticate() itself never writes.
//!
//! The queue is shared by every database and both logs. Request-log entries
//! may take at most three quarters of it, so audit entries always find room
//! (some are queued at commit, where nothing may wait); failures of either
//! kind (anyone can cause those by the million) at most half.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{PgLwLock, Uuid};
use std::time::Duration;

// The request_log table, its policies, the purge and the grants (request_log.sql).
pgrx::extension_sql_file!(
    "request_log.sql",
    name = "request_log",
    requires = ["schema", request_log_queue, context::current_org_id_if]
);

pub const QUEUE: usize = 4096;
const WORKERS: usize = 16;
const ACTION_MAX: usize = 64;
const ADDR_MAX: usize = 48;
/// A worker with no work for this long exits (so DROP DATABASE is not blocked for long).
const IDLE_EXIT_US: i64 = 10_000_000;
const STALE_US: i64 = 5_000_000;
/// Once this many entries are queued, the enqueuer wakes its database's
/// writer instead of leaving them to its next 100 ms poll (at tens of
/// thousands of calls a second, one poll's worth would overflow the queue).
/// Half the queue: a writer woken earlier runs beside its callers on the
/// same cores more often than it needs to (bench/audit.rs shows the cost).
const WAKE_AT: usize = QUEUE / 2;
/// When the queue is full, a caller waits up to this long for the writer to
/// make room (back-pressure) before its entry is dropped and counted.
const MAX_WAIT_US: i64 = 1_000_000;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    Ok = 1,
    Invalid = 2,
    Revoked = 3,
    Expired = 4,
    RateLimited = 5,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Invalid => "invalid",
            Outcome::Revoked => "revoked",
            Outcome::Expired => "expired",
            Outcome::RateLimited => "rate_limited",
        }
    }
    fn from_u8(v: u8) -> Outcome {
        match v {
            1 => Outcome::Ok,
            3 => Outcome::Revoked,
            4 => Outcome::Expired,
            5 => Outcome::RateLimited,
            _ => Outcome::Invalid,
        }
    }
}

/// What an entry is.
pub const KIND_REQUEST: u8 = 0;
pub const KIND_AUDIT: u8 = 1;

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Entry {
    kind: u8,
    /// An audit entry that is not `allowed`, or a request that is not `ok`.
    failure: bool,
    outcome: u8,
    has_org: bool,
    has_key: bool,
    action_len: u8,
    addr_len: u8,
    db: u32,
    seq: u64,
    at: i64,
    org: [u8; 16],
    key: [u8; 16],
    action: [u8; ACTION_MAX],
    addr: [u8; ADDR_MAX],
    /// The audit trail's fields (audit entries only).
    pub(crate) audit: crate::audit_trail::Fields,
}

const EMPTY: Entry = Entry {
    kind: KIND_REQUEST,
    failure: false,
    outcome: 0,
    has_org: false,
    has_key: false,
    action_len: 0,
    addr_len: 0,
    db: 0,
    seq: 0,
    at: 0,
    org: [0; 16],
    key: [0; 16],
    action: [0; ACTION_MAX],
    addr: [0; ADDR_MAX],
    audit: crate::audit_trail::Fields::EMPTY,
};

/// What the holders of the queue's lock need to know of a slot without
/// reading its entry (a kilobyte, mostly text): scans of the queue read
/// these 16 bytes a slot, so that they hold the lock for microseconds.
#[derive(Copy, Clone)]
#[repr(C)]
struct Slot {
    /// The entry's database; 0: the slot is free.
    db: u32,
    kind: u8,
    failure: bool,
    seq: u64,
}

const FREE: Slot = Slot { db: 0, kind: KIND_REQUEST, failure: false, seq: 0 };

/// The most entries a writer takes from the queue at a time: what it copies
/// out while holding the lock (enqueuers wait meanwhile) stays small.
const TAKE_MAX: usize = 1024;

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Worker {
    db: u32,
    /// 0 free, 1 starting, 2 running
    state: u8,
    heartbeat: i64,
    /// The running writer's latch (its PGPROC's, in shared memory), or 0.
    latch: usize,
    /// The writer's pid once it runs (0 while starting).
    pid: i32,
}

#[derive(Copy, Clone)]
#[repr(C)]
pub struct LogState {
    workers: [Worker; WORKERS],
    /// Slot i of the queue: which entry ENTRIES[i] holds, if any.
    slots: [Slot; QUEUE],
    next_seq: u64,
    dropped: u64,
    cursor: usize,
    /// Queued failure entries (a request that is not `ok`, an audit entry
    /// that is not `allowed`).
    failures: usize,
    /// Queued request-log entries.
    requests: usize,
    /// Entries in use.
    queued: usize,
    /// Audit entries lost (queue full at commit, or a writer that failed),
    /// per database, not yet recorded in that database's trail.
    audit_lost: [(u32, u64); WORKERS],
    /// Audit entries lost since the server started, all databases: allowed
    /// entries (and batches a writer could not commit), and refusals or
    /// rollbacks (which anyone can make in bulk).
    audit_dropped: u64,
    audit_failures_dropped: u64,
    /// Room promised to transactions between their pre-commit and commit
    /// (audit_trail: their writes' entries are queued at commit, which
    /// must not wait or fail).
    reserved: usize,
    /// Where each database's audit chain ends, as its writer last committed it.
    heads: [crate::audit_trail::Head; WORKERS],
}

// SAFETY: plain repr(C) data; latches are kept as addresses (usize), only
// ever passed back to SetLatch, never dereferenced here.
unsafe impl PGRXSharedMemory for LogState {}

impl LogState {
    const fn new() -> LogState {
        LogState {
            workers: [Worker { db: 0, state: 0, heartbeat: 0, latch: 0, pid: 0 }; WORKERS],
            slots: [FREE; QUEUE],
            next_seq: 1,
            dropped: 0,
            cursor: 0,
            failures: 0,
            requests: 0,
            queued: 0,
            audit_lost: [(0, 0); WORKERS],
            audit_dropped: 0,
            audit_failures_dropped: 0,
            reserved: 0,
            heads: [crate::audit_trail::Head::EMPTY; WORKERS],
        }
    }
}

// SAFETY: a unique name, initialized once by init() in the postmaster.
static LOG: PgLwLock<LogState> = unsafe { PgLwLock::new(c"tenant_guard_request_log") };

/// The queue's entries: megabytes, so zeroed in place in shared memory
/// (an all-zero entry is an empty one); only ever touched under LOG's lock.
static ENTRIES: crate::pg::shmem::Region =
    crate::pg::shmem::Region::new(c"tenant_guard_log_queue", std::mem::size_of::<[Entry; QUEUE]>());

pub fn init() {
    pgrx::pg_shmem_init!(LOG = LogState::new());
    static REGIONS: [&crate::pg::shmem::Region; 2] = [&ENTRIES, crate::citus::CLAIMS_TABLE];
    crate::pg::shmem::register(&REGIONS);
}

/// The state and the entries, while LOG is held exclusively.
fn split<'a>(s: &'a mut pgrx::PgLwLockExclusiveGuard<'_, LogState>) -> (&'a mut LogState, &'a mut [Entry]) {
    // SAFETY: ENTRIES holds QUEUE entries (valid when zeroed), attached at
    // startup; the exclusive guard borrowed for 'a proves LOG is held, and
    // LOG guards the entries: nobody else touches them meanwhile.
    let entries = unsafe { std::slice::from_raw_parts_mut(ENTRIES.ptr().cast::<Entry>(), QUEUE) };
    (&mut **s, entries)
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Queue one outcome. Never writes a table; skipped on a hot standby.
pub fn record(
    outcome: Outcome,
    org: Option<[u8; 16]>,
    key: Option<[u8; 16]>,
    action: Option<&str>,
    addr: Option<&str>,
) {
    if crate::pg::in_recovery() {
        return;
    }
    let action = truncate(action.unwrap_or(""), ACTION_MAX);
    let addr = truncate(addr.unwrap_or(""), ADDR_MAX);
    let mut e = EMPTY;
    e.outcome = outcome as u8;
    e.failure = outcome != Outcome::Ok;
    if let Some(o) = org {
        e.has_org = true;
        e.org = o;
    }
    if let Some(k) = key {
        e.has_key = true;
        e.key = k;
    }
    e.action[..action.len()].copy_from_slice(action.as_bytes());
    e.action_len = action.len() as u8;
    e.addr[..addr.len()].copy_from_slice(addr.as_bytes());
    e.addr_len = addr.len() as u8;
    enqueue(e, true);
}

/// An empty audit entry of this database, stamped now, with its action
/// (the audit trail fills in the rest and calls [`enqueue`]).
pub(crate) fn audit_entry(action: &str, failure: bool) -> Entry {
    let mut e = EMPTY;
    e.kind = KIND_AUDIT;
    e.failure = failure;
    e.db = crate::pg::database_id();
    e.at = crate::pg::clock::now_us();
    let action = truncate(action, ACTION_MAX);
    e.action[..action.len()].copy_from_slice(action.as_bytes());
    e.action_len = action.len() as u8;
    e
}

impl Entry {
    pub(crate) fn set_org(&mut self, org: Option<[u8; 16]>) {
        self.has_org = org.is_some();
        self.org = org.unwrap_or_default();
    }
    pub(crate) fn set_key(&mut self, key: Option<[u8; 16]>) {
        self.has_key = key.is_some();
        self.key = key.unwrap_or_default();
    }
    pub(crate) fn set_outcome(&mut self, outcome: u8, failure: bool) {
        self.outcome = outcome;
        self.failure = failure;
    }
    pub(crate) fn org(&self) -> Option<[u8; 16]> {
        self.has_org.then_some(self.org)
    }
    pub(crate) fn key(&self) -> Option<[u8; 16]> {
        self.has_key.then_some(self.key)
    }
    pub(crate) fn outcome(&self) -> u8 {
        self.outcome
    }
    pub(crate) fn at(&self) -> i64 {
        self.at
    }
    pub(crate) fn action(&self) -> &str {
        std::str::from_utf8(&self.action[..self.action_len as usize]).unwrap_or("")
    }
}

/// The room an entry of this class may take: failures at most half the
/// queue, request-log entries at most three quarters (the rest is kept for
/// audit entries, some of which are queued at commit and cannot wait).
fn full(s: &LogState, e: &Entry) -> bool {
    (e.failure && s.failures >= QUEUE / 2)
        || (e.kind == KIND_REQUEST && s.requests >= QUEUE / 4 * 3)
        || s.queued + s.reserved >= QUEUE
}

/// Promise room for `n` audit entries that will be queued at commit (from a
/// pre-commit callback, where waiting and failing are allowed): waits for
/// the writer like `enqueue` does, up to MAX_WAIT_US. False when there is no
/// room; then nothing is reserved.
pub(crate) fn reserve(n: usize) -> bool {
    let db = crate::pg::database_id();
    let deadline = crate::pg::clock::now_us() + MAX_WAIT_US;
    loop {
        let mut s = LOG.exclusive();
        if s.queued + s.reserved + n <= QUEUE {
            s.reserved += n;
            return true;
        }
        let t = crate::pg::clock::now_us();
        let latch = match live_writer(&s, db, t) {
            Some(w) if t < deadline => w.latch,
            _ => return false,
        };
        drop(s);
        // SAFETY: a live writer's latch in shared memory (see enqueue).
        unsafe {
            pg_sys::SetLatch(latch as *mut pg_sys::Latch);
            pg_sys::pg_usleep(200);
        }
        pg_sys::check_for_interrupts!();
    }
}

/// Give back what `reserve` promised and was not used.
pub(crate) fn unreserve(n: usize) {
    let mut s = LOG.exclusive();
    s.reserved = s.reserved.saturating_sub(n);
}

/// Under the lock: put `e` in the first free slot from the cursor, with the
/// next sequence number, and count it. False when every slot is taken.
fn place(s: &mut LogState, entries: &mut [Entry], mut e: Entry) -> bool {
    let start = s.cursor;
    let Some(i) = (0..QUEUE).map(|i| (start + i) % QUEUE).find(|&i| s.slots[i].db == 0) else {
        return false;
    };
    if e.failure {
        s.failures += 1;
    }
    if e.kind == KIND_REQUEST {
        s.requests += 1;
    }
    e.seq = s.next_seq;
    s.next_seq += 1;
    s.cursor = (i + 1) % QUEUE;
    s.queued += 1;
    s.slots[i] = Slot { db: e.db, kind: e.kind, failure: e.failure, seq: e.seq };
    entries[i] = e;
    true
}

/// Queue an entry into room reserved for it (at commit or abort): never
/// waits, never raises; the reservation goes down by one either way.
pub(crate) fn enqueue_reserved(mut e: Entry) -> bool {
    let db = crate::pg::database_id();
    let now = crate::pg::clock::now_us();
    e.db = db;
    if e.at == 0 {
        e.at = now;
    }
    let mut guard = LOG.exclusive();
    let (s, entries) = split(&mut guard);
    s.reserved = s.reserved.saturating_sub(1);
    if !place(s, entries, e) {
        count_drop(s, &e);
        return false;
    }
    let launch = claim_worker(s, db, now);
    drop(guard);
    if let Some(idx) = launch {
        launch_writer(idx, db);
    }
    true
}

/// Queue `e` for its database's writer (started when none runs). When the
/// queue has no room for it: with `wait`, wait up to MAX_WAIT_US for the
/// writer to make room (back-pressure) when that can help; then, or at
/// once without `wait`, drop it and count it. Returns whether it was queued.
/// Without `wait` it never raises, sleeps or checks for interrupts (commit
/// and abort callbacks use it).
pub(crate) fn enqueue(e: Entry, wait: bool) -> bool {
    enqueue_counting(e, wait, true)
}

/// `enqueue` for an audited read that is refused when its entry finds no
/// room: such a loss counts as a refusal's, not as an allowed action's.
pub(crate) fn enqueue_read(mut e: Entry) -> bool {
    let queued = enqueue_counting(e, true, false);
    if !queued {
        e.failure = true;
        count_drop(&mut LOG.exclusive(), &e);
    }
    queued
}

fn enqueue_counting(mut e: Entry, wait: bool, count: bool) -> bool {
    let db = crate::pg::database_id();
    let now = crate::pg::clock::now_us();
    e.db = db;
    if e.at == 0 {
        e.at = now;
    }
    let deadline = now + MAX_WAIT_US;
    // Whether waiting can help, re-judged every 10 ms of waiting.
    let mut may_wait: Option<(bool, i64)> = None;
    let (launch, wake, queued) = loop {
        let mut guard = LOG.exclusive();
        let (s, entries) = split(&mut guard);
        if full(s, &e) || !place(s, entries, e) {
            // Full: wait for our writer to make room rather than lose the
            // entry, if that can help (see worth_waiting); otherwise, or after
            // MAX_WAIT_US, drop it and count it.
            let t = crate::pg::clock::now_us();
            let worth = wait
                && match may_wait {
                    Some((w, at)) if t - at < 10_000 => w,
                    _ => {
                        let w = worth_waiting(&s.workers, &s.slots, db, t, &e);
                        may_wait = Some((w, t));
                        w
                    }
                };
            match live_writer(s, db, t) {
                Some(w) if worth && t < deadline => {
                    let latch = w.latch;
                    drop(guard);
                    // SAFETY: `latch` is a live writer's process latch in
                    // shared memory (a stale one at worst wakes another
                    // process once); pg_usleep and InterruptPending are plain.
                    let interrupted = unsafe {
                        pg_sys::SetLatch(latch as *mut pg_sys::Latch);
                        pg_sys::pg_usleep(200);
                        pg_sys::InterruptPending != 0
                    };
                    if interrupted && count {
                        // A cancel (or termination) ends the wait: count the entry.
                        count_drop(&mut LOG.exclusive(), &e);
                    }
                    pg_sys::check_for_interrupts!();
                    continue;
                }
                _ => {
                    if count {
                        count_drop(s, &e);
                    }
                    break (claim_worker(s, db, now), None, false);
                }
            }
        }
        let launch = claim_worker(s, db, now);
        let wake = if s.queued >= WAKE_AT {
            s.workers.iter().find(|w| w.db == db && w.state == 2 && w.latch != 0).map(|w| w.latch)
        } else {
            None
        };
        break (launch, wake, true);
    };
    if let Some(latch) = wake {
        // At worst a stale pointer wakes some other process once: harmless.
        // SAFETY: see above: a latch in shared memory.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
    if let Some(idx) = launch {
        launch_writer(idx, db);
    }
    queued
}

/// Start the log writer of `db` in worker slot `idx` (claimed by claim_worker).
fn launch_writer(idx: usize, db: u32) {
    {
        let started = BackgroundWorkerBuilder::new("tenant_guard log writer")
            .set_type("tenant_guard log writer")
            .set_library("tenant_guard")
            .set_function("tenant_guard_request_log_main")
            .set_argument(Some(pg_sys::Datum::from(((idx as u64) << 32) | db as u64)))
            .enable_spi_access()
            .set_start_time(BgWorkerStartTime::RecoveryFinished)
            .set_restart_time(None)
            .load_dynamic()
            .is_ok();
        if !started {
            LOG.exclusive().workers[idx].state = 0;
            pgrx::warning!("tenant_guard: could not start the log writer (max_worker_processes?); entries stay queued");
        }
    }
}

/// Count one entry that could not be queued: request-log entries in
/// `dropped`; audit entries as lost (allowed ones and failures apart), and
/// per database, for its trail to record that it has a gap.
fn count_drop(s: &mut LogState, e: &Entry) {
    if e.kind == KIND_REQUEST {
        s.dropped += 1;
        return;
    }
    if e.failure {
        s.audit_failures_dropped += 1;
    } else {
        s.audit_dropped += 1;
    }
    note_gap(s, e.db, 1);
}

/// `n` audit entries of `db` are lost: the trail records it at its next batch.
fn note_gap(s: &mut LogState, db: u32, n: u64) {
    let slot = s
        .audit_lost
        .iter()
        .position(|(d, _)| *d == db)
        .or_else(|| s.audit_lost.iter().position(|(d, n)| *d == 0 || *n == 0));
    if let Some(i) = slot {
        s.audit_lost[i].0 = db;
        s.audit_lost[i].1 += n;
    }
}

fn live_writer(s: &LogState, db: u32, now: i64) -> Option<&Worker> {
    s.workers.iter().find(|w| w.db == db && w.state == 2 && w.latch != 0 && now - w.heartbeat < STALE_US)
}

/// A writer that took a batch within this long is draining the queue.
const DRAINING_US: i64 = 1_000_000;

/// With no room for `e`: will waiting for our database's writer make room?
/// Only if it is running, and if at most half of what fills the room `e`
/// needs (failures, request-log entries, or the whole queue) belongs to
/// other databases whose writers are not draining it (none could start: all
/// 16 slots taken; or it is stalled or failing): the queue is shared, and
/// waiting on entries that do not drain would only delay every caller by
/// MAX_WAIT_US before dropping anyway.
fn worth_waiting(workers: &[Worker], slots: &[Slot], db: u32, now: i64, e: &Entry) -> bool {
    let ours_live = workers.iter().any(|w| w.db == db && w.state == 2 && w.latch != 0 && now - w.heartbeat < STALE_US);
    if !ours_live {
        return false;
    }
    let draining =
        |d: u32| d == db || workers.iter().any(|w| w.db == d && w.state == 2 && now - w.heartbeat < DRAINING_US);
    let stuck =
        |class: &dyn Fn(&Slot) -> bool| slots.iter().filter(|x| x.db != 0 && class(x) && !draining(x.db)).count();
    // Each room `e` needs (the whole queue; the failures' half; the request
    // log's three quarters) must be at most half held by stuck entries.
    let mut worth = stuck(&|_| true) <= QUEUE / 2;
    if e.failure {
        worth &= stuck(&|x| x.failure) <= QUEUE / 4;
    }
    if e.kind == KIND_REQUEST {
        worth &= stuck(&|x| x.kind == KIND_REQUEST) <= QUEUE / 4 * 3 / 2;
    }
    worth
}

/// Under the lock: is a live writer responsible for `db`? If not, reserve a
/// worker slot and return it for the caller to launch.
fn claim_worker(s: &mut LogState, db: u32, now: i64) -> Option<usize> {
    // A writer whose process is alive keeps its database, even held up (a
    // lock, a long batch): a second one would only wait for the same thing
    // with another batch in hand. One that stopped beating without a known
    // process (starting) is handed on.
    let live =
        |w: &Worker| w.state != 0 && (now - w.heartbeat < STALE_US || (w.pid != 0 && crate::pg::backend_alive(w.pid)));
    if s.workers.iter().any(|w| w.db == db && live(w)) {
        return None;
    }
    let idx = s.workers.iter().position(|w| !live(w))?;
    s.workers[idx] = Worker { db, state: 1, heartbeat: now, latch: 0, pid: 0 };
    Some(idx)
}

/// Entries queued and not yet written, and entries dropped because the queue was full.
#[pg_extern(volatile)]
fn request_log_queue() -> TableIterator<'static, (name!(queued, i64), name!(dropped, i64))> {
    let s = LOG.share();
    TableIterator::once((s.queued as i64, s.dropped as i64))
}

struct Row {
    at: i64,
    outcome: Outcome,
    org: Option<[u8; 16]>,
    key: Option<[u8; 16]>,
    action: Option<String>,
    addr: Option<String>,
}

/// What a writer takes from the queue in one go.
struct Batch {
    requests: Vec<Row>,
    audit: Vec<Entry>,
    /// Audit entries of this database lost since its trail last recorded a loss.
    audit_lost: u64,
}

/// Take the oldest entries of `db` (at most TAKE_MAX) from the queue, as
/// the writer of worker slot `slot`. Returns them, whether the writer is
/// to exit (nothing to do for IDLE_EXIT_US; decided under the lock that
/// enqueuers take, so nothing is stranded) and whether more are queued.
fn take_batch(slot: usize, db: u32, idle_since: i64) -> (Batch, bool, bool) {
    // Allocated before the lock is taken: while it is held, only the slots
    // are scanned and the taken entries copied out.
    let mut mine: Vec<(u64, usize)> = Vec::with_capacity(QUEUE);
    let mut taken: Vec<Entry> = Vec::with_capacity(TAKE_MAX);
    let mut b = Batch { requests: Vec::new(), audit: Vec::new(), audit_lost: 0 };
    let (exit, more) = {
        let mut guard = LOG.exclusive();
        let (s, entries) = split(&mut guard);
        let now = crate::pg::clock::now_us();
        let me = crate::pg::pid();
        let w = &mut s.workers[slot];
        // Our slot, unless we were stalled long enough for it to be handed on.
        let ours = w.db == db && (w.pid == me || (w.pid == 0 && w.state == 1));
        if !ours {
            return (b, true, false);
        }
        w.pid = me;
        w.heartbeat = now;
        w.state = 2;
        // SAFETY: a plain global: this process's latch, in shared memory.
        w.latch = unsafe { pg_sys::MyLatch } as usize;
        mine.extend(s.slots.iter().enumerate().filter(|(_, m)| m.db == db).map(|(i, m)| (m.seq, i)));
        let more = mine.len() > TAKE_MAX;
        if more {
            mine.select_nth_unstable(TAKE_MAX);
            mine.truncate(TAKE_MAX);
        }
        mine.sort_unstable();
        for &(_, i) in &mine {
            let m = std::mem::replace(&mut s.slots[i], FREE);
            s.failures = s.failures.saturating_sub(m.failure as usize);
            if m.kind == KIND_REQUEST {
                s.requests = s.requests.saturating_sub(1);
            }
            taken.push(entries[i]);
        }
        s.queued -= taken.len();
        if let Some(l) = s.audit_lost.iter_mut().find(|(d, n)| *d == db && *n > 0) {
            b.audit_lost = std::mem::take(&mut l.1);
        }
        let exit = taken.is_empty() && b.audit_lost == 0 && now - idle_since > IDLE_EXIT_US;
        if exit {
            s.workers[slot].state = 0;
            s.workers[slot].latch = 0;
            s.workers[slot].pid = 0;
        }
        (exit, more)
    };
    for e in taken {
        if e.kind == KIND_AUDIT {
            b.audit.push(e);
            continue;
        }
        b.requests.push(Row {
            at: e.at,
            outcome: Outcome::from_u8(e.outcome),
            org: e.has_org.then_some(e.org),
            key: e.has_key.then_some(e.key),
            action: (e.action_len > 0)
                .then(|| String::from_utf8_lossy(&e.action[..e.action_len as usize]).into_owned()),
            addr: (e.addr_len > 0).then(|| String::from_utf8_lossy(&e.addr[..e.addr_len as usize]).into_owned()),
        });
    }
    (b, exit, more)
}

/// Under the queue's lock: run `f` on the audit chain head kept for `db`
/// (an empty one is claimed when there is none; with all taken, the least
/// recently used is recycled: its writer then reads its head from the table).
pub(crate) fn with_head<R>(db: u32, f: impl FnOnce(&mut crate::audit_trail::Head) -> R) -> R {
    let mut s = LOG.exclusive();
    let i = s.heads.iter().position(|h| h.db == db).unwrap_or_else(|| {
        (0..WORKERS).min_by_key(|&i| (s.heads[i].db != 0, s.heads[i].used_at)).expect("WORKERS > 0")
    });
    if s.heads[i].db != db {
        s.heads[i] = crate::audit_trail::Head { db, ..crate::audit_trail::Head::EMPTY };
    }
    s.heads[i].used_at = crate::pg::clock::now_us();
    f(&mut s.heads[i])
}

/// Audit entries lost since the server started (all databases), and those
/// not yet recorded in their database's trail.
/// `n` audit entries of `db` that a writer could not write (no trail there).
pub(crate) fn count_lost(db: u32, n: u64) {
    if n > 0 {
        let mut s = LOG.exclusive();
        s.audit_dropped += n;
        note_gap(&mut s, db, n);
    }
}

/// Audit entries lost since the server started (all databases): allowed
/// ones, refusals and rollbacks; and those not yet recorded in their
/// database's trail.
pub(crate) fn audit_losses() -> (u64, u64, u64) {
    let s = LOG.share();
    (s.audit_dropped, s.audit_failures_dropped, s.audit_lost.iter().map(|(_, n)| n).sum())
}

/// Entries queued now (audit entries among them).
pub(crate) fn queued() -> (usize, usize) {
    let s = LOG.share();
    (s.queued, s.queued - s.requests)
}

const PG_EPOCH_UNIX_SECS: f64 = 946_684_800.0;

// The writer runs as the bootstrap superuser: its SQL names every function,
// operator and type with its schema, on top of the pinned search_path
// (see pin_session_settings).
const INSERT_SQL: &str = "INSERT INTO tenant_guard.request_log (at, org_id, api_key_id, outcome, action, client_addr)
     SELECT pg_catalog.to_timestamp(u.at), u.org, u.key, u.outcome, u.action, u.addr::pg_catalog.inet
       FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.float8[]), pg_catalog.unnest($2::pg_catalog.uuid[]),
                       pg_catalog.unnest($3::pg_catalog.uuid[]), pg_catalog.unnest($4::pg_catalog.text[]),
                       pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.text[]))
            AS u(at, org, key, outcome, action, addr)";

// last_used_at: the latest successful use per key. Rows another transaction
// has locked (say, one revoking the key, which may itself be waiting for room
// in the queue) are skipped: a later batch sets them.
const LAST_USED_SQL: &str = "UPDATE tenant_guard.api_keys k SET last_used_at = pg_catalog.to_timestamp(u.t)
       FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.uuid[]), pg_catalog.unnest($2::pg_catalog.float8[])) AS u(id, t)
      WHERE k.id OPERATOR(pg_catalog.=) u.id
        AND (k.last_used_at IS NULL OR k.last_used_at OPERATOR(pg_catalog.<) pg_catalog.to_timestamp(u.t))
        AND k.id IN (SELECT l.id FROM tenant_guard.api_keys l WHERE l.id OPERATOR(pg_catalog.=) ANY ($1)
                      FOR NO KEY UPDATE SKIP LOCKED)";

thread_local! {
    /// The writer's two statements, planned once per writer process.
    static PLANS: std::cell::RefCell<Option<[OwnedPreparedStatement; 2]>> = const { std::cell::RefCell::new(None) };
}

thread_local! {
    /// Days (since 2000-01-01, UTC) whose request-log partition this writer
    /// has made sure of; None until it knew whether the log is partitioned.
    static PARTITIONS: std::cell::RefCell<Option<std::collections::HashSet<i32>>> = const { std::cell::RefCell::new(None) };
}

/// Make sure the partitions of the rows' days, and of the day after each,
/// exist (a catalog from before the log was partitioned has none to make).
fn ensure_partitions(rows: &[Row]) {
    let partitioned = PARTITIONS.with(|p| p.borrow().is_some());
    if !partitioned {
        let has = Spi::get_one::<bool>(
            "SELECT pg_catalog.to_regprocedure('tenant_guard._request_log_partition(date)') IS NOT NULL",
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        if !has {
            return;
        }
        PARTITIONS.with(|p| *p.borrow_mut() = Some(Default::default()));
    }
    let days: std::collections::BTreeSet<i32> = rows
        .iter()
        .flat_map(|r| {
            let d = r.at.div_euclid(86_400_000_000) as i32;
            [d, d + 1]
        })
        .filter(|d| PARTITIONS.with(|p| !p.borrow().as_ref().is_some_and(|s| s.contains(d))))
        .collect();
    if days.is_empty() {
        return;
    }
    let list: Vec<i32> = days.iter().copied().collect();
    Spi::run_with_args(
        "SELECT tenant_guard._request_log_partition(DATE '2000-01-01' OPERATOR(pg_catalog.+) d)
           FROM pg_catalog.unnest($1::pg_catalog.int4[]) d",
        &[list.into()],
    )
    .expect("making the request log's partitions");
    PARTITIONS.with(|p| p.borrow_mut().get_or_insert_with(Default::default).extend(days));
}

fn write_batch(rows: &[Row]) {
    use pgrx::{PgBuiltInOids as T, PgOid};
    ensure_partitions(rows);
    let at: Vec<f64> = rows.iter().map(|r| PG_EPOCH_UNIX_SECS + r.at as f64 / 1e6).collect();
    let org: Vec<Option<Uuid>> = rows.iter().map(|r| r.org.map(Uuid::from_bytes)).collect();
    let key: Vec<Option<Uuid>> = rows.iter().map(|r| r.key.map(Uuid::from_bytes)).collect();
    let outcome: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
    let action: Vec<Option<String>> = rows.iter().map(|r| r.action.clone()).collect();
    let addr: Vec<Option<String>> = rows.iter().map(|r| r.addr.clone()).collect();
    let mut last: std::collections::HashMap<[u8; 16], f64> = std::collections::HashMap::new();
    for (r, t) in rows.iter().zip(&at) {
        if let (Outcome::Ok, Some(k)) = (r.outcome, r.key) {
            let e = last.entry(k).or_insert(*t);
            *e = e.max(*t);
        }
    }
    Spi::connect_mut(|client| {
        let plans = match PLANS.with(|p| p.borrow_mut().take()) {
            Some(p) => p,
            None => {
                let b = |o: T| PgOid::BuiltIn(o);
                [
                    client
                        .prepare_mut(
                            INSERT_SQL,
                            &[
                                b(T::FLOAT8ARRAYOID),
                                b(T::UUIDARRAYOID),
                                b(T::UUIDARRAYOID),
                                b(T::TEXTARRAYOID),
                                b(T::TEXTARRAYOID),
                                b(T::TEXTARRAYOID),
                            ],
                        )?
                        .keep(),
                    client.prepare_mut(LAST_USED_SQL, &[b(T::UUIDARRAYOID), b(T::FLOAT8ARRAYOID)])?.keep(),
                ]
            }
        };
        let r = client
            .update(&plans[0], None, &[at.into(), org.into(), key.into(), outcome.into(), action.into(), addr.into()])
            .map(|_| ());
        let r = r.and_then(|_| {
            if last.is_empty() {
                return Ok(());
            }
            let ids: Vec<Uuid> = last.keys().map(|k| Uuid::from_bytes(*k)).collect();
            let ts: Vec<f64> = last.values().copied().collect();
            client.update(&plans[1], None, &[ids.into(), ts.into()]).map(|_| ())
        });
        PLANS.with(|p| *p.borrow_mut() = Some(plans));
        r
    })
    .expect("writing the request log");
}

/// The writer connects as the bootstrap superuser, so it picks up the
/// database's and that role's settings (ALTER DATABASE ... SET, which a
/// database owner may run). Override the ones that could hijack its SQL
/// (search_path: a function or operator the owner planted, run as superuser)
/// or stop it from writing (read-only transactions, lock and statement timeouts).
fn pin_session_settings() {
    // ALTER DATABASE ... SET role / session_authorization would make the
    // writer someone without INSERT on request_log: be the bootstrap
    // superuser again, or give up loudly.
    // SAFETY: the writer is a background worker connected as the bootstrap
    // superuser; these only compare and reset its session user.
    unsafe {
        if pg_sys::GetSessionUserId() != pg_sys::GetAuthenticatedUserId() {
            pg_sys::SetSessionAuthorization(pg_sys::GetAuthenticatedUserId(), true);
        }
    }
    let settings: [(&std::ffi::CStr, &std::ffi::CStr); 7] = [
        (c"role", c"none"),
        (c"search_path", c"pg_catalog, pg_temp"),
        (c"default_transaction_read_only", c"off"),
        (c"default_transaction_isolation", c"read committed"),
        (c"lock_timeout", c"0"),
        (c"statement_timeout", c"0"),
        (c"idle_in_transaction_session_timeout", c"0"),
    ];
    for (name, value) in settings {
        crate::pg::settings::set_as_superuser(name, value, false);
    }
    // SAFETY: a catalog check of the current user.
    if !unsafe { pg_sys::superuser() } {
        pgrx::error!("tenant_guard request log writer: not running as a superuser; database settings for role or session_authorization?");
    }
}

thread_local! {
    /// Entries taken from the queue and not yet committed to their table:
    /// (request-log entries, audit entries).
    static IN_FLIGHT: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Runs however the writer exits (idle, SIGTERM, or an ERROR while writing,
/// which ends a background worker): free its slot at once, so callers stop
/// waiting on it and the next one starts a new writer, and count a batch it
/// took but could not commit as dropped.
#[pg_guard]
unsafe extern "C-unwind" fn release_slot(_code: i32, arg: pg_sys::Datum) {
    let arg = arg.value() as u64;
    let (slot, db) = ((arg >> 32) as usize, arg as u32);
    let (requests, audit) = IN_FLIGHT.with(|c| c.replace((0, 0)));
    let mut s = LOG.exclusive();
    s.dropped += requests;
    if audit > 0 {
        s.audit_dropped += audit;
        note_gap(&mut s, db, audit);
    }
    let w = &mut s.workers[slot];
    if w.db == db && w.pid == pg_sys::MyProcPid {
        *w = Worker { db: 0, state: 0, heartbeat: 0, latch: 0, pid: 0 };
    }
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn tenant_guard_request_log_main(arg: pg_sys::Datum) {
    let raw = arg;
    let arg = arg.value() as u64;
    let slot = (arg >> 32) as usize;
    let db = pg_sys::Oid::from(arg as u32);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    // SAFETY: registers a static callback with its slot number as the datum.
    unsafe { pg_sys::before_shmem_exit(Some(release_slot), raw) };
    {
        // Ours from now on, so release_slot frees it even if we fail below.
        let mut s = LOG.exclusive();
        let w = &mut s.workers[slot];
        if w.db == db.to_u32() && w.pid == 0 && w.state == 1 {
            w.pid = crate::pg::pid();
        }
    }
    // In a transaction: the superuser check reads the catalog.
    BackgroundWorker::transaction(pin_session_settings);
    let mut idle_since = crate::pg::clock::now_us();
    loop {
        if BackgroundWorker::sighup_received() {
            // A rotated passphrase reaches the writer too.
            // SAFETY: reloads the configuration files, as any backend does on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let (b, exit, more) = take_batch(slot, db.to_u32(), idle_since);
        // The trail first, in its own transaction: a request log that cannot
        // be written (or the other way round) loses nothing of the other.
        if !b.audit.is_empty() || b.audit_lost > 0 {
            IN_FLIGHT.with(|c| c.set((b.requests.len() as u64, b.audit.len() as u64)));
            let head = BackgroundWorker::transaction(|| crate::audit_trail::write_batch(&b.audit, b.audit_lost));
            crate::audit_trail::committed(db.to_u32(), head);
            IN_FLIGHT.with(|c| c.set((b.requests.len() as u64, 0)));
        }
        if !b.requests.is_empty() {
            IN_FLIGHT.with(|c| c.set((b.requests.len() as u64, 0)));
            BackgroundWorker::transaction(|| write_batch(&b.requests));
        }
        IN_FLIGHT.with(|c| c.set((0, 0)));
        if !b.requests.is_empty() || !b.audit.is_empty() {
            idle_since = crate::pg::clock::now_us();
        }
        // More queued than one take: go on at once (still answering SIGTERM).
        let pause = if more { Duration::ZERO } else { Duration::from_millis(100) };
        if exit || !BackgroundWorker::wait_latch(Some(pause)) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(db: u32, heartbeat: i64) -> Worker {
        Worker { db, state: 2, heartbeat, latch: 1, pid: 1 }
    }

    /// A request-log entry waiting for room (a failure or not).
    fn probe(failure: bool) -> Entry {
        Entry { failure, ..EMPTY }
    }

    fn queue(fill: &[(u32, usize, Outcome)]) -> Vec<Slot> {
        let mut q = vec![FREE; QUEUE];
        let mut i = 0;
        for &(db, n, outcome) in fill {
            for _ in 0..n {
                q[i] = Slot { db, kind: KIND_REQUEST, failure: outcome != Outcome::Ok, seq: i as u64 };
                i += 1;
            }
        }
        q
    }

    #[test]
    fn waiting_is_worth_it_only_when_draining_writers_hold_the_queue() {
        let now = 100_000_000;
        let none = [Worker { db: 0, state: 0, heartbeat: 0, latch: 0, pid: 0 }; 2];
        let full_of_ours = queue(&[(1, QUEUE, Outcome::Ok)]);
        // Our writer runs: wait. No writer of ours (or a stale one): don't.
        assert!(worth_waiting(&[writer(1, now - 50_000), none[0]], &full_of_ours, 1, now, &probe(false)));
        assert!(!worth_waiting(&none, &full_of_ours, 1, now, &probe(false)));
        assert!(!worth_waiting(&[writer(1, now - STALE_US - 1), none[0]], &full_of_ours, 1, now, &probe(false)));
        // Our writer may be stalled (it is ours to wait for, up to MAX_WAIT_US).
        assert!(worth_waiting(&[writer(1, now - 3_000_000), none[0]], &full_of_ours, 1, now, &probe(false)));
        // Three busy databases whose writers all drain: wait.
        let shared = queue(&[(1, 1366, Outcome::Ok), (2, 1365, Outcome::Ok), (3, 1365, Outcome::Ok)]);
        let all = [writer(1, now), writer(2, now - 10_000), writer(3, now - 900_000)];
        assert!(worth_waiting(&all, &shared, 1, now, &probe(false)));
        // Database 2 has no writer and holds most of the queue: don't wait on it.
        let stuck = queue(&[(1, 1000, Outcome::Ok), (2, QUEUE - 1000, Outcome::Ok)]);
        assert!(!worth_waiting(&[writer(1, now), none[0]], &stuck, 1, now, &probe(false)));
        // ... nor when its writer has not taken a batch for over a second.
        assert!(!worth_waiting(&[writer(1, now), writer(2, now - 2_000_000)], &stuck, 1, now, &probe(false)));
        assert!(worth_waiting(&[writer(1, now), writer(2, now - 20_000)], &stuck, 1, now, &probe(false)));
        // The failure half counts failure entries only.
        let failures = queue(&[(2, QUEUE / 2, Outcome::Invalid), (1, QUEUE / 2, Outcome::Ok)]);
        assert!(!worth_waiting(&[writer(1, now), none[0]], &failures, 1, now, &probe(true)));
        assert!(worth_waiting(&[writer(1, now), writer(2, now)], &failures, 1, now, &probe(true)));
    }
}
