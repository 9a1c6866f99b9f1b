//! Rate limiting in shared memory: one GCRA state (a TAT) per key, in fixed
//! open-addressing tables under one LWLock each, so concurrent backends are
//! exact. API keys and general buckets have separate tables, so nothing a
//! caller does with `rate_limit()` can evict an API key's state.

use crate::gcra::{self, Decision, Rate};
use crate::pg::errors::raise;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{PgLwLock, PgSqlErrorCode};
use sha2::{Digest, Sha256};

// rate_limit(), the SQL face of _rate_limit() (rate_limit.sql).
pgrx::extension_sql_file!("rate_limit.sql", name = "rate_limit", requires = ["schema", _rate_limit]);

pub const KEY_SLOTS: usize = 16384;
pub const BUCKET_SLOTS: usize = 16384;
pub const OUTBOX_SLOTS: usize = 4096;
const PROBE: usize = 32;
/// Of the 32 slots of a window, at most this many may hold live buckets of
/// one owner (an org, or a database's callers with no context): one owner
/// can fill at most about a quarter of a table, never crowd others out.
const OWNER_SHARE: usize = 8;
/// Bounds on `rate_limit()` parameters: the period and the bucket's whole
/// tolerance (emission interval x (burst + 1)) are at most a day.
const MAX_PERIOD_US: i64 = 86_400_000_000;
const MAX_COUNT: i64 = 1_000_000;

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Slot {
    key: [u8; 16],
    /// Whose bucket it is (see `owner()`), for the per-window share.
    owner: [u8; 8],
    tat: i64,
}

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Table<const N: usize> {
    /// Random per server start: where a key's probe window starts is a keyed
    /// hash, so nobody can compute offline which names share a window with
    /// someone else's bucket (and evict it by filling that window).
    seed: [u8; 32],
    slots: [Slot; N],
}

// SAFETY: plain data (byte arrays and integers, no pointers), Copy and
// repr(C), so it can live in shared memory and be copied between processes.
unsafe impl<const N: usize> PGRXSharedMemory for Table<N> {}

impl<const N: usize> Table<N> {
    /// Called once, by the postmaster, when shared memory is created.
    pub fn seeded() -> Table<N> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).expect("the OS random generator failed");
        Table { seed, slots: [Slot { key: [0; 16], owner: [0; 8], tat: 0 }; N] }
    }
}

/// First slot of `key`'s probe window: SHA-256(seed || key), keyed by the table's seed.
fn window_start(seed: &[u8; 32], key: &[u8; 16], n: usize) -> usize {
    let d = Sha256::new().chain_update(seed).chain_update(key).finalize();
    (u64::from_le_bytes(d[..8].try_into().unwrap()) % n as u64) as usize
}

// SAFETY: each lock has a unique name and is initialized once, by init()
// (pg_shmem_init!) in the postmaster, before any backend uses it.
pub static KEYS: PgLwLock<Table<KEY_SLOTS>> = unsafe { PgLwLock::new(c"tenant_guard_rate_limits_keys") };
// SAFETY: as above.
pub static BUCKETS: PgLwLock<Table<BUCKET_SLOTS>> = unsafe { PgLwLock::new(c"tenant_guard_rate_limits_buckets") };
// SAFETY: as above.
pub static OUTBOX: PgLwLock<Table<OUTBOX_SLOTS>> = unsafe { PgLwLock::new(c"tenant_guard_rate_limits_outbox") };

pub fn init() {
    pgrx::pg_shmem_init!(KEYS = Table::seeded());
    pgrx::pg_shmem_init!(BUCKETS = Table::seeded());
    pgrx::pg_shmem_init!(OUTBOX = Table::seeded());
}

/// The owner tag of a bucket: the database and, with a context, the org.
pub fn owner(db: u32, org: Option<[u8; 16]>) -> [u8; 8] {
    let k = key("owner", &[&db.to_be_bytes(), &org.unwrap_or([0; 16])]);
    k[..8].try_into().expect("8 bytes")
}

/// A 16-byte table key for `domain` + `parts` (never all zero: that marks a free slot).
pub fn key(domain: &str, parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k[0] |= 1;
    k
}

/// Take `quantity` from the bucket `key` now; exact under concurrency.
///
/// A bucket that holds state (its TAT is still ahead of now: it is limiting,
/// or partly drained) is never evicted to make room: that would hand its
/// owner a fresh burst. A new bucket takes an empty slot of its window or
/// one whose bucket has refilled (TAT in the past, the same as no state);
/// when there is none, the call is refused (fail closed), with the time
/// until the window's first slot frees as retry_after. A new bucket is also
/// refused when its owner already holds OWNER_SHARE live slots of the
/// window: so one tenant (or everyone without a context) flooding buckets
/// fills at most about a quarter of the table, and others keep room.
pub fn throttle<const N: usize>(
    table: &PgLwLock<Table<N>>,
    key: [u8; 16],
    owner: [u8; 8],
    rate: Rate,
    quantity: i64,
) -> Decision {
    let mut t = table.exclusive();
    let now = crate::pg::clock::now_us();
    let start = window_start(&t.seed, &key, N);
    let mut found = None;
    let mut free = None;
    let mut soonest = i64::MAX;
    let mut owned = 0;
    for i in 0..PROBE {
        let idx = (start + i) % N;
        let s = &t.slots[idx];
        if s.key == key {
            found = Some(idx);
            break;
        }
        let live = s.key != [0; 16] && s.tat > now;
        if !live && free.is_none() {
            free = Some(idx);
        }
        if live {
            soonest = soonest.min(s.tat - now);
            if s.owner == owner {
                owned += 1;
            }
        }
    }
    let (idx, stored) = match (found, free) {
        (Some(i), _) => (i, Some(t.slots[i].tat)),
        (None, Some(i)) if owned < OWNER_SHARE => (i, None),
        _ => return Decision { limited: true, remaining: 0, reset_after: soonest.max(0), retry_after: soonest.max(0) },
    };
    let (decision, tat) = gcra::check(rate, stored, now, quantity);
    if stored.is_some() || !decision.limited {
        t.slots[idx] = Slot { key, owner, tat };
    }
    decision
}

/// Behind the SQL `rate_limit(bucket, per_period, period, burst)`: true when
/// this call is admitted. A bucket is identified by its name, its parameters,
/// the database and, when there is a context, the org: tenants cannot touch
/// each other's buckets, and a caller with other parameters gets another bucket.
#[pg_extern(volatile, parallel_unsafe)]
fn _rate_limit(bucket: Option<&str>, per_period: Option<i32>, period_us: Option<i64>, burst: Option<i32>) -> bool {
    // Not STRICT: a NULL must not come back as NULL, which `IF NOT rate_limit(...)` would let through.
    let (Some(bucket), Some(per_period), Some(period_us), Some(burst)) = (bucket, per_period, period_us, burst) else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "rate_limit() arguments must not be NULL", None, None)
    };
    if period_us <= 0 || period_us > MAX_PERIOD_US {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "period must be positive and at most 1 day", None, None)
    }
    if per_period as i64 > MAX_COUNT || burst as i64 > MAX_COUNT {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "per_period and burst must be at most 1000000",
            None,
            None,
        )
    }
    let Some(rate) = Rate::new(per_period as i64, period_us, burst as i64).filter(|r| r.tolerance <= MAX_PERIOD_US)
    else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "per_period must be positive, burst non-negative, and period / per_period x (burst + 1) at most 1 day",
            None,
            None,
        )
    };
    let db = crate::pg::database_id();
    let org = crate::context::with_claims(|c| c.org_id);
    let params = [per_period.to_be_bytes(), burst.to_be_bytes()].concat();
    let k = key(
        "bucket",
        &[&db.to_be_bytes(), &org.unwrap_or([0; 16]), &params, &period_us.to_be_bytes(), bucket.as_bytes()],
    );
    !throttle(&BUCKETS, k, owner(db, org), rate, 1).limited
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[test]
    fn windows_depend_on_the_secret_seed() {
        let k = key("bucket", &[b"login:alice@example.com"]);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(window_start(&a, &k, BUCKET_SLOTS), window_start(&a, &k, BUCKET_SLOTS));
        // Over many keys, two seeds place windows independently (a fixed,
        // unkeyed placement would agree on every key).
        let same = (0..1000u32)
            .filter(|i| {
                let k = key("bucket", &[&i.to_be_bytes()]);
                window_start(&a, &k, BUCKET_SLOTS) == window_start(&b, &k, BUCKET_SLOTS)
            })
            .count();
        assert!(same < 10, "{same} of 1000 windows coincide across seeds");
        // And the placement is not the key's own leading bytes, as before.
        let unkeyed = (u64::from_le_bytes(k[..8].try_into().unwrap()) as usize) % BUCKET_SLOTS;
        assert!((0..50u8).any(|i| window_start(&[i; 32], &k, BUCKET_SLOTS) != unkeyed));
    }

    #[pg_test]
    fn the_shared_memory_limiter_is_exact() {
        let rate = crate::gcra::Rate::new(5, 60_000_000, 4).unwrap();
        let key = crate::rate_limit::key("pg_test", &[b"bucket"]);
        let t = &crate::rate_limit::BUCKETS;
        let me = owner(1, None);
        let admitted = (0..20).filter(|_| !throttle(t, key, me, rate, 1).limited).count();
        assert_eq!(admitted, 5);
        let other = crate::rate_limit::key("pg_test", &[b"another"]);
        assert!(!throttle(t, other, me, rate, 1).limited, "buckets are independent");
        assert!(!throttle(&crate::rate_limit::KEYS, key, me, rate, 1).limited, "tables are independent");
    }
}
