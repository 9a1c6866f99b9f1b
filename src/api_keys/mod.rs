//! API keys: creation (plaintext returned once, only SHA-256 stored),
//! authenticate() (verify + rate limit + log + context in one call),
//! rotation and import of existing hashes.

use crate::api_key_format::{self, Shape};
use crate::context::{self, current_binding};
use crate::context_token::Claims;
use crate::echo::echo;
use crate::gcra::Rate;
use crate::pg::errors::raise;
use crate::pg::index_lookup;
use crate::rate_limit;
use crate::request_log::{self, Outcome};
use crate::roles;
use pgrx::datum::{Inet, Interval, TimestampWithTimeZone};
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, Uuid};

// The api_keys table, its policies, revoke_api_key() and the grants (api_keys.sql).
pgrx::extension_sql_file!(
    "api_keys.sql",
    name = "api_keys",
    requires = [
        "organizations",
        authenticate,
        create_api_key,
        rotate_api_key,
        import_api_key_hash,
        context::current_org_id_if
    ]
);

/// SQLSTATE of a rate-limited authenticate(): 53400 configuration_limit_exceeded
/// (pgrx can only raise PostgreSQL's own codes; this one is used for nothing else here).
const RATE_LIMITED: PgSqlErrorCode = PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED;

fn invalid_key() -> ! {
    crate::pg::errors::hide_statement_from_log();
    raise(PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, "invalid API key", None, None)
}

struct KeyRow {
    id: Uuid,
    org: Uuid,
    role: String,
    scopes: Vec<String>,
    rpm: i32,
    revoked: bool,
    expired: bool,
    expires_at: Option<i64>,
    created_by: Option<Uuid>,
}

/// A key made by a user stands only while that user is still a member
/// ranking at least the key's role, as committed now (remove_member and
/// set_member_role also revoke such keys; this check closes the race with
/// a key created concurrently, and direct writes to memberships).
fn creator_vouches(row: &KeyRow) -> bool {
    let Some(creator) = row.created_by else { return true };
    let need = roles::rank(&row.role).unwrap_or(u8::MAX);
    context::membership_role(*row.org.as_bytes(), *creator.as_bytes())
        .and_then(|r| roles::rank(&r))
        .is_some_and(|have| have >= need)
}

/// The rank an API-key context holds now: its key's role while the key is
/// neither revoked nor expired and its creator still vouches for it; with
/// the key's expiry (PostgreSQL microseconds, i64::MAX for none).
pub fn rank_now(key_id: [u8; 16]) -> Option<(u8, i64)> {
    let row = lookup_by(c"api_keys_pkey", &[(c"id", index_lookup::Key::Uuid(Uuid::from_bytes(key_id)))])?;
    let rank = (!row.revoked && !row.expired && creator_vouches(&row)).then(|| roles::rank(&row.role)).flatten()?;
    Some((rank, row.expires_at.unwrap_or(i64::MAX)))
}

/// The row of `key_hash`, by a direct probe of the unique index (probe.rs).
/// A key is revoked as soon as the revocation is committed (probe.rs reads
/// the latest snapshot; the timestamp does not matter), and expired from the
/// moment the clock passes `expires_at`: not the statement's or the
/// transaction's start, so neither a long transaction nor a DO/CALL loop that
/// commits inside one statement can outlive a key.
fn lookup(hash: &[u8; 32]) -> Option<KeyRow> {
    lookup_by(c"api_keys_key_hash_key", &[(c"key_hash", index_lookup::Key::Bytea(hash))])
}

fn lookup_by(index: &'static std::ffi::CStr, keys: &[(&std::ffi::CStr, index_lookup::Key)]) -> Option<KeyRow> {
    let now = crate::pg::clock::now_us();
    let past = |t: Option<i64>| t.is_some_and(|t| t <= now);
    use pg_sys::PgBuiltInOids as T;
    index_lookup::fetch_one(c"api_keys", index, keys, |r| {
        let revoked = r.get::<i64>(c"revoked_at", T::TIMESTAMPTZOID).is_some();
        let expires_at = r.get::<i64>(c"expires_at", T::TIMESTAMPTZOID);
        let expired = past(expires_at);
        // Role and scopes (which could be stored out of line, in TOAST) are
        // read only for a usable key: a revoked or expired key touches
        // nothing an unknown one does not.
        let usable = !revoked && !expired;
        KeyRow {
            id: r.get(c"id", T::UUIDOID).expect("id"),
            org: r.get(c"org_id", T::UUIDOID).expect("org_id"),
            role: if usable { r.get(c"role", T::TEXTOID).expect("role") } else { String::new() },
            scopes: if usable {
                r.get::<Vec<String>>(c"scopes", T::TEXTARRAYOID).unwrap_or_default()
            } else {
                Vec::new()
            },
            rpm: r.get(c"rate_limit_per_minute", T::INT4OID).expect("rate"),
            revoked,
            expired,
            expires_at,
            created_by: if usable { r.get(c"created_by", T::UUIDOID) } else { None },
        }
    })
}

/// Verify an API key, apply its rate limit, log the outcome and set the
/// context for this transaction. Returns the key's org id.
/// It runs no SQL (the key is found by a direct index probe; rate limit and
/// log live in shared memory), so it needs neither SECURITY DEFINER nor a
/// pinned search_path; tests/apikeys.rs still attacks it with a hostile one.
#[pg_extern(volatile, parallel_unsafe)]
fn authenticate(
    api_key: Option<&str>,
    action: default!(Option<&str>, "NULL"),
    client_addr: default!(Option<Inet>, "NULL"),
) -> Uuid {
    let addr = client_addr.as_ref().map(|a| a.to_string());
    let fail = |outcome: Outcome, org: Option<[u8; 16]>, key: Option<[u8; 16]>| -> ! {
        request_log::record(outcome, org, key, action, addr.as_deref());
        invalid_key()
    };
    let key = api_key.unwrap_or("");
    if api_key_format::classify(key) == Shape::Corrupt {
        fail(Outcome::Invalid, None, None);
    }
    let Some(row) = lookup(&api_key_format::hash(key)) else { fail(Outcome::Invalid, None, None) };
    let (org, id) = (*row.org.as_bytes(), *row.id.as_bytes());
    if row.revoked {
        fail(Outcome::Revoked, Some(org), Some(id));
    }
    if row.expired {
        fail(Outcome::Expired, Some(org), Some(id));
    }
    if !creator_vouches(&row) {
        fail(Outcome::Revoked, Some(org), Some(id));
    }
    let rate = Rate::new(row.rpm as i64, 60_000_000, (row.rpm as i64 - 1).max(0)).expect("rate_limit_per_minute > 0");
    let owner = rate_limit::owner(crate::pg::database_id(), Some(org));
    let d = rate_limit::throttle(&rate_limit::KEYS, rate_limit::key("apikey", &[&id]), owner, rate, 1);
    if d.limited {
        request_log::record(Outcome::RateLimited, Some(org), Some(id), action, addr.as_deref());
        let ms = (d.retry_after.max(0) + 999) / 1000;
        crate::pg::errors::hide_statement_from_log();
        raise(
            RATE_LIMITED,
            "API key rate limit exceeded",
            Some(&format!("retry_after_ms={ms}")),
            Some(&format!("This key allows {} requests per minute.", row.rpm)),
        );
    }
    request_log::record(Outcome::Ok, Some(org), Some(id), action, addr.as_deref());
    context::install(Claims {
        org_id: org,
        user_id: None,
        role: row.role,
        api_key_id: Some(id),
        scopes: row.scopes,
        binding: current_binding(),
    });
    row.org
}

/// Key management needs a signed-in user of rank admin or higher, as the
/// latest committed membership has it (context::_require_user_role).
fn require_admin() -> ([u8; 16], Option<[u8; 16]>, u8) {
    context::_require_user_role(Some("admin"));
    let (org, user) = context::with_claims(|c| (c.org_id, c.user_id)).expect("checked above");
    (org, user, context::rank_now().expect("checked above"))
}

fn check_role(role: &str, my_rank: u8) {
    match roles::rank(role) {
        None => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown role \"{}\"", echo(role)),
            None,
            None,
        ),
        Some(r) if r > my_rank => raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "an API key cannot have a role above its creator's",
            None,
            None,
        ),
        _ => {}
    }
}

fn new_key() -> String {
    api_key_format::generate()
        .unwrap_or_else(|_| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "the OS random generator failed", None, None))
}

#[allow(clippy::too_many_arguments)] // one per column written
fn insert_key(
    org: [u8; 16],
    name: &str,
    key: &str,
    role: &str,
    scopes: Vec<String>,
    expires_in_us: Option<i64>,
    rpm: i32,
    created_by: Option<[u8; 16]>,
) -> Uuid {
    Spi::get_one_with_args::<Uuid>(
        "INSERT INTO tenant_guard.api_keys (org_id, name, prefix, key_hash, role, scopes, rate_limit_per_minute, expires_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8::float8 / 1e6), $9) RETURNING id",
        &[
            Uuid::from_bytes(org).into(),
            name.into(),
            api_key_format::display_prefix(key).into(),
            api_key_format::hash(key).as_slice().into(),
            role.into(),
            scopes.into(),
            rpm.into(),
            expires_in_us.into(),
            created_by.map(Uuid::from_bytes).into(),
        ],
    )
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("storing the API key failed: {e}"), None, None))
    .expect("RETURNING id")
}

fn interval_us(i: &Interval) -> i64 {
    i64::try_from(i.as_micros()).unwrap_or(i64::MAX)
}

fn validate(name: &str, scopes: &[String], rpm: i32, expires_in: Option<&Interval>) {
    if name.trim().is_empty() || name.len() > 200 {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "name must be 1 to 200 characters", None, None);
    }
    if rpm <= 0 {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "rate_limit_per_minute must be positive", None, None);
    }
    if scopes.len() > 64 || scopes.iter().any(|s| s.is_empty() || s.len() > 100) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "scopes must be at most 64 non-empty names of up to 100 characters",
            None,
            None,
        );
    }
    if let Some(e) = expires_in {
        if interval_us(e) <= 0 {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "expires_in must be positive (or NULL for no expiry)",
                None,
                None,
            );
        }
    }
}

/// Create a key in the current org (admin or higher). The plaintext is
/// returned here once and stored nowhere.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn create_api_key(
    name: Option<&str>,
    role: default!(Option<&str>, "'member'"),
    scopes: default!(Option<Vec<Option<String>>>, "'{}'"),
    expires_in: default!(Option<Interval>, "'90 days'"),
    rate_limit_per_minute: default!(Option<i32>, 600),
) -> TableIterator<'static, (name!(key_id, Uuid), name!(api_key, String))> {
    let ev = crate::audit_trail::Event::new("create_api_key", context::with_claims(|c| c.org_id), "api_key");
    crate::audit_trail::guarded(crate::audit_trail::Kind::Write, ev, |_| {
        let (Some(name), Some(role), Some(rate_limit_per_minute)) = (name, role, rate_limit_per_minute) else {
            raise(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "name, role and rate_limit_per_minute must not be NULL",
                None,
                None,
            )
        };
        let (org, user, my_rank) = require_admin();
        check_role(role, my_rank);
        let scopes: Vec<String> = scopes.unwrap_or_default().into_iter().flatten().collect();
        validate(name, &scopes, rate_limit_per_minute, expires_in.as_ref());
        let key = new_key();
        let id = insert_key(
            org,
            name,
            &key,
            role,
            scopes,
            expires_in.as_ref().map(interval_us),
            rate_limit_per_minute,
            user,
        );
        TableIterator::once((id, key))
    })
}

/// Replace a key: a new key with the same name, role, scopes and limit; the
/// old one keeps working until `grace` has passed.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn rotate_api_key(
    key_id: Option<Uuid>,
    grace: default!(Option<Interval>, "'24 hours'"),
) -> TableIterator<'static, (name!(key_id, Uuid), name!(api_key, String))> {
    let ev = crate::audit_trail::Event::new("rotate_api_key", context::with_claims(|c| c.org_id), "api_key")
        .id(key_id.map(|k| *k.as_bytes()));
    crate::audit_trail::guarded(crate::audit_trail::Kind::Write, ev, |_| {
        let (Some(key_id), Some(grace)) = (key_id, grace) else {
            raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "key_id and grace must not be NULL", None, None)
        };
        let (org, user, my_rank) = require_admin();
        let grace_us = interval_us(&grace);
        if grace_us < 0 {
            raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "grace must not be negative", None, None);
        }
        let old = Spi::connect_mut(|c| {
            let t = c.update(
                "SELECT name, role, scopes, rate_limit_per_minute,
                        extract(epoch FROM expires_at - created_at) * 1e6
                   FROM tenant_guard.api_keys
                  WHERE id = $1 AND org_id = $2 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
                  FOR UPDATE",
                Some(1),
                &[key_id.into(), Uuid::from_bytes(org).into()],
            )?;
            if t.is_empty() {
                return Ok::<_, pgrx::spi::SpiError>(None);
            }
            let r = t.first();
            Ok(Some((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<Vec<String>>(3)?.unwrap_or_default(),
                r.get::<i32>(4)?.unwrap_or(600),
                r.get::<pgrx::AnyNumeric>(5)?.map(|n| f64::try_from(n).unwrap_or(0.0) as i64),
            )))
        })
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{e}"), None, None));
        let Some((name, role, scopes, rpm, lifetime_us)) = old else {
            raise(PgSqlErrorCode::ERRCODE_NO_DATA, "no active API key with that id in this organization", None, None)
        };
        check_role(&role, my_rank);
        let key = new_key();
        let id = insert_key(org, &name, &key, &role, scopes, lifetime_us, rpm, user);
        Spi::run_with_args(
            "UPDATE tenant_guard.api_keys
                SET expires_at = least(coalesce(expires_at, 'infinity'), now() + make_interval(secs => $2::float8 / 1e6)),
                    rotated_to = $3
              WHERE id = $1",
            &[key_id.into(), grace_us.into(), id.into()],
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{e}"), None, None));
        TableIterator::once((id, key))
    })
}

/// Service role: adopt an existing SHA-256 key hash (64 hex digits or 32
/// bytes) so keys issued by a previous system keep working unchanged.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)] // the SQL signature's
fn import_api_key_hash(
    org_id: Option<Uuid>,
    name: Option<&str>,
    key_hash: Option<&[u8]>,
    role: default!(Option<&str>, "'member'"),
    scopes: default!(Option<Vec<Option<String>>>, "'{}'"),
    expires_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    rate_limit_per_minute: default!(Option<i32>, 600),
    display_prefix: default!(Option<&str>, "NULL"),
) -> Uuid {
    let ev = crate::audit_trail::Event::new("import_api_key", org_id.map(|o| *o.as_bytes()), "api_key");
    crate::audit_trail::guarded(crate::audit_trail::Kind::Write, ev, |_| {
        let (Some(org_id), Some(name), Some(key_hash), Some(role), Some(rate_limit_per_minute)) =
            (org_id, name, key_hash, role, rate_limit_per_minute)
        else {
            raise(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "org_id, name, key_hash, role and rate_limit_per_minute must not be NULL",
                None,
                None,
            )
        };
        if key_hash.len() != 32 {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "key_hash must be the 32-byte SHA-256 of the key",
                None,
                None,
            );
        }
        if roles::rank(role).is_none() {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("unknown role \"{}\"", echo(role)),
                None,
                None,
            );
        }
        let scopes: Vec<String> = scopes.unwrap_or_default().into_iter().flatten().collect();
        validate(name, &scopes, rate_limit_per_minute, None);
        Spi::get_one_with_args::<Uuid>(
            "INSERT INTO tenant_guard.api_keys (org_id, name, prefix, key_hash, role, scopes, rate_limit_per_minute, expires_at)
             VALUES ($1, $2, coalesce($3, 'imported'), $4, $5, $6, $7, $8) RETURNING id",
            &[
                org_id.into(),
                name.into(),
                // At most 8 characters: a legacy key may be short, and the prefix is shown to admins.
                display_prefix.map(|p| p.chars().take(8).collect::<String>()).into(),
                key_hash.into(),
                role.into(),
                scopes.into(),
                rate_limit_per_minute.into(),
                expires_at.into(),
            ],
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, format!("importing the key hash failed: {e}"), None, None))
        .expect("RETURNING id")
    })
}
