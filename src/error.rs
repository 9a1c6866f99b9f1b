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

