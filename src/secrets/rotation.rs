//! Passphrase rotation: re-encrypt the secrets not under the current key.

use super::{open, seal};
use crate::audit_trail::{self, Event, Kind};
use crate::envelope;
use crate::keyring;
use crate::pg::errors::raise;
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, Uuid};

/// Re-encrypt up to `batch_size` secrets that are not under the current
/// passphrase's key, then (with what is left of the batch) re-seal audit
/// entries sealed under an old one; returns how many it did. Run until it
/// returns 0, then the old passphrase can be removed. Never returns
/// plaintext; safe to interrupt and rerun (each row is rewritten in one
/// UPDATE). Each run is one event of the audit trail.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
pub fn rotate_secrets(batch_size: default!(i32, 1000)) -> i64 {
    // The run's start is recorded at once: a run that never commits (killed
    // mid-batch, say) stays in the trail.
    let mut started = Event::new("rotate_secrets", None, "secrets");
    started.detail = Some(format!("started, batch_size {batch_size}"));
    if !audit_trail::record(&started, audit_trail::Outcome::Allowed, None) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
            "rotate_secrets is audited, and the audit trail has no room to record it now",
            None,
            Some("Retry; if it persists, look at tenant_guard.audit_log_queue() and the server log."),
        );
    }
    let ev = Event::new("rotate_secrets", None, "secrets");
    audit_trail::guarded(Kind::WriteRun, ev, |ev| {
        let secrets = audit_trail::rekeying(|| reencrypt(batch_size));
        // What is left of the batch goes to the audit trail's seals.
        let entries = if secrets < batch_size as i64 { audit_trail::rekey(batch_size as i64 - secrets) } else { 0 };
        ev.detail = Some(format!("re-encrypted {secrets} secrets, re-sealed {entries} audit entries"));
        secrets + entries
    })
}

fn reencrypt(batch_size: i32) -> i64 {
    if batch_size <= 0 {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "batch_size must be positive", None, None);
    }
    let current = keyring::current();
    let rows: Vec<(Uuid, Uuid, String, String, Vec<u8>)> = Spi::connect_mut(|c| {
        let t = c.update(
            "SELECT id, org_id, kind, name, ciphertext FROM tenant_guard.secrets
              WHERE key_id <> $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            None,
            &[(current.key_id() as i64).into(), (batch_size as i64).into()],
        )?;
        let mut v = Vec::new();
        for r in t {
            v.push((
                r.get::<Uuid>(1)?.expect("id"),
                r.get::<Uuid>(2)?.expect("org"),
                r.get::<String>(3)?.expect("kind"),
                r.get::<String>(4)?.expect("name"),
                r.get::<Vec<u8>>(5)?.expect("ciphertext"),
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(v)
    })
    .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{e}"), None, None));
    let mut n = 0i64;
    for (id, org, kind, name, ct) in rows {
        let aad = envelope::secret_aad(org.as_bytes(), &kind, &name);
        let plain = zeroize::Zeroizing::new(open(&ct, &aad));
        let fresh = seal(&plain, &aad);
        Spi::run_with_args(
            "UPDATE tenant_guard.secrets SET ciphertext = $2, key_id = $3, updated_at = now() WHERE id = $1",
            &[id.into(), fresh.into(), (current.key_id() as i64).into()],
        )
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("{e}"), None, None));
        n += 1;
    }
    n
}
