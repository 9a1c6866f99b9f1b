//! Every setting the extension defines, in one place.
//!
//! The secret settings (`passphrase`, `old_passphrases`, `jwt_secret`) are
//! PGC_SUSET + GUC_SUPERUSER_ONLY + GUC_NO_SHOW_ALL (+ GUC_NOT_IN_SAMPLE), and a
//! check hook refuses values that would be stored in a catalog PUBLIC can read.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_guard;
use pgrx::pg_sys;
use pgrx::PostgresGucEnum;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};

pub static PASSPHRASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static OLD_PASSPHRASES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static JWT_SECRET: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// The signed request context; see `context.rs`.
pub static CONTEXT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub const CONTEXT_NAME: &CStr = c"tenant_guard.context";

/// The request context carried to a Citus worker (citus/mod.rs): any role
/// may set it (Citus replays the coordinator's SET LOCAL as the current
/// user), but only to a token this cluster signed, claimed once per node.
pub static CARRIED_CONTEXT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// What happens to a new table with an org_id column that is still
/// unprotected when its transaction commits (see guard.rs).
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum RequireProtection {
    #[name = c"off"]
    Off,
    #[name = c"warn"]
    Warn,
    #[name = c"error"]
    Error,
}

/// Optional expectations for JWTs (not secret): the audience a token's `aud`
/// must contain and the issuer its `iss` must equal.
pub static JWT_AUDIENCE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static JWT_ISSUER: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Whether privileged actions are recorded in `tenant_guard.audit_log`
/// (superuser only; security_audit() reports it off).
pub static AUDIT: GucSetting<bool> = GucSetting::<bool>::new(true);

pub static REQUIRE_PROTECTION: GucSetting<RequireProtection> =
    GucSetting::<RequireProtection>::new(RequireProtection::Warn);

/// security_audit()'s thresholds, in days (read by its SQL through
/// current_setting(); defined here so a typo or a bad value is refused).
pub static AUDIT_THRESHOLDS: [(&CStr, &CStr, GucSetting<i32>); 4] = [
    (c"tenant_guard.audit_key_idle_days", c"security_audit(): an active API key unused for this many days is reported.", GucSetting::<i32>::new(90)),
    (c"tenant_guard.audit_key_max_age_days", c"security_audit(): an active API key older than this many days is reported (rotate it).", GucSetting::<i32>::new(365)),
    (c"tenant_guard.audit_purge_days", c"security_audit(): a request log with entries older than this many days and no purge for as long is reported.", GucSetting::<i32>::new(30)),
    (c"tenant_guard.audit_webhook_failing_days", c"security_audit(): an active webhook endpoint with no successful delivery for this many days, while deliveries fail, is reported.", GucSetting::<i32>::new(3)),
];

/// Bumped whenever a key-bearing setting changes (SET, RESET, reload,
/// transaction rollback), so cached keys are re-derived on next use.
static KEY_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Set a parameter at superuser level, for this session (`local` false) or
/// to the end of the transaction: the caller's own rights do not matter, so
/// only our code decides what is set. Errors are raised.
pub fn set_as_superuser(name: &CStr, value: &CStr, local: bool) {
    let action = if local { pg_sys::GucAction::GUC_ACTION_LOCAL } else { pg_sys::GucAction::GUC_ACTION_SET };
    // SAFETY: both strings are NUL-terminated; set_config_option copies them
    // and raises (elevel ERROR) rather than returning on failure.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            pg_sys::PGERROR as i32,
            false,
        );
    }
}

pub fn key_generation() -> u64 {
    KEY_GENERATION.load(Ordering::Relaxed)
}

/// Run `f` on a string setting's current value, borrowed without a copy.
/// The borrow cannot outlive `f`; `f` must not change settings (nothing in
/// the extension does while reading one).
pub fn with_value<R>(setting: &'static GucSetting<Option<CString>>, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
    // SAFETY: the pointer is the setting's current value: NULL or a
    // NUL-terminated string that PostgreSQL frees only when the setting is
    // assigned again, which does not happen while `f` runs.
    let value = unsafe {
        let p = *setting.as_ptr();
        if p.is_null() {
            None
        } else {
            Some(CStr::from_ptr(p).to_bytes())
        }
    };
    f(value)
}

unsafe fn check_fail(msg: &CStr, hint: &CStr) -> bool {
    // Always set our own message: PostgreSQL's default one quotes the value.
    pg_sys::GUC_check_errcode(pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as i32);
    pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(msg.as_ptr());
    pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(hint.as_ptr());
    false
}

/// Refuse sources whose values land in pg_db_role_setting or pg_proc
/// (ALTER ROLE / ALTER DATABASE / a function's SET clause validate with
/// PGC_S_TEST; stored values are applied at login with the DATABASE/USER
/// sources). Files, the command line and a superuser's SET are accepted.
#[pg_guard]
unsafe extern "C-unwind" fn check_secret(
    _newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    use pg_sys::GucSource::*;
    if set_by_non_superuser(source) {
        return check_fail(
            c"only a superuser may set tenant_guard secret settings",
            c"A grant of SET on this parameter does not extend to it (security_audit() reports such grants).",
        );
    }
    match source {
        PGC_S_TEST | PGC_S_GLOBAL | PGC_S_DATABASE | PGC_S_USER | PGC_S_DATABASE_USER => check_fail(
            c"tenant_guard secret settings cannot be set with ALTER ROLE, ALTER DATABASE or a function's SET clause",
            c"Those are stored in catalogs that every role can read. Put the value in a server configuration file that only the postgres OS user can read (or use ALTER SYSTEM), then reload.",
        ),
        _ => true,
    }
}

/// A non-superuser's SET (possible with GRANT SET ON PARAMETER) of a
/// tenant_guard setting that only superusers may change.
unsafe fn set_by_non_superuser(source: pg_sys::GucSource::Type) -> bool {
    use pg_sys::GucSource::*;
    // During a transaction only (the configuration files are read at start-up
    // and on reload, outside one, as the server).
    matches!(source, PGC_S_SESSION | PGC_S_CLIENT | PGC_S_OVERRIDE)
        && pg_sys::IsTransactionState()
        && !pg_sys::superuser()
}

/// Check hook of the superuser-only settings that are not secret.
#[pg_guard]
unsafe extern "C-unwind" fn check_superuser_only_string(
    _newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    !set_by_non_superuser(source)
        || check_fail(
            c"only a superuser may set tenant_guard settings",
            c"A grant of SET on this parameter does not extend to it (security_audit() reports such grants).",
        )
}

#[pg_guard]
unsafe extern "C-unwind" fn check_superuser_only_bool(
    _newval: *mut bool,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    !set_by_non_superuser(source)
        || check_fail(
            c"only a superuser may set tenant_guard settings",
            c"A grant of SET on this parameter does not extend to it (security_audit() reports such grants).",
        )
}

#[pg_guard]
unsafe extern "C-unwind" fn check_superuser_only_enum(
    _newval: *mut std::ffi::c_int,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    !set_by_non_superuser(source)
        || check_fail(
            c"only a superuser may set tenant_guard settings",
            c"A grant of SET on this parameter does not extend to it (security_audit() reports such grants).",
        )
}

#[pg_guard]
unsafe extern "C-unwind" fn assign_key(_newval: *const c_char, _extra: *mut c_void) {
    KEY_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// (name, short description, long description, variable, assign hook).
type SecretSetting =
    (&'static CStr, &'static CStr, &'static CStr, &'static GucSetting<Option<CString>>, pg_sys::GucStringAssignHook);

pub fn init() {
    let secret_flags = GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL; // NO_SHOW_ALL includes NOT_IN_SAMPLE
                                                                         // SAFETY: called once from _PG_init, in the postmaster, as PostgreSQL
                                                                         // expects settings to be defined; every name and text is a static C string.
    unsafe {
        // Key-bearing secrets bump the key generation when they change; the
        // JWT secret is read afresh on every use.
        let secrets: [SecretSetting; 3] = [
            (
                c"tenant_guard.passphrase",
                c"Server-side passphrase from which tenant_guard derives its keys (superuser only).",
                c"At least 32 bytes; generate it, e.g. `openssl rand -base64 48`. Set it in a configuration file only the server can read.",
                &PASSPHRASE,
                Some(assign_key),
            ),
            (
                c"tenant_guard.old_passphrases",
                c"Comma-separated previous passphrases, still accepted for decryption during rotation (superuser only).",
                c"",
                &OLD_PASSPHRASES,
                Some(assign_key),
            ),
            (c"tenant_guard.jwt_secret", c"HS256 secret that authenticate_jwt() verifies tokens with (superuser only).", c"At least 32 bytes.", &JWT_SECRET, None),
        ];
        for (name, short, long, setting, assign) in secrets {
            GucRegistry::define_string_guc_with_hooks(
                name,
                short,
                long,
                setting,
                GucContext::Suset,
                secret_flags,
                Some(check_secret),
                assign,
                None,
            );
        }
        GucRegistry::define_string_guc(
            CONTEXT_NAME,
            c"Signed request context; set only by tenant_guard's verifying functions.",
            c"Transaction-scoped. A value not signed by this server for the current transaction is ignored.",
            &CONTEXT,
            GucContext::Suset,
            GucFlags::empty(),
        );
        GucRegistry::define_string_guc_with_hooks(
            c"tenant_guard.carried_context",
            c"A request context carried to this Citus worker; set only by tenant_guard on the coordinator, through Citus.",
            c"Accepted once per node, for the distributed transaction it was made for.",
            &CARRIED_CONTEXT,
            GucContext::Userset,
            GucFlags::NO_SHOW_ALL,
            Some(crate::citus::check_carried),
            Some(crate::citus::assign_carried),
            None,
        );
        // Superuser-only, and refused to anyone else even with a GRANT SET
        // ON PARAMETER (the check hooks).
        for (name, short, setting) in [
            (
                c"tenant_guard.jwt_audience",
                c"When set, authenticate_jwt() requires the token's aud to contain this value.",
                &JWT_AUDIENCE,
            ),
            (
                c"tenant_guard.jwt_issuer",
                c"When set, authenticate_jwt() requires the token's iss to equal this value.",
                &JWT_ISSUER,
            ),
        ] {
            GucRegistry::define_string_guc_with_hooks(
                name,
                short,
                c"",
                setting,
                GucContext::Suset,
                GucFlags::empty(),
                Some(check_superuser_only_string),
                None,
                None,
            );
        }
        GucRegistry::define_bool_guc_with_hooks(
            c"tenant_guard.audit",
            c"Record privileged actions (secret reads, assume, member, key, endpoint and secret changes) in tenant_guard.audit_log.",
            c"On by default; only a superuser may turn it off, and security_audit() reports it.",
            &AUDIT,
            GucContext::Suset,
            GucFlags::empty(),
            Some(check_superuser_only_bool),
            None,
            None,
        );
        GucRegistry::define_enum_guc_with_hooks(
            c"tenant_guard.require_protection",
            c"off, warn or error: what to do when a new table with an org_id column is committed without protect().",
            c"",
            &REQUIRE_PROTECTION,
            GucContext::Suset,
            GucFlags::empty(),
            Some(check_superuser_only_enum),
            None,
            None,
        );
        for (name, short, setting) in &AUDIT_THRESHOLDS {
            GucRegistry::define_int_guc(name, short, c"", setting, 1, 36500, GucContext::Suset, GucFlags::empty());
        }
        pg_sys::MarkGUCPrefixReserved(c"tenant_guard".as_ptr());
    }
}

#[cfg(feature = "pg_test")]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn secret_settings_have_the_documented_flags() {
        for name in [c"tenant_guard.passphrase", c"tenant_guard.old_passphrases", c"tenant_guard.jwt_secret"] {
            // SAFETY: a lookup by a NUL-terminated name of a defined setting.
            let flags = unsafe { pg_sys::GetConfigOptionFlags(name.as_ptr(), false) } as u32;
            for f in [pg_sys::GUC_SUPERUSER_ONLY, pg_sys::GUC_NO_SHOW_ALL, pg_sys::GUC_NOT_IN_SAMPLE] {
                assert!(flags & f != 0, "{name:?} lacks flag {f:#x}");
            }
        }
    }
}
