//! Webhook SQL functions: signing and verification (thin wrappers over
//! webhook.rs) and the helpers behind endpoints and the signed outbox.

use crate::pg::errors::raise;
use crate::webhook_signature as wh;
use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

// Endpoints, the outbox, replay protection, their functions and grants (webhooks.sql).
pgrx::extension_sql_file!(
    "webhooks.sql",
    name = "webhooks",
    requires = [
        "organizations",
        "secrets",
        hmac_sha256,
        webhook_sign,
        webhook_verify,
        verify_stripe_signature,
        verify_github_signature,
        verify_slack_signature,
        endpoints::_webhook_url,
        endpoints::_webhook_new_secret,
        endpoints::_webhook_retire_secret,
        endpoints::_webhook_signature,
        endpoints::_webhook_msg_id,
        endpoints::_outbox_max_payload,
        endpoints::_outbox_admit,
        context::current_org_id_if
    ]
);

fn tolerance_secs(t: Option<Interval>) -> Option<i64> {
    t.map(|i| i64::try_from(i.as_micros() / 1_000_000).unwrap_or(i64::MAX))
}

fn key_or_error(secret: &str) -> Vec<u8> {
    wh::standard_key(secret).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "invalid webhook secret: expected whsec_<base64>",
            None,
            None,
        )
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
/// Malformed input (including a malformed secret) and a NULL in any other
/// argument are false, never an error.
#[pg_extern(stable, parallel_safe)]
fn webhook_verify(
    secret: Option<&str>,
    msg_id: Option<&str>,
    ts: Option<i64>,
    payload: Option<&str>,
    signature_header: Option<&str>,
    tolerance: default!(Option<Interval>, "'5 minutes'"),
) -> bool {
    let (Some(secret), Some(msg_id), Some(ts), Some(payload), Some(header)) =
        (secret, msg_id, ts, payload, signature_header)
    else {
        return false;
    };
    let Some(key) = wh::standard_key(secret) else { return false };
    wh::standard_verify(
        &key,
        msg_id,
        ts,
        payload.as_bytes(),
        header,
        tolerance_secs(tolerance),
        crate::pg::clock::unix_secs(),
    )
}

#[pg_extern(stable, parallel_safe)]
fn verify_stripe_signature(
    secret: Option<&str>,
    payload: Option<&str>,
    header: Option<&str>,
    tolerance: default!(Option<Interval>, "'5 minutes'"),
) -> bool {
    let (Some(secret), Some(payload), Some(header)) = (secret, payload, header) else { return false };
    wh::stripe_verify(secret, payload.as_bytes(), header, tolerance_secs(tolerance), crate::pg::clock::unix_secs())
}

#[pg_extern(immutable, parallel_safe)]
fn verify_github_signature(secret: Option<&str>, payload: Option<&[u8]>, header: Option<&str>) -> bool {
    let (Some(secret), Some(payload), Some(header)) = (secret, payload, header) else { return false };
    wh::github_verify(secret, payload, header)
}

#[pg_extern(stable, parallel_safe)]
fn verify_slack_signature(
    secret: Option<&str>,
    ts: Option<i64>,
    payload: Option<&str>,
    header: Option<&str>,
    tolerance: default!(Option<Interval>, "'5 minutes'"),
) -> bool {
    let (Some(secret), Some(ts), Some(payload), Some(header)) = (secret, ts, payload, header) else { return false };
    wh::slack_verify(secret, ts, payload.as_bytes(), header, tolerance_secs(tolerance), crate::pg::clock::unix_secs())
}

pub mod endpoints;
