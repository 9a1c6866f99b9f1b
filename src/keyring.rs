//! Per-backend key cache: derived from the passphrase on first use, re-derived
//! after any change of the passphrase settings (the assign hook bumps a
//! generation counter), never printed.

use crate::kdf::{KeyError, KeySet, MIN_JWT_SECRET_LEN, MIN_PASSPHRASE_LEN};
use crate::pg::errors::raise;
use crate::pg::settings;
use pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE as NOT_READY;
use std::cell::RefCell;
use std::rc::Rc;

thread_local! {
    static CURRENT: RefCell<Option<(u64, Rc<KeySet>)>> = const { RefCell::new(None) };
    static OLD: RefCell<Option<(u64, Vec<Rc<KeySet>>)>> = const { RefCell::new(None) };
}

/// Key sets derived from `tenant_guard.old_passphrases` (for decryption
/// during rotation). Entries that are too short are skipped.
pub fn old() -> Vec<Rc<KeySet>> {
    let gen = settings::key_generation();
    if let Some(v) = OLD.with(|c| c.borrow().as_ref().filter(|(g, _)| *g == gen).map(|(_, v)| v.clone())) {
        return v;
    }
    let v: Vec<Rc<KeySet>> = settings::with_value(&settings::OLD_PASSPHRASES, |list| {
        crate::kdf::split_old_passphrases(list.unwrap_or(b""))
            .iter()
            .filter_map(|p| KeySet::derive(p).ok())
            .map(Rc::new)
            .collect()
    });
    OLD.with(|c| *c.borrow_mut() = Some((gen, v.clone())));
    v
}

/// The keys derived from `tenant_guard.passphrase`, or None when it is
/// missing or too short (for the log writer, which must not fail on that).
pub fn try_current() -> Option<Rc<KeySet>> {
    let gen = settings::key_generation();
    if let Some(k) = CURRENT.with(|c| c.borrow().as_ref().filter(|(g, _)| *g == gen).map(|(_, k)| k.clone())) {
        return Some(k);
    }
    let k = Rc::new(settings::with_value(&settings::PASSPHRASE, |pass| KeySet::derive(pass.unwrap_or(b""))).ok()?);
    CURRENT.with(|c| *c.borrow_mut() = Some((gen, k.clone())));
    Some(k)
}

/// The configured key set (current or old) whose key id is `id`.
pub fn by_id(id: u32) -> Option<Rc<KeySet>> {
    try_current().filter(|k| k.key_id() == id).or_else(|| old().into_iter().find(|k| k.key_id() == id))
}

/// The keys derived from `tenant_guard.passphrase`; raises a clear error when
/// it is missing or too short.
pub fn current() -> Rc<KeySet> {
    let gen = settings::key_generation();
    if let Some(k) = CURRENT.with(|c| c.borrow().as_ref().filter(|(g, _)| *g == gen).map(|(_, k)| k.clone())) {
        return k;
    }
    let derived = settings::with_value(&settings::PASSPHRASE, |pass| KeySet::derive(pass.unwrap_or(b"")));
    match derived {
        Ok(k) => {
            let k = Rc::new(k);
            CURRENT.with(|c| *c.borrow_mut() = Some((gen, k.clone())));
            k
        }
        Err(KeyError::Missing) => {
            crate::pg::errors::hide_statement_from_log();
            raise(
            NOT_READY,
            "tenant_guard.passphrase is not set",
            Some("tenant_guard derives its encryption and signing keys from this server-side passphrase."),
            Some("Add tenant_guard.passphrase = '<output of: openssl rand -base64 48>' to postgresql.conf (a file only the server can read) and reload."),
            )
        }
        Err(KeyError::TooShort) => {
            crate::pg::errors::hide_statement_from_log();
            raise(
                NOT_READY,
                format!("tenant_guard.passphrase is too short (minimum {MIN_PASSPHRASE_LEN} bytes)"),
                None,
                Some("Generate one with: openssl rand -base64 48"),
            )
        }
    }
}

/// Run `f` with the JWT secret; raises when it is missing or too short.
pub fn with_jwt_secret<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    settings::with_value(&settings::JWT_SECRET, |secret| checked_jwt_secret(secret.unwrap_or(b""), f))
}

fn checked_jwt_secret<R>(secret: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    if secret.is_empty() {
        crate::pg::errors::hide_statement_from_log();
        raise(
            NOT_READY,
            "tenant_guard.jwt_secret is not set",
            None,
            Some("Add tenant_guard.jwt_secret to postgresql.conf (a file only the server can read) and reload."),
        )
    }
    if secret.len() < MIN_JWT_SECRET_LEN {
        crate::pg::errors::hide_statement_from_log();
        raise(
            NOT_READY,
            format!("tenant_guard.jwt_secret is too short (minimum {MIN_JWT_SECRET_LEN} bytes)"),
            None,
            None,
        )
    }
    f(secret)
}
