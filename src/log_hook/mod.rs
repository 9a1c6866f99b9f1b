//! A server-log hook (emit_log_hook) for what PostgreSQL itself would log
//! of tenant_guard's inputs, whatever settings a role gives itself:
//!
//! - API keys, JWTs and `whsec_` secrets are redacted from every message,
//!   detail, hint, context and internal query (log_statement,
//!   log_min_duration_statement, auto_explain, errors quoting input), and a
//!   statement containing one is not printed after an error;
//! - for a statement that mentions tenant_guard, bound parameter values
//!   (`log_parameter_max_length[_on_error]`, which any role may set for itself)
//!   are redacted;
//! - the parse-tree and plan dumps of `debug_print_*` (which print bound
//!   values as constants) are not written for such statements, nor at all
//!   for sessions of non-superusers.
//!
//! - the values of the secret settings (passphrase, old passphrases, JWT
//!   secret) are cut wherever a message gives one: the postmaster's
//!   `parameter "..." changed to "..."` on every reload that changes one,
//!   `SET`/`ALTER SYSTEM` statements as log_statement prints them, the token
//!   a configuration-file syntax error quotes, and any occurrence of a
//!   current value anywhere; a statement naming a secret setting is not
//!   printed after an error;
//! - a Rust source path in the error's location becomes its file name.
//!
//! The rewriting is pure Rust in redact.rs; this layer only swaps strings.
//! It must never raise: any failure leaves the message as it was.

use crate::log_redaction;
use pgrx::pg_sys;
use std::ffi::{c_char, CStr};

static PREV: std::sync::OnceLock<pg_sys::emit_log_hook_type> = std::sync::OnceLock::new();

pub fn init() {
    // SAFETY: _PG_init runs once, in the postmaster, before any other
    // process exists; emit_log_hook is a plain global hook pointer.
    let prev = unsafe { pg_sys::emit_log_hook };
    if PREV.set(prev).is_ok() {
        // SAFETY: as above.
        unsafe { pg_sys::emit_log_hook = Some(hook) };
    }
}

unsafe extern "C-unwind" fn hook(edata: *mut pg_sys::ErrorData) {
    // SAFETY: PostgreSQL passes the ErrorData being emitted, valid and not
    // used by anything else for the duration of the hook.
    let e = unsafe { &mut *edata };
    // A panic here would turn into an error while reporting an error; and a
    // half-scrubbed message is not written to the server log at all.
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scrub(e))).is_err() {
        e.output_to_server = false;
    }
    if let Some(Some(prev)) = PREV.get() {
        // SAFETY: the previous hook, called as PostgreSQL would have.
        unsafe { prev(edata) };
    }
}

/// A message field (or NULL) as bytes.
fn bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    // SAFETY: every string field of an ErrorData, and debug_query_string,
    // is NULL or NUL-terminated, and lives while the message is emitted.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_bytes())
}

/// Write `new` over the string at `field`. log_redaction never lengthens a
/// text, so it fits the original allocation: no PostgreSQL memory is
/// allocated or freed (which could raise while an error is being reported).
/// The rewritten text itself is built in Rust memory.
fn overwrite(field: *mut c_char, old_len: usize, new: &[u8]) {
    if field.is_null() || new.len() > old_len || new.contains(&0) {
        return;
    }
    // SAFETY: `field` holds `old_len` bytes and a NUL; `new` and its NUL fit.
    unsafe {
        std::ptr::copy_nonoverlapping(new.as_ptr(), field.cast::<u8>(), new.len());
        *field.add(new.len()) = 0;
    }
}

type Step<'a> = &'a dyn Fn(&[u8]) -> Option<Vec<u8>>;

fn scrub(e: &mut pg_sys::ErrorData) {
    // SAFETY: a plain global read (the statement being run, or NULL).
    let stmt = bytes(unsafe { pg_sys::debug_query_string }).unwrap_or(b"");
    // debug_print_parse/_rewritten/_plan dumps print bound values (keys,
    // secrets) as constants, as decimal bytes no pattern can recognise, and
    // any role may turn them on for itself: not written for non-superuser
    // sessions, nor for any statement that mentions tenant_guard.
    let ours = log_redaction::contains_ci(stmt, b"tenant_guard");
    // SAFETY: a plain global read.
    let superuser = unsafe { pg_sys::session_auth_is_superuser };
    if let Some(m) = bytes(e.message) {
        if matches!(m, b"parse tree:" | b"rewritten parse tree:" | b"plan:") && (ours || !superuser) {
            e.output_to_server = false;
            e.output_to_client = false;
            return;
        }
    }
    use crate::pg::settings::{with_value, JWT_SECRET, OLD_PASSPHRASES, PASSPHRASE};
    with_value(&PASSPHRASE, |p| {
        with_value(&JWT_SECRET, |j| {
            with_value(&OLD_PASSPHRASES, |old| {
                let mut values: Vec<&[u8]> = [p, j].into_iter().flatten().collect();
                values.extend(old.into_iter().flat_map(|o| o.split(|&b| b == b',')).map(<[u8]>::trim_ascii));
                rewrite(e, stmt, ours, &values)
            })
        })
    });
    // Rust source paths (a dependency's is the build machine's) are not
    // shown: only the file name.
    if let Some(f) = bytes(e.filename) {
        if f.ends_with(b".rs") {
            if let Some(slash) = f.iter().rposition(|&b| b == b'/') {
                // SAFETY: a pointer into the same NUL-terminated string.
                e.filename = unsafe { e.filename.add(slash + 1) };
            }
        }
    }
}

fn rewrite(e: &mut pg_sys::ErrorData, stmt: &[u8], ours: bool, values: &[&[u8]]) {
    if log_redaction::has_secret(stmt)
        || log_redaction::mentions_secret_setting(stmt)
        || log_redaction::calls_secret_taking_function(stmt)
        || log_redaction::contains_value(stmt, values)
    {
        e.hide_stmt = true;
    }
    // An error raised by PostgreSQL itself (not by our own code, whose
    // messages never quote an argument) while a statement that passes a
    // secret runs may quote that argument: `invalid input syntax for type
    // integer: "..."`, a JSON token in DETAIL and CONTEXT. Its quoted parts
    // are masked, and its detail and context replaced whole.
    let ours_raised = bytes(e.filename).is_some_and(|f| f.ends_with(b".rs"));
    let passes_secret = !ours_raised && log_redaction::calls_secret_taking_function(stmt);
    let message = e.message;
    let hint = e.hint;
    for field in [e.message, e.detail, e.detail_log, e.hint, e.context, e.internalquery] {
        let Some(old) = bytes(field) else { continue };
        let mut cur: Option<Vec<u8>> = None;
        let quoted_only = field == message || field == hint;
        let steps: [Step; 6] = [
            &log_redaction::secrets,
            &log_redaction::literals,
            &|t| if ours { log_redaction::parameters(t) } else { None },
            &log_redaction::setting_values,
            &|t| log_redaction::known_values(t, values),
            &|t| match (passes_secret, quoted_only) {
                (false, _) => None,
                (true, true) => log_redaction::quoted(t),
                (true, false) => log_redaction::whole(t),
            },
        ];
        for step in steps {
            if let Some(next) = step(cur.as_deref().unwrap_or(old)) {
                cur = Some(next);
            }
        }
        if let Some(new) = cur {
            overwrite(field, old.len(), &new);
        }
    }
}
