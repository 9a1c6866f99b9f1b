//! What the server-log hook (logscrub.rs) removes from a log message: API
//! keys, JWTs, webhook secrets and carried request contexts wherever they
//! appear, and bound parameter
//! values. Pure functions on bytes (every server encoding is ASCII-safe and
//! every pattern here is ASCII). A result is never longer than its input, so
//! the hook can write it over the original without allocating; each returns
//! None when nothing changed.

use crate::api_key_format::{DISPLAY_LEN, PREFIX};

const MARK: &[u8] = b"[redacted]";

/// `MARK` when it fits in `n` bytes, else `n` asterisks.
fn mark(n: usize) -> Vec<u8> {
    if n >= MARK.len() {
        MARK.to_vec()
    } else {
        vec![b'*'; n]
    }
}

fn run(s: &[u8], from: usize, pred: fn(u8) -> bool) -> usize {
    s.get(from..).map_or(0, |r| r.iter().take_while(|&&b| pred(b)).count())
}

fn is_b62(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'='
}

fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
}

/// The next secret-looking span at or after `i`: (start of what is
/// replaced, end). API keys keep their 12-character display prefix (what
/// admins already see), so any `tgk_` with more than 8 further characters is
/// cut, including a key truncated by `log_parameter_max_length`.
fn next_span(s: &[u8], mut i: usize) -> Option<(usize, usize)> {
    while i < s.len() {
        let rest = &s[i..];
        if rest.starts_with(PREFIX.as_bytes()) {
            let n = run(s, i + PREFIX.len(), is_b62);
            let keep = DISPLAY_LEN - PREFIX.len();
            if n > keep {
                return Some((i + DISPLAY_LEN, i + PREFIX.len() + n));
            }
        } else if rest.starts_with(b"eyJ") {
            let dot1 = i + run(s, i, is_b64url);
            if s.get(dot1) == Some(&b'.') {
                let b = run(s, dot1 + 1, is_b64url);
                let dot2 = dot1 + 1 + b;
                if b > 0 && s.get(dot2) == Some(&b'.') {
                    return Some((i, dot2 + 1 + run(s, dot2 + 1, is_b64url)));
                }
            }
        } else if rest.starts_with(b"whsec_") {
            let n = run(s, i + 6, is_b64);
            if n > 0 {
                return Some((i + 6, i + 6 + n));
            }
        } else if rest.starts_with(crate::carried_context::PREFIX.as_bytes()) {
            // A request context carried to a Citus worker (and replayed in
            // the worker's log, or by citus.log_remote_commands).
            let at = i + crate::carried_context::PREFIX.len();
            let n = run(s, at, |b| is_b64url(b) || b == b'.');
            if n > 0 {
                return Some((at, at + n));
            }
        }
        i += 1;
    }
    None
}

/// Whether `text` contains something `secrets` would redact (no allocation).
pub fn has_secret(text: &[u8]) -> bool {
    next_span(text, 0).is_some()
}

/// Replace API keys (beyond their display prefix), JWTs and webhook secrets.
pub fn secrets(text: &[u8]) -> Option<Vec<u8>> {
    let mut span = next_span(text, 0)?;
    let mut out = Vec::with_capacity(text.len());
    let mut copied = 0;
    loop {
        let (start, end) = span;
        out.extend_from_slice(&text[copied..start]);
        out.extend_from_slice(&mark(end - start));
        copied = end;
        match next_span(text, end) {
            Some(s) => span = s,
            None => break,
        }
    }
    out.extend_from_slice(&text[copied..]);
    Some(out)
}

/// Replace bound parameter values as PostgreSQL prints them, in any
/// message language: from the first `$<n> = ` to the end of the field
/// (a value may span lines). Covers `parameters: $1 = '...'` (DETAIL),
/// `unnamed portal with parameters: $1 = ...` and `... parameter $1 = ...` (CONTEXT).
pub fn parameters(text: &[u8]) -> Option<Vec<u8>> {
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'$' {
            let d = run(text, i + 1, |b| b.is_ascii_digit());
            if d > 0 && text[i + 1 + d..].starts_with(b" = ") {
                let start = i + 1 + d + 3;
                let mut out = text[..start].to_vec();
                out.extend_from_slice(&mark(text.len() - start));
                return Some(out);
            }
        }
        i += 1;
    }
    None
}

/// The settings whose values are secret.
pub const SECRET_SETTINGS: [&[u8]; 3] =
    [b"tenant_guard.passphrase", b"tenant_guard.old_passphrases", b"tenant_guard.jwt_secret"];

fn find_ci(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    (from..=haystack.len() - needle.len()).find(|&i| haystack[i..i + needle.len()].eq_ignore_ascii_case(needle))
}

/// Functions that take a key, token or secret as an argument: a statement
/// calling one of them may hold it as a literal.
pub const SECRET_TAKING_FUNCTIONS: [&[u8]; 15] = [
    b"put_secret",
    b"put_secret_for",
    b"put_wordpress_credentials",
    b"encrypt",
    b"decrypt",
    b"webhook_sign",
    b"webhook_verify",
    b"verify_stripe_signature",
    b"verify_github_signature",
    b"verify_slack_signature",
    b"hmac_sha256",
    b"authenticate",
    b"import_pgcrypto_secrets",
    b"import_api_key_hash",
    b"assume",
];

/// Where `text` first calls one of [`SECRET_TAKING_FUNCTIONS`]: the name
/// (schema-qualified or not, since a search_path can name tenant_guard),
/// then optional quotes and spaces, then `(`. `authenticate` also covers
/// authenticate_jwt, `webhook_verify` webhook_verify_once.
fn first_call(text: &[u8]) -> Option<usize> {
    let mut first: Option<usize> = None;
    for f in SECRET_TAKING_FUNCTIONS {
        let mut from = 0;
        while let Some(at) = find_ci(text, f, from) {
            from = at + 1;
            let mut i = at + f.len();
            i += run(text, i, |b| b.is_ascii_alphanumeric() || b == b'_');
            i = skip_quotes_space_comments(text, i);
            if text.get(i) == Some(&b'(') {
                first = Some(first.map_or(at, |x| x.min(at)));
                break;
            }
        }
    }
    // A U&"..." identifier can spell any name: treated as such a call.
    if let Some(u) = find_ci(text, b"u&\"", 0) {
        first = Some(first.map_or(u, |x| x.min(u)));
    }
    first
}

/// Whether `text` calls one of [`SECRET_TAKING_FUNCTIONS`].
pub fn calls_secret_taking_function(text: &[u8]) -> bool {
    first_call(text).is_some()
}

/// In a text that calls a secret-taking function, the content of every
/// quoted literal (`'...'`, `E'...'`, `$$...$$` is left: rare in calls) is
/// replaced by asterisks, from the first such call on. For statements as
/// log_statement prints them: bind parameters are the rule, this is the net.
pub fn literals(text: &[u8]) -> Option<Vec<u8>> {
    let start = first_call(text)?;
    let mut out = text.to_vec();
    let mut changed = false;
    let mut i = start;
    while i < out.len() {
        if out[i] == b'$' {
            // A dollar quote: $$...$$ or $tag$...$tag$.
            let tag_len = run(&out, i + 1, |b| b.is_ascii_alphanumeric() || b == b'_');
            if out.get(i + 1 + tag_len) == Some(&b'$') {
                let tag = out[i..i + tag_len + 2].to_vec();
                let body = i + tag.len();
                let end = find_ci(&out, &tag, body).unwrap_or(out.len());
                for b in &mut out[body..end] {
                    *b = b'*';
                }
                changed |= end > body;
                i = end + tag.len();
                continue;
            }
            i += 1;
        } else if out[i] == b'\'' {
            let mut j = i + 1;
            while j < out.len() {
                if out[j] == b'\\' && j + 1 < out.len() {
                    // A backslash escape (E'...', or standard_conforming_strings
                    // off); in a standard string this masks a little too much.
                    out[j] = b'*';
                    out[j + 1] = b'*';
                    changed = true;
                    j += 2;
                    continue;
                }
                if out[j] == b'\'' {
                    if out.get(j + 1) == Some(&b'\'') {
                        out[j] = b'*';
                        out[j + 1] = b'*';
                        j += 2;
                        continue;
                    }
                    break;
                }
                out[j] = b'*';
                changed = true;
                j += 1;
            }
            i = j + 1;
        } else {
            i += 1;
        }
    }
    changed.then_some(out)
}

/// The words that name the secret settings, whatever surrounds them.
const SETTING_WORDS: [&[u8]; 2] = [b"passphrase", b"jwt_secret"];

/// Past closing quotes, white space and `/* ... */` comments from `i`.
fn skip_quotes_space_comments(text: &[u8], mut i: usize) -> usize {
    loop {
        let before = i;
        i += run(text, i, |b| b == b'"' || b == b'\'' || b.is_ascii_whitespace());
        if text[i..].starts_with(b"/*") {
            i = find_ci(text, b"*/", i + 2).map_or(text.len(), |e| e + 2);
        }
        if i == before {
            return i;
        }
    }
}

/// Every quoted part ('...' or "...") of a message, masked: for errors
/// raised while a statement that passes a secret runs, whose messages may
/// quote an argument (`invalid input syntax for type integer: "..."`).
pub fn quoted(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = text.to_vec();
    let mut changed = false;
    let mut i = 0;
    while i < out.len() {
        let q = out[i];
        if q == b'"' || q == b'\'' {
            let end = out[i + 1..].iter().position(|&b| b == q).map_or(out.len(), |p| i + 1 + p);
            for b in &mut out[i + 1..end] {
                *b = b'*';
            }
            changed |= end > i + 1;
            i = end + 1;
        } else {
            i += 1;
        }
    }
    changed.then_some(out)
}

/// A whole field replaced (details and contexts of such errors, which may
/// quote an argument without quotes: JSON data, tokens).
pub fn whole(text: &[u8]) -> Option<Vec<u8>> {
    (!text.is_empty()).then(|| mark(text.len()))
}

/// Whether `text` names one of the secret settings (or hides a name in a
/// U&"..." escape).
pub fn mentions_secret_setting(text: &[u8]) -> bool {
    SETTING_WORDS.iter().any(|n| contains_ci(text, n)) || contains_ci(text, b"u&\"")
}

/// Values of secret settings as PostgreSQL's messages and statements give
/// them: wherever a secret setting's name is followed (after an optional
/// closing quote and white space) by `=`, `:`, `TO` or `changed to`, the
/// rest of the field is replaced. Covers the postmaster's `parameter "..."
/// changed to "..."` on reload, `invalid value for parameter "...": "..."`,
/// and `SET`/`ALTER SYSTEM`/`ALTER ROLE ... SET` statements as
/// log_statement prints them. Also the token a configuration-file syntax
/// error quotes (`near token "..."`), which may be part of any value.
pub fn setting_values(text: &[u8]) -> Option<Vec<u8>> {
    let mut cut: Option<usize> = None;
    // The settings' own words, however the name around them is spelled
    // (quoted parts, spaces around the dot, U&"..." escapes).
    for name in SETTING_WORDS {
        let mut from = 0;
        while let Some(at) = find_ci(text, name, from) {
            let mut i = at + name.len();
            from = i;
            if matches!(text.get(i), Some(b's' | b'S')) {
                i += 1; // old_passphrases
            }
            i = skip_quotes_space_comments(text, i);
            let rest = &text[i..];
            let op = if rest.starts_with(b"=") || rest.starts_with(b":") || rest.starts_with(b",") {
                Some(1)
            } else if rest.len() >= 2
                && rest[..2].eq_ignore_ascii_case(b"to")
                && !rest.get(2).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
            {
                Some(2)
            } else if rest.len() >= 10 && rest[..10].eq_ignore_ascii_case(b"changed to") {
                Some(10)
            } else {
                None
            };
            if let Some(n) = op {
                let start = i + n;
                cut = Some(cut.map_or(start, |c| c.min(start)));
            }
        }
    }
    if let Some(t) = find_ci(text, b"near token \"", 0) {
        let start = t + b"near token \"".len();
        cut = Some(cut.map_or(start, |c| c.min(start)));
    }
    let start = cut?;
    if start >= text.len() {
        return None;
    }
    let mut out = text[..start].to_vec();
    out.extend_from_slice(&mark(text.len() - start));
    Some(out)
}

/// Whether `text` contains one of `values` (of 8 bytes or more), without allocating.
pub fn contains_value(text: &[u8], values: &[&[u8]]) -> bool {
    values.iter().any(|v| v.len() >= 8 && text.windows(v.len()).any(|w| w == *v))
}

/// Replace every occurrence of each of `values` (the secret settings'
/// current values; shorter than 8 bytes are ignored) by asterisks.
pub fn known_values(text: &[u8], values: &[&[u8]]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for v in values.iter().filter(|v| v.len() >= 8) {
        let cur = out.as_deref().unwrap_or(text);
        if let Some(first) = cur.windows(v.len()).position(|w| w == *v) {
            let mut buf = cur.to_vec();
            let mut i = first;
            while i + v.len() <= buf.len() {
                if &buf[i..i + v.len()] == *v {
                    buf[i..i + v.len()].fill(b'*');
                    i += v.len();
                } else {
                    i += 1;
                }
            }
            out = Some(buf);
        }
    }
    out
}

/// Case-insensitive ASCII search, without allocating.
pub fn contains_ci(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: Option<Vec<u8>>) -> String {
        String::from_utf8(v.expect("redacted")).unwrap()
    }

    #[test]
    fn api_keys_keep_only_their_display_prefix() {
        let key = crate::api_key_format::generate().unwrap();
        let msg = format!("duration: 0.1 ms  statement: SELECT tenant_guard.authenticate('{key}', 'x')");
        let r = s(secrets(msg.as_bytes()));
        assert!(!r.contains(&key[12..]), "{r}");
        assert!(r.contains(&key[..12]), "{r}");
        assert!(r.ends_with("', 'x')"), "{r}");
        assert!(r.len() <= msg.len());
        let two = format!("{key} and {key}");
        let r = s(secrets(two.as_bytes()));
        assert_eq!(r.matches("[redacted]").count(), 2);
        // Truncated by log_parameter_max_length_on_error = 15: nothing past the prefix.
        let r = s(secrets(format!("$1 = '{}...'", &key[..15]).as_bytes()));
        assert!(!r.contains(&key[12..15]), "{r}");
        // Too short to carry more than the display prefix, or no key: untouched.
        assert_eq!(secrets(b"tgk_short"), None);
        assert_eq!(secrets(b"the tgk_ prefix"), None);
        assert_eq!(secrets(b"nothing here"), None);
    }

    #[test]
    fn jwts_and_webhook_secrets() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlX2J5dGVz";
        let r = s(secrets(format!("parameters: $1 = '{jwt}'").as_bytes()));
        assert!(!r.contains("eyJzdWIiOiIxIn0") && !r.contains("c2lnbmF0dXJl"), "{r}");
        let r = s(secrets(b"SELECT webhook_sign('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'm')"));
        assert!(!r.contains("MfKQ9r8"), "{r}");
        assert!(r.contains("whsec_[redacted]"), "{r}");
        assert_eq!(secrets(b"eyJabc.def"), None, "not a JWT: no second dot");
        let r =
            s(secrets(b"issuing SET LOCAL tenant_guard.carried_context TO 'tgc1.eyJvIjpbMV19.c2lnbmF0dXJlX2J5dGVz'"));
        assert!(!r.contains("eyJvIjpbMV19") && !r.contains("c2lnbmF0dXJl") && r.contains("tgc1.[redacted]"), "{r}");
    }

    #[test]
    fn parameter_values_are_cut_to_the_end_of_the_field() {
        let d = b"parameters: $1 = 'sk_live_1', $2 = 'b'";
        assert_eq!(s(parameters(d)), "parameters: $1 = [redacted]");
        let c = b"unnamed portal with parameters: $1 = '-----BEGIN KEY-----\nMIIsecret\n-----END KEY-----'";
        let r = s(parameters(c));
        assert!(!r.contains("MIIsecret") && !r.contains("BEGIN"), "{r}");
        // Translated messages, and the bind-error form.
        assert_eq!(s(parameters("Parameter: $1 = 'x'".as_bytes())), "Parameter: $1 = ***");
        assert!(parameters(b"unnamed portal parameter $12 = '...'").is_some());
        assert_eq!(parameters(b"statement: SELECT 1 WHERE a = $1"), None);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_kept_and_still_scanned() {
        let key = crate::api_key_format::generate().unwrap();
        let mut msg = vec![0xe9u8, b' '];
        msg.extend_from_slice(key.as_bytes());
        msg.extend_from_slice(&[b' ', 0xfc]);
        let r = secrets(&msg).unwrap();
        assert_eq!(&r[..2], &[0xe9, b' ']);
        assert_eq!(&r[r.len() - 2..], &[b' ', 0xfc]);
        assert!(!r.windows(10).any(|w| w == &key.as_bytes()[20..30]));
        assert!(contains_ci(b"select TENANT_GUARD.x", b"tenant_guard"));
    }
    #[test]
    fn secret_setting_values_are_cut() {
        let cases: [(&str, &str); 7] = [
            (
                "parameter \"tenant_guard.passphrase\" changed to \"hunter2hunter2\"",
                "parameter \"tenant_guard.passphrase\" changed to",
            ),
            (
                "statement: ALTER SYSTEM SET tenant_guard.jwt_secret = 'abcdefgh'",
                "statement: ALTER SYSTEM SET tenant_guard.jwt_secret =",
            ),
            ("statement: set TENANT_GUARD.PASSPHRASE to abcdefgh", "statement: set TENANT_GUARD.PASSPHRASE to"),
            (
                "invalid value for parameter \"tenant_guard.old_passphrases\": \"x\"",
                "invalid value for parameter \"tenant_guard.old_passphrases\":",
            ),
            (
                "syntax error in file \"/x/s.conf\" line 1, near token \"abcdef\"",
                "syntax error in file \"/x/s.conf\" line 1, near token \"",
            ),
            ("ALTER ROLE app SET tenant_guard.passphrase='v'", "ALTER ROLE app SET tenant_guard.passphrase="),
            ("SET tenant_guard.passphrase\n  =\n 'v'", "SET tenant_guard.passphrase\n  ="),
        ];
        for (input, kept) in cases {
            let out = s(setting_values(input.as_bytes()));
            assert!(out.starts_with(kept), "{input} -> {out}");
            assert!(out.len() <= input.len());
            assert!(
                !out[kept.len()..].chars().any(|c| c.is_ascii_alphanumeric()
                    && c != 'r'
                    && c != 'e'
                    && c != 'd'
                    && c != 'a'
                    && c != 'c'
                    && c != 't'),
                "{out}"
            );
        }
        // Our own messages about the settings keep their text.
        for msg in [
            "tenant_guard.passphrase is not set",
            "tenant_guard.passphrase is too short (minimum 32 bytes)",
            "tenant_guard.jwt_secret total",
        ] {
            assert_eq!(setting_values(msg.as_bytes()), None, "{msg}");
        }
    }

    #[test]
    fn literals_in_calls_of_secret_taking_functions_are_masked() {
        let out = s(literals(b"statement: select tenant_guard.put_secret('stripe','live','sk_live_123') -- 'x'"));
        assert_eq!(out, "statement: select tenant_guard.put_secret('******','****','***********') -- '*'");
        let out = s(literals(b"SELECT tenant_guard.put_wordpress_credentials('https://wp', 'admin', 'it''s secret')"));
        assert!(!out.contains("secret") && !out.contains("admin"), "{out}");
        assert_eq!(literals(b"SELECT 'hello'"), None, "no secret-taking call");
        assert!(s(literals(b"SET search_path = tenant_guard; SELECT put_secret('k', 'n', 'unqualified')"))
            .contains("'***********'"));
        assert_eq!(literals(b"SELECT 'a put_secret b'"), None, "named, not called");
        let out = s(literals(br"SELECT tenant_guard.put_secret('k','n',E'x\' SECRET \'')"));
        assert!(!out.contains("SECRET"), "{out}");
        assert!(calls_secret_taking_function(b"select TENANT_GUARD.AUTHENTICATE_JWT($1)"));
    }

    #[test]
    fn the_review_spellings_are_masked() {
        for (input, secret) in [
            ("statement: select tenant_guard.put_secret('k','n',$x$SECRETpA10$x$)::text::int", "SECRETpA10"),
            ("statement: select tenant_guard.put_secret('k','n',$$SECRETpA11$$)", "SECRETpA11"),
            (r#"statement: select U&"tenant_guard".U&"put\005fsecret"('k','n','SECRETpA08')::text::int"#, "SECRETpA08"),
        ] {
            let out = s(literals(input.as_bytes()));
            assert!(!out.contains(secret), "{out}");
        }
        for input in [
            "statement: alter system set \"tenant_guard\".\"passphrase\" = $q$SECRETVALUE$q$",
            "statement: alter system set tenant_guard.passphrase /* c */ = 'SECRETVALUE'",
            "statement: alter system set tenant_guard . passphrase = 'SECRETVALUE'",
            "statement: alter system set U&\"tenant_guard\\002epassphrase\" = 'SECRETVALUE'",
            "statement: select set_config('tenant_guard.old_passphrases','SECRETVALUE',false)",
        ] {
            let out = s(setting_values(input.as_bytes()));
            assert!(!out.contains("SECRETVALUE"), "{out}");
        }
        assert!(mentions_secret_setting(b"alter system set U&\"x\" = 'v'"));
        let out = s(quoted(b"invalid input syntax for type integer: \"SECRETpA13\""));
        assert!(!out.contains("SECRETpA13") && out.starts_with("invalid input syntax"), "{out}");
        assert_eq!(s(whole(b"JSON data, line 1: {\"a\": SECRET")), "[redacted]");
    }

    #[test]
    fn known_values_are_masked_everywhere() {
        let out = s(known_values(
            b"a SECRETVALUE1 b SECRETVALUE1 c OTHERSECRET",
            &[b"SECRETVALUE1", b"OTHERSECRET", b"short"],
        ));
        assert_eq!(out, "a ************ b ************ c ***********");
        assert_eq!(known_values(b"nothing here", &[b"SECRETVALUE1"]), None);
        assert_eq!(known_values(b"short short", &[b"short"]), None, "short values are ignored");
    }
}
