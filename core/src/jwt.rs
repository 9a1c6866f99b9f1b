//! HS256 JWT verification for `authenticate_jwt()`. Only `alg: HS256` is
//! accepted (no `none`, no RS*/ES*, no algorithm confusion); `sub` and
//! `org_id` must be UUIDs, `exp` is required, `nbf`/`iat` are honoured with
//! at most [`LEEWAY_SECS`] of clock skew. The role never comes from the token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::fmt;

pub const MAX_JWT_LEN: usize = 8 * 1024;
pub const LEEWAY_SECS: i64 = 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtClaims {
    pub sub: [u8; 16],
    pub org_id: [u8; 16],
    pub exp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    Algorithm,
    Signature,
    Expired,
    NotYetValid,
    MissingClaim(&'static str),
    /// `aud` or `iss` does not name what this server expects.
    WrongAudience,
    WrongIssuer,
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed => write!(f, "malformed token"),
            JwtError::Algorithm => write!(f, "unsupported algorithm (only HS256 is accepted)"),
            JwtError::Signature => write!(f, "invalid signature"),
            JwtError::Expired => write!(f, "token expired"),
            JwtError::NotYetValid => write!(f, "token not yet valid"),
            JwtError::MissingClaim(c) => write!(f, "claim \"{c}\" missing or invalid"),
            JwtError::WrongAudience => write!(f, "the token is not meant for this audience"),
            JwtError::WrongIssuer => write!(f, "the token comes from another issuer"),
        }
    }
}

pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    // Canonical hyphenated form only: 8-4-4-4-12.
    if s.len() != 36 {
        return None;
    }
    uuid::Uuid::try_parse(s).ok().map(|u| *u.as_bytes())
}

fn num(v: &Value, name: &'static str) -> Result<Option<i64>, JwtError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(JwtError::MissingClaim(name)),
        Some(_) => Err(JwtError::MissingClaim(name)),
    }
}

/// What the server expects of `aud` and `iss` (None: not checked).
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect<'a> {
    pub audience: Option<&'a str>,
    pub issuer: Option<&'a str>,
}

/// Verify `token` with `secret` at time `now` (seconds since the epoch).
pub fn verify(token: &str, secret: &[u8], now: i64) -> Result<JwtClaims, JwtError> {
    verify_expecting(token, secret, now, Expect::default())
}

/// As [`verify`], and when configured, `aud` (a string or an array of
/// strings) must contain the expected audience and `iss` must equal the issuer.
pub fn verify_expecting(token: &str, secret: &[u8], now: i64, expect: Expect<'_>) -> Result<JwtClaims, JwtError> {
    if token.len() > MAX_JWT_LEN {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (h, p, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => (h, p, s),
        _ => return Err(JwtError::Malformed),
    };
    let header: Value =
        serde_json::from_slice(&B64.decode(h).map_err(|_| JwtError::Malformed)?).map_err(|_| JwtError::Malformed)?;
    if header.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(JwtError::Algorithm);
    }
    if let Some(typ) = header.get("typ") {
        if !matches!(typ.as_str(), Some("JWT") | Some("jwt")) {
            return Err(JwtError::Malformed);
        }
    }
    if header.get("crit").is_some() {
        return Err(JwtError::Malformed);
    }
    let sig = B64.decode(s).map_err(|_| JwtError::Malformed)?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&sig).map_err(|_| JwtError::Signature)?;

    let claims: Value =
        serde_json::from_slice(&B64.decode(p).map_err(|_| JwtError::Malformed)?).map_err(|_| JwtError::Malformed)?;
    if !claims.is_object() {
        return Err(JwtError::Malformed);
    }
    let sub = claims.get("sub").and_then(Value::as_str).and_then(parse_uuid).ok_or(JwtError::MissingClaim("sub"))?;
    let org_id =
        claims.get("org_id").and_then(Value::as_str).and_then(parse_uuid).ok_or(JwtError::MissingClaim("org_id"))?;
    let exp = num(&claims, "exp")?.ok_or(JwtError::MissingClaim("exp"))?;
    if now >= exp {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = num(&claims, "nbf")? {
        if now + LEEWAY_SECS < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(iat) = num(&claims, "iat")? {
        if now + LEEWAY_SECS < iat {
            return Err(JwtError::NotYetValid);
        }
    }
    if let Some(aud) = expect.audience {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => a == aud,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(aud)),
            _ => false,
        };
        if !ok {
            return Err(JwtError::WrongAudience);
        }
    }
    if let Some(iss) = expect.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(iss) {
            return Err(JwtError::WrongIssuer);
        }
    }
    Ok(JwtClaims { sub, org_id, exp })
}

/// Build an HS256 token (unit tests only: the extension never signs JWTs).
#[cfg(test)]
pub fn sign(claims: &Value, secret: &[u8]) -> String {
    let h = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = B64.encode(serde_json::to_vec(claims).expect("json"));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    format!("{h}.{p}.{}", B64.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const SUB: &str = "7d3c1e2a-0b4f-4c5d-9e6f-112233445566";
    const ORG: &str = "a1b2c3d4-e5f6-4711-8899-aabbccddeeff";
    const NOW: i64 = 1_800_000_000;

    fn good() -> Value {
        json!({"sub": SUB, "org_id": ORG, "exp": NOW + 300, "iat": NOW})
    }

    #[test]
    fn accepts_valid() {
        let c = verify(&sign(&good(), SECRET), SECRET, NOW).unwrap();
        assert_eq!(c.sub, parse_uuid(SUB).unwrap());
        assert_eq!(c.org_id, parse_uuid(ORG).unwrap());
    }

    #[test]
    fn rejects_wrong_secret_expired_future() {
        assert_eq!(verify(&sign(&good(), b"wrong-secret-wrong-secret-wrong!!"), SECRET, NOW), Err(JwtError::Signature));
        assert_eq!(verify(&sign(&good(), SECRET), SECRET, NOW + 300), Err(JwtError::Expired));
        let mut c = good();
        c["nbf"] = json!(NOW + 61);
        assert_eq!(verify(&sign(&c, SECRET), SECRET, NOW), Err(JwtError::NotYetValid));
        c["nbf"] = json!(NOW + 59);
        assert!(verify(&sign(&c, SECRET), SECRET, NOW).is_ok());
        let mut c = good();
        c["iat"] = json!(NOW + 120);
        assert_eq!(verify(&sign(&c, SECRET), SECRET, NOW), Err(JwtError::NotYetValid));
    }

    #[test]
    fn rejects_missing_claims() {
        for k in ["sub", "org_id", "exp"] {
            let mut c = good();
            c.as_object_mut().unwrap().remove(k);
            assert!(matches!(verify(&sign(&c, SECRET), SECRET, NOW), Err(JwtError::MissingClaim(_))), "{k}");
        }
        let mut c = good();
        c["sub"] = json!("not-a-uuid");
        assert_eq!(verify(&sign(&c, SECRET), SECRET, NOW), Err(JwtError::MissingClaim("sub")));
        c["sub"] = json!(42);
        assert_eq!(verify(&sign(&c, SECRET), SECRET, NOW), Err(JwtError::MissingClaim("sub")));
    }

    fn with_header(header: &str, claims: &Value, secret: &[u8]) -> String {
        let h = B64.encode(header);
        let p = B64.encode(serde_json::to_vec(claims).unwrap());
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
        mac.update(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", B64.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn audience_and_issuer_when_configured() {
        let e = Expect { audience: Some("app"), issuer: Some("https://auth.example.com") };
        let mut c = good();
        assert_eq!(verify_expecting(&sign(&c, SECRET), SECRET, NOW, e), Err(JwtError::WrongAudience), "no aud");
        c["aud"] = json!("other-service");
        assert_eq!(verify_expecting(&sign(&c, SECRET), SECRET, NOW, e), Err(JwtError::WrongAudience));
        c["aud"] = json!(["other-service", "app"]);
        assert_eq!(verify_expecting(&sign(&c, SECRET), SECRET, NOW, e), Err(JwtError::WrongIssuer), "no iss");
        c["iss"] = json!("https://evil.example.com");
        assert_eq!(verify_expecting(&sign(&c, SECRET), SECRET, NOW, e), Err(JwtError::WrongIssuer));
        c["iss"] = json!("https://auth.example.com");
        assert!(verify_expecting(&sign(&c, SECRET), SECRET, NOW, e).is_ok());
        c["aud"] = json!("app");
        assert!(verify_expecting(&sign(&c, SECRET), SECRET, NOW, e).is_ok());
        // Unconfigured: not checked.
        assert!(verify(&sign(&good(), SECRET), SECRET, NOW).is_ok());
    }

    #[test]
    fn rejects_other_algorithms() {
        let p = B64.encode(serde_json::to_vec(&good()).unwrap());
        let none = format!("{}.{p}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(verify(&none, SECRET, NOW), Err(JwtError::Algorithm));
        for alg in [r#"{"alg":"RS256"}"#, r#"{"alg":"hs256"}"#, r#"{"alg":"HS512"}"#, r#"{}"#] {
            assert_eq!(verify(&with_header(alg, &good(), SECRET), SECRET, NOW), Err(JwtError::Algorithm), "{alg}");
        }
    }

    #[test]
    fn rejects_malformed_and_oversized() {
        for t in ["", ".", "..", "a.b", "a.b.c.d", "!!!.???.***"] {
            assert!(verify(t, SECRET, NOW).is_err(), "{t}");
        }
        let mut c = good();
        c["pad"] = json!("x".repeat(MAX_JWT_LEN));
        assert_eq!(verify(&sign(&c, SECRET), SECRET, NOW), Err(JwtError::Malformed));
        // a truncated signature
        let t = sign(&good(), SECRET);
        assert!(verify(&t[..t.len() - 4], SECRET, NOW).is_err());
        assert_eq!(verify(&t[..t.len() - 43], SECRET, NOW), Err(JwtError::Signature));
    }
}
