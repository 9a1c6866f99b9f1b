//! tenant_guard: a multi-tenant SaaS security model inside PostgreSQL.
//!
//! Pure logic lives in the `tenant_guard_core` crate (no pgrx), re-exported
//! here under the same module names. PostgreSQL layer: `gucs` (every
//! setting), `keyring`, `context`, `error`.

use pgrx::prelude::*;

pub use tenant_guard_core::{api_key_format, context_token, echo, envelope, gcra, jwt, kdf, log_redaction, roles, url_policy, webhook_signature};

mod pg;

mod keyring;

mod api_keys;
mod context;
mod organizations;
mod log_hook;
mod protection;
mod rate_limit;
mod request_log;
mod secrets;
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
    protection::init();
    log_hook::init();
}

// In-database tests only run under `cargo pgrx test` (feature pg_test);
// plain `cargo test` runs the pure-Rust unit tests.
#[cfg(feature = "pg_test")]
#[pg_schema]
mod tests {
    use crate::context_token::{Binding, Claims};
    use pgrx::prelude::*;

    fn claims(binding: Binding) -> Claims {
        Claims { org_id: [7; 16], user_id: Some([8; 16]), role: "member".into(), api_key_id: None, scopes: vec![], binding }
    }

    #[pg_test]
    fn pg_helpers_are_null_without_context() {
        assert_eq!(Spi::get_one::<pgrx::Uuid>("SELECT tenant_guard.current_org_id()").unwrap(), None);
        assert_eq!(Spi::get_one::<bool>("SELECT tenant_guard.has_role('viewer')").unwrap(), Some(false));
    }

    #[pg_test]
    fn pg_secret_settings_have_the_documented_flags() {
        for name in [c"tenant_guard.passphrase", c"tenant_guard.old_passphrases", c"tenant_guard.jwt_secret"] {
            let flags = unsafe { pg_sys::GetConfigOptionFlags(name.as_ptr(), false) } as u32;
            for f in [pg_sys::GUC_SUPERUSER_ONLY, pg_sys::GUC_NO_SHOW_ALL, pg_sys::GUC_NOT_IN_SAMPLE] {
                assert!(flags & f != 0, "{name:?} lacks flag {f:#x}");
            }
        }
    }

    #[pg_test]
    fn pg_context_is_bound_to_this_transaction() {
        let here = crate::context::current_binding();
        crate::context::install(claims(here));
        assert_eq!(crate::context::with_claims(|c| c.org_id), Some([7; 16]));
        assert_eq!(Spi::get_one::<String>("SELECT tenant_guard.current_user_role()").unwrap().as_deref(), Some("member"));
        // The same claims signed for another transaction (or backend) are ignored.
        for other in [Binding { lxid: here.lxid.wrapping_add(1), ..here }, Binding { pid: here.pid + 1, ..here }, Binding { backend_id: here.backend_id + 1, ..here }] {
            crate::context::install(claims(other));
            assert_eq!(crate::context::with_claims(|c| c.org_id), None, "{other:?}");
            assert_eq!(Spi::get_one::<pgrx::Uuid>("SELECT tenant_guard.current_org_id()").unwrap(), None);
        }
    }

    #[pg_test]
    fn pg_rate_limit_is_exact_in_shared_memory() {
        let rate = crate::gcra::Rate::new(5, 60_000_000, 4).unwrap();
        let key = crate::rate_limit::key("pg_test", &[b"bucket"]);
        let t = &crate::rate_limit::BUCKETS;
        let admitted = (0..20).filter(|_| !crate::rate_limit::throttle(t, key, rate, 1).limited).count();
        assert_eq!(admitted, 5);
        let other = crate::rate_limit::key("pg_test", &[b"another"]);
        assert!(!crate::rate_limit::throttle(t, other, rate, 1).limited, "buckets are independent");
        assert!(!crate::rate_limit::throttle(&crate::rate_limit::KEYS, key, rate, 1).limited, "tables are independent");
    }

    #[pg_test]
    fn pg_envelope_uses_the_configured_passphrase() {
        let env = crate::secrets::seal(b"in-database round trip", b"aad");
        assert_eq!(crate::secrets::open(&env, b"aad"), b"in-database round trip");
        let id = crate::envelope::key_id(&env).unwrap();
        let expected = crate::kdf::KeySet::derive(b"pg-test-passphrase-0123456789-abcdefghij").unwrap().key_id();
        assert_eq!(id, expected, "derived from tenant_guard.passphrase in postgresql.conf");
    }

    #[pg_test(error = "cannot decrypt: the envelope does not authenticate (wrong key, wrong associated data, or tampered)")]
    fn pg_envelope_refuses_other_associated_data() {
        let env = crate::secrets::seal(b"x", b"org-a");
        crate::secrets::open(&env, b"org-b");
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
