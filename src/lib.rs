//! tenant_guard: a multi-tenant SaaS security model inside PostgreSQL.
//!
//! Pure logic lives in the `tenant_guard_core` crate (no pgrx), re-exported
//! here under the same module names. PostgreSQL layer: `gucs` (every
//! setting), `keyring`, `context`, `error`.

use pgrx::prelude::*;

pub use tenant_guard_core::{
    api_key_format, audit_chain, carried_context, context_token, echo, envelope, gcra, jwt, kdf, log_redaction,
    policy_shape, roles, url_policy, webhook_signature,
};

mod pg;

mod keyring;

mod api_keys;
mod audit_trail;
mod citus;
mod context;
mod log_hook;
mod organizations;
mod protection;
mod rate_limit;
mod request_log;
mod secrets;
mod security_audit;
mod webhooks;

::pgrx::pg_module_magic!();

// The schema's privileges and the service role, first; each capability's
// SQL sits beside its Rust code (src/<capability>/<capability>.sql, loaded
// there with its `requires`); the check that nothing was left executable by
// PUBLIC, last.
extension_sql_file!("schema.sql", name = "schema", bootstrap);
extension_sql_file!("finalize.sql", name = "finalize", finalize);

/// Until the library is loaded, `tenant_guard.*` settings are placeholders
/// any role can read; so the library refuses to load any other way than via
/// shared_preload_libraries, which makes CREATE EXTENSION and every function
/// call fail with this message.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: a plain global, set by the postmaster while it preloads.
    if unsafe { !pg_sys::process_shared_preload_libraries_in_progress } {
        pg::errors::raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "tenant_guard must be loaded via shared_preload_libraries",
            Some("Until the library is preloaded, tenant_guard.* settings such as the passphrase are unprotected placeholders that any role can read."),
            Some("Add shared_preload_libraries = 'tenant_guard' to postgresql.conf (append to any existing list) and restart the server."),
        );
    }
    // pgrx attaches a Rust backtrace (with the build machine's source paths)
    // to the DETAIL of every error raised through Rust code whenever the
    // server runs with RUST_BACKTRACE set. Clients must never see one:
    // switch library backtraces off for the postmaster and, by
    // inheritance, every backend.
    // (The postmaster is single-threaded while it loads libraries.)
    std::env::set_var("RUST_LIB_BACKTRACE", "0");
    pg::settings::init();
    rate_limit::init();
    request_log::init();
    audit_trail::init();
    protection::init();
    log_hook::init();
    context::init();
    citus::init();
}

// In-database tests (#[pg_test]) sit beside the code they test, in each
// module's `tests`; they run under `cargo pgrx test` (feature pg_test).

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
