//! How user input may appear in an error or notice: a short prefix, with
//! control and non-ASCII characters escaped. So no message grows with its
//! input (a huge argument cannot push an error past PostgreSQL's 1 GB limit,
//! which aborts the backend and restarts the cluster), and every message is
//! ASCII, which any client encoding can carry (a notice that cannot be
//! converted to the client's encoding would fail the statement, even a COMMIT).

/// Longest echo of a value, in bytes, before "...".
pub const MAX_ECHO: usize = 64;

/// At most `max` bytes of `s`, escaped as Rust escapes a string (so the
/// result is printable ASCII), and "..." when it was cut.
pub fn echo_max(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let piece: String =
            if c.is_ascii_graphic() || c == ' ' { c.to_string() } else { c.escape_default().to_string() };
        if out.len() + piece.len() > max {
            out.push_str("...");
            return out;
        }
        out.push_str(&piece);
    }
    out
}

/// [`echo_max`] with [`MAX_ECHO`].
pub fn echo(s: &str) -> String {
    echo_max(s, MAX_ECHO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ascii_is_kept() {
        assert_eq!(echo("admin"), "admin");
        assert_eq!(echo("a b"), "a b");
    }

    #[test]
    fn long_input_is_cut_and_the_result_is_bounded() {
        let huge = "x".repeat(10_000_000);
        let e = echo(&huge);
        assert!(e.len() <= MAX_ECHO + 3, "{}", e.len());
        assert!(e.ends_with("..."));
        // Characters that escape to six bytes cannot grow it either.
        let e = echo(&"\u{1}".repeat(1_000_000));
        assert!(e.len() <= MAX_ECHO + 3);
    }

    #[test]
    fn non_ascii_and_controls_are_escaped() {
        assert_eq!(echo("caf\u{e9}"), "caf\\u{e9}");
        assert_eq!(echo("\u{8868}"), "\\u{8868}");
        assert_eq!(echo("a\nb\"c"), "a\\nb\"c");
        assert!(echo("\u{8868}\u{0}\u{7f}").is_ascii());
    }
}
