//! The request context: set only by functions that verify something, never
//! by SET or set_config, bound to its transaction, safe under transaction
//! pooling and parallel query; the attacker is the plain login role `app`,
//! which can run any SQL.

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
