//! One way to raise an error from the pgrx layer: a SQLSTATE, a message, and
//! optional detail/hint. Callers never pass secret material here.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub fn raise(code: PgSqlErrorCode, message: impl Into<String>, detail: Option<&str>, hint: Option<&str>) -> ! {
    let mut r = ErrorReport::new(code, message.into(), "tenant_guard");
    if let Some(d) = detail {
        r = r.set_detail(d);
    }
    if let Some(h) = hint {
        r = r.set_hint(h);
    }
    r.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Before raising an error in a function that received a key or secret as an
/// argument: keep PostgreSQL from logging the calling statement (and the
/// literal in it) with this error. Transaction-local, so the abort that
/// follows restores the setting. Costs nothing on the success path.
pub fn hide_statement_from_log() {
    crate::pg::settings::set_as_superuser(c"log_min_error_statement", c"panic", true);
}
