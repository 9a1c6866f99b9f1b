//! Pure key handling: passphrase rules, HKDF-SHA256 derivation of per-purpose
//! subkeys, key ids. No pgrx here, so plain `cargo test` covers it.
//!
//! KDF: HKDF-SHA256 (RFC 5869), salt `tenant_guard/v1`, one `info` label per
//! purpose. The passphrase is a machine-generated server secret of at least
//! [`MIN_PASSPHRASE_LEN`] bytes (e.g. `openssl rand -base64 48`), i.e. already
//! a high-entropy key, so a password-stretching KDF (PBKDF2/scrypt/Argon2)
//! would add a per-backend start-up cost without adding security; HKDF gives
//! independent subkeys so a leak of one purpose's key reveals nothing about
//! another's.

use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;
use zeroize::Zeroizing;

/// Shortest passphrase accepted, in bytes.
pub const MIN_PASSPHRASE_LEN: usize = 32;
/// Shortest JWT secret accepted, in bytes (RFC 7518 §3.2: at least the hash size).
pub const MIN_JWT_SECRET_LEN: usize = 32;

const SALT: &[u8] = b"tenant_guard/v1";

/// What a subkey is used for; each purpose gets an independent key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// AES-256-GCM key for secrets at rest.
    Secrets,
    /// HMAC-SHA256 key that signs request-context tokens.
    Context,
    /// HMAC-SHA256 key that seals the audit trail's chain (audit_chain.rs).
    Audit,
    /// HMAC-SHA256 key that signs contexts carried to Citus workers (carried_context.rs).
    Carried,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Secrets => b"tenant_guard/v1/secrets",
            Purpose::Context => b"tenant_guard/v1/context",
            Purpose::Audit => b"tenant_guard/v1/audit",
            Purpose::Carried => b"tenant_guard/v1/carried-context",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    Missing,
    TooShort,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Missing => write!(f, "no passphrase is configured"),
            KeyError::TooShort => {
                write!(f, "the passphrase is shorter than {MIN_PASSPHRASE_LEN} bytes")
            }
        }
    }
}

/// Keys derived from one passphrase. Debug never prints key material.
pub struct KeySet {
    key_id: u32,
    secrets: Zeroizing<[u8; 32]>,
    context: Zeroizing<[u8; 32]>,
    audit: Zeroizing<[u8; 32]>,
    carried: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet").field("key_id", &format_args!("{:08x}", self.key_id)).finish_non_exhaustive()
    }
}

impl KeySet {
    /// Derive every subkey from `passphrase`. Fails on an empty or short passphrase.
    pub fn derive(passphrase: &[u8]) -> Result<KeySet, KeyError> {
        if passphrase.is_empty() {
            return Err(KeyError::Missing);
        }
        if passphrase.len() < MIN_PASSPHRASE_LEN {
            return Err(KeyError::TooShort);
        }
        let hk = Hkdf::<Sha256>::new(Some(SALT), passphrase);
        let mut id = [0u8; 4];
        hk.expand(b"tenant_guard/v1/key-id", &mut id).expect("4 bytes is a valid HKDF length");
        let mut secrets = Zeroizing::new([0u8; 32]);
        hk.expand(Purpose::Secrets.label(), secrets.as_mut()).expect("32 bytes is a valid HKDF length");
        let mut context = Zeroizing::new([0u8; 32]);
        hk.expand(Purpose::Context.label(), context.as_mut()).expect("32 bytes is a valid HKDF length");
        let mut audit = Zeroizing::new([0u8; 32]);
        hk.expand(Purpose::Audit.label(), audit.as_mut()).expect("32 bytes is a valid HKDF length");
        let mut carried = Zeroizing::new([0u8; 32]);
        hk.expand(Purpose::Carried.label(), carried.as_mut()).expect("32 bytes is a valid HKDF length");
        Ok(KeySet { key_id: u32::from_be_bytes(id), secrets, context, audit, carried })
    }

    /// A public fingerprint of the passphrase, stored in envelopes so that
    /// rotation knows which passphrase a ciphertext needs. Not secret.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    pub fn subkey(&self, purpose: Purpose) -> &[u8; 32] {
        match purpose {
            Purpose::Secrets => &self.secrets,
            Purpose::Context => &self.context,
            Purpose::Audit => &self.audit,
            Purpose::Carried => &self.carried,
        }
    }
}

/// Split `tenant_guard.old_passphrases`: comma-separated, surrounding
/// whitespace ignored, empty items skipped. (Generated passphrases are
/// base64 and contain neither commas nor spaces.)
pub fn split_old_passphrases(list: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    list.split(|b| *b == b',')
        .map(|item| item.trim_ascii())
        .filter(|item| !item.is_empty())
        .map(|item| Zeroizing::new(item.to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &[u8] = b"correct horse battery staple 0123456789";

    #[test]
    fn rejects_missing_and_short() {
        assert_eq!(KeySet::derive(b"").unwrap_err(), KeyError::Missing);
        assert_eq!(KeySet::derive(&[b'a'; MIN_PASSPHRASE_LEN - 1]).unwrap_err(), KeyError::TooShort);
        assert!(KeySet::derive(&[b'a'; MIN_PASSPHRASE_LEN]).is_ok());
    }

    #[test]
    fn deterministic_and_purpose_separated() {
        let a = KeySet::derive(PASS).unwrap();
        let b = KeySet::derive(PASS).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        assert_eq!(a.subkey(Purpose::Secrets), b.subkey(Purpose::Secrets));
        assert_ne!(a.subkey(Purpose::Secrets), a.subkey(Purpose::Context));
        assert_ne!(a.subkey(Purpose::Audit), a.subkey(Purpose::Context));
        assert_ne!(a.subkey(Purpose::Audit), a.subkey(Purpose::Secrets));
        let c = KeySet::derive(b"another passphrase, also long enough!!").unwrap();
        assert_ne!(a.key_id(), c.key_id());
        assert_ne!(a.subkey(Purpose::Secrets), c.subkey(Purpose::Secrets));
    }

    #[test]
    fn matches_rfc5869_construction() {
        // Independent recomputation of HKDF-SHA256 with the hmac crate:
        // PRK = HMAC(salt, ikm); T(1) = HMAC(PRK, info || 0x01).
        use hmac::{Hmac, Mac};
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(SALT).unwrap();
        m.update(PASS);
        let prk = m.finalize().into_bytes();
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&prk).unwrap();
        m.update(b"tenant_guard/v1/secrets");
        m.update(&[1]);
        let t1 = m.finalize().into_bytes();
        assert_eq!(&t1[..], &KeySet::derive(PASS).unwrap().subkey(Purpose::Secrets)[..]);
    }

    #[test]
    fn debug_hides_keys() {
        let k = KeySet::derive(PASS).unwrap();
        let s = format!("{k:?}");
        assert!(s.contains("key_id"));
        let hex: String = k.subkey(Purpose::Secrets).iter().map(|b| format!("{b:02x}")).collect();
        assert!(!s.contains(&hex[..8]));
    }

    #[test]
    fn old_passphrase_list() {
        let v = split_old_passphrases(b" aaa , bbb,,ccc ");
        let v: Vec<&[u8]> = v.iter().map(|x| x.as_slice()).collect();
        assert_eq!(v, vec![&b"aaa"[..], b"bbb", b"ccc"]);
        assert!(split_old_passphrases(b"").is_empty());
    }
}
