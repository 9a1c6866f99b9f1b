//! Webhook signatures (pure logic): HMAC-SHA256, Standard Webhooks, Stripe,
//! GitHub and Slack. Every comparison is constant-time (`Mac::verify_slice`);
//! a malformed header is simply "not verified".

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest signature header looked at.
pub const MAX_HEADER_LEN: usize = 8 * 1024;

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn verify_parts(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.verify_slice(tag).is_ok()
}

fn within(now: i64, ts: i64, tolerance: Option<i64>) -> bool {
    match tolerance {
        None => true,
        Some(t) => t >= 0 && now.checked_sub(ts).is_some_and(|d| d.abs() <= t),
    }
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

// ---------------------------------------------------------------- Standard Webhooks

/// The HMAC key of a Standard Webhooks secret: base64 after the `whsec_` prefix
/// (the prefix is optional, as in the reference libraries).
pub fn standard_key(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    B64.decode(b64).ok().filter(|k| !k.is_empty())
}

/// A new `whsec_` secret: 32 bytes from the OS CSPRNG.
pub fn generate_secret() -> Result<String, getrandom::Error> {
    let mut k = [0u8; 32];
    getrandom::getrandom(&mut k)?;
    Ok(format!("whsec_{}", B64.encode(k)))
}

/// `v1,<base64(HMAC(key, "{msg_id}.{ts}.{payload}"))>`
pub fn standard_sign(key: &[u8], msg_id: &str, ts: i64, payload: &[u8]) -> String {
    let tag = hmac_sha256(key, &[msg_id.as_bytes(), b".", ts.to_string().as_bytes(), b".", payload]);
    format!("v1,{}", B64.encode(tag))
}

/// True when any `v1,` signature in the space-separated header is valid and
/// `ts` is within `tolerance` seconds of `now` (None: no time check).
pub fn standard_verify(
    key: &[u8],
    msg_id: &str,
    ts: i64,
    payload: &[u8],
    header: &str,
    tolerance: Option<i64>,
    now: i64,
) -> bool {
    if header.len() > MAX_HEADER_LEN || !within(now, ts, tolerance) {
        return false;
    }
    let ts_s = ts.to_string();
    let mut ok = false;
    for sig in header.split(' ').filter(|s| !s.is_empty()) {
        let Some(b64) = sig.strip_prefix("v1,") else { continue };
        let Ok(tag) = B64.decode(b64) else { continue };
        // Check every candidate (no early exit), each in constant time.
        ok |= verify_parts(key, &[msg_id.as_bytes(), b".", ts_s.as_bytes(), b".", payload], &tag);
    }
    ok
}

// ---------------------------------------------------------------- Stripe

/// `Stripe-Signature: t=<ts>,v1=<hex>[,v1=<hex>...][,v0=...]`, HMAC over `"{t}.{payload}"`
/// keyed with the endpoint secret string as is.
pub fn stripe_verify(secret: &str, payload: &[u8], header: &str, tolerance: Option<i64>, now: i64) -> bool {
    if header.len() > MAX_HEADER_LEN {
        return false;
    }
    let mut t: Option<&str> = None;
    let mut sigs = vec![];
    for item in header.split(',') {
        let Some((k, v)) = item.trim().split_once('=') else { return false };
        match k {
            "t" if t.is_none() => t = Some(v),
            "t" => return false,
            "v1" => sigs.push(v),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let Ok(ts) = t.parse::<i64>() else { return false };
    if sigs.is_empty() || !within(now, ts, tolerance) {
        return false;
    }
    let mut ok = false;
    for s in sigs {
        if let Some(tag) = hex_decode(s) {
            ok |= verify_parts(secret.as_bytes(), &[t.as_bytes(), b".", payload], &tag);
        }
    }
    ok
}

/// Build a Stripe-style header (unit tests only).
#[cfg(test)]
pub fn stripe_sign(secret: &str, payload: &[u8], ts: i64) -> String {
    let tag = hmac_sha256(secret.as_bytes(), &[ts.to_string().as_bytes(), b".", payload]);
    format!("t={ts},v1={}", hex(&tag))
}

// ---------------------------------------------------------------- GitHub

/// `X-Hub-Signature-256: sha256=<hex>` over the raw body.
pub fn github_verify(secret: &str, payload: &[u8], header: &str) -> bool {
    let Some(h) = header.trim().strip_prefix("sha256=") else { return false };
    let Some(tag) = hex_decode(h) else { return false };
    verify_parts(secret.as_bytes(), &[payload], &tag)
}

// ---------------------------------------------------------------- Slack

/// `X-Slack-Signature: v0=<hex>` over `"v0:{ts}:{body}"`, with `X-Slack-Request-Timestamp: ts`.
pub fn slack_verify(secret: &str, ts: i64, payload: &[u8], header: &str, tolerance: Option<i64>, now: i64) -> bool {
    if !within(now, ts, tolerance) {
        return false;
    }
    let Some(h) = header.trim().strip_prefix("v0=") else { return false };
    let Some(tag) = hex_decode(h) else { return false };
    verify_parts(secret.as_bytes(), &[b"v0:", ts.to_string().as_bytes(), b":", payload], &tag)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vectors() -> Value {
        serde_json::from_str(include_str!("../../tests/vectors/known_answers.json")).unwrap()
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex_decode(s).unwrap()
    }

    #[test]
    fn rfc4231() {
        let v = vectors();
        let cases = v["hmac_sha256_rfc4231"]["vectors"].as_array().unwrap();
        assert_eq!(cases.len(), 4);
        for c in cases {
            let key = unhex(c["key_hex"].as_str().unwrap());
            let data = unhex(c["data_hex"].as_str().unwrap());
            let want = c["hmac_sha256_hex"].as_str().unwrap();
            let got = hex(&hmac_sha256(&key, &[&data]));
            assert_eq!(got, want, "case {}", c["test_case"]);
        }
    }

    #[test]
    fn sha256_nist() {
        use sha2::Digest;
        for c in vectors()["sha256_nist"]["vectors"].as_array().unwrap() {
            let msg = match c.get("msg_repeat_count") {
                Some(n) => vec![unhex(c["msg_repeat_byte_hex"].as_str().unwrap())[0]; n.as_u64().unwrap() as usize],
                None => unhex(c["msg_hex"].as_str().unwrap()),
            };
            assert_eq!(hex(&Sha256::digest(&msg)), c["sha256_hex"].as_str().unwrap(), "{}", c["label"]);
        }
    }

    #[test]
    fn standard_webhooks_vector() {
        for c in vectors()["standard_webhooks"]["vectors"].as_array().unwrap() {
            let secret = format!("{}{}", c["secret_prefix"].as_str().unwrap(), c["secret_b64"].as_str().unwrap());
            let key = standard_key(&secret).unwrap();
            assert_eq!(hex(&key), c["hmac_key_hex"].as_str().unwrap());
            let (id, ts, payload) =
                (c["msg_id"].as_str().unwrap(), c["timestamp"].as_i64().unwrap(), c["payload"].as_str().unwrap());
            let header = standard_sign(&key, id, ts, payload.as_bytes());
            assert_eq!(header, c["expected_signature_header"].as_str().unwrap());
            assert!(standard_verify(&key, id, ts, payload.as_bytes(), &header, None, 0));
            assert!(standard_verify(&key, id, ts, payload.as_bytes(), &header, Some(300), ts + 299));
            assert!(!standard_verify(&key, id, ts, payload.as_bytes(), &header, Some(300), ts + 301), "stale");
            assert!(!standard_verify(&key, id, ts, payload.as_bytes(), &header, Some(300), ts - 301), "future");
            assert!(!standard_verify(&key, id, ts, b"{\"test\": 2432232315}", &header, None, 0), "payload");
            assert!(!standard_verify(&key, "msg_other", ts, payload.as_bytes(), &header, None, 0), "id");
            assert!(!standard_verify(&key, id, ts + 1, payload.as_bytes(), &header, None, 0), "timestamp");
            assert!(!standard_verify(b"other key", id, ts, payload.as_bytes(), &header, None, 0), "secret");
            // several signatures: any valid v1 passes, other versions ignored
            let multi = format!("v1a,{} v2,abc v1,AAAA {header}", &header[3..]);
            assert!(standard_verify(&key, id, ts, payload.as_bytes(), &multi, None, 0));
            for bad in
                ["", " ", "v1,", "v1,!!!", "garbage", &header[3..], "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="]
            {
                assert!(!standard_verify(&key, id, ts, payload.as_bytes(), bad, None, 0), "{bad:?}");
            }
        }
    }

    #[test]
    fn stripe() {
        let s = "whsec_test_secret";
        let body = br#"{"id":"evt_1"}"#;
        let h = stripe_sign(s, body, 1_700_000_000);
        assert!(stripe_verify(s, body, &h, Some(300), 1_700_000_100));
        assert!(!stripe_verify(s, body, &h, Some(300), 1_700_000_400), "stale");
        assert!(stripe_verify(s, body, &h, None, 0));
        assert!(!stripe_verify("whsec_other", body, &h, None, 0));
        assert!(!stripe_verify(s, b"{}", &h, None, 0));
        let two = format!("t=1700000000,v1={},{}", "00".repeat(32), &h[13..]);
        assert!(stripe_verify(s, body, &two, None, 0), "any v1 passes: {two}");
        for bad in ["", "t=1700000000", "v1=abcd", "t=x,v1=00", "t=1,t=2,v1=00", "nonsense", "t=1700000000,v1=zz"] {
            assert!(!stripe_verify(s, body, bad, None, 0), "{bad:?}");
        }
    }

    #[test]
    fn github_and_slack() {
        // GitHub's documented example: secret "It's a Secret to Everybody", payload "Hello, World!"
        let h = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(github_verify("It's a Secret to Everybody", b"Hello, World!", h));
        assert!(!github_verify("It's a Secret to Everybody", b"Hello, World?", h));
        for bad in ["", "sha256=", "sha1=757107ea", "sha256=zz", h.trim_start_matches("sha256=")] {
            assert!(!github_verify("It's a Secret to Everybody", b"Hello, World!", bad), "{bad:?}");
        }
        let secret = "8f742231b10e8888abcd99yyyzzz85a5";
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J";
        let ts = 1_531_420_618;
        let sig =
            format!("v0={}", hex(&hmac_sha256(secret.as_bytes(), &[b"v0:", ts.to_string().as_bytes(), b":", body])));
        assert!(slack_verify(secret, ts, body, &sig, Some(300), ts + 10));
        assert!(!slack_verify(secret, ts, body, &sig, Some(300), ts + 1000));
        assert!(!slack_verify(secret, ts + 1, body, &sig, None, 0));
        assert!(!slack_verify(secret, ts, body, "v1=00", None, 0));
    }
}
