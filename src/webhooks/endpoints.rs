//! Webhook endpoints and the signed outbox: the Rust helpers behind
//! create_webhook_endpoint(), rotate_webhook_secret(), enqueue_webhook() and
//! claim_webhook_deliveries() (webhooks.sql). Internal: executable only by
//! those SECURITY DEFINER functions.

use crate::pg::errors::raise;
use crate::secrets;
use crate::webhook_signature as wh;
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, Uuid};

/// Internal (definer-only): the canonical form of an acceptable endpoint
/// URL (url_policy.rs), or 22023 saying why not (without echoing it).
#[pg_extern(immutable, parallel_safe)]
pub fn _webhook_url(url: Option<&str>) -> String {
    let Some(url) = url else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "url must not be NULL", None, None)
    };
    crate::url_policy::check(url).unwrap_or_else(|r| {
        // A refused URL may carry a user name and password: keep the
        // statement that gave it out of the server log.
        crate::pg::errors::hide_statement_from_log();
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            r.to_string(),
            None,
            Some("Your delivery worker must still check the address a name resolves to."),
        )
    })
}

// ---------------------------------------------------------------- endpoint secrets

const KIND: &str = "webhook";

/// Internal (definer-only): make and store a new signing secret for an
/// endpoint; returns it (shown once by the calling SQL function).
#[pg_extern(volatile, parallel_unsafe)]
pub fn _webhook_new_secret(org_id: Uuid, endpoint_id: Uuid, slot: &str) -> String {
    let s = wh::generate_secret().unwrap_or_else(|_| {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "the OS random generator failed", None, None)
    });
    secrets::store(*org_id.as_bytes(), KIND, &format!("{endpoint_id}:{slot}"), s.as_bytes());
    s
}

/// Internal (definer-only): move the current secret to the `previous` slot.
#[pg_extern(volatile, parallel_unsafe)]
pub fn _webhook_retire_secret(org_id: Uuid, endpoint_id: Uuid) {
    let org = *org_id.as_bytes();
    if let Some(cur) = secrets::load(org, KIND, &format!("{endpoint_id}:current")) {
        secrets::store(org, KIND, &format!("{endpoint_id}:previous"), &cur);
    }
}

/// Internal (definer-only): the signature header for one delivery, signed
/// with the current secret and, while `with_previous`, the previous one too.
/// Returns only signatures, never a secret.
#[pg_extern(volatile, parallel_unsafe)]
pub fn _webhook_signature(
    org_id: Uuid,
    endpoint_id: Uuid,
    msg_id: &str,
    ts: i64,
    payload: &str,
    with_previous: bool,
) -> String {
    let org = *org_id.as_bytes();
    let mut sigs = vec![];
    let mut slots = vec!["current"];
    if with_previous {
        slots.push("previous");
    }
    for slot in slots {
        if let Some(secret) = secrets::load(org, KIND, &format!("{endpoint_id}:{slot}")) {
            let secret = zeroize::Zeroizing::new(secret);
            let Some(key) = std::str::from_utf8(&secret).ok().and_then(wh::standard_key) else {
                raise(
                    PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                    "the endpoint's stored signing secret is malformed",
                    None,
                    None,
                )
            };
            sigs.push(wh::standard_sign(&key, msg_id, ts, payload.as_bytes()));
        }
    }
    if sigs.is_empty() {
        raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, "the endpoint has no signing secret", None, None);
    }
    sigs.join(" ")
}

/// Internal: a Standard Webhooks message id, `msg_` + 24 random base62 characters.
#[pg_extern(volatile, parallel_unsafe)]
pub fn _webhook_msg_id() -> String {
    let k = crate::api_key_format::generate().unwrap_or_else(|_| {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "the OS random generator failed", None, None)
    });
    format!("msg_{}", &k[4..28])
}

// ---------------------------------------------------------------- outbox limits

/// Largest payload enqueue_webhook() accepts, in bytes (its JSON text).
const MAX_PAYLOAD: i32 = 256 * 1024;

#[pg_extern(immutable, parallel_safe)]
pub fn _outbox_max_payload() -> i32 {
    MAX_PAYLOAD
}

/// Internal (definer-only): admit `n` more deliveries for `org`, or raise
/// 53400. Each org may enqueue 6,000 deliveries a minute, with bursts of
/// up to 10,000: no org can bury the shared outbox (and claims are fair).
#[pg_extern(volatile, parallel_unsafe)]
pub fn _outbox_admit(org_id: Option<Uuid>, n: Option<i32>) {
    let (Some(org), Some(n)) = (org_id, n) else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "org_id and n must not be NULL", None, None)
    };
    let rate = crate::gcra::Rate::new(6_000, 60_000_000, 10_000).expect("constant rate");
    let db = crate::pg::database_id().to_be_bytes();
    let key = crate::rate_limit::key("outbox", &[&db, org.as_bytes()]);
    let owner = crate::rate_limit::owner(crate::pg::database_id(), Some(*org.as_bytes()));
    // Its own table: no flood of rate_limit() buckets can take its room.
    let d = crate::rate_limit::throttle(&crate::rate_limit::OUTBOX, key, owner, rate, n.max(0) as i64);
    if d.limited {
        let ms = (d.retry_after.max(0) + 999) / 1000;
        raise(
            PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            "this organization is enqueueing webhooks too fast",
            Some(&format!("retry_after_ms={ms}")),
            Some("Each organization may enqueue 6,000 deliveries a minute, in bursts of up to 10,000."),
        );
    }
}
