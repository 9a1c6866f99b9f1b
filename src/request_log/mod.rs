//! The request log: authenticate() queues each outcome in shared memory, and
//! a background worker per database writes the queue to
//! `tenant_guard.request_log` in its own transactions, so a failed attempt is
//! recorded even when the caller's transaction rolls back. The same worker
//! records `api_keys.last_used_at`, so authenticate() itself never writes.

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
const WAKE_AT: usize = QUEUE / 4;
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

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Entry {
    used: bool,
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
}

const EMPTY: Entry = Entry {
    used: false,
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
};

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
    entries: [Entry; QUEUE],
    workers: [Worker; WORKERS],
    next_seq: u64,
    dropped: u64,
    cursor: usize,
    /// Queued failure entries (anything but `ok`).
    failures: usize,
    /// Entries in use.
    queued: usize,
}

// SAFETY: plain repr(C) data; latches are kept as addresses (usize), only
// ever passed back to SetLatch, never dereferenced here.
unsafe impl PGRXSharedMemory for LogState {}

impl LogState {
    const fn new() -> LogState {
        LogState {
            entries: [EMPTY; QUEUE],
            workers: [Worker { db: 0, state: 0, heartbeat: 0, latch: 0, pid: 0 }; WORKERS],
            next_seq: 1,
            dropped: 0,
            cursor: 0,
            failures: 0,
            queued: 0,
        }
    }
}

// SAFETY: a unique name, initialized once by init() in the postmaster.
static LOG: PgLwLock<LogState> = unsafe { PgLwLock::new(c"tenant_guard_request_log") };

pub fn init() {
    pgrx::pg_shmem_init!(LOG = LogState::new());
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
    let db = crate::pg::database_id();
    let now = crate::pg::clock::now_us();
    let action = truncate(action.unwrap_or(""), ACTION_MAX);
    let addr = truncate(addr.unwrap_or(""), ADDR_MAX);
    let deadline = now + MAX_WAIT_US;
    // Failures (anyone can make those by the million: garbage keys, or one's
    // own revoked or throttled key) may fill at most half the queue, so they
    // cannot crowd out successful requests.
    let failure = outcome != Outcome::Ok;
    // Whether waiting can help, re-judged every 10 ms of waiting.
    let mut may_wait: Option<(bool, i64)> = None;
    let (launch, wake) = loop {
        let mut s = LOG.exclusive();
        let full = if failure { s.failures >= QUEUE / 2 } else { s.queued >= QUEUE };
        let start = s.cursor;
        let slot = if full { None } else { (0..QUEUE).map(|i| (start + i) % QUEUE).find(|&i| !s.entries[i].used) };
        let Some(i) = slot else {
            // Full: wait for our writer to make room rather than lose the
            // entry, if that can help (see worth_waiting); otherwise, or after
            // MAX_WAIT_US, drop it and count it.
            let t = crate::pg::clock::now_us();
            let wait = match may_wait {
                Some((w, at)) if t - at < 10_000 => w,
                _ => {
                    let w = worth_waiting(&s.workers, &s.entries, db, t, failure);
                    may_wait = Some((w, t));
                    w
                }
            };
            match live_writer(&s, db, t) {
                Some(w) if wait && t < deadline => {
                    let latch = w.latch;
                    drop(s);
                    // SAFETY: `latch` is a live writer's process latch in
                    // shared memory (a stale one at worst wakes another
                    // process once); pg_usleep and InterruptPending are plain.
                    unsafe {
                        pg_sys::SetLatch(latch as *mut pg_sys::Latch);
                        pg_sys::pg_usleep(200);
                        if pg_sys::InterruptPending != 0 {
                            // A cancel (or termination) ends the wait: count the entry.
                            LOG.exclusive().dropped += 1;
                        }
                    }
                    pg_sys::check_for_interrupts!();
                    continue;
                }
                _ => {
                    s.dropped += 1;
                    break (claim_worker(&mut s, db, now), None);
                }
            }
        };
        if failure {
            s.failures += 1;
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        s.cursor = (i + 1) % QUEUE;
        s.queued += 1;
        let e = &mut s.entries[i];
        *e = EMPTY;
        e.used = true;
        e.outcome = outcome as u8;
        e.db = db;
        e.seq = seq;
        e.at = now;
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
        let launch = claim_worker(&mut s, db, now);
        let wake = if s.queued >= WAKE_AT {
            s.workers.iter().find(|w| w.db == db && w.state == 2 && w.latch != 0).map(|w| w.latch)
        } else {
            None
        };
        break (launch, wake);
    };
    if let Some(latch) = wake {
        // At worst a stale pointer wakes some other process once: harmless.
        // SAFETY: see above: a latch in shared memory.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
    if let Some(idx) = launch {
        let started = BackgroundWorkerBuilder::new("tenant_guard request log writer")
            .set_type("tenant_guard request log")
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
            pgrx::warning!(
                "tenant_guard: could not start the request-log writer (max_worker_processes?); entries stay queued"
            );
        }
    }
}

fn live_writer(s: &LogState, db: u32, now: i64) -> Option<&Worker> {
    s.workers.iter().find(|w| w.db == db && w.state == 2 && w.latch != 0 && now - w.heartbeat < STALE_US)
}

/// A writer that took a batch within this long is draining the queue.
const DRAINING_US: i64 = 1_000_000;

/// With the queue (or its failure half) full: will waiting for our
/// database's writer make room? Only if it is running, and if at most half of
/// what fills the queue belongs to other databases whose writers are not
/// draining it (none could start: all 16 slots taken; or it is stalled or
/// failing): the queue is shared, and waiting on entries that do not drain
/// would only delay every caller by MAX_WAIT_US before dropping anyway.
fn worth_waiting(workers: &[Worker], entries: &[Entry], db: u32, now: i64, failure: bool) -> bool {
    let ours_live = workers.iter().any(|w| w.db == db && w.state == 2 && w.latch != 0 && now - w.heartbeat < STALE_US);
    if !ours_live {
        return false;
    }
    let draining =
        |d: u32| d == db || workers.iter().any(|w| w.db == d && w.state == 2 && now - w.heartbeat < DRAINING_US);
    let counted = |e: &&Entry| e.used && (!failure || e.outcome != Outcome::Ok as u8);
    let stuck = entries.iter().filter(counted).filter(|e| !draining(e.db)).count();
    let limit = if failure { QUEUE / 2 } else { QUEUE };
    stuck <= limit / 2
}

/// Under the lock: is a live writer responsible for `db`? If not, reserve a
/// worker slot and return it for the caller to launch.
fn claim_worker(s: &mut LogState, db: u32, now: i64) -> Option<usize> {
    let live = |w: &Worker| w.state != 0 && now - w.heartbeat < STALE_US;
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
    seq: u64,
    at: i64,
    outcome: Outcome,
    org: Option<[u8; 16]>,
    key: Option<[u8; 16]>,
    action: Option<String>,
    addr: Option<String>,
}

fn take_batch(slot: usize, db: u32, idle_since: i64) -> (Vec<Row>, bool) {
    let mut s = LOG.exclusive();
    let now = crate::pg::clock::now_us();
    let me = crate::pg::pid();
    let w = &mut s.workers[slot];
    // Our slot, unless we were stalled long enough for it to be handed on.
    let ours = w.db == db && (w.pid == me || (w.pid == 0 && w.state == 1));
    if !ours {
        return (Vec::new(), true);
    }
    w.pid = me;
    s.workers[slot].heartbeat = now;
    s.workers[slot].state = 2;
    // SAFETY: a plain global: this process's latch, in shared memory.
    s.workers[slot].latch = unsafe { pg_sys::MyLatch } as usize;
    let mut rows = Vec::new();
    let mut freed_failures = 0;
    for e in s.entries.iter_mut().filter(|e| e.used && e.db == db) {
        freed_failures += (e.outcome != Outcome::Ok as u8) as usize;
        rows.push(Row {
            seq: e.seq,
            at: e.at,
            outcome: Outcome::from_u8(e.outcome),
            org: e.has_org.then_some(e.org),
            key: e.has_key.then_some(e.key),
            action: (e.action_len > 0)
                .then(|| String::from_utf8_lossy(&e.action[..e.action_len as usize]).into_owned()),
            addr: (e.addr_len > 0).then(|| String::from_utf8_lossy(&e.addr[..e.addr_len as usize]).into_owned()),
        });
        e.used = false;
    }
    s.failures = s.failures.saturating_sub(freed_failures);
    s.queued -= rows.len();
    // Exit decision taken under the same lock enqueuers use, so nothing is stranded.
    let exit = rows.is_empty() && now - idle_since > IDLE_EXIT_US;
    if exit {
        s.workers[slot].state = 0;
        s.workers[slot].latch = 0;
        s.workers[slot].pid = 0;
    }
    rows.sort_by_key(|r| r.seq);
    (rows, exit)
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

fn write_batch(rows: &[Row]) {
    use pgrx::{PgBuiltInOids as T, PgOid};
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
    /// Entries taken from the queue and not yet committed to the table.
    static IN_FLIGHT: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Runs however the writer exits (idle, SIGTERM, or an ERROR while writing,
/// which ends a background worker): free its slot at once, so callers stop
/// waiting on it and the next one starts a new writer, and count a batch it
/// took but could not commit as dropped.
#[pg_guard]
unsafe extern "C-unwind" fn release_slot(_code: i32, arg: pg_sys::Datum) {
    let arg = arg.value() as u64;
    let (slot, db) = ((arg >> 32) as usize, arg as u32);
    let lost = IN_FLIGHT.with(|c| c.replace(0));
    let mut s = LOG.exclusive();
    s.dropped += lost;
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
        let (rows, exit) = take_batch(slot, db.to_u32(), idle_since);
        if !rows.is_empty() {
            IN_FLIGHT.with(|c| c.set(rows.len() as u64));
            BackgroundWorker::transaction(|| write_batch(&rows));
            IN_FLIGHT.with(|c| c.set(0));
            idle_since = crate::pg::clock::now_us();
        }
        if exit || !BackgroundWorker::wait_latch(Some(Duration::from_millis(100))) {
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

    fn queue(fill: &[(u32, usize, Outcome)]) -> Vec<Entry> {
        let mut q = vec![EMPTY; QUEUE];
        let mut i = 0;
        for &(db, n, outcome) in fill {
            for _ in 0..n {
                q[i] = Entry { used: true, db, outcome: outcome as u8, ..EMPTY };
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
        assert!(worth_waiting(&[writer(1, now - 50_000), none[0]], &full_of_ours, 1, now, false));
        assert!(!worth_waiting(&none, &full_of_ours, 1, now, false));
        assert!(!worth_waiting(&[writer(1, now - STALE_US - 1), none[0]], &full_of_ours, 1, now, false));
        // Our writer may be stalled (it is ours to wait for, up to MAX_WAIT_US).
        assert!(worth_waiting(&[writer(1, now - 3_000_000), none[0]], &full_of_ours, 1, now, false));
        // Three busy databases whose writers all drain: wait.
        let shared = queue(&[(1, 1366, Outcome::Ok), (2, 1365, Outcome::Ok), (3, 1365, Outcome::Ok)]);
        let all = [writer(1, now), writer(2, now - 10_000), writer(3, now - 900_000)];
        assert!(worth_waiting(&all, &shared, 1, now, false));
        // Database 2 has no writer and holds most of the queue: don't wait on it.
        let stuck = queue(&[(1, 1000, Outcome::Ok), (2, QUEUE - 1000, Outcome::Ok)]);
        assert!(!worth_waiting(&[writer(1, now), none[0]], &stuck, 1, now, false));
        // ... nor when its writer has not taken a batch for over a second.
        assert!(!worth_waiting(&[writer(1, now), writer(2, now - 2_000_000)], &stuck, 1, now, false));
        assert!(worth_waiting(&[writer(1, now), writer(2, now - 20_000)], &stuck, 1, now, false));
        // The failure half counts failure entries only.
        let failures = queue(&[(2, QUEUE / 2, Outcome::Invalid), (1, QUEUE / 2, Outcome::Ok)]);
        assert!(!worth_waiting(&[writer(1, now), none[0]], &failures, 1, now, true));
        assert!(worth_waiting(&[writer(1, now), writer(2, now)], &failures, 1, now, true));
    }
}
