//! What the server-log hook (logscrub.rs) removes from a log message: API
//! keys, JWTs and webhook secrets wherever they appear, and bound parameter
//! values. Pure string functions; each returns None when nothing changed.

use crate::apikey::{DISPLAY_LEN, PREFIX};

const REDACTED: &str = "[redacted by tenant_guard]";

fn is_b62(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
}

fn run(s: &[u8], from: usize, pred: fn(u8) -> bool) -> usize {
    s[from..].iter().take_while(|&&b| pred(b)).count()
}

/// Replace, in `text`:
/// - API keys (`tgk_` and at least 20 base62 characters): all but the
///   12-character display prefix admins already see;
/// - JWTs (`eyJ` + three dot-separated base64url segments): whole;
/// - webhook secrets (`whsec_` + base64): all but the prefix.
pub fn secrets(text: &str) -> Option<String> {
    let s = text.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        let mut cut: Option<(usize, usize, &str)> = None; // (keep up to, end, replacement)
        if rest.starts_with(PREFIX.as_bytes()) {
            let n = run(s, i + PREFIX.len(), is_b62);
            if n >= 20 {
                let keep = i + DISPLAY_LEN.min(PREFIX.len() + n);
                cut = Some((keep, i + PREFIX.len() + n, "…"));
            }
        } else if rest.starts_with(b"eyJ") {
            let a = run(s, i, is_b64url);
            let dot1 = i + a;
            if dot1 < s.len() && s[dot1] == b'.' {
                let b = run(s, dot1 + 1, is_b64url);
                let dot2 = dot1 + 1 + b;
                if b > 0 && dot2 < s.len() && s[dot2] == b'.' {
                    let c = run(s, dot2 + 1, is_b64url);
                    cut = Some((i, dot2 + 1 + c, "[JWT]"));
                }
            }
        } else if rest.starts_with(b"whsec_") {
            let n = run(s, i + 6, is_b64);
            if n > 0 {
                cut = Some((i + 6, i + 6 + n, ""));
            }
        }
        match cut {
            Some((keep, end, mark)) => {
                out.push_str(&text[copied..keep]);
                out.push_str(mark);
                out.push_str(REDACTED);
                copied = end;
                i = end;
            }
            None => i += 1,
        }
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&text[copied..]);
    Some(out)
}

/// Replace bound parameter values, as PostgreSQL prints them in a DETAIL
/// (`parameters: $1 = '...', ...`) or a CONTEXT line (`unnamed portal with
/// parameters: ...`): from "parameters: " to the end of that line.
pub fn parameters(text: &str) -> Option<String> {
    const TAG: &str = "parameters: ";
    if !text.contains(TAG) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    for (n, line) in text.split('\n').enumerate() {
        if n > 0 {
            out.push('\n');
        }
        match line.find(TAG) {
            Some(p) => {
                out.push_str(&line[..p + TAG.len()]);
                out.push_str(REDACTED);
            }
            None => out.push_str(line),
        }
    }
    Some(out)
}

/// Whether `text` contains something `secrets` would redact.
pub fn has_secret(text: &str) -> bool {
    secrets(text).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_keep_only_their_display_prefix() {
        let key = crate::apikey::generate().unwrap();
        let msg = format!("duration: 0.1 ms  statement: SELECT tenant_guard.authenticate('{key}', 'x')");
        let r = secrets(&msg).unwrap();
        assert!(!r.contains(&key[12..]), "{r}");
        assert!(r.contains(&key[..12]), "{r}");
        assert!(r.ends_with("', 'x')"), "{r}");
        // Two keys, and one at the very end.
        let r = secrets(&format!("{key} and {key}")).unwrap();
        assert_eq!(r.matches(REDACTED).count(), 2);
        assert!(!r.contains(&key[20..]));
        // Too short to be a key, or no key at all: untouched.
        assert_eq!(secrets("tgk_short"), None);
        assert_eq!(secrets("the tgk_ prefix"), None);
        assert_eq!(secrets("nothing here"), None);
    }

    #[test]
    fn jwts_and_webhook_secrets() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlX2J5dGVz";
        let r = secrets(&format!("parameters: $1 = '{jwt}'")).unwrap();
        assert!(!r.contains("eyJzdWIiOiIxIn0") && !r.contains("c2lnbmF0dXJl"), "{r}");
        let r = secrets("SELECT webhook_sign('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'm')").unwrap();
        assert!(!r.contains("MfKQ9r8"), "{r}");
        assert!(r.contains("whsec_[redacted"), "{r}");
        // Not a JWT: no second dot.
        assert_eq!(secrets("eyJabc.def"), None);
    }

    #[test]
    fn parameter_values_are_cut_to_the_end_of_their_line() {
        let d = "parameters: $1 = 'sk_live_1', $2 = 'b'";
        assert_eq!(parameters(d).unwrap(), format!("parameters: {REDACTED}"));
        let c = "SQL function \"x\"\nunnamed portal with parameters: $1 = 'sk_live_1'\nmore";
        let r = parameters(c).unwrap();
        assert!(!r.contains("sk_live_1"));
        assert!(r.starts_with("SQL function \"x\"\nunnamed portal with parameters: "));
        assert!(r.ends_with("\nmore"));
        assert_eq!(parameters("no values here"), None);
    }

    #[test]
    fn non_ascii_text_is_kept_intact() {
        let key = crate::apikey::generate().unwrap();
        let r = secrets(&format!("é {key} ü")).unwrap();
        assert!(r.starts_with("é ") && r.ends_with(" ü"));
    }
}
