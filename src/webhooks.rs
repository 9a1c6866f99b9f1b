//! Webhook SQL functions: signing and verification (thin wrappers over
//! webhook.rs) and the helpers behind endpoints and the signed outbox.

use crate::error::raise;
use crate::secrets;
use crate::webhook as wh;
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, Uuid};

fn now_epoch() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn tolerance_secs(t: Option<Interval>) -> Option<i64> {
    t.map(|i| i64::try_from(i.as_micros() / 1_000_000).unwrap_or(i64::MAX))
}

fn key_or_error(secret: &str) -> Vec<u8> {
    wh::standard_key(secret).unwrap_or_else(|| {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "invalid webhook secret: expected whsec_<base64>", None, None)
    })
}

#[pg_extern(immutable, parallel_safe)]
fn hmac_sha256(data: &[u8], key: &[u8]) -> Vec<u8> {
    wh::hmac_sha256(key, &[data]).to_vec()
}

/// Standard Webhooks signature header value `v1,<base64>`. SECURITY DEFINER
/// only so that finalize.sql can keep its errors from logging the statement
/// (which holds the secret); it reads no table.
#[pg_extern(immutable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn webhook_sign(secret: &str, msg_id: &str, ts: i64, payload: &str) -> String {
    wh::standard_sign(&key_or_error(secret), msg_id, ts, payload.as_bytes())
}

/// Verify a Standard Webhooks delivery. `tolerance` NULL skips the time check.
/// Malformed input (including a malformed secret) is false, never an error.
#[pg_extern(stable, parallel_safe)]
fn webhook_verify(
    secret: &str,
    msg_id: &str,
    ts: i64,
    payload: &str,
    signature_header: Option<&str>,
    tolerance: default!(Option<Interval>, "'5 minutes'"),
) -> bool {
    let Some(key) = wh::standard_key(secret) else { return false };
    wh::standard_verify(&key, msg_id, ts, payload.as_bytes(), signature_header.unwrap_or(""), tolerance_secs(tolerance), now_epoch())
}

#[pg_extern(stable, parallel_safe)]
fn verify_stripe_signature(secret: &str, payload: &str, header: Option<&str>, tolerance: default!(Option<Interval>, "'5 minutes'")) -> bool {
    wh::stripe_verify(secret, payload.as_bytes(), header.unwrap_or(""), tolerance_secs(tolerance), now_epoch())
}

#[pg_extern(immutable, parallel_safe)]
fn verify_github_signature(secret: &str, payload: &[u8], header: Option<&str>) -> bool {
    wh::github_verify(secret, payload, header.unwrap_or(""))
}

#[pg_extern(stable, parallel_safe)]
fn verify_slack_signature(
    secret: &str,
    ts: i64,
    payload: &str,
    header: Option<&str>,
    tolerance: default!(Option<Interval>, "'5 minutes'"),
) -> bool {
    wh::slack_verify(secret, ts, payload.as_bytes(), header.unwrap_or(""), tolerance_secs(tolerance), now_epoch())
}

// ---------------------------------------------------------------- endpoint secrets

const KIND: &str = "webhook";

/// Internal (definer-only): make and store a new signing secret for an
/// endpoint; returns it (shown once by the calling SQL function).
#[pg_extern(volatile, parallel_unsafe)]
fn _webhook_new_secret(org_id: Uuid, endpoint_id: Uuid, slot: &str) -> String {
    let s = wh::generate_secret().unwrap_or_else(|_| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "the OS random generator failed", None, None));
    secrets::store(*org_id.as_bytes(), KIND, &format!("{endpoint_id}:{slot}"), s.as_bytes());
    s
}

/// Internal (definer-only): move the current secret to the `previous` slot.
#[pg_extern(volatile, parallel_unsafe)]
fn _webhook_retire_secret(org_id: Uuid, endpoint_id: Uuid) {
    let org = *org_id.as_bytes();
    if let Some(cur) = secrets::load(org, KIND, &format!("{endpoint_id}:current")) {
        secrets::store(org, KIND, &format!("{endpoint_id}:previous"), &cur);
    }
}

/// Internal (definer-only): the signature header for one delivery, signed
/// with the current secret and, while `with_previous`, the previous one too.
/// Returns only signatures, never a secret.
#[pg_extern(volatile, parallel_unsafe)]
fn _webhook_signature(org_id: Uuid, endpoint_id: Uuid, msg_id: &str, ts: i64, payload: &str, with_previous: bool) -> String {
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
                raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, "the endpoint's stored signing secret is malformed", None, None)
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
fn _webhook_msg_id() -> String {
    let k = crate::apikey::generate().unwrap_or_else(|_| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "the OS random generator failed", None, None));
    format!("msg_{}", &k[4..28])
}
