//! tenant_guard: a multi-tenant SaaS security model inside PostgreSQL.
//!
//! Pure logic (no pgrx): `keys`, `token`, `jwt`, `roles`.
//! PostgreSQL layer: `gucs` (every setting), `keyring`, `context`, `error`.

use pgrx::prelude::*;

pub mod apikey;
pub mod envelope;
pub mod gcra;
pub mod jwt;
pub mod keys;
pub mod roles;
pub mod token;
pub mod webhook;

mod apikeys;
mod context;
mod error;
mod gucs;
mod keyring;
mod ratelimit;
mod reqlog;
mod secrets;
mod webhooks;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Until the library is loaded, `tenant_guard.*` settings are placeholders
/// any role can read; so the library refuses to load any other way than via
/// shared_preload_libraries, which makes CREATE EXTENSION and every function
/// call fail with this message.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    if unsafe { !pg_sys::process_shared_preload_libraries_in_progress } {
        error::raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "tenant_guard must be loaded via shared_preload_libraries",
            Some("Until the library is preloaded, tenant_guard.* settings such as the passphrase are unprotected placeholders that any role can read."),
            Some("Add shared_preload_libraries = 'tenant_guard' to postgresql.conf (append to any existing list) and restart the server."),
        );
    }
    gucs::init();
    ratelimit::init();
    reqlog::init();
}

// In-database tests only run under `cargo pgrx test` (feature pg_test);
// plain `cargo test` runs the pure-Rust unit tests.
#[cfg(feature = "pg_test")]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn helpers_are_null_without_context() {
        assert_eq!(Spi::get_one::<pgrx::Uuid>("SELECT tenant_guard.current_org_id()").unwrap(), None);
        assert_eq!(Spi::get_one::<bool>("SELECT tenant_guard.has_role('viewer')").unwrap(), Some(false));
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'tenant_guard'",
            "tenant_guard.passphrase = 'pg-test-passphrase-0123456789-abcdefghij'",
            "tenant_guard.jwt_secret = 'pg-test-jwt-secret-0123456789-abcdefghij'",
        ]
    }
}
