//! WordPress application passwords: stored as kind `wordpress`, name = the
//! normalised site URL, secret = `{"username": ..., "app_password": ...}`.

use super::{admin_org, load, store};
use crate::audit_trail::{self, Event, Kind};
use crate::pg::errors::raise;
use pgrx::prelude::*;
use pgrx::{PgSqlErrorCode, Uuid};

const WP_KIND: &str = "wordpress";

/// Canonical site URL: https only, lower-case scheme and host, no trailing slash.
fn normalize_site(url: &str) -> String {
    let u = url.trim();
    let Some(rest) = u.strip_prefix("https://").or_else(|| u.strip_prefix("HTTPS://")) else {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "site_url must start with https://",
            Some("WordPress only accepts application passwords over HTTPS."),
            None,
        )
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() || host.contains(['@', ' ']) {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "site_url has no valid host", None, None);
    }
    format!("https://{}{}", host.to_ascii_lowercase(), path.trim_end_matches('/'))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WpCreds {
    username: String,
    app_password: String,
}

fn wp_load(org_id: Uuid, site_url: &str) -> Option<WpCreds> {
    let bytes = load(*org_id.as_bytes(), WP_KIND, &normalize_site(site_url))?;
    Some(serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        raise(PgSqlErrorCode::ERRCODE_DATA_CORRUPTED, "stored WordPress credentials are malformed", None, None)
    }))
}

/// The site as the audit trail records it: its canonical form, or nothing
/// when it is not a valid site URL (it might then hold credentials).
fn site_for_trail(url: &str) -> Option<String> {
    let u = url.trim();
    let ok = (u.starts_with("https://") || u.starts_with("HTTPS://")) && !u.contains(['@', ' ']) && u.len() <= 400;
    ok.then(|| {
        let rest = &u[8..];
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        format!("https://{}{}", host.to_ascii_lowercase(), path.trim_end_matches('/'))
    })
}

fn wp_event<'a>(action: &'static str, org: Option<[u8; 16]>, site: &'a Option<String>) -> Event<'a> {
    let ev = Event::new(action, org, "wordpress_credentials").kind(WP_KIND);
    match site {
        Some(s) => ev.name(s),
        None => {
            let mut ev = ev;
            ev.detail = Some("the site_url given is not a valid https:// site URL".into());
            ev
        }
    }
}

/// Store the WordPress application password of a site for the current org
/// (admin or higher). Username and password are encrypted together.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
pub fn put_wordpress_credentials(site_url: &str, username: &str, app_password: &str) -> Uuid {
    let org = crate::context::with_claims(|c| c.org_id);
    let site = site_for_trail(site_url);
    let ev = wp_event("put_wordpress_credentials", org, &site);
    audit_trail::guarded(Kind::Write, ev, |_| put_wp(site_url, username, app_password))
}

fn put_wp(site_url: &str, username: &str, app_password: &str) -> Uuid {
    let org = admin_org();
    if username.is_empty() || username.contains(':') {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "username must be non-empty and contain no ':'",
            None,
            None,
        );
    }
    if app_password.trim().is_empty() {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, "app_password must not be empty", None, None);
    }
    let json =
        serde_json::to_vec(&WpCreds { username: username.into(), app_password: app_password.into() }).expect("json");
    store(org, WP_KIND, &normalize_site(site_url), &json)
}

/// Service role only.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
pub fn get_wordpress_credentials(
    org_id: Uuid,
    site_url: &str,
) -> TableIterator<'static, (name!(username, String), name!(app_password, String))> {
    TableIterator::new(
        audited_load("get_wordpress_credentials", org_id, site_url).map(|c| (c.username, c.app_password)),
    )
}

/// wp_load, audited as a read of `action` (the site, never the credentials).
fn audited_load(action: &'static str, org_id: Uuid, site_url: &str) -> Option<WpCreds> {
    let site = site_for_trail(site_url);
    let ev = wp_event(action, Some(*org_id.as_bytes()), &site);
    audit_trail::guarded(Kind::Read, ev, |ev| {
        let found = wp_load(org_id, site_url);
        if found.is_none() {
            ev.detail = Some("no credentials for that site".into());
        }
        found
    })
}

/// Service role only: the ready `Authorization` header value for the WordPress REST API.
#[pg_extern(security_definer, volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
pub fn wordpress_authorization(org_id: Uuid, site_url: &str) -> Option<String> {
    use base64::Engine;
    audited_load("wordpress_authorization", org_id, site_url).map(|c| {
        // WordPress shows application passwords in groups of four with spaces; both forms work.
        let pair = format!("{}:{}", c.username, c.app_password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    })
}
