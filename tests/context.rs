//! Issue 3: organizations, roles and an unforgeable request context; the
//! attack suite runs as the plain login role `app`, which can run any SQL.

mod common;
use common::*;
use serde_json::json;
use tenant_guard_harness::{cluster, full_error, sqlstate, JWT_SECRET};

#[test]
fn jwt_sets_context_with_role_from_memberships() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    // A "role" claim in the token is ignored: the membership says viewer.
    let t = jwt(&json!({"sub": VIEWER_A, "org_id": w.org_a, "exp": now() + 60, "role": "owner"}), JWT_SECRET);
    exec(&mut app, "BEGIN");
    assert_eq!(val(&mut app, &format!("SELECT tenant_guard.authenticate_jwt('{t}')")).unwrap(), w.org_a);
    assert_eq!(val(&mut app, "SELECT tenant_guard.current_org_id()").unwrap(), w.org_a);
    assert_eq!(val(&mut app, "SELECT tenant_guard.current_user_id()").unwrap(), VIEWER_A);
    assert_eq!(val(&mut app, "SELECT tenant_guard.current_user_role()").unwrap(), "viewer");
    assert_eq!(val(&mut app, "SELECT tenant_guard.has_role('viewer')").unwrap(), "t");
    assert_eq!(val(&mut app, "SELECT tenant_guard.has_role('member')").unwrap(), "f");
    assert_eq!(val(&mut app, "SELECT tenant_guard.current_api_key_id()"), None);
    assert_eq!(val(&mut app, "SELECT tenant_guard.has_scope('read')").unwrap(), "f");
    let r = app.simple_query("SELECT tenant_guard.require_role('admin')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");
    // Unknown role names are an error, not a silent false.
    let r = app.simple_query("SELECT tenant_guard.has_role('root')");
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"));
}

#[test]
fn no_context_means_null_helpers_and_denied_policies() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    for f in ["current_org_id", "current_user_id", "current_user_role", "current_api_key_id"] {
        assert_eq!(val(&mut app, &format!("SELECT tenant_guard.{f}()")), None, "{f}");
    }
    assert_eq!(val(&mut app, "SELECT tenant_guard.has_role('viewer')").unwrap(), "f");
    assert_eq!(val(&mut app, "SELECT NOT tenant_guard.has_role('viewer')").unwrap(), "t", "never NULL");
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), "0");
    assert_eq!(val(&mut app, "SELECT count(*) FROM tenant_guard.memberships").unwrap(), "0");
    assert_eq!(val(&mut app, "SELECT count(*) FROM tenant_guard.organizations").unwrap(), "0");
    let r = app.simple_query(&format!("INSERT INTO docs (org_id, title) VALUES ('{}', 'x')", w.org_a));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    let r = app.simple_query("SELECT tenant_guard.require_role('viewer')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
}

#[test]
fn context_cannot_be_forged_with_set_or_set_config() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    // Capture a genuine token of org A...
    begin_as(&mut app, &w.org_a, OWNER_A);
    let token = val(&mut app, "SELECT current_setting('tenant_guard.context')").unwrap();
    assert!(token.starts_with("v1."));
    exec(&mut app, "COMMIT");
    // ...then try to install it, or anything else, by hand.
    for q in [
        format!("SET tenant_guard.context = '{token}'"),
        format!("SET LOCAL tenant_guard.context = '{token}'"),
        format!("SELECT set_config('tenant_guard.context', '{token}', true)"),
        format!("SELECT set_config('tenant_guard.context', '{token}', false)"),
        "RESET tenant_guard.context".to_string(),
    ] {
        exec(&mut app, "BEGIN");
        let r = app.simple_query(&q);
        assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{q}");
        exec(&mut app, "ROLLBACK");
    }
    // Supabase-style claims settings mean nothing to tenant_guard.
    exec(&mut app, "BEGIN");
    exec(
        &mut app,
        &format!(
            "SELECT set_config('request.jwt.claims', '{{\"sub\":\"{OWNER_B}\",\"org_id\":\"{}\",\"role\":\"owner\"}}', true);
             SELECT set_config('request.jwt.claim.org_id', '{}', true);",
            w.org_b, w.org_b
        ),
    );
    assert_eq!(val(&mut app, "SELECT tenant_guard.current_org_id()"), None);
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), "0");
    exec(&mut app, "ROLLBACK");
    // Every tenant_guard setting is closed to SET by a non-superuser.
    for g in
        ["tenant_guard.context", "tenant_guard.passphrase", "tenant_guard.old_passphrases", "tenant_guard.jwt_secret"]
    {
        let r = app.simple_query(&format!("SET {g} = 'x'"));
        assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{g}");
    }
}

#[test]
fn a_token_is_worthless_outside_its_transaction() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    begin_as(&mut app, &w.org_a, OWNER_A);
    let token = val(&mut app, "SELECT current_setting('tenant_guard.context')").unwrap();
    exec(&mut app, "COMMIT");
    // Even a superuser, who may SET it, cannot revive it in another transaction or session.
    let mut dba = db.dba();
    exec(&mut dba, &format!("BEGIN; SET LOCAL tenant_guard.context = '{token}'"));
    assert_eq!(val(&mut dba, "SELECT tenant_guard.current_org_id()"), None);
    exec(&mut dba, "ROLLBACK");
    // A tampered token (other org, same MAC) is rejected too.
    let (_, rest) = token.split_at(3);
    let (payload, tag) = rest.split_once('.').unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: serde_json::Value = serde_json::from_slice(&b64.decode(payload).unwrap()).unwrap();
    claims["r"] = json!("owner");
    claims["o"] = json!([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
    let forged = format!("v1.{}.{tag}", b64.encode(serde_json::to_vec(&claims).unwrap()));
    exec(&mut dba, &format!("BEGIN; SET LOCAL tenant_guard.context = '{forged}'"));
    assert_eq!(val(&mut dba, "SELECT tenant_guard.current_org_id()"), None);
    exec(&mut dba, "ROLLBACK");
}

#[test]
fn context_is_transaction_scoped() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    begin_as(&mut app, &w.org_a, OWNER_A);
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), "30");
    exec(&mut app, "COMMIT");
    assert_eq!(val(&mut app, "SELECT tenant_guard.current_org_id()"), None, "after COMMIT");
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), "0");

    begin_as(&mut app, &w.org_a, OWNER_A);
    exec(&mut app, "ROLLBACK");
    assert_eq!(val(&mut app, "SELECT tenant_guard.current_org_id()"), None, "after ROLLBACK");

    exec(&mut app, "BEGIN; SAVEPOINT s");
    val(&mut app, &format!("SELECT tenant_guard.authenticate_jwt('{}')", token_for(&w.org_a, OWNER_A)));
    assert_eq!(val(&mut app, "SELECT tenant_guard.current_org_id()").unwrap(), w.org_a);
    exec(&mut app, "ROLLBACK TO SAVEPOINT s");
    assert_eq!(val(&mut app, "SELECT tenant_guard.current_org_id()"), None, "after ROLLBACK TO SAVEPOINT");
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), "0");
    exec(&mut app, "COMMIT");

    // clear_context() drops it mid-transaction.
    begin_as(&mut app, &w.org_a, OWNER_A);
    exec(&mut app, "SELECT tenant_guard.clear_context()");
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), "0");
    exec(&mut app, "COMMIT");
    // Autocommit: the context lives only as long as its own statement's transaction.
    val(&mut app, &format!("SELECT tenant_guard.authenticate_jwt('{}')", token_for(&w.org_a, OWNER_A)));
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), "0");
}

#[test]
fn bad_jwts_are_refused() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let n = now();
    let good = |extra: serde_json::Value| {
        let mut c = json!({"sub": OWNER_A, "org_id": w.org_a, "exp": n + 300});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let unsigned_payload = b64(&good(json!({})).to_string());
    let cases: Vec<(&str, String)> = vec![
        ("wrong secret", jwt(&good(json!({})), "not-the-secret-not-the-secret-not-the-secret")),
        ("expired", jwt(&good(json!({"exp": n - 1})), JWT_SECRET)),
        ("not yet valid", jwt(&good(json!({"nbf": n + 3600})), JWT_SECRET)),
        ("issued in the future", jwt(&good(json!({"iat": n + 3600})), JWT_SECRET)),
        ("alg none", format!("{}.{unsigned_payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#))),
        ("RS256 header", jwt_with_header(r#"{"alg":"RS256","typ":"JWT"}"#, &good(json!({})), JWT_SECRET)),
        ("non-member subject", jwt(&good(json!({"sub": STRANGER})), JWT_SECRET)),
        ("member of another org", jwt(&good(json!({"org_id": w.org_b})), JWT_SECRET)),
        ("no exp", jwt(&json!({"sub": OWNER_A, "org_id": w.org_a}), JWT_SECRET)),
        ("sub not a uuid", jwt(&good(json!({"sub": "alice"})), JWT_SECRET)),
        ("malformed", "not.a.jwt".into()),
        ("two parts", "abc.def".into()),
        ("empty", String::new()),
        ("oversized", jwt(&good(json!({"pad": "x".repeat(20_000)})), JWT_SECRET)),
    ];
    for (what, t) in cases {
        exec(&mut app, "BEGIN");
        let r = app.query_one("SELECT tenant_guard.authenticate_jwt($1)::text", &[&t]);
        assert_eq!(sqlstate(&r).as_deref(), Some("28000"), "{what}: {}", full_error(&r));
        exec(&mut app, "ROLLBACK");
        assert_eq!(val(&mut app, "SELECT tenant_guard.current_org_id()"), None, "{what}");
    }
    let r = app.query_one("SELECT tenant_guard.authenticate_jwt(NULL)::text", &[]);
    assert_eq!(sqlstate(&r).as_deref(), Some("28000"));
}

#[test]
fn assume_is_for_the_service_role_only() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let r = app.simple_query(&format!("BEGIN; SELECT tenant_guard.assume('{}', '{OWNER_A}')", w.org_a));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");
    let r = app.simple_query(&format!("SELECT tenant_guard.create_organization('evil', '{STRANGER}')"));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));

    let mut svc = db.svc();
    exec(&mut svc, "BEGIN");
    assert_eq!(val(&mut svc, &format!("SELECT tenant_guard.assume('{}', '{MEMBER_A}')", w.org_a)).unwrap(), "member");
    assert_eq!(val(&mut svc, "SELECT tenant_guard.current_user_role()").unwrap(), "member");
    exec(&mut svc, "ROLLBACK");
    let r = svc.simple_query(&format!("BEGIN; SELECT tenant_guard.assume('{}', '{STRANGER}')", w.org_a));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut svc, "ROLLBACK");
    // The service role can create organizations.
    assert!(val(&mut svc, &format!("SELECT tenant_guard.create_organization('New', '{STRANGER}')")).is_some());
}

#[test]
fn cross_org_reads_and_writes_are_impossible() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    begin_as(&mut app, &w.org_a, MEMBER_A);
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), "30");
    assert_eq!(val(&mut app, &format!("SELECT count(*) FROM docs WHERE org_id = '{}'", w.org_b)).unwrap(), "0");
    assert_eq!(val(&mut app, "SELECT count(*) FROM tenant_guard.memberships").unwrap(), "4");
    assert_eq!(val(&mut app, "SELECT count(*) FROM tenant_guard.organizations").unwrap(), "1");
    // write into B
    let r = app.simple_query(&format!("INSERT INTO docs (org_id, title) VALUES ('{}', 'planted')", w.org_b));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");
    begin_as(&mut app, &w.org_a, MEMBER_A);
    assert_eq!(affected(&mut app, &format!("UPDATE docs SET title = 'x' WHERE org_id = '{}'", w.org_b)), 0);
    // move a row of A into B
    let r = app.simple_query(&format!("UPDATE docs SET org_id = '{}' WHERE title = 'a-1'", w.org_b));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");
    begin_as(&mut app, &w.org_a, ADMIN_A);
    assert_eq!(affected(&mut app, &format!("DELETE FROM docs WHERE org_id = '{}'", w.org_b)), 0);
    // own rows: allowed by role
    assert_eq!(affected(&mut app, "UPDATE docs SET title = title || '!' WHERE title = 'a-1'"), 1);
    assert_eq!(affected(&mut app, "DELETE FROM docs WHERE title = 'a-2'"), 1);
    exec(&mut app, "COMMIT");
    let mut dba = db.dba();
    assert_eq!(val(&mut dba, "SELECT count(*) FROM docs WHERE title LIKE 'b-%'").unwrap(), "20", "B untouched");
}

#[test]
fn roles_gate_writes_and_deletes() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    // viewer: read only
    begin_as(&mut app, &w.org_a, VIEWER_A);
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), "30");
    let r = app.simple_query(&format!("INSERT INTO docs (org_id, title) VALUES ('{}', 'v')", w.org_a));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");
    begin_as(&mut app, &w.org_a, VIEWER_A);
    assert_eq!(affected(&mut app, "UPDATE docs SET title = 'v'"), 0);
    exec(&mut app, "ROLLBACK");
    // member: writes but no deletes
    begin_as(&mut app, &w.org_a, MEMBER_A);
    assert_eq!(affected(&mut app, &format!("INSERT INTO docs (org_id, title) VALUES ('{}', 'm')", w.org_a)), 1);
    assert_eq!(affected(&mut app, "DELETE FROM docs"), 0, "a member cannot delete");
    exec(&mut app, "COMMIT");
    begin_as(&mut app, &w.org_a, ADMIN_A);
    assert_eq!(affected(&mut app, "DELETE FROM docs WHERE title = 'm'"), 1);
    exec(&mut app, "COMMIT");
}

#[test]
fn membership_rules() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let newbie = "00000000-0000-4000-8000-0000000000c1";
    let attempt = |app: &mut postgres::Client, user: &str, sql: &str| {
        begin_as(app, &w.org_a, user);
        let r = app.simple_query(sql);
        let s = sqlstate(&r);
        exec(app, if s.is_none() { "COMMIT" } else { "ROLLBACK" });
        s
    };
    // member cannot manage members
    assert_eq!(
        attempt(&mut app, MEMBER_A, &format!("SELECT tenant_guard.add_member('{newbie}', 'viewer')")).as_deref(),
        Some("42501")
    );
    // admin: self-promotion, promotion above own rank, demoting an owner
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.set_member_role('{ADMIN_A}', 'owner')")).as_deref(),
        Some("42501")
    );
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.set_member_role('{MEMBER_A}', 'owner')")).as_deref(),
        Some("42501")
    );
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.add_member('{newbie}', 'owner')")).as_deref(),
        Some("42501")
    );
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.set_member_role('{OWNER_A}', 'viewer')")).as_deref(),
        Some("42501")
    );
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.remove_member('{OWNER_A}')")).as_deref(),
        Some("42501")
    );
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.add_member('{newbie}', 'root')")).as_deref(),
        Some("22023")
    );
    // allowed: admin adds and promotes up to admin, removes
    assert_eq!(attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.add_member('{newbie}', 'viewer')")), None);
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.add_member('{newbie}', 'viewer')")).as_deref(),
        Some("23505")
    );
    assert_eq!(attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.set_member_role('{newbie}', 'admin')")), None);
    assert_eq!(attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.remove_member('{newbie}')")), None);
    // the owner cannot demote or remove themselves (so an org never loses its last owner)
    assert_eq!(
        attempt(&mut app, OWNER_A, &format!("SELECT tenant_guard.set_member_role('{OWNER_A}', 'admin')")).as_deref(),
        Some("42501")
    );
    assert_eq!(
        attempt(&mut app, OWNER_A, &format!("SELECT tenant_guard.remove_member('{OWNER_A}')")).as_deref(),
        Some("42501")
    );
    // an owner can promote another owner, who can then not remove the first... but each keeps one owner
    assert_eq!(attempt(&mut app, OWNER_A, &format!("SELECT tenant_guard.set_member_role('{ADMIN_A}', 'owner')")), None);
    assert_eq!(attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.remove_member('{OWNER_A}')")), None);
    // org B is out of reach from A's context
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.remove_member('{OWNER_B}')")).as_deref(),
        Some("02000")
    );
    // no direct writes to the membership table
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let r =
        app.simple_query(&format!("UPDATE tenant_guard.memberships SET role = 'owner' WHERE user_id = '{MEMBER_A}'"));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");
    let mut dba = db.dba();
    assert_eq!(
        val(
            &mut dba,
            &format!("SELECT count(*) FROM tenant_guard.memberships WHERE org_id = '{}' AND role = 'owner'", w.org_a)
        )
        .unwrap(),
        "1"
    );
}

#[test]
fn self_approval_is_refused() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut dba = db.dba();
    exec(
        &mut dba,
        "CREATE TABLE requests (id bigserial PRIMARY KEY, org_id uuid NOT NULL, requester uuid NOT NULL, approver uuid, what text);
         SELECT tenant_guard.protect('requests');
         SELECT tenant_guard.forbid_self_approval('requests', 'requester', 'approver');
         GRANT SELECT, INSERT, UPDATE ON requests TO app; GRANT USAGE ON SEQUENCE requests_id_seq TO app;",
    );
    let mut app = db.app();
    begin_as(&mut app, &w.org_a, MEMBER_A);
    exec(
        &mut app,
        &format!("INSERT INTO requests (org_id, requester, what) VALUES ('{}', '{MEMBER_A}', 'refund')", w.org_a),
    );
    // approve own request: by naming oneself, or by naming someone else
    for approver in [MEMBER_A, ADMIN_A] {
        exec(&mut app, "SAVEPOINT s");
        let r = app.simple_query(&format!("UPDATE requests SET approver = '{approver}'"));
        assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "approver {approver}");
        exec(&mut app, "ROLLBACK TO SAVEPOINT s");
    }
    // insert pre-approved by oneself
    let r = app.simple_query(&format!(
        "INSERT INTO requests (org_id, requester, approver) VALUES ('{}', '{MEMBER_A}', '{MEMBER_A}')",
        w.org_a
    ));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");
    begin_as(&mut app, &w.org_a, MEMBER_A);
    exec(
        &mut app,
        &format!("INSERT INTO requests (org_id, requester, what) VALUES ('{}', '{MEMBER_A}', 'refund')", w.org_a),
    );
    exec(&mut app, "COMMIT");
    // someone else approves, naming themselves: fine
    begin_as(&mut app, &w.org_a, ADMIN_A);
    assert_eq!(affected(&mut app, &format!("UPDATE requests SET approver = '{ADMIN_A}'")), 1);
    exec(&mut app, "COMMIT");
    begin_as(&mut app, &w.org_a, MEMBER_A);
    exec(
        &mut app,
        &format!("INSERT INTO requests (org_id, requester, what) VALUES ('{}', '{MEMBER_A}', 'second')", w.org_a),
    );
    exec(&mut app, "COMMIT");
    let attacks = [
        // hand my request to a colleague, then approve it myself
        (MEMBER_A, format!("UPDATE requests SET requester = '{VIEWER_A}' WHERE what = 'second'")),
        // record an approval in someone else's name
        (OWNER_A, format!("UPDATE requests SET approver = '{ADMIN_A}' WHERE what = 'second'")),
        // insert a request of a colleague, pre-approved by me
        (
            MEMBER_A,
            format!(
                "INSERT INTO requests (org_id, requester, approver) VALUES ('{}', '{VIEWER_A}', '{MEMBER_A}')",
                w.org_a
            ),
        ),
    ];
    for (user, sql) in attacks {
        begin_as(&mut app, &w.org_a, user);
        assert_eq!(sqlstate(&app.simple_query(&sql)).as_deref(), Some("42501"), "{sql}");
        exec(&mut app, "ROLLBACK");
    }
    // ...and an API key context (no user) can neither approve nor file in someone's name.
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let key = rows(&mut app, "SELECT api_key FROM tenant_guard.create_api_key('k', 'admin')")[0][0].clone().unwrap();
    exec(&mut app, "COMMIT");
    for sql in [
        format!("UPDATE requests SET approver = '{ADMIN_A}' WHERE what = 'second'"),
        format!(
            "INSERT INTO requests (org_id, requester, what) VALUES ('{}', '{VIEWER_A}', 'filed by a key')",
            w.org_a
        ),
    ] {
        exec(&mut app, "BEGIN");
        app.query_one("SELECT tenant_guard.authenticate($1)::text", &[&key]).unwrap();
        assert_eq!(sqlstate(&app.simple_query(&sql)).as_deref(), Some("42501"), "{sql}");
        exec(&mut app, "ROLLBACK");
    }
    // Once approved, the requester cannot change the request (the amount, say).
    begin_as(&mut app, &w.org_a, MEMBER_A);
    let r = app.simple_query("UPDATE requests SET what = 'a bigger refund' WHERE approver IS NOT NULL");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");
    // A BEFORE trigger of the application that fills in the approver is judged too.
    exec(&mut dba, "CREATE FUNCTION set_approver() RETURNS trigger LANGUAGE plpgsql AS
                      $$ BEGIN NEW.approver := tenant_guard.current_user_id(); RETURN NEW; END $$;
                    CREATE TRIGGER zz_set_approver BEFORE UPDATE ON requests FOR EACH ROW EXECUTE FUNCTION set_approver();");
    begin_as(&mut app, &w.org_a, MEMBER_A);
    let r = app.simple_query("UPDATE requests SET what = 'approve me' WHERE what = 'second'");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "the requester approved through the app's trigger");
    exec(&mut app, "ROLLBACK");
    // bad column names are a clear error
    let r = dba.simple_query("SELECT tenant_guard.forbid_self_approval('requests', 'nope', 'approver')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42703"));
}

#[test]
fn prepared_statement_follows_the_current_org() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    exec(&mut app, "SET plan_cache_mode = force_generic_plan; PREPARE q AS SELECT count(*) FROM docs");
    for _ in 0..3 {
        begin_as(&mut app, &w.org_a, OWNER_A);
        assert_eq!(val(&mut app, "EXECUTE q").unwrap(), "30");
        exec(&mut app, "COMMIT");
        begin_as(&mut app, &w.org_b, OWNER_B);
        assert_eq!(val(&mut app, "EXECUTE q").unwrap(), "20");
        exec(&mut app, "COMMIT");
        assert_eq!(val(&mut app, "EXECUTE q").unwrap(), "0");
    }
    // Also via the extended protocol's cached statements.
    let stmt = app.prepare("SELECT count(*)::int FROM docs").unwrap();
    for (org, user, n) in [(&w.org_a, OWNER_A, 30), (&w.org_b, OWNER_B, 20)] {
        begin_as(&mut app, org, user);
        let got: i32 = app.query_one(&stmt, &[]).unwrap().get(0);
        assert_eq!(got, n);
        exec(&mut app, "COMMIT");
    }
}

#[test]
fn a_leaky_function_sees_only_the_current_org() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    exec(
        &mut app,
        "CREATE TABLE leaked (t text);
         CREATE FUNCTION leak(t text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS
           $$ BEGIN INSERT INTO leaked VALUES (t); RETURN true; END $$;",
    );
    begin_as(&mut app, &w.org_a, OWNER_A);
    exec(&mut app, "SELECT * FROM docs WHERE leak(title)");
    exec(&mut app, "SELECT * FROM docs WHERE leak(title) AND org_id IS NOT NULL ORDER BY id");
    exec(&mut app, "COMMIT");
    assert_eq!(val(&mut app, "SELECT count(*) FROM leaked WHERE t LIKE 'b-%'").unwrap(), "0");
    assert!(val(&mut app, "SELECT count(*) FROM leaked WHERE t LIKE 'a-%'").unwrap() != "0");
}

#[test]
fn parallel_workers_see_the_same_context() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut dba = db.dba();
    exec(&mut dba, &format!("INSERT INTO docs (org_id, title) SELECT CASE WHEN g % 2 = 0 THEN '{}'::uuid ELSE '{}'::uuid END, 'p' FROM generate_series(1, 50000) g; ANALYZE docs;", w.org_a, w.org_b));
    let mut app = db.app();
    exec(
        &mut app,
        "SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
         SET min_parallel_table_scan_size = 0; SET enable_indexscan = off; SET enable_bitmapscan = off;
         SET force_parallel_mode = on;",
    );
    begin_as(&mut app, &w.org_a, OWNER_A);
    let plan = rows(&mut app, "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT count(*) FROM docs")
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("Parallel Seq Scan"), "{plan}");
    assert!(!plan.contains("Workers Launched: 0"), "{plan}");
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), (30 + 25000).to_string());
    exec(&mut app, "COMMIT");
    // A worker of a transaction with no context sees nothing either.
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), "0");
}

#[test]
fn force_rls_binds_the_table_owner() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    exec(&mut app, "CREATE TABLE mine (org_id uuid NOT NULL, v text); SELECT tenant_guard.protect('mine');");
    begin_as(&mut app, &w.org_a, OWNER_A);
    exec(&mut app, &format!("INSERT INTO mine VALUES ('{}', 'a')", w.org_a));
    exec(&mut app, "COMMIT");
    begin_as(&mut app, &w.org_b, OWNER_B);
    exec(&mut app, &format!("INSERT INTO mine VALUES ('{}', 'b')", w.org_b));
    assert_eq!(val(&mut app, "SELECT string_agg(v, ',') FROM mine").unwrap(), "b");
    exec(&mut app, "COMMIT");
    assert_eq!(val(&mut app, "SELECT count(*) FROM mine").unwrap(), "0", "owner without context sees nothing");
    // COPY TO goes through the policies as well.
    begin_as(&mut app, &w.org_a, OWNER_A);
    let mut out = String::new();
    use std::io::Read;
    app.copy_out("COPY docs (title) TO STDOUT").unwrap().read_to_string(&mut out).unwrap();
    assert_eq!(out.lines().count(), 30);
    assert!(!out.contains("b-"));
    exec(&mut app, "COMMIT");
}

#[test]
fn partitioned_tables_are_covered() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut dba = db.dba();
    exec(
        &mut dba,
        &format!(
            "CREATE TABLE events (org_id uuid NOT NULL, n int) PARTITION BY HASH (org_id);
             CREATE TABLE events_0 PARTITION OF events FOR VALUES WITH (MODULUS 2, REMAINDER 0);
             CREATE TABLE events_1 PARTITION OF events FOR VALUES WITH (MODULUS 2, REMAINDER 1);
             INSERT INTO events SELECT '{}', g FROM generate_series(1, 10) g;
             INSERT INTO events SELECT '{}', g FROM generate_series(1, 7) g;
             SELECT tenant_guard.protect('events');
             GRANT SELECT ON events, events_0, events_1 TO app;",
            w.org_a, w.org_b
        ),
    );
    let mut app = db.app();
    begin_as(&mut app, &w.org_a, OWNER_A);
    assert_eq!(val(&mut app, "SELECT count(*) FROM events").unwrap(), "10");
    let direct: i64 = val(&mut app, "SELECT count(*) FROM events_0").unwrap().parse::<i64>().unwrap()
        + val(&mut app, "SELECT count(*) FROM events_1").unwrap().parse::<i64>().unwrap();
    assert_eq!(direct, 10, "partitions queried directly are protected too");
    exec(&mut app, "COMMIT");
    assert_eq!(val(&mut app, "SELECT count(*) FROM events_0").unwrap(), "0");
    assert_eq!(val(&mut app, "SELECT count(*) FROM events_1").unwrap(), "0");
}

#[test]
fn protect_validates_quotes_and_is_idempotent() {
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    exec(&mut dba, "CREATE TABLE plain (id int, org_id text, tenant uuid)");
    let r = dba.simple_query("SELECT tenant_guard.protect('plain', 'nope')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42703"));
    let r = dba.simple_query("SELECT tenant_guard.protect('plain')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42804"), "org_id is text: {}", full_error(&r));
    let r = dba.simple_query("SELECT tenant_guard.protect('plain', 'tenant', read_role => 'god')");
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"));
    // hostile identifiers
    exec(&mut dba, r#"CREATE TABLE "x; DROP TABLE plain; --" ("o""rg'); DROP TABLE plain; --" uuid)"#);
    exec(&mut dba, r#"SELECT tenant_guard.protect('"x; DROP TABLE plain; --"', 'o"rg''); DROP TABLE plain; --')"#);
    exec(&mut dba, r#"SELECT tenant_guard.protect('"x; DROP TABLE plain; --"', 'o"rg''); DROP TABLE plain; --')"#);
    assert_eq!(val(&mut dba, "SELECT count(*) FROM pg_class WHERE relname = 'plain'").unwrap(), "1");
    assert_eq!(
        val(&mut dba, r#"SELECT count(*) FROM pg_policies WHERE tablename = 'x; DROP TABLE plain; --'"#).unwrap(),
        "5",
        "idempotent: one set of policies"
    );
    assert_eq!(
        val(&mut dba, r#"SELECT count(*) FROM pg_index WHERE indrelid = '"x; DROP TABLE plain; --"'::regclass"#)
            .unwrap(),
        "1",
        "one index on the org column, not two"
    );
    // RLS bypasses are taken away from everyone but the owner.
    exec(&mut dba, "GRANT ALL ON plain TO app; GRANT TRUNCATE, TRIGGER, REFERENCES ON plain TO PUBLIC");
    exec(&mut dba, "SELECT tenant_guard.protect('plain', 'tenant')");
    let mut app = db.app();
    assert_eq!(sqlstate(&app.simple_query("TRUNCATE plain")).as_deref(), Some("42501"), "TRUNCATE ignores RLS");
    assert_eq!(val(&mut dba, "SELECT has_table_privilege('app', 'plain', 'TRIGGER') OR has_table_privilege('app', 'plain', 'REFERENCES')").unwrap(), "f");
    assert_eq!(
        val(&mut dba, "SELECT has_table_privilege('app', 'plain', 'SELECT')").unwrap(),
        "t",
        "ordinary grants stay"
    );
    // unprotect
    exec(&mut dba, "SELECT tenant_guard.unprotect('plain')");
    assert_eq!(val(&mut dba, "SELECT relrowsecurity FROM pg_class WHERE relname = 'plain'").unwrap(), "f");
    assert_eq!(val(&mut dba, "SELECT count(*) FROM pg_policies WHERE tablename = 'plain'").unwrap(), "0");
    // only the owner can protect/unprotect
    let r = app.simple_query("SELECT tenant_guard.unprotect('docs_does_not_exist')");
    assert!(r.is_err());
}

#[test]
fn naive_policy_uses_the_org_index() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut dba = db.dba();
    exec(
        &mut dba,
        &format!(
            "CREATE TABLE naive (id bigserial PRIMARY KEY, org_id uuid NOT NULL, v int);
             CREATE INDEX ON naive (org_id);
             INSERT INTO naive (org_id, v) SELECT CASE WHEN g % 100 = 0 THEN '{}'::uuid ELSE gen_random_uuid() END, g FROM generate_series(1, 20000) g;
             ALTER TABLE naive ENABLE ROW LEVEL SECURITY;
             CREATE POLICY p ON naive USING (org_id = tenant_guard.current_org_id());
             GRANT SELECT ON naive TO app; ANALYZE naive;",
            w.org_a
        ),
    );
    let mut app = db.app();
    begin_as(&mut app, &w.org_a, OWNER_A);
    let plan = rows(&mut app, "EXPLAIN (COSTS OFF) SELECT count(*) FROM naive")
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("Index") && plan.contains("naive_org_id_idx"), "{plan}");
    assert_eq!(val(&mut app, "SELECT count(*) FROM naive").unwrap(), "200");
    exec(&mut app, "COMMIT");
}

#[test]
fn roles_table_matches_the_code() {
    let db = cluster().fresh_db();
    let mut app = db.app();
    assert_eq!(
        val(&mut app, "SELECT string_agg(name || ':' || rank, ',' ORDER BY rank) FROM tenant_guard.roles").unwrap(),
        "viewer:10,member:20,admin:30,owner:40"
    );
    let r = app.simple_query("INSERT INTO tenant_guard.roles VALUES ('god', 99)");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
}

#[test]
fn protect_cannot_be_widened_and_costs_one_check_per_scan() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut dba = db.dba();
    // A careless extra permissive policy does not open other orgs' rows.
    exec(&mut dba, "CREATE POLICY oops ON docs FOR SELECT USING (true)");
    let mut app = db.app();
    begin_as(&mut app, &w.org_a, VIEWER_A);
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), "30");
    // The org-and-role check is an index condition, not a per-row filter.
    exec(&mut app, "SET LOCAL enable_seqscan = off");
    let plan = rows(&mut app, "EXPLAIN (COSTS OFF) SELECT count(*) FROM docs")
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("Index Cond: (org_id = tenant_guard.current_org_id_if('viewer'::text))"), "{plan}");
    assert!(!plan.contains("Filter"), "{plan}");
    exec(&mut app, "COMMIT");
}

#[test]
fn pgbouncer_transaction_pooling_never_carries_a_context_over() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let port = cluster().start_pgbouncer();
    let via_bouncer = || {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user("app")
            .dbname(&db.name)
            .connect(postgres::NoTls)
            .expect("connect through pgbouncer")
    };
    let (mut tenant_a, mut tenant_b) = (via_bouncer(), via_bouncer());
    for _ in 0..3 {
        exec(&mut tenant_a, "BEGIN");
        val(&mut tenant_a, &format!("SELECT tenant_guard.authenticate_jwt('{}')", token_for(&w.org_a, OWNER_A)));
        let pid_a = val(&mut tenant_a, "SELECT pg_backend_pid()").unwrap();
        assert_eq!(val(&mut tenant_a, "SELECT count(*) FROM docs").unwrap(), "30");
        exec(&mut tenant_a, "COMMIT");
        // The next transaction, from another client, runs on the same server connection...
        exec(&mut tenant_b, "BEGIN");
        assert_eq!(val(&mut tenant_b, "SELECT pg_backend_pid()").unwrap(), pid_a, "one pooled backend");
        // ...and sees no context and no rows.
        assert_eq!(val(&mut tenant_b, "SELECT tenant_guard.current_org_id()"), None);
        assert_eq!(val(&mut tenant_b, "SELECT count(*) FROM docs").unwrap(), "0");
        exec(&mut tenant_b, "COMMIT");
        // An autocommitted authenticate does not leak into the next statement either.
        val(&mut tenant_a, &format!("SELECT tenant_guard.authenticate_jwt('{}')", token_for(&w.org_a, OWNER_A)));
        assert_eq!(val(&mut tenant_b, "SELECT count(*) FROM docs").unwrap(), "0");
    }
}

#[test]
fn require_protection_guard() {
    let db = cluster().fresh_db();
    let warnings = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = warnings.clone();
    let mut dba = postgres::Config::new()
        .host("127.0.0.1")
        .port(cluster().port)
        .user("dba")
        .dbname(&db.name)
        .notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()))
        .connect(postgres::NoTls)
        .unwrap();
    // Default: warn at commit.
    exec(&mut dba, "CREATE TABLE careless (id int, org_id uuid)");
    assert!(warnings.lock().unwrap().iter().any(|w| w.contains("careless")), "{:?}", warnings.lock().unwrap());
    warnings.lock().unwrap().clear();
    // Created and protected in one transaction: no warning. Tables without org_id: none either.
    exec(
        &mut dba,
        "BEGIN; CREATE TABLE careful (org_id uuid NOT NULL); SELECT tenant_guard.protect('careful'); COMMIT",
    );
    exec(&mut dba, "CREATE TABLE unrelated (id int)");
    assert!(
        !warnings.lock().unwrap().iter().any(|w| w.contains("row-level security")),
        "{:?}",
        warnings.lock().unwrap()
    );
    // error: the commit is refused, and the table is gone.
    exec(&mut dba, "SET tenant_guard.require_protection = error");
    let r = dba.simple_query("CREATE TABLE refused (org_id uuid)");
    assert_eq!(sqlstate(&r).as_deref(), Some("55000"), "{}", full_error(&r));
    assert_eq!(val(&mut dba, "SELECT count(*) FROM pg_class WHERE relname = 'refused'").unwrap(), "0");
    exec(&mut dba, "BEGIN; CREATE TABLE accepted (org_id uuid); SELECT tenant_guard.protect('accepted'); COMMIT");
    // A new partition of a protected table is caught too.
    exec(
        &mut dba,
        "BEGIN; CREATE TABLE parted (org_id uuid NOT NULL, n int) PARTITION BY HASH (org_id);
                    CREATE TABLE parted_0 PARTITION OF parted FOR VALUES WITH (MODULUS 2, REMAINDER 0);
                    SELECT tenant_guard.protect('parted'); COMMIT",
    );
    let r = dba.simple_query("CREATE TABLE parted_1 PARTITION OF parted FOR VALUES WITH (MODULUS 2, REMAINDER 1)");
    assert_eq!(sqlstate(&r).as_deref(), Some("55000"));
    exec(
        &mut dba,
        "BEGIN; CREATE TABLE parted_1 PARTITION OF parted FOR VALUES WITH (MODULUS 2, REMAINDER 1);
                    SELECT tenant_guard.protect('parted'); COMMIT",
    );
    // Adding the org column later is caught as well; temporary tables are not watched.
    exec(&mut dba, "CREATE TABLE later (id int)");
    let r = dba.simple_query("ALTER TABLE later ADD COLUMN org_id uuid");
    assert_eq!(sqlstate(&r).as_deref(), Some("55000"));
    exec(&mut dba, "CREATE TEMP TABLE scratch (org_id uuid)");
    // Only a superuser decides.
    let mut app = db.app();
    assert_eq!(sqlstate(&app.simple_query("SET tenant_guard.require_protection = off")).as_deref(), Some("42501"));
}

#[test]
fn jwt_audience_and_issuer_when_configured() {
    let db = cluster().fresh_db();
    let w = world(&db);
    db.dba()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET tenant_guard.jwt_audience = 'billing-app'; ALTER DATABASE {} SET tenant_guard.jwt_issuer = 'https://auth.example.com'",
            db.name, db.name
        ))
        .unwrap();
    let mut app = db.app(); // a new session picks the settings up
    let n = now();
    let base = json!({"sub": OWNER_A, "org_id": w.org_a, "exp": n + 300});
    let with = |extra: serde_json::Value| {
        let mut c = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        jwt(&c, JWT_SECRET)
    };
    for (what, t) in [
        ("no aud, no iss", with(json!({}))),
        ("token for another service", with(json!({"aud": "crm", "iss": "https://auth.example.com"}))),
        ("right aud, foreign issuer", with(json!({"aud": "billing-app", "iss": "https://evil.example.com"}))),
    ] {
        exec(&mut app, "BEGIN");
        let r = app.query_one("SELECT tenant_guard.authenticate_jwt($1)::text", &[&t]);
        assert_eq!(sqlstate(&r).as_deref(), Some("28000"), "{what}");
        exec(&mut app, "ROLLBACK");
    }
    exec(&mut app, "BEGIN");
    let t = with(json!({"aud": ["crm", "billing-app"], "iss": "https://auth.example.com"}));
    assert_eq!(
        app.query_one("SELECT tenant_guard.authenticate_jwt($1)::text", &[&t]).unwrap().get::<_, String>(0),
        w.org_a
    );
    exec(&mut app, "ROLLBACK");
    // Only a superuser configures it.
    assert_eq!(sqlstate(&app.simple_query("SET tenant_guard.jwt_audience = ''")).as_deref(), Some("42501"));
}

#[test]
fn concurrent_owner_removals_cannot_leave_an_org_ownerless() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut setup = db.app();
    begin_as(&mut setup, &w.org_a, OWNER_A);
    exec(&mut setup, &format!("SELECT tenant_guard.set_member_role('{ADMIN_A}', 'owner')"));
    exec(&mut setup, "COMMIT");
    // Two owners, each removing the other, in REPEATABLE READ with snapshots
    // taken before either change: without row locks both would pass the
    // last-owner check on their stale snapshots.
    let mut c1 = db.app();
    let mut c2 = db.app();
    for (c, user) in [(&mut c1, OWNER_A), (&mut c2, ADMIN_A)] {
        exec(c, "BEGIN ISOLATION LEVEL REPEATABLE READ");
        val(c, &format!("SELECT tenant_guard.authenticate_jwt('{}')", token_for(&w.org_a, user)));
        val(c, "SELECT count(*) FROM tenant_guard.memberships"); // the snapshot is now fixed
    }
    exec(&mut c1, &format!("SELECT tenant_guard.remove_member('{ADMIN_A}')"));
    let second = std::thread::spawn(move || {
        let r = c2.simple_query(&format!("SELECT tenant_guard.remove_member('{OWNER_A}')"));
        let state = sqlstate(&r);
        let _ = c2.batch_execute("ROLLBACK");
        state
    });
    std::thread::sleep(std::time::Duration::from_millis(300)); // c2 is now waiting on c1's locks
    exec(&mut c1, "COMMIT");
    let state = second.join().unwrap();
    assert_eq!(state.as_deref(), Some("40001"), "the second removal must fail to serialize");
    let mut dba = db.dba();
    assert_eq!(
        val(&mut dba, &format!("SELECT string_agg(user_id::text, ',') FROM tenant_guard.memberships WHERE org_id = '{}' AND role = 'owner'", w.org_a)).unwrap(),
        OWNER_A
    );
}
