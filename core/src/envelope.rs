//! The versioned ciphertext envelope for secrets at rest (pure logic).
//!
//! ```text
//! offset  size  field
//! 0       1     version, 0x01
//! 1       4     key id, big-endian (public fingerprint of the passphrase, see kdf.rs)
//! 5       12    nonce, 96 random bits from the OS CSPRNG, fresh on every encryption
//! 17      n     AES-256-GCM ciphertext (same length as the plaintext)
//! 17+n    16    GCM tag
//! ```
//! The GCM associated data is the 5-byte header (version and key id)
//! followed by the caller's associated data, so neither the header nor the
//! binding can be changed without failing the tag check.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use std::fmt;

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 5;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Shorter than the fixed parts, or an unknown version.
    Malformed,
    /// Tag check failed: wrong key, wrong associated data, or tampering.
    Authentication,
    /// The OS random generator failed.
    Random,
}

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvelopeError::Malformed => write!(f, "not a tenant_guard v1 envelope (truncated or unknown version)"),
            EnvelopeError::Authentication => {
                write!(f, "the envelope does not authenticate (wrong key, wrong associated data, or tampered)")
            }
            EnvelopeError::Random => write!(f, "the OS random generator failed"),
        }
    }
}

/// The key id of an envelope, without decrypting it.
pub fn key_id(envelope: &[u8]) -> Result<u32, EnvelopeError> {
    if envelope.len() < OVERHEAD || envelope[0] != VERSION {
        return Err(EnvelopeError::Malformed);
    }
    Ok(u32::from_be_bytes(envelope[1..5].try_into().unwrap()))
}

fn full_aad(header: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(header.len() + aad.len());
    v.extend_from_slice(header);
    v.extend_from_slice(aad);
    v
}

/// Encrypt with an explicit nonce (for known-answer tests; use [`seal`]).
pub fn seal_with_nonce(key: &[u8; 32], key_id: u32, nonce: [u8; NONCE_LEN], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.push(VERSION);
    out.extend_from_slice(&key_id.to_be_bytes());
    out.extend_from_slice(&nonce);
    let cipher = Aes256Gcm::new(key.into());
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &full_aad(&out[..HEADER_LEN], aad) })
        .expect("AES-GCM encryption cannot fail for inputs below 64 GiB");
    out.extend_from_slice(&ct);
    out
}

/// Encrypt under a fresh random nonce.
pub fn seal(key: &[u8; 32], key_id: u32, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(|_| EnvelopeError::Random)?;
    Ok(seal_with_nonce(key, key_id, nonce, plaintext, aad))
}

/// Decrypt and authenticate. The caller picks `key` by [`key_id`].
pub fn open(key: &[u8; 32], envelope: &[u8], aad: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    key_id(envelope)?;
    let (header, rest) = envelope.split_at(HEADER_LEN);
    let (nonce, ct) = rest.split_at(NONCE_LEN);
    Aes256Gcm::new(key.into())
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &full_aad(header, aad) })
        .map_err(|_| EnvelopeError::Authentication)
}

/// The associated data that binds a stored secret to its row identity.
/// `"tenant_guard/v1/secret" || 0x00 || org_id (16 bytes) || u32be(len kind) || kind || u32be(len name) || name`
pub fn secret_aad(org_id: &[u8; 16], kind: &str, name: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(23 + 16 + 8 + kind.len() + name.len());
    v.extend_from_slice(b"tenant_guard/v1/secret\0");
    v.extend_from_slice(org_id);
    v.extend_from_slice(&(kind.len() as u32).to_be_bytes());
    v.extend_from_slice(kind.as_bytes());
    v.extend_from_slice(&(name.len() as u32).to_be_bytes());
    v.extend_from_slice(name.as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn gcm_known_answers_through_the_envelope_core() {
        // The envelope's core is plain AES-256-GCM over (header || aad); check
        // the primitive against McGrew-Viega vectors via the same crate calls.
        let v: Value = serde_json::from_str(include_str!("../../tests/vectors/known_answers.json")).unwrap();
        let vectors = v["aes_256_gcm"]["vectors"].as_array().unwrap();
        assert!(!vectors.is_empty());
        for t in vectors {
            let key: [u8; 32] = hex(t["key_hex"].as_str().unwrap()).try_into().unwrap();
            let iv = hex(t["iv_hex"].as_str().unwrap());
            let pt = hex(t["plaintext_hex"].as_str().unwrap());
            let aad = hex(t["aad_hex"].as_str().unwrap());
            let mut expected = hex(t["ciphertext_hex"].as_str().unwrap());
            expected.extend(hex(t["tag_hex"].as_str().unwrap()));
            let c = Aes256Gcm::new((&key).into());
            let got = c.encrypt(Nonce::from_slice(&iv), Payload { msg: &pt, aad: &aad }).unwrap();
            assert_eq!(got, expected, "test case {}", t["test_case"]);
            // And the envelope built on it decrypts and matches GCM with header||aad.
            let env = seal_with_nonce(&key, 7, iv.clone().try_into().unwrap(), &pt, &aad);
            let mut full = vec![VERSION, 0, 0, 0, 7];
            full.extend_from_slice(&aad);
            let direct = c.encrypt(Nonce::from_slice(&iv), Payload { msg: &pt, aad: &full }).unwrap();
            assert_eq!(&env[HEADER_LEN + NONCE_LEN..], &direct[..]);
            assert_eq!(open(&key, &env, &aad).unwrap(), pt);
        }
    }

    #[test]
    fn layout() {
        let k = [3u8; 32];
        let e = seal_with_nonce(&k, 0xA1B2C3D4, [9; 12], b"hello", b"ad");
        assert_eq!(e.len(), OVERHEAD + 5);
        assert_eq!(e[0], 1);
        assert_eq!(&e[1..5], &[0xA1, 0xB2, 0xC3, 0xD4]);
        assert_eq!(&e[5..17], &[9; 12]);
        assert_eq!(key_id(&e).unwrap(), 0xA1B2C3D4);
    }

    #[test]
    fn fresh_nonce_every_time() {
        let k = [3u8; 32];
        let a = seal(&k, 1, b"same secret", b"").unwrap();
        let b = seal(&k, 1, b"same secret", b"").unwrap();
        assert_ne!(a, b);
        assert_ne!(a[5..17], b[5..17]);
    }

    #[test]
    fn tampering_wrong_key_wrong_aad_truncation_fail() {
        let k = [3u8; 32];
        let e = seal(&k, 1, b"top secret", b"org-a").unwrap();
        assert_eq!(open(&k, &e, b"org-a").unwrap(), b"top secret");
        assert_eq!(open(&[4u8; 32], &e, b"org-a"), Err(EnvelopeError::Authentication));
        assert_eq!(open(&k, &e, b"org-b"), Err(EnvelopeError::Authentication));
        for i in 0..e.len() {
            let mut t = e.clone();
            t[i] ^= 0x01;
            assert!(open(&k, &t, b"org-a").is_err(), "bit flip at byte {i} accepted");
        }
        for n in 0..e.len() {
            assert!(open(&k, &e[..n], b"org-a").is_err(), "truncation to {n}");
        }
        assert_eq!(open(&k, &[], b""), Err(EnvelopeError::Malformed));
    }

    #[test]
    fn secret_aad_is_unambiguous() {
        let o = [1u8; 16];
        assert_ne!(secret_aad(&o, "ab", "c"), secret_aad(&o, "a", "bc"));
        assert_ne!(secret_aad(&o, "k", "n"), secret_aad(&[2u8; 16], "k", "n"));
    }
}
