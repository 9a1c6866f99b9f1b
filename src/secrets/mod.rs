//! Secrets at rest: integration secrets and WordPress application passwords
//! encrypted with AES-256-GCM (see envelope.rs) under the `secrets` subkey,
//! bound to (org, kind, name), re-encryptable after a passphrase rotation.

use crate::audit_trail::{self, Event, Kind};
use crate::envelope::{self, EnvelopeError};
use crate::kdf::{KeySet, Purpose};
use crate::keyring;
use crate::pg::errors::raise;
use crate::pg::index_lookup;
use crate::{context, roles};
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, Uuid};
use std::rc::Rc;

// The secrets table, its policies, the pgcrypto import and the grants (secrets.sql).
pgrx::extension_sql_file!(
    "secrets.sql",
    name = "secrets",
    requires = [
        "organizations",
        encrypt,
        decrypt,
        put_secret,
        put_secret_for,
        get_secret,
        delete_secret,
        wordpress::put_wordpress_credentials,
        wordpress::get_wordpress_credentials,
        wordpress::wordpress_authorization,
        rotation::rotate_secrets,
        context::current_org_id_if
    ]
);

const MAX_SECRET_LEN: usize = 64 * 1024;

fn fail(e: EnvelopeError) -> ! {
    let code = match e {
        EnvelopeError::Random => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        _ => PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
    };
    raise(code, format!("cannot decrypt: {e}"), None, None)
}

/// The key set whose id the envelope names: the current one or one derived
/// from `tenant_guard.old_passphrases`.
fn key_for(envelope_bytes: &[u8]) -> Rc<KeySet> {
    let id = envelope::key_id(envelope_bytes).unwrap_or_else(|e| fail(e));
    let current = keyring::current();
    if current.key_id() == id {
        return current;
    }
    keyring::old().into_iter().find(|k| k.key_id() == id).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("cannot decrypt: no configured passphrase has key id {id:08x}"),
            None,
            Some("If the passphrase was rotated, list the previous one in tenant_guard.old_passphrases and reload."),
        )
    })
}

pub fn seal(plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let k = keyring::current();
    envelope::seal(k.subkey(Purpose::Secrets), k.key_id(), plaintext, aad).unwrap_or_else(|e| fail(e))
}

pub fn open(envelope_bytes: &[u8], aad: &[u8]) -> Vec<u8> {
    let k = key_for(envelope_bytes);
    envelope::open(k.subkey(Purpose::Secrets), envelope_bytes, aad).unwrap_or_else(|e| fail(e))
}

/// encrypt()/decrypt() prefix the caller's associated data with this, so they
/// can neither decrypt nor forge a stored secret's envelope (whose binding
/// starts with "tenant_guard/v1/secret\0").
fn user_aad(aad: &[u8]) -> Vec<u8> {
    [&b"tenant_guard/v1/user\0"[..], aad].concat()
}

/// Service role only: encrypt arbitrary bytes under the current key, bound to `aad`.
/// (SECURITY DEFINER only so that its errors do not log the statement; see finalize.sql.)
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn encrypt(plaintext: &[u8], aad: default!(&[u8], "''")) -> Vec<u8> {
    seal(plaintext, &user_aad(aad))
}

/// Service role only: decrypt an envelope made by encrypt() with the same
/// `aad`. Audited: the envelope's key id and size (never the data).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn decrypt(ciphertext: &[u8], aad: default!(&[u8], "''")) -> Vec<u8> {
    let mut ev = Event::new("decrypt", None, "ciphertext");
    ev.detail = Some(match envelope::key_id(ciphertext) {
        Ok(id) => format!("key id {id:08x}, {} bytes", ciphertext.len()),
        Err(_) => format!("not an envelope, {} bytes", ciphertext.len()),
    });
    audit_trail::guarded(Kind::Read, ev, |_| open(ciphertext, &user_aad(aad)))
}

/// Kinds tenant_guard manages itself (through their own functions).
const RESERVED_KINDS: [&str; 2] = ["webhook", "wordpress"];

fn check_user_kind(kind: &str) {
    if RESERVED_KINDS.contains(&kind) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("kind \"{kind}\" is reserved"),
            Some("Use put_wordpress_credentials() or the webhook endpoint functions."),
            None,
        );
    }
}

fn check_kind_name(kind: &str, name: &str) {
    if kind.is_empty() || kind.len() > 100 || name.is_empty() || name.len() > 500 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "kind must be 1-100 and name 1-500 characters",
            None,
            None,
        );
    }
}

/// Encrypt and upsert one secret of `org`. Plaintext is encrypted here,
/// before any write; only the envelope reaches the table.
pub fn store(org: [u8; 16], kind: &str, name: &str, secret: &[u8]) -> Uuid {
    check_kind_name(kind, name);
    if secret.len() > MAX_SECRET_LEN {
        raise(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("a secret may be at most {MAX_SECRET_LEN} bytes"),
            None,
            None,
        );
    }
    let ct = seal(secret, &envelope::secret_aad(&org, kind, name));
    let key_id = envelope::key_id(&ct).expect("fresh envelope") as i64;
    Spi::get_one_with_args::<Uuid>(
        "INSERT INTO tenant_guard.secrets (org_id, kind, name, ciphertext, key_id)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (org_id, kind, name) DO UPDATE
            SET ciphertext = excluded.ciphertext, key_id = excluded.key_id, updated_at = now()
         RETURNING id",
        &[Uuid::from_bytes(org).into(), kind.into(), name.into(), ct.into(), key_id.into()],
    )
    .unwrap_or_else(|e| {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("storing the secret failed: {e}"), None, None)
    })
    .expect("RETURNING id")
}

/// Fetch and decrypt one secret, or None. The row is found by a direct probe
/// of the (org_id, kind, name) unique index (probe.rs).
pub fn load(org: [u8; 16], kind: &str, name: &str) -> Option<Vec<u8>> {
    let ct: Vec<u8> = index_lookup::fetch_one(
        c"secrets",
        c"secrets_org_id_kind_name_key",
        &[
            (c"org_id", index_lookup::Key::Uuid(Uuid::from_bytes(org))),
            (c"kind", index_lookup::Key::Text(kind)),
            (c"name", index_lookup::Key::Text(name)),
        ],
        |r| r.bytes(c"ciphertext"),
    )??;
    Some(open(&ct, &envelope::secret_aad(&org, kind, name)))
}

/// The current org when the context ranks admin or higher as the latest
/// committed state has it (context::rank_now).
pub(crate) fn admin_org() -> [u8; 16] {
    context::rank_now().filter(|&r| r >= roles::ADMIN).and_then(|_| context::with_claims(|c| c.org_id)).unwrap_or_else(
        || {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "managing secrets needs role admin or higher",
                None,
                None,
            )
        },
    )
}

/// Store (or replace) a secret of the current org; admin or higher.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn put_secret(kind: &str, name: &str, secret: &str) -> Uuid {
    let org = context::with_claims(|c| c.org_id);
    audit_trail::guarded(Kind::Write, Event::new("put_secret", org, "secret").kind(kind).name(name), |_| {
        check_user_kind(kind);
        store(admin_org(), kind, name, secret.as_bytes())
    })
}

/// Service role only: store a secret for any org (e.g. tokens your backend obtained).
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn put_secret_for(org_id: Uuid, kind: &str, name: &str, secret: &str) -> Uuid {
    let ev = Event::new("put_secret", Some(*org_id.as_bytes()), "secret").kind(kind).name(name);
    audit_trail::guarded(Kind::Write, ev, |_| {
        check_user_kind(kind);
        store(*org_id.as_bytes(), kind, name, secret.as_bytes())
    })
}

/// Service role only: the plaintext of a secret, or NULL when there is none.
/// Runs no SQL (probe.rs), so it needs no SECURITY DEFINER: its EXECUTE grant
/// is the access check. Audited (the read, not the secret).
#[pg_extern(volatile, parallel_unsafe)]
fn get_secret(org_id: Uuid, kind: &str, name: &str) -> Option<String> {
    let ev = Event::new("get_secret", Some(*org_id.as_bytes()), "secret").kind(kind).name(name);
    audit_trail::guarded(Kind::Read, ev, |ev| {
        let found = load(*org_id.as_bytes(), kind, name).map(|b| {
            String::from_utf8(b).unwrap_or_else(|_| {
                raise(PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE, "the secret is not valid UTF-8", None, None)
            })
        });
        if found.is_none() {
            ev.detail = Some("no such secret".into());
        }
        found
    })
}

/// Delete a secret of the current org; admin or higher. True if one was deleted.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn delete_secret(kind: &str, name: &str) -> bool {
    let org = context::with_claims(|c| c.org_id);
    audit_trail::guarded(Kind::Write, Event::new("delete_secret", org, "secret").kind(kind).name(name), |_| {
        check_user_kind(kind);
        let org = admin_org();
        Spi::get_one_with_args::<bool>(
            "WITH d AS (DELETE FROM tenant_guard.secrets WHERE org_id = $1 AND kind = $2 AND name = $3 RETURNING 1)
             SELECT count(*) > 0 FROM d",
            &[Uuid::from_bytes(org).into(), kind.into(), name.into()],
        )
        .unwrap_or(Some(false))
        .unwrap_or(false)
    })
}

pub mod rotation;
pub mod wordpress;

#[cfg(feature = "pg_test")]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn the_envelope_uses_the_configured_passphrase() {
        let env = crate::secrets::seal(b"in-database round trip", b"aad");
        assert_eq!(crate::secrets::open(&env, b"aad"), b"in-database round trip");
        let id = crate::envelope::key_id(&env).unwrap();
        let expected = crate::kdf::KeySet::derive(b"pg-test-passphrase-0123456789-abcdefghij").unwrap().key_id();
        assert_eq!(id, expected, "derived from tenant_guard.passphrase in postgresql.conf");
    }

    #[pg_test(
        error = "cannot decrypt: the envelope does not authenticate (wrong key, wrong associated data, or tampered)"
    )]
    fn the_envelope_refuses_other_associated_data() {
        let env = crate::secrets::seal(b"x", b"org-a");
        crate::secrets::open(&env, b"org-b");
    }
}
