//! Rate limiting in shared memory: one GCRA state (a TAT) per key, in a fixed
//! open-addressing table under one LWLock, so concurrent backends are exact.

use crate::error::raise;
use crate::gcra::{self, Decision, Rate};
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{PgLwLock, PgSqlErrorCode};
use sha2::{Digest, Sha256};

pub const SLOTS: usize = 16384;
const PROBE: usize = 32;

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Slot {
    key: [u8; 16],
    tat: i64,
}

#[derive(Copy, Clone)]
#[repr(C)]
pub struct Table {
    slots: [Slot; SLOTS],
}

unsafe impl PGRXSharedMemory for Table {}

impl Table {
    pub const fn new() -> Table {
        Table { slots: [Slot { key: [0; 16], tat: 0 }; SLOTS] }
    }
}

pub static RATE: PgLwLock<Table> = unsafe { PgLwLock::new(c"tenant_guard_rate_limits") };

pub fn init() {
    pgrx::pg_shmem_init!(RATE = Table::new());
}

/// Microseconds on PostgreSQL's clock.
pub fn now_us() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }
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
pub fn throttle(key: [u8; 16], rate: Rate, quantity: i64) -> Decision {
    let mut t = RATE.exclusive();
    let now = now_us();
    let start = (u64::from_le_bytes(key[..8].try_into().unwrap()) as usize) % SLOTS;
    let mut found = None;
    let mut free = None;
    let mut oldest = start;
    for i in 0..PROBE {
        let idx = (start + i) % SLOTS;
        let s = &t.slots[idx];
        if s.key == key {
            found = Some(idx);
            break;
        }
        // An empty slot, or one whose bucket is full again, holds no state worth keeping.
        if free.is_none() && (s.key == [0; 16] || s.tat <= now) {
            free = Some(idx);
        }
        if t.slots[idx].tat < t.slots[oldest].tat {
            oldest = idx;
        }
    }
    let (idx, stored) = match found {
        Some(i) => (i, Some(t.slots[i].tat)),
        None => (free.unwrap_or(oldest), None),
    };
    let (decision, tat) = gcra::check(rate, stored, now, quantity);
    t.slots[idx] = Slot { key, tat };
    decision
}

/// Behind the SQL `rate_limit(bucket, per_period, period, burst)`: true when
/// this call is admitted. Buckets are per database; include the org in the
/// name to give each tenant its own.
#[pg_extern(volatile, parallel_unsafe)]
fn _rate_limit(bucket: &str, per_period: i32, period_us: i64, burst: i32) -> bool {
    if period_us <= 0 {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "period must be positive", None, None)
    }
    let Some(rate) = Rate::new(per_period as i64, period_us, burst as i64) else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "per_period must be positive and burst non-negative",
            None,
            None,
        )
    };
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32().to_be_bytes();
    !throttle(key("bucket", &[&db, bucket.as_bytes()]), rate, 1).limited
}
