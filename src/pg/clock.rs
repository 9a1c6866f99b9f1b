//! The one clock: PostgreSQL's, in microseconds since the PostgreSQL epoch
//! (what timestamptz stores), and the same as Unix seconds. It is the clock
//! at the moment of the call, not the statement's or transaction's start, so
//! neither a long transaction nor a committing DO/CALL loop can outlive an
//! expiry.

use pgrx::pg_sys;

/// Microseconds on PostgreSQL's clock (comparable with timestamptz datums).
pub fn now_us() -> i64 {
    // SAFETY: GetCurrentTimestamp reads the system clock; no state involved.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Seconds since the Unix epoch, on the same clock.
pub fn unix_secs() -> i64 {
    const PG_EPOCH_OFFSET_SECS: i64 = 946_684_800; // 2000-01-01 in Unix seconds
    now_us().div_euclid(1_000_000) + PG_EPOCH_OFFSET_SECS
}
