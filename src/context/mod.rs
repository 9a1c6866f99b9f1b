//! The request context: set only by functions that verify something, held in
//! the `tenant_guard.context` setting as a token signed with the context key
//! and bound to the current transaction, read by the helpers below.
//!
//! Per call a helper reads the setting and compares it with the last token it
//! verified (a memcmp); the HMAC is checked once per distinct value.

use crate::context_token::{self, Binding, Claims};
use crate::echo::echo;
use crate::kdf::Purpose;
use crate::keyring;
use crate::pg::errors::raise;
use crate::pg::index_lookup;
use crate::pg::settings;
use crate::roles;
use pgrx::prelude::*;
use pgrx::{PgAtomic, PgSqlErrorCode, Uuid};
use std::cell::RefCell;

// Grants of the context functions (context.sql).
pgrx::extension_sql_file!(
    "context.sql",
    name = "context",
    requires = [
        current_org_id,
        current_org_id_if,
        current_user_id,
        current_user_role,
        current_api_key_id,
        current_scopes,
        has_role,
        require_role,
        has_scope,
        require_scope,
        clear_context,
        authenticate_jwt,
        assume,
        _require_user_role,
        _note_rights_changed
    ]
);

struct Cached {
    token: Vec<u8>,
    generation: u64,
    claims: Option<Claims>,
}

thread_local! {
    static CACHE: RefCell<Option<Cached>> = const { RefCell::new(None) };
}

/// The transaction a context belongs to: the parallel leader's (or our own)
/// pid, backend id and local transaction id.
pub fn current_binding() -> Binding {
    // SAFETY: MyProc is this backend's PGPROC, valid for its whole life; a
    // lock group leader's PGPROC stays valid while its workers run.
    unsafe {
        let me = pg_sys::MyProc;
        let leader = if (*me).lockGroupLeader.is_null() { me } else { (*me).lockGroupLeader };
        Binding { pid: (*leader).pid, backend_id: (*leader).backendId, lxid: (*leader).lxid }
    }
}

/// Run `f` on the verified claims of the current context, or return None
/// when there is none (or it is not valid here and now).
pub fn with_claims<R>(f: impl FnOnce(&Claims) -> R) -> Option<R> {
    let generation = settings::key_generation();
    // No request context of this node's own: one carried here from a Citus
    // coordinator, if this session claimed it for this transaction.
    let own = settings::with_value(&settings::CONTEXT, |raw| raw.is_some_and(|r| !r.is_empty()));
    if !own {
        return crate::citus::with_carried(f);
    }
    // Refresh the cache from the setting: verify a token once per distinct value.
    settings::with_value(&settings::CONTEXT, |raw| {
        let raw = raw.filter(|r| !r.is_empty())?;
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            let hit = matches!(&*cache, Some(c) if c.generation == generation && c.token == raw);
            if !hit {
                let key = keyring::current();
                let claims = std::str::from_utf8(raw)
                    .ok()
                    .and_then(|t| context_token::decode(t, key.subkey(Purpose::Context)).ok());
                *cache = Some(Cached { token: raw.to_vec(), generation, claims });
            }
        });
        Some(())
    })?;
    CACHE.with(|cache| {
        let cache = cache.borrow();
        let claims = cache.as_ref()?.claims.as_ref()?;
        if claims.binding != current_binding() {
            return None;
        }
        Some(f(claims))
    })
}

// ---------------------------------------------------------------- freshness

/// When the context's membership (or key) was last re-read: for which
/// token, at which value of the change counter, at what time, and until
/// when the verdict holds by the clock (an API key's expiry).
struct Checked {
    token: Vec<u8>,
    changes: u64,
    at: i64,
    valid_until: i64,
}

/// The last JWT this backend verified: the token, what it was verified
/// under (secret and expectations), and its claims.
type Verified = (String, zeroize::Zeroizing<Vec<u8>>, crate::jwt::JwtClaims);

thread_local! {
    static CHECKED: RefCell<Option<Checked>> = const { RefCell::new(None) };
    static VERIFIED: RefCell<Option<Verified>> = const { RefCell::new(None) };
}

/// Re-read the membership at least this often even when no change was
/// counted (a safety net, e.g. for a PREPAREd transaction committed elsewhere).
const RECHECK_US: i64 = 1_000_000;

// SAFETY: a unique name, initialized once by init() in the postmaster.
/// Bumped after every commit that changed memberships or API keys (their
/// statement triggers note it; the commit callback counts it): a context
/// checked at the current count is still right, so the check on every query
/// and every helper call costs one atomic read.
static RIGHTS_CHANGES: PgAtomic<std::sync::atomic::AtomicU64> =
    unsafe { PgAtomic::new(c"tenant_guard_rights_changes") };

thread_local! {
    /// This transaction changed memberships or keys.
    static DIRTY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Internal (the statement triggers on memberships and api_keys): this
/// transaction changes rights; once it commits, contexts are re-checked.
#[pg_extern(volatile, parallel_unsafe)]
pub fn _note_rights_changed() {
    DIRTY.with(|d| d.set(true));
}

#[pg_guard]
unsafe extern "C-unwind" fn rights_xact_callback(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        // After the commit is visible to new snapshots (ProcArrayEndTransaction
        // runs first), so a check that reads the new count sees the change.
        // PREPARE counts too: what a COMMIT PREPARED elsewhere makes visible
        // is caught by the RECHECK_US safety net.
        XACT_EVENT_COMMIT | XACT_EVENT_PREPARE if DIRTY.with(|d| d.replace(false)) => {
            RIGHTS_CHANGES.get().fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        XACT_EVENT_ABORT => DIRTY.with(|d| d.set(false)),
        _ => {}
    }
    if matches!(event, XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PREPARE) {
        // The context ends with the transaction: so do plans built on it,
        // and the distributed transaction's record on this node.
        crate::citus::transaction_ended();
    }
}

static PREV_EXECUTOR_START: std::sync::OnceLock<pg_sys::ExecutorStart_hook_type> = std::sync::OnceLock::new();

/// Install the ExecutorStart hook and the change counter (from _PG_init,
/// in the postmaster).
pub fn init() {
    pgrx::pg_shmem_init!(RIGHTS_CHANGES);
    // SAFETY: registers a static callback once per process.
    unsafe { pg_sys::RegisterXactCallback(Some(rights_xact_callback), std::ptr::null_mut()) };
    // SAFETY: _PG_init runs once per process before any query; the hook is
    // a plain global pointer, chained to whatever was there.
    let prev = unsafe { pg_sys::ExecutorStart_hook };
    if PREV_EXECUTOR_START.set(prev).is_ok() {
        // SAFETY: as above.
        unsafe { pg_sys::ExecutorStart_hook = Some(executor_start) };
    }
}

/// Before every query: bring the context in line with the latest committed
/// state, so the row-level security helpers (which trust the context, being
/// evaluated per scan or per row) never act on a membership or key that
/// has been removed, demoted or revoked since the context was made. A
/// removed member's (or revoked key's) context is cleared; a demoted
/// member's is re-signed with the new role. Parallel workers inherit the
/// refreshed setting from their leader, which runs this first.
#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: std::ffi::c_int) {
    // A session in another session's distributed transaction runs nothing (Citus).
    crate::citus::refuse_if_joined();
    // ... nor, unless a superuser, with standard_conforming_strings off.
    crate::citus::refuse_nonstandard_strings();
    // A carried context is claimed before any parallel worker looks for it.
    crate::citus::settle_before_statement();
    refresh();
    match PREV_EXECUTOR_START.get().copied().flatten() {
        Some(prev) => {
            // SAFETY: the previous hook, called as PostgreSQL would have.
            unsafe { prev(query_desc, eflags) }
        }
        None => {
            // SAFETY: the standard function, with PostgreSQL's own arguments.
            unsafe { pg_sys::standard_ExecutorStart(query_desc, eflags) }
        }
    }
}

/// Bring the context in line with the latest committed memberships and
/// keys, if anything changed since it was last checked. Called before every
/// query and by every helper; cheap when nothing changed.
pub fn refresh() {
    // SAFETY: a plain read of transaction state.
    if unsafe { pg_sys::IsInParallelMode() } {
        return;
    }
    let changes = RIGHTS_CHANGES.get().load(std::sync::atomic::Ordering::Acquire);
    // In a transaction that itself changes rights, every check is made afresh.
    let dirty = DIRTY.with(std::cell::Cell::get);
    let now = crate::pg::clock::now_us();
    // No context, or one checked at this count, not too long ago and not
    // past its key's expiry: nothing to do (and no allocation).
    let skip = settings::with_value(&settings::CONTEXT, |raw| match raw.filter(|r| !r.is_empty()) {
        None => true,
        Some(raw) => CHECKED.with(|c| {
            !dirty
                && matches!(&*c.borrow(), Some(k) if k.token == raw && k.changes == changes
                && now - k.at < RECHECK_US && now < k.valid_until)
        }),
    });
    if skip {
        crate::citus::refresh_carried(|| with_claims(Claims::clone));
        return;
    }
    let Some(claims) = with_claims(Claims::clone) else { return };
    let signed = roles::rank(&claims.role).unwrap_or(0);
    let valid_until = match rank_and_expiry_now() {
        None => {
            clear_context();
            i64::MAX
        }
        Some((r, until)) if r < signed => {
            let role = roles::ROLES.iter().find(|(_, rank)| *rank == r).map(|(n, _)| n.to_string()).unwrap_or_default();
            install(Claims { role, ..claims });
            until
        }
        Some((_, until)) => until,
    };
    let token = settings::with_value(&settings::CONTEXT, |raw| raw.unwrap_or(b"").to_vec());
    CHECKED.with(|c| *c.borrow_mut() = Some(Checked { token, changes, at: now, valid_until }));
}

/// Sign `claims` and install them as the context until the end of the transaction.
pub fn install(claims: Claims) {
    // The same claims already installed (a request authenticating again in
    // its transaction): nothing to sign or set.
    let generation = settings::key_generation();
    let installed = CACHE.with(|c| match &*c.borrow() {
        Some(k) if k.generation == generation && k.claims.as_ref() == Some(&claims) => {
            settings::with_value(&settings::CONTEXT, |v| v == Some(&k.token[..]))
        }
        _ => false,
    });
    if installed {
        return;
    }
    let key = keyring::current();
    let tok = context_token::encode(&claims, key.subkey(Purpose::Context));
    set_context_value(&tok);
    crate::citus::carry(Some(&claims));
    let generation = settings::key_generation();
    CACHE.with(|c| *c.borrow_mut() = Some(Cached { token: tok.into_bytes(), generation, claims: Some(claims) }));
}

fn set_context_value(value: &str) {
    let v = std::ffi::CString::new(value).expect("token has no NUL");
    settings::set_as_superuser(settings::CONTEXT_NAME, &v, true);
    // Plans that hold an org evaluated from the old context (Citus) go.
    crate::citus::forget_injected_plans();
}

fn require_known_role(name: Option<&str>) -> u8 {
    let Some(name) = name else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "role must not be NULL", None, None)
    };
    roles::rank(name).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown role \"{}\"", echo(name)),
            None,
            Some("Roles are owner, admin, member and viewer."),
        )
    })
}

fn has_rank(claims: &Claims, min: u8) -> bool {
    roles::rank(&claims.role).is_some_and(|r| r >= min)
}

// ---------------------------------------------------------------- helpers

#[pg_extern(stable, parallel_safe)]
pub fn current_org_id() -> Option<Uuid> {
    refresh();
    with_claims(|c| Uuid::from_bytes(c.org_id))
}

/// The current org when the context's role is at least `min_role`, else NULL.
/// One stable expression, so `org_id = current_org_id_if('member')` is an index condition.
#[pg_extern(stable, parallel_safe)]
pub fn current_org_id_if(min_role: Option<&str>) -> Option<Uuid> {
    let min = require_known_role(min_role);
    refresh();
    with_claims(|c| has_rank(c, min).then(|| Uuid::from_bytes(c.org_id))).flatten()
}

#[pg_extern(stable, parallel_safe)]
pub fn current_user_id() -> Option<Uuid> {
    refresh();
    with_claims(|c| c.user_id.map(Uuid::from_bytes)).flatten()
}

#[pg_extern(stable, parallel_safe)]
pub fn current_user_role() -> Option<String> {
    refresh();
    with_claims(|c| c.role.clone())
}

#[pg_extern(stable, parallel_safe)]
pub fn current_api_key_id() -> Option<Uuid> {
    refresh();
    with_claims(|c| c.api_key_id.map(Uuid::from_bytes)).flatten()
}

#[pg_extern(stable, parallel_safe)]
pub fn current_scopes() -> Option<Vec<String>> {
    refresh();
    with_claims(|c| c.scopes.clone())
}

/// True when the context's role ranks at least `min_role`; false (never NULL) without a context.
#[pg_extern(stable, parallel_safe)]
pub fn has_role(min_role: Option<&str>) -> bool {
    let min = require_known_role(min_role);
    refresh();
    with_claims(|c| has_rank(c, min)).unwrap_or(false)
}

/// The rank the current context holds *now*: its signed role, lowered to
/// what the latest committed state gives (the membership for a user, the
/// key's state for an API key), read past the transaction's snapshot. None
/// without a context, or when the membership or key is gone.
pub fn rank_now() -> Option<u8> {
    rank_and_expiry_now().map(|(rank, _)| rank)
}

/// [`rank_now`], with until when that holds by the clock (an API key's
/// expiry; i64::MAX for a user).
fn rank_and_expiry_now() -> Option<(u8, i64)> {
    let (org, user, key, role) = with_claims(|c| (c.org_id, c.user_id, c.api_key_id, c.role.clone()))?;
    let signed = roles::rank(&role)?;
    let (now, until) = match (user, key) {
        (Some(u), _) => (roles::rank(&membership_role(org, u)?)?, i64::MAX),
        (None, Some(k)) => crate::api_keys::rank_now(k)?,
        (None, None) => return None,
    };
    Some((signed.min(now), until))
}

/// Raise 42501 unless the context's role, as the latest committed state
/// has it, ranks at least `min_role`. Privileged functions call this: a
/// member removed or demoted after this transaction authenticated (or
/// through an old snapshot) loses the right at once. (The RLS helpers
/// trust the context for the rest of its transaction.)
#[pg_extern(stable, parallel_safe)]
pub fn require_role(min_role: Option<&str>) {
    let min = require_known_role(min_role);
    if rank_now().is_none_or(|r| r < min) {
        let have = with_claims(|c| c.role.clone());
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("this action needs role {} or higher", min_role.map(echo).unwrap_or_default()),
            Some(&match have {
                Some(r) => format!("The current context has role {r} (or no longer holds it)."),
                None => "There is no request context in this transaction.".to_string(),
            }),
            None,
        )
    }
}

/// Internal: raise 42501 unless the context is a *signed-in user* (not an
/// API key, not no context) whose role, as committed now, ranks at least
/// `min_role`. The one rule behind everything that manages members, API keys
/// and webhook endpoints: an API key must not mint keys, add members or
/// point the org's events somewhere (what it made would outlive it).
#[pg_extern(stable, parallel_safe)]
pub fn _require_user_role(min_role: Option<&str>) {
    require_known_role(min_role);
    match with_claims(|c| c.user_id.is_some()) {
        Some(false) => raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "this needs a signed-in user, not an API key",
            Some("Members, API keys and webhook endpoints are managed by a signed-in user only."),
            None,
        ),
        None => raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("this action needs role {} or higher", min_role.map(echo).unwrap_or_default()),
            Some("There is no request context in this transaction."),
            None,
        ),
        Some(true) => require_role(min_role),
    }
}

/// True when the context carries `scope` (API keys); false without a context
/// or for user contexts, which carry no scopes.
#[pg_extern(stable, parallel_safe)]
pub fn has_scope(scope: Option<&str>) -> bool {
    refresh();
    let Some(scope) = scope else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "scope must not be NULL", None, None)
    };
    with_claims(|c| c.scopes.iter().any(|s| s == scope)).unwrap_or(false)
}

#[pg_extern(stable, parallel_safe)]
pub fn require_scope(scope: Option<&str>) {
    if !has_scope(scope) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("this action needs scope \"{}\"", echo(scope.unwrap_or_default())),
            None,
            None,
        )
    }
}

/// Drop the context for the rest of the transaction (anyone may lower their own privileges).
#[pg_extern]
pub fn clear_context() {
    set_context_value("");
    CACHE.with(|c| *c.borrow_mut() = None);
    crate::citus::carry(None);
}

// ---------------------------------------------------------------- setters

/// The role of `user_id` in `org_id` as committed now: a direct probe of
/// the primary key (probe.rs), so neither a REPEATABLE READ transaction
/// begun earlier nor an imported snapshot brings back a removed or demoted
/// member. No SQL runs, so the callers need no SECURITY DEFINER.
pub fn membership_role(org_id: [u8; 16], user_id: [u8; 16]) -> Option<String> {
    index_lookup::fetch_one(
        c"memberships",
        c"memberships_pkey",
        &[
            (c"org_id", index_lookup::Key::Uuid(Uuid::from_bytes(org_id))),
            (c"user_id", index_lookup::Key::Uuid(Uuid::from_bytes(user_id))),
        ],
        |r| r.get::<String>(c"role", pg_sys::PgBuiltInOids::TEXTOID),
    )
    .flatten()
}

/// Verify an HS256 JWT signed with `tenant_guard.jwt_secret` and set the
/// context for this transaction. The role comes from `memberships`, as
/// committed now. Runs no SQL (the membership is probed directly), so it
/// needs neither SECURITY DEFINER nor a pinned search_path.
#[pg_extern(volatile, parallel_unsafe)]
pub fn authenticate_jwt(token: Option<&str>) -> Uuid {
    let token = token.unwrap_or("");
    let text =
        |v: Option<&[u8]>| v.and_then(|v| std::str::from_utf8(v).ok()).filter(|v| !v.is_empty()).map(str::to_owned);
    let (aud, iss) =
        (settings::with_value(&settings::JWT_AUDIENCE, text), settings::with_value(&settings::JWT_ISSUER, text));
    let expect = crate::jwt::Expect { audience: aud.as_deref(), issuer: iss.as_deref() };
    let now = crate::pg::clock::unix_secs();
    let claims = keyring::with_jwt_secret(|secret| {
        // What the verdict depends on besides the token: the secret and the
        // expectations. A token verified under the same is not verified
        // again (only its expiry is checked): a client presents one bearer
        // token for many requests, often to the same pooled backend.
        let under = zeroize::Zeroizing::new(
            [secret, b"\0", aud.as_deref().unwrap_or("").as_bytes(), b"\0", iss.as_deref().unwrap_or("").as_bytes()]
                .concat(),
        );
        let cached = VERIFIED.with(|v| match &*v.borrow() {
            Some((t, u, c)) if t == token && u[..] == under[..] => Some(c.clone()),
            _ => None,
        });
        match cached {
            Some(c) if now < c.exp => Ok(c),
            Some(_) => Err(crate::jwt::JwtError::Expired),
            None => {
                let r = crate::jwt::verify_expecting(token, secret, now, expect);
                if let Ok(c) = &r {
                    VERIFIED.with(|v| *v.borrow_mut() = Some((token.to_owned(), under, c.clone())));
                }
                r
            }
        }
    });
    let claims = match claims {
        Ok(c) => c,
        Err(e) => {
            crate::pg::errors::hide_statement_from_log();
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
                "invalid token",
                Some(&format!("The JWT was rejected: {e}.")),
                None,
            )
        }
    };
    let Some(role) = membership_role(claims.org_id, claims.sub) else {
        crate::pg::errors::hide_statement_from_log();
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
            "invalid token",
            Some("The subject is not a member of the organization."),
            None,
        )
    };
    install(Claims {
        org_id: claims.org_id,
        user_id: Some(claims.sub),
        role,
        api_key_id: None,
        scopes: vec![],
        binding: current_binding(),
    });
    Uuid::from_bytes(claims.org_id)
}

/// Service role only (by grant): act as `user_id` in `org_id` for this
/// transaction, with the role the membership table gives (as committed
/// now). Returns that role.
#[pg_extern(volatile, parallel_unsafe)]
pub fn assume(org_id: Option<Uuid>, user_id: Option<Uuid>) -> String {
    let ev = crate::audit_trail::Event::new("assume", org_id.map(|o| *o.as_bytes()), "member")
        .id(user_id.map(|u| *u.as_bytes()));
    crate::audit_trail::guarded(crate::audit_trail::Kind::Read, ev, |ev| {
        let (Some(org_id), Some(user_id)) = (org_id, user_id) else {
            raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "org_id and user_id must not be NULL", None, None)
        };
        let org = *org_id.as_bytes();
        let user = *user_id.as_bytes();
        let Some(role) = membership_role(org, user) else {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "that user is not a member of that organization",
                None,
                None,
            )
        };
        ev.detail = Some(format!("as {role}"));
        install(Claims {
            org_id: org,
            user_id: Some(user),
            role: role.clone(),
            api_key_id: None,
            scopes: vec![],
            binding: current_binding(),
        });
        role
    })
}

#[cfg(feature = "pg_test")]
#[pg_schema]
mod tests {
    use crate::context_token::{Binding, Claims};
    use pgrx::prelude::*;

    fn claims(binding: Binding) -> Claims {
        Claims {
            org_id: [7; 16],
            user_id: Some([8; 16]),
            role: "member".into(),
            api_key_id: None,
            scopes: vec![],
            binding,
        }
    }

    #[pg_test]
    fn helpers_are_null_or_false_without_a_context() {
        assert_eq!(Spi::get_one::<pgrx::Uuid>("SELECT tenant_guard.current_org_id()").unwrap(), None);
        assert_eq!(Spi::get_one::<bool>("SELECT tenant_guard.has_role('viewer')").unwrap(), Some(false));
    }

    /// The org and member the claims above name.
    fn make_member() {
        Spi::run(
            "INSERT INTO tenant_guard.organizations (id, name) VALUES ('07070707-0707-0707-0707-070707070707', 't');
             INSERT INTO tenant_guard.memberships (org_id, user_id, role)
             VALUES ('07070707-0707-0707-0707-070707070707', '08080808-0808-0808-0808-080808080808', 'member')",
        )
        .unwrap();
    }

    #[pg_test]
    fn a_context_is_bound_to_its_transaction() {
        make_member();
        let here = crate::context::current_binding();
        crate::context::install(claims(here));
        assert_eq!(crate::context::with_claims(|c| c.org_id), Some([7; 16]));
        assert_eq!(
            Spi::get_one::<String>("SELECT tenant_guard.current_user_role()").unwrap().as_deref(),
            Some("member")
        );
        // The same claims signed for another transaction (or backend) are ignored.
        for other in [
            Binding { lxid: here.lxid.wrapping_add(1), ..here },
            Binding { pid: here.pid + 1, ..here },
            Binding { backend_id: here.backend_id + 1, ..here },
        ] {
            crate::context::install(claims(other));
            assert_eq!(crate::context::with_claims(|c| c.org_id), None, "{other:?}");
            assert_eq!(Spi::get_one::<pgrx::Uuid>("SELECT tenant_guard.current_org_id()").unwrap(), None);
        }
    }

    #[pg_test]
    fn each_query_brings_the_context_up_to_date() {
        make_member();
        let here = crate::context::current_binding();
        crate::context::install(Claims { role: "admin".into(), ..claims(here) });
        // Signed as admin, but the membership says member: re-signed lower.
        assert_eq!(
            Spi::get_one::<String>("SELECT tenant_guard.current_user_role()").unwrap().as_deref(),
            Some("member")
        );
        Spi::run("DELETE FROM tenant_guard.memberships").unwrap();
        // Removed (in this very transaction): the next query has no context.
        assert_eq!(Spi::get_one::<pgrx::Uuid>("SELECT tenant_guard.current_org_id()").unwrap(), None);
    }
}
