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
//! The rewriting is pure Rust in redact.rs; this layer only swaps strings.
//! It must never raise: any failure leaves the message as it was.

use crate::redact;
use pgrx::pg_sys;
use std::ffi::{c_char, CStr};

static mut PREV: pg_sys::emit_log_hook_type = None;

pub fn init() {
    unsafe {
        PREV = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(hook);
    }
}

unsafe extern "C-unwind" fn hook(edata: *mut pg_sys::ErrorData) {
    // A panic here would turn into an error while reporting an error; and a
    // half-scrubbed message is not written to the server log at all.
    if std::panic::catch_unwind(|| unsafe { scrub(edata) }).is_err() {
        unsafe { (*edata).output_to_server = false };
    }
    if let Some(prev) = unsafe { PREV } {
        unsafe { prev(edata) };
    }
}

unsafe fn bytes<'a>(p: *const c_char) -> Option<&'a [u8]> {
    if p.is_null() {
        None
    } else {
        Some(unsafe { CStr::from_ptr(p) }.to_bytes())
    }
}

/// Write `new` over the string at `field`. redact.rs never lengthens a text,
/// so it fits the original allocation: no PostgreSQL memory is allocated or
/// freed (which could raise while an error is being reported). The rewritten
/// text itself is built in Rust memory.
unsafe fn overwrite(field: *mut c_char, old_len: usize, new: &[u8]) {
    if new.len() > old_len || new.contains(&0) {
        return;
    }
    unsafe {
        std::ptr::copy_nonoverlapping(new.as_ptr(), field.cast::<u8>(), new.len());
        *field.add(new.len()) = 0;
    }
}

unsafe fn scrub(edata: *mut pg_sys::ErrorData) {
    let e = unsafe { &mut *edata };
    let stmt = unsafe { bytes(pg_sys::debug_query_string) }.unwrap_or(b"");
    // debug_print_parse/_rewritten/_plan dumps print bound values (keys,
    // secrets) as constants, as decimal bytes no pattern can recognise, and
    // any role may turn them on for itself: not written for non-superuser
    // sessions, nor for any statement that mentions tenant_guard.
    let ours = redact::contains_ci(stmt, b"tenant_guard");
    if let Some(m) = unsafe { bytes(e.message) } {
        if matches!(m, b"parse tree:" | b"rewritten parse tree:" | b"plan:") && (ours || !unsafe { pg_sys::session_auth_is_superuser }) {
            e.output_to_server = false;
            e.output_to_client = false;
            return;
        }
    }
    if redact::has_secret(stmt) {
        e.hide_stmt = true;
    }
    for field in [e.message, e.detail, e.detail_log, e.hint, e.context, e.internalquery] {
        let Some(old) = (unsafe { bytes(field) }) else { continue };
        let step1 = redact::secrets(old);
        let step2 = if ours { redact::parameters(step1.as_deref().unwrap_or(old)) } else { None };
        if let Some(new) = step2.or(step1) {
            unsafe { overwrite(field, old.len(), &new) };
        }
    }
}
