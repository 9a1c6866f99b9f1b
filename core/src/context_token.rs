//! Request-context tokens: what `authenticate*()` / `assume()` put in the
//! `tenant_guard.context` setting, and what every helper verifies.
//!
//! Format: `v1.<base64url(JSON claims)>.<base64url(HMAC-SHA256(context key, "v1." || payload))>`.
//! The claims bind the token to the transaction that created it (leader
//! backend pid + virtual transaction id), so a token copied out of one
//! transaction is worthless in any other, even for the same tenant.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "v1.";
/// Longest token accepted (claims carry at most a few dozen scopes).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Where a context is valid: the (leader) backend and its transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub pid: i32,
    pub backend_id: i32,
    pub lxid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "o")]
    pub org_id: [u8; 16],
    #[serde(rename = "u")]
    pub user_id: Option<[u8; 16]>,
    #[serde(rename = "r")]
    pub role: String,
    #[serde(rename = "k", default)]
    pub api_key_id: Option<[u8; 16]>,
    #[serde(rename = "s", default)]
    pub scopes: Vec<String>,
    #[serde(rename = "b")]
    pub binding: Binding,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    BadSignature,
}

fn mac(key: &[u8; 32], payload: &str) -> HmacSha256 {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(PREFIX.as_bytes());
    m.update(payload.as_bytes());
    m
}

pub fn encode(claims: &Claims, key: &[u8; 32]) -> String {
    let json = serde_json::to_vec(claims).expect("claims serialize");
    let payload = B64.encode(json);
    let tag = mac(key, &payload).finalize().into_bytes();
    format!("{PREFIX}{payload}.{}", B64.encode(tag))
}

/// Verify the MAC (in constant time) and parse the claims. Does not check the binding.
pub fn decode(token: &str, key: &[u8; 32]) -> Result<Claims, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
    let (payload, tag) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    let tag = B64.decode(tag).map_err(|_| TokenError::Malformed)?;
    mac(key, payload).verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
    let json = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    if crate::roles::rank(&claims.role).is_none() {
        return Err(TokenError::Malformed);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            org_id: [1; 16],
            user_id: Some([2; 16]),
            role: "admin".into(),
            api_key_id: None,
            scopes: vec!["read".into()],
            binding: Binding { pid: 42, backend_id: 3, lxid: 7 },
        }
    }

    #[test]
    fn round_trip() {
        let k = [9u8; 32];
        let t = encode(&claims(), &k);
        assert!(t.starts_with("v1."));
        assert_eq!(decode(&t, &k).unwrap(), claims());
    }

    #[test]
    fn wrong_key_and_tampering_fail() {
        let k = [9u8; 32];
        let t = encode(&claims(), &k);
        assert_eq!(decode(&t, &[8u8; 32]), Err(TokenError::BadSignature));
        // swap in other claims under the old tag
        let mut other = claims();
        other.org_id = [3; 16];
        let forged_payload = encode(&other, &[8u8; 32]);
        let (_, p2) = forged_payload.split_at(3);
        let p2 = p2.split_once('.').unwrap().0;
        let tag = t.rsplit_once('.').unwrap().1;
        assert_eq!(decode(&format!("v1.{p2}.{tag}"), &k), Err(TokenError::BadSignature));
        // flip one character of the tag
        let mut bytes = t.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert!(decode(std::str::from_utf8(&bytes).unwrap(), &k).is_err());
    }

    #[test]
    fn malformed() {
        let k = [9u8; 32];
        for t in ["", "v1.", "v1.abc", "v2.a.b", "v1.!!.??", "garbage"] {
            assert!(decode(t, &k).is_err(), "{t}");
        }
        let long = format!("v1.{}.x", "A".repeat(MAX_TOKEN_LEN));
        assert_eq!(decode(&long, &k), Err(TokenError::Malformed));
    }

    #[test]
    fn unknown_role_rejected_even_if_signed() {
        let k = [9u8; 32];
        let mut c = claims();
        c.role = "superuser".into();
        assert_eq!(decode(&encode(&c, &k), &k), Err(TokenError::Malformed));
    }
}
