//! Shared helpers for the black-box tests (included with `mod common;`).
#![allow(dead_code)]

use postgres::{Client, SimpleQueryMessage};
use serde_json::Value;
use tenant_guard_harness::Db;

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

pub fn jwt_with_header(header: &str, claims: &Value, secret: &str) -> String {
    tenant_guard_harness::sign_hs256(header, &claims.to_string(), secret)
}

pub fn jwt(claims: &Value, secret: &str) -> String {
    jwt_with_header(r#"{"alg":"HS256","typ":"JWT"}"#, claims, secret)
}

/// A valid token for `user` in `org` (expires in 5 minutes).
pub fn token_for(org: &str, user: &str) -> String {
    jwt(
        &serde_json::json!({"sub": user, "org_id": org, "exp": now() + 300, "iat": now()}),
        tenant_guard_harness::JWT_SECRET,
    )
}

/// First column of the first row of the last statement's result, as text.
pub fn val(c: &mut Client, sql: &str) -> Option<String> {
    let msgs = c.simple_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = None;
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            if out.is_none() {
                out = Some(r.get(0).map(str::to_string));
            }
        }
    }
    out.flatten()
}

/// Run `sql` every 50 ms until `done` holds for its value (or fail after
/// `secs` seconds, saying `what` and the last value); returns that value.
pub fn poll(c: &mut Client, sql: &str, secs: u64, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let v = val(c, sql).unwrap_or_default();
        if done(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{what} (last: {v:?}; {sql})");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn rows(c: &mut Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let msgs = c.simple_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .collect()
}

pub fn exec(c: &mut Client, sql: &str) {
    c.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {}", tenant_guard_harness::full_error::<()>(&Err(e))));
}

/// Affected-row count of a single DML statement.
pub fn affected(c: &mut Client, sql: &str) -> u64 {
    c.execute(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {}", tenant_guard_harness::full_error::<()>(&Err(e))))
}

pub const OWNER_A: &str = "00000000-0000-4000-8000-00000000000a";
pub const ADMIN_A: &str = "00000000-0000-4000-8000-0000000000a2";
pub const MEMBER_A: &str = "00000000-0000-4000-8000-0000000000a3";
pub const VIEWER_A: &str = "00000000-0000-4000-8000-0000000000a4";
pub const OWNER_B: &str = "00000000-0000-4000-8000-00000000000b";
pub const STRANGER: &str = "00000000-0000-4000-8000-0000000000ff";

pub struct World {
    pub org_a: String,
    pub org_b: String,
}

/// Two organizations with members, and a protected table `docs` holding rows of both.
pub fn world(db: &Db) -> World {
    let mut dba = db.dba();
    let org_a = val(&mut dba, &format!("SELECT tenant_guard.create_organization('Acme', '{OWNER_A}')")).unwrap();
    let org_b = val(&mut dba, &format!("SELECT tenant_guard.create_organization('Bravo', '{OWNER_B}')")).unwrap();
    exec(
        &mut dba,
        &format!(
            "INSERT INTO tenant_guard.memberships (org_id, user_id, role) VALUES
               ('{org_a}', '{ADMIN_A}', 'admin'), ('{org_a}', '{MEMBER_A}', 'member'), ('{org_a}', '{VIEWER_A}', 'viewer');
             CREATE TABLE docs (id bigserial PRIMARY KEY, org_id uuid NOT NULL, title text NOT NULL);
             INSERT INTO docs (org_id, title) SELECT '{org_a}', 'a-' || g FROM generate_series(1, 30) g;
             INSERT INTO docs (org_id, title) SELECT '{org_b}', 'b-' || g FROM generate_series(1, 20) g;
             SELECT tenant_guard.protect('docs');
             GRANT SELECT, INSERT, UPDATE, DELETE ON docs TO app;
             GRANT USAGE ON SEQUENCE docs_id_seq TO app;"
        ),
    );
    World { org_a, org_b }
}

/// BEGIN and authenticate `user` in `org` with a JWT.
pub fn begin_as(c: &mut Client, org: &str, user: &str) {
    exec(c, "BEGIN");
    let got = val(c, &format!("SELECT tenant_guard.authenticate_jwt('{}')", token_for(org, user))).unwrap();
    assert_eq!(got, org);
}

/// Create a key as `user` (a member of `org`); returns (key_id, plaintext).
pub fn create_key(c: &mut Client, org: &str, user: &str, args: &str) -> (String, String) {
    begin_as(c, org, user);
    let r = rows(c, &format!("SELECT key_id, api_key FROM tenant_guard.create_api_key({args})"));
    exec(c, "COMMIT");
    (r[0][0].clone().unwrap(), r[0][1].clone().unwrap())
}

/// authenticate() with `key` as a bind parameter; the org id on success.
pub fn auth(c: &mut Client, key: &str) -> Result<String, postgres::Error> {
    c.query_one("SELECT tenant_guard.authenticate($1, 'test')::text", &[&key]).map(|r| r.get(0))
}
