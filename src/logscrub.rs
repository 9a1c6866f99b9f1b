//! A server-log hook (emit_log_hook) for what PostgreSQL itself would log
//! of tenant_guard's inputs, whatever settings a role gives itself:
//!
//! - API keys, JWTs and `whsec_` secrets are redacted from every message,
//!   detail, hint, context and internal query (log_statement,
//!   log_min_duration_statement, auto_explain, errors quoting input), and a
//!   statement containing one is not printed after an error;
//! - for a statement that mentions tenant_guard, bound parameter values
//!   (`log_parameter_max_length[_on_error]`, which any role may set for itself)
//!   are redacted, and the parse-tree and plan dumps of `debug_print_*`
//!   (which print bound values as constants) are not written at all.
//!
//! The rewriting is pure Rust in redact.rs; this layer only swaps strings.
//! It must never raise: any failure leaves the message as it was.

use crate::redact;
use pgrx::pg_sys;
use std::ffi::{c_char, CStr, CString};

static mut PREV: pg_sys::emit_log_hook_type = None;

pub fn init() {
    unsafe {
        PREV = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(hook);
    }
}

unsafe extern "C-unwind" fn hook(edata: *mut pg_sys::ErrorData) {
    // A panic here would turn into an error while reporting an error.
    let _ = std::panic::catch_unwind(|| unsafe { scrub(edata) });
    if let Some(prev) = unsafe { PREV } {
        unsafe { prev(edata) };
    }
}

unsafe fn text<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        None
    } else {
        unsafe { CStr::from_ptr(p) }.to_str().ok()
    }
}

/// Replace the string at `field` (allocated in ErrorContext, as elog.c does).
unsafe fn replace(field: &mut *mut c_char, new: String) {
    let Ok(c) = CString::new(new) else { return };
    *field = unsafe { pg_sys::MemoryContextStrdup(pg_sys::ErrorContext, c.as_ptr()) };
}

unsafe fn scrub(edata: *mut pg_sys::ErrorData) {
    let e = unsafe { &mut *edata };
    let stmt = unsafe { text(pg_sys::debug_query_string) }.unwrap_or("");
    let ours = stmt.to_ascii_lowercase().contains("tenant_guard");
    if ours {
        if let Some(m) = unsafe { text(e.message) } {
            if matches!(m, "parse tree:" | "rewritten parse tree:" | "plan:") {
                e.output_to_server = false;
                e.output_to_client = false;
                return;
            }
        }
    }
    if redact::has_secret(stmt) {
        e.hide_stmt = true;
    }
    for field in [&mut e.message, &mut e.detail, &mut e.detail_log, &mut e.hint, &mut e.context, &mut e.internalquery] {
        let Some(old) = (unsafe { text(*field) }) else { continue };
        let step1 = redact::secrets(old);
        let step2 = if ours { redact::parameters(step1.as_deref().unwrap_or(old)) } else { None };
        if let Some(new) = step2.or(step1) {
            unsafe { replace(field, new) };
        }
    }
}
