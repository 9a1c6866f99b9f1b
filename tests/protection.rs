//! Protecting tables: protect()'s policies isolate orgs and cannot be
//! widened, the owner is bound too, partitions are covered, approvals
//! cannot be self-approved, and the require_protection guard.

mod common;
use common::*;
use tenant_guard_harness::{cluster, full_error, sqlstate};

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
        "8",
        "idempotent: one set of policies (four restrictive, four permissive)"
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
    // GRANT and REVOKE (which make the guard look at every protect()ed
    // table) go through: the extension's own tables, whose policies share
    // protect()'s names, are not protect()ed tables.
    exec(
        &mut dba,
        "GRANT SELECT ON unrelated TO app; REVOKE SELECT ON unrelated FROM app; GRANT SELECT ON accepted TO app",
    );
    // Only a superuser decides.
    let mut app = db.app();
    assert_eq!(sqlstate(&app.simple_query("SET tenant_guard.require_protection = off")).as_deref(), Some("42501"));
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
