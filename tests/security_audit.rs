//! security_audit(): for every check, plant the misconfiguration, see the
//! finding with its code, apply its remedy, and see the finding gone. A
//! clean install that follows the README reports nothing above info, and an
//! acknowledged finding stays hidden.
//!
//! Checks of roles use names of their own (roles are cluster-wide); checks
//! of server settings run in clusters of their own.

mod common;
use common::*;
use postgres::Client;
use tenant_guard_harness::{cluster, sqlstate, Cluster, Db, Options, JWT_SECRET, PASSPHRASE};

#[derive(Debug, Clone)]
struct Finding {
    level: String,
    object: String,
    detail: String,
    remedy: Option<String>,
}

fn audit(c: &mut Client) -> Vec<(String, Finding)> {
    c.query("SELECT code, level, object, detail, remedy FROM tenant_guard.security_audit()", &[])
        .unwrap_or_else(|e| panic!("security_audit(): {}", tenant_guard_harness::full_error::<()>(&Err(e))))
        .iter()
        .map(|r| (r.get(0), Finding { level: r.get(1), object: r.get(2), detail: r.get(3), remedy: r.get(4) }))
        .collect()
}

fn find(c: &mut Client, code: &str, object: &str) -> Option<Finding> {
    audit(c).into_iter().find(|(k, f)| k == code && f.object == object).map(|(_, f)| f)
}

fn expect(c: &mut Client, code: &str, object: &str, level: &str) -> Finding {
    let all = audit(c);
    let f = all
        .iter()
        .find(|(k, f)| k == code && f.object == object)
        .map(|(_, f)| f.clone())
        .unwrap_or_else(|| panic!("no {code} for {object:?}; findings: {all:#?}"));
    assert_eq!(f.level, level, "{code} {object}: {f:?}");
    f
}

/// Run a remedy as psql would: one statement per line (ALTER SYSTEM may not
/// share a query string with another statement).
fn apply(c: &mut Client, remedy: &str) {
    for line in remedy.lines() {
        if !line.trim_start().starts_with("--") && !line.trim().is_empty() {
            exec(c, line);
        }
    }
}

/// Plant, see the finding, apply its remedy, see it gone; returns the finding.
fn cycle(c: &mut Client, plant: &str, code: &str, object: &str, level: &str) -> Finding {
    if !plant.is_empty() {
        exec(c, plant);
    }
    let f = expect(c, code, object, level);
    let remedy = f.remedy.clone().unwrap_or_else(|| panic!("{code} has no remedy"));
    apply(c, &remedy);
    assert!(find(c, code, object).is_none(), "{code} {object} still reported after its remedy:\n{remedy}");
    f
}

/// After a remedy that reloads the configuration: wait until new sessions no
/// longer see the finding.
fn gone_after_reload(db: &Db, code: &str, object: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while find(&mut db.dba(), code, object).is_some() {
        assert!(std::time::Instant::now() < deadline, "{code} {object} still reported after reload");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The database a DBA gets by following the README (no harness extras).
fn readme_db(c: &Cluster, name: &str) -> Client {
    let mut pg = c.connect("postgres", "dba");
    exec(&mut pg, &format!("CREATE DATABASE {name}"));
    c.connect(name, "dba")
}

#[test]
fn a_clean_install_that_follows_the_readme_reports_nothing_above_info() {
    let c = Cluster::start(Options::default());
    let mut dba = readme_db(&c, "clean");
    exec(&mut dba, "ALTER SYSTEM SET tenant_guard.require_protection = 'error'");
    exec(&mut dba, "SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut dba = c.connect("clean", "dba");
    // The README's quickstart, then a key, a secret and an endpoint in use.
    let org = val(&mut dba, &format!("SELECT tenant_guard.create_organization('Acme', '{OWNER_A}')")).unwrap();
    exec(
        &mut dba,
        "CREATE TABLE invoices (id bigserial PRIMARY KEY, org_id uuid NOT NULL, amount numeric);
         CREATE INDEX ON invoices (org_id);
         SELECT tenant_guard.protect('invoices');
         GRANT SELECT, INSERT, UPDATE, DELETE ON invoices TO app;
         GRANT USAGE ON SEQUENCE invoices_id_seq TO app;",
    );
    let mut app = c.connect("clean", "app");
    create_key(&mut app, &org, OWNER_A, "'ci', 'member'");
    begin_as(&mut app, &org, OWNER_A);
    exec(&mut app, "SELECT tenant_guard.put_secret('github', 'token', 'ghp_cleaninstall')");
    exec(&mut app, "SELECT * FROM tenant_guard.create_webhook_endpoint('https://hooks.example.com/in')");
    exec(&mut app, "INSERT INTO invoices (org_id, amount) VALUES (tenant_guard.current_org_id(), 10)");
    exec(&mut app, "COMMIT");

    let all = audit(&mut dba);
    let above: Vec<_> = all.iter().filter(|(_, f)| f.level != "info").collect();
    assert!(above.is_empty(), "a clean install reports {above:#?}");
    // The checks did run: the info findings name the trusted roles.
    let codes: Vec<_> = all.iter().map(|(k, f)| format!("{k} {}", f.object)).collect();
    assert!(codes.contains(&"superuser_login role dba".to_string()), "{codes:?}");
    assert!(codes.contains(&"service_member role svc".to_string()), "{codes:?}");
}

#[test]
fn tables_without_rls_or_with_rls_half_done() {
    let db = cluster().fresh_db();
    let _w = world(&db);
    let mut dba = db.dba();
    exec(&mut dba, "SET tenant_guard.require_protection = off");

    let f = cycle(
        &mut dba,
        "CREATE TABLE o1 (id int, org_id uuid); CREATE INDEX ON o1 (org_id); GRANT SELECT ON o1 TO app",
        "rls_disabled_org_table",
        "table public.o1",
        "error",
    );
    assert!(f.detail.contains("readable by app"), "{f:?}");

    cycle(
        &mut dba,
        "CREATE TABLE plain1 (x int); GRANT SELECT ON plain1 TO app",
        "rls_disabled_exposed",
        "table public.plain1",
        "warn",
    );
    // RLS now on, and no policy: every row hidden (info), fixed by a policy.
    let f = expect(&mut dba, "rls_enabled_no_policy", "table public.plain1", "info");
    assert!(f.remedy.unwrap().starts_with("--"));
    exec(&mut dba, "CREATE POLICY readable ON plain1 FOR SELECT USING (x > 0)");
    assert!(find(&mut dba, "rls_enabled_no_policy", "table public.plain1").is_none());
    // Not granted to anyone untrusted: still reported, as info.
    exec(&mut dba, "CREATE TABLE plain2 (x int); REVOKE ALL ON plain2 FROM PUBLIC");
    expect(&mut dba, "rls_disabled_exposed", "table public.plain2", "info");

    cycle(
        &mut dba,
        "CREATE TABLE nf (x int); ALTER TABLE nf ENABLE ROW LEVEL SECURITY; CREATE POLICY p ON nf USING (x > 0)",
        "rls_not_forced",
        "table public.nf",
        "warn",
    );
    cycle(
        &mut dba,
        "CREATE TABLE pd (x int); CREATE POLICY p ON pd USING (x > 0); GRANT SELECT ON pd TO app",
        "policies_rls_disabled",
        "table public.pd",
        "error",
    );
    cycle(
        &mut dba,
        "CREATE TABLE o2 (id int PRIMARY KEY, org_id uuid NOT NULL);
         ALTER TABLE o2 ENABLE ROW LEVEL SECURITY; ALTER TABLE o2 FORCE ROW LEVEL SECURITY",
        "org_column_not_indexed",
        "table public.o2",
        "warn",
    );
    // An index that merely contains org_id later does not count (protect()
    // would have added one leading with it).
    exec(
        &mut dba,
        "CREATE TABLE o3 (id int, org_id uuid); CREATE INDEX ON o3 (id, org_id);
         ALTER TABLE o3 ENABLE ROW LEVEL SECURITY; ALTER TABLE o3 FORCE ROW LEVEL SECURITY",
    );
    expect(&mut dba, "org_column_not_indexed", "table public.o3", "warn");

    cycle(
        &mut dba,
        "CREATE MATERIALIZED VIEW mv AS SELECT * FROM docs; GRANT SELECT ON mv TO app",
        "rls_unsupported_relation",
        "materialized view public.mv",
        "error",
    );
    cycle(
        &mut dba,
        "CREATE EXTENSION file_fdw; CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
         CREATE FOREIGN TABLE ft (org_id uuid, body text) SERVER files OPTIONS (filename '/dev/null');
         GRANT SELECT ON ft TO PUBLIC",
        "rls_unsupported_relation",
        "foreign table public.ft",
        "error",
    );
    cycle(
        &mut dba,
        "CREATE VIEW v AS SELECT * FROM docs; GRANT SELECT ON v TO app",
        "view_bypasses_rls",
        "view public.v",
        "error",
    );
    cycle(
        &mut dba,
        "CREATE TABLE creds (id int, api_key text, note text); GRANT SELECT ON creds TO app",
        "sensitive_columns_exposed",
        "column public.creds.api_key",
        "error",
    );
    // Through a column grant and a group role, too.
    cycle(
        &mut dba,
        "CREATE ROLE audit_readers NOLOGIN; GRANT audit_readers TO app;
         CREATE TABLE creds2 (id int, password_hash text); GRANT SELECT (password_hash) ON creds2 TO audit_readers",
        "sensitive_columns_exposed",
        "column public.creds2.password_hash",
        "error",
    );
    let mut app = db.app();
    assert_eq!(sqlstate(&app.simple_query("SELECT password_hash FROM creds2")).as_deref(), Some("42501"));
}

#[test]
fn policies_that_let_other_orgs_through() {
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    let table = |name: &str| {
        format!(
            "CREATE TABLE {name} (id int, org_id uuid NOT NULL); CREATE INDEX ON {name} (org_id);
             ALTER TABLE {name} ENABLE ROW LEVEL SECURITY; ALTER TABLE {name} FORCE ROW LEVEL SECURITY;
             GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO app;"
        )
    };
    cycle(
        &mut dba,
        &(table("p1") + "CREATE POLICY open ON p1 USING (true)"),
        "policy_always_true",
        "policy open on public.p1",
        "error",
    );
    cycle(
        &mut dba,
        &(table("p2")
            + "CREATE POLICY mine ON p2 USING (org_id = tenant_guard.current_org_id() OR current_user = 'app')"),
        "policy_or_skips_org",
        "policy mine on public.p2",
        "error",
    );
    let f = cycle(
        &mut dba,
        &(table("p3")
            + "CREATE POLICY claims ON p3 USING (org_id = (current_setting('request.jwt.claims', true)::json ->> 'org_id')::uuid)"),
        "policy_without_helpers",
        "policy claims on public.p3",
        "error",
    );
    assert!(f.detail.contains("request.jwt.claims"), "{f:?}");
    // Supabase-style membership subquery: not the context's org either.
    cycle(
        &mut dba,
        &(table("p3b")
            + "CREATE POLICY members ON p3b USING (org_id IN (SELECT m.org_id FROM tenant_guard.memberships m
                                                              WHERE m.user_id = tenant_guard.current_user_id()))"),
        "policy_without_helpers",
        "policy members on public.p3b",
        "error",
    );
    // An INSERT policy whose check is always true.
    cycle(
        &mut dba,
        &(table("p5") + "CREATE POLICY ins ON p5 FOR INSERT WITH CHECK (true); CREATE POLICY sel ON p5 FOR SELECT USING (org_id = tenant_guard.current_org_id())"),
        "policy_always_true",
        "policy ins on public.p5",
        "error",
    );

    // Hand-written, correct: nothing to report, also with a narrowing AND.
    exec(
        &mut dba,
        &(table("good")
            + "CREATE POLICY g ON good USING (org_id = tenant_guard.current_org_id() AND id > 0)
                 WITH CHECK (org_id = tenant_guard.current_org_id_if('member'))"),
    );
    let about_good: Vec<_> = audit(&mut dba).into_iter().filter(|(_, f)| f.object.contains("public.good")).collect();
    assert!(about_good.is_empty(), "{about_good:#?}");

    // Two permissive policies for one command.
    exec(
        &mut dba,
        &(table("p4")
            + "CREATE POLICY a ON p4 FOR SELECT USING (org_id = tenant_guard.current_org_id());
               CREATE POLICY b ON p4 FOR SELECT USING (org_id = tenant_guard.current_org_id_if('admin'))"),
    );
    let f = expect(&mut dba, "multiple_permissive_policies", "table public.p4 for SELECT", "warn");
    assert!(f.detail.contains("a, b"), "{f:?}");
    exec(&mut dba, "DROP POLICY b ON p4");
    // A name with a line break cannot end a remedy's comment and inject a statement.
    exec(
        &mut dba,
        &(table("p6")
            + "CREATE POLICY \"x\nDROP TABLE p4; --\" ON p6 FOR SELECT USING (org_id = tenant_guard.current_org_id());
               CREATE POLICY y ON p6 FOR SELECT USING (org_id = tenant_guard.current_org_id())"),
    );
    let f = expect(&mut dba, "multiple_permissive_policies", "table public.p6 for SELECT", "warn");
    assert!(f.remedy.as_deref().unwrap().lines().all(|l| l.starts_with("--")), "{f:?}");
    assert!(find(&mut dba, "multiple_permissive_policies", "table public.p4 for SELECT").is_none());

    // A table without an org column: an always-true policy is a warning.
    cycle(
        &mut dba,
        "CREATE TABLE lookup (code text); ALTER TABLE lookup ENABLE ROW LEVEL SECURITY; ALTER TABLE lookup FORCE ROW LEVEL SECURITY;
         CREATE POLICY everyone ON lookup USING (true); GRANT SELECT ON lookup TO app",
        "policy_always_true",
        "policy everyone on public.lookup",
        "warn",
    );
}

#[test]
fn functions_and_the_extensions_own_grants() {
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    exec(&mut dba, "CREATE FUNCTION f1() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'");
    cycle(&mut dba, "", "security_definer_search_path", "function public.f1()", "error");
    cycle(&mut dba, "", "security_definer_public_execute", "function public.f1()", "warn");
    // Not executable by an untrusted role: a warning.
    exec(
        &mut dba,
        "CREATE FUNCTION f2() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 2'; REVOKE ALL ON FUNCTION f2() FROM PUBLIC",
    );
    cycle(&mut dba, "", "security_definer_search_path", "function public.f2()", "warn");

    for (grant, object) in [
        (
            "GRANT EXECUTE ON FUNCTION tenant_guard.decrypt(bytea, bytea) TO PUBLIC",
            "function tenant_guard.decrypt(bytea,bytea)",
        ),
        (
            "GRANT EXECUTE ON FUNCTION tenant_guard.get_secret(uuid, text, text) TO app",
            "function tenant_guard.get_secret(uuid,text,text)",
        ),
        (
            "GRANT EXECUTE ON FUNCTION tenant_guard.assume(uuid, uuid) TO PUBLIC",
            "function tenant_guard.assume(uuid,uuid)",
        ),
        ("GRANT SELECT (ciphertext) ON tenant_guard.secrets TO app", "column tenant_guard.secrets (ciphertext)"),
        ("GRANT SELECT ON tenant_guard.api_keys TO PUBLIC", "table tenant_guard.api_keys"),
        ("GRANT CREATE ON SCHEMA tenant_guard TO app", "schema tenant_guard"),
    ] {
        cycle(&mut dba, grant, "extension_grant_widened", object, "error");
    }
    // To a trusted role: reported as a warning.
    exec(&mut dba, "GRANT EXECUTE ON FUNCTION tenant_guard.decrypt(bytea, bytea) TO svc");
    let f = expect(&mut dba, "extension_grant_widened", "function tenant_guard.decrypt(bytea,bytea)", "warn");
    apply(&mut dba, f.remedy.as_deref().unwrap());
    assert!(find(&mut dba, "extension_grant_widened", "function tenant_guard.decrypt(bytea,bytea)").is_none());
    // The remedy of a table-wide grant keeps the column grants the extension made.
    let mut app = db.app();
    assert_eq!(val(&mut app, "SELECT count(id) FROM tenant_guard.api_keys").unwrap(), "0");
    assert_eq!(sqlstate(&app.simple_query("SELECT key_hash FROM tenant_guard.api_keys")).as_deref(), Some("42501"));
}

#[test]
fn roles_that_bypass_or_read_too_much() {
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    let f = expect(&mut dba, "superuser_login", "role dba", "info");
    assert!(f.remedy.is_none());
    cycle(&mut dba, "CREATE ROLE audit_su LOGIN SUPERUSER", "superuser_login", "role audit_su", "warn");
    cycle(&mut dba, "CREATE ROLE audit_by LOGIN BYPASSRLS", "bypassrls_login", "role audit_by", "warn");
    cycle(
        &mut dba,
        "CREATE ROLE audit_byg NOLOGIN BYPASSRLS; CREATE ROLE audit_bym LOGIN IN ROLE audit_byg",
        "bypassrls_login",
        "role audit_bym",
        "warn",
    );
    expect(&mut dba, "service_member", "role svc", "info");
    cycle(
        &mut dba,
        "CREATE ROLE audit_svc LOGIN IN ROLE tenant_guard_service",
        "service_member",
        "role audit_svc",
        "info",
    );
    cycle(
        &mut dba,
        "CREATE ROLE audit_mon LOGIN IN ROLE pg_monitor",
        "read_all_settings_member",
        "role audit_mon",
        "error",
    );
    cycle(
        &mut dba,
        "CREATE ROLE audit_set LOGIN IN ROLE pg_read_all_settings",
        "read_all_settings_member",
        "role audit_set",
        "error",
    );
    cycle(
        &mut dba,
        "CREATE ROLE audit_owner LOGIN;
         CREATE TABLE owned (id int, org_id uuid); CREATE INDEX ON owned (org_id); SELECT tenant_guard.protect('owned');
         ALTER TABLE owned OWNER TO audit_owner",
        "app_role_owns_tenant_table",
        "table public.owned",
        "error",
    );
    // The harness grants CREATE on public to PUBLIC, as PostgreSQL 14 and older did.
    cycle(&mut dba, "", "schema_create_public", "schema public", "error");
    cycle(
        &mut dba,
        "UPDATE pg_catalog.pg_language SET lanpltrusted = true WHERE lanname = 'c'",
        "untrusted_language_trusted",
        "language c",
        "error",
    );
    exec(&mut dba, "DROP ROLE audit_owner, audit_by, audit_bym, audit_byg, audit_svc, audit_mon, audit_set, audit_su");
}

#[test]
fn api_keys_that_should_not_be_alive() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let mut dba = db.dba();
    let (k1, _) = create_key(&mut app, &w.org_a, ADMIN_A, "'forever', 'member'");
    let obj = |k: &str| format!("api_key {k}");
    cycle(
        &mut dba,
        &format!("UPDATE tenant_guard.api_keys SET expires_at = NULL WHERE id = '{k1}'"),
        "api_key_no_expiry",
        &obj(&k1),
        "warn",
    );
    let (k2, _) = create_key(&mut app, &w.org_a, ADMIN_A, "'idle', 'member'");
    cycle(
        &mut dba,
        &format!("UPDATE tenant_guard.api_keys SET created_at = now() - interval '200 days', expires_at = now() + interval '1 day' WHERE id = '{k2}'"),
        "api_key_unused",
        &obj(&k2),
        "warn",
    );
    let (k3, key3) = create_key(&mut app, &w.org_a, ADMIN_A, "'old', 'member'");
    auth(&mut app, &key3).unwrap();
    exec(&mut dba, &format!("UPDATE tenant_guard.api_keys SET created_at = now() - interval '400 days', last_used_at = now() WHERE id = '{k3}'"));
    assert!(find(&mut dba, "api_key_unused", &obj(&k3)).is_none(), "used today");
    let f = expect(&mut dba, "api_key_not_rotated", &obj(&k3), "warn");
    apply(&mut dba, f.remedy.as_deref().unwrap());
    assert!(find(&mut dba, "api_key_not_rotated", &obj(&k3)).is_none());
    assert!(auth(&mut app, &key3).is_err(), "the remedy revoked it");

    let (k4, _) = create_key(&mut app, &w.org_a, ADMIN_A, "'orphan', 'member'");
    cycle(
        &mut dba,
        &format!("UPDATE tenant_guard.api_keys SET created_by = '{STRANGER}' WHERE id = '{k4}'"),
        "api_key_creator_gone",
        &obj(&k4),
        "error",
    );
    // A bad threshold is refused by the setting itself.
    assert_eq!(sqlstate(&dba.simple_query("SET tenant_guard.audit_key_idle_days = 0")).as_deref(), Some("22023"));
}

#[test]
fn hygiene_purges_webhooks_and_the_installed_version() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut dba = db.dba();
    cycle(
        &mut dba,
        "SELECT tenant_guard._request_log_partition((now() - interval '60 days')::date);
         INSERT INTO tenant_guard.request_log (at, outcome) VALUES (now() - interval '60 days', 'ok')",
        "request_log_not_purged",
        "table tenant_guard.request_log",
        "warn",
    );

    let mut app = db.app();
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let ep =
        val(&mut app, "SELECT endpoint_id FROM tenant_guard.create_webhook_endpoint('https://hooks.example.com/x')")
            .unwrap();
    exec(&mut app, "SELECT tenant_guard.enqueue_webhook('invoice.paid', '{\"id\": 1}')");
    exec(&mut app, "COMMIT");
    cycle(
        &mut dba,
        &format!("UPDATE tenant_guard.webhook_outbox SET attempts = 5, created_at = now() - interval '5 days' WHERE endpoint_id = '{ep}'"),
        "webhook_endpoint_failing",
        &format!("webhook_endpoint {ep}"),
        "warn",
    );

    // An installed version older than the server's: planted by faking the
    // recorded version, with an (empty) upgrade script from it.
    let default: String =
        val(&mut dba, "SELECT default_version FROM pg_available_extensions WHERE name = 'tenant_guard'").unwrap();
    let sharedir = String::from_utf8(
        std::process::Command::new(std::env::var("PG_CONFIG").unwrap_or_else(|_| "pg_config".into()))
            .arg("--sharedir")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let script =
        std::path::Path::new(sharedir.trim()).join(format!("extension/tenant_guard--0.0.1-audit--{default}.sql"));
    std::fs::write(&script, "-- test only: security_audit's extension_outdated\n").unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cycle(
            &mut dba,
            "UPDATE pg_catalog.pg_extension SET extversion = '0.0.1-audit' WHERE extname = 'tenant_guard'",
            "extension_outdated",
            "extension tenant_guard",
            "warn",
        );
    }));
    let _ = std::fs::remove_file(&script);
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn an_acknowledged_finding_stays_hidden_and_only_superusers_audit() {
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    exec(&mut dba, "CREATE TABLE ack1 (x int); CREATE TABLE ack2 (x int); GRANT SELECT ON ack1, ack2 TO app");
    expect(&mut dba, "rls_disabled_exposed", "table public.ack1", "warn");
    exec(
        &mut dba,
        "SELECT tenant_guard.acknowledge_finding('rls_disabled_exposed', 'table public.ack1', 'public reference data')",
    );
    assert!(find(&mut dba, "rls_disabled_exposed", "table public.ack1").is_none());
    expect(&mut dba, "rls_disabled_exposed", "table public.ack2", "warn");
    let shown = rows(
        &mut dba,
        "SELECT acknowledged FROM tenant_guard.security_audit(include_acknowledged => true)
          WHERE code = 'rls_disabled_exposed' AND object = 'table public.ack1'",
    );
    assert_eq!(shown, vec![vec![Some("t".to_string())]]);
    // '*' hides every object of the code; deleting the row brings them back.
    exec(&mut dba, "SELECT tenant_guard.acknowledge_finding('rls_disabled_exposed', '*', 'all reviewed')");
    assert!(find(&mut dba, "rls_disabled_exposed", "table public.ack2").is_none());
    // Acknowledgements are kept across a re-acknowledgement and in dumps.
    assert_eq!(val(&mut dba, "SELECT count(*) FROM tenant_guard.security_audit_acknowledgements").unwrap(), "2");
    exec(&mut dba, "DELETE FROM tenant_guard.security_audit_acknowledgements");
    expect(&mut dba, "rls_disabled_exposed", "table public.ack1", "warn");
    // Bad acknowledgements are refused with a proper SQLSTATE.
    let r = dba.simple_query("SELECT tenant_guard.acknowledge_finding('Not A Code', 'x', 'y')");
    assert_eq!(sqlstate(&r).as_deref(), Some("23514"));
    let r = dba.simple_query("SELECT tenant_guard.acknowledge_finding(NULL, 'x', 'y')");
    assert_eq!(sqlstate(&r).as_deref(), Some("23502"));

    for mut c in [db.app(), db.svc()] {
        let r = c.simple_query("SELECT * FROM tenant_guard.security_audit()");
        assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
        let r = c.simple_query("SELECT tenant_guard.acknowledge_finding('rls_disabled_exposed', '*', 'x')");
        assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    }
    // Granted by mistake, it still refuses a non-superuser.
    exec(&mut dba, "GRANT EXECUTE ON FUNCTION tenant_guard.security_audit(boolean) TO app");
    let r = db.app().simple_query("SELECT * FROM tenant_guard.security_audit()");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
}

#[test]
fn server_settings_logging_and_the_preload() {
    let c = Cluster::start(Options::default());
    let db = c.fresh_db();
    let mut dba = db.dba();

    // Logging that writes statements (and their secrets) to the log.
    for (set, code, object, level) in [
        ("ALTER SYSTEM SET log_statement = 'all'", "log_statement_leaks", "setting log_statement", "warn"),
        (
            "ALTER SYSTEM SET log_min_duration_statement = 0",
            "log_min_duration_leaks",
            "setting log_min_duration_statement",
            "warn",
        ),
    ] {
        exec(&mut dba, set);
        exec(&mut dba, "SELECT pg_reload_conf()");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut fresh = db.dba();
        let f = expect(&mut fresh, code, object, level);
        apply(&mut fresh, f.remedy.as_deref().unwrap());
        gone_after_reload(&db, code, object);
    }
    cycle(
        &mut dba,
        "ALTER ROLE app SET log_statement = 'mod'",
        "log_statement_leaks",
        "setting log_statement for role app",
        "warn",
    );
    // auto_explain, loaded for every session, with verbose plans.
    exec(&mut dba, "ALTER SYSTEM SET session_preload_libraries = 'auto_explain'");
    exec(&mut dba, "LOAD 'auto_explain'");
    exec(&mut dba, "ALTER SYSTEM SET auto_explain.log_verbose = on");
    exec(&mut dba, "SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let f = expect(&mut db.dba(), "auto_explain_leaks", "setting auto_explain.log_verbose", "warn");
    apply(&mut db.dba(), f.remedy.as_deref().unwrap());
    gone_after_reload(&db, "auto_explain_leaks", "setting auto_explain.log_verbose");
    exec(&mut db.dba(), "ALTER SYSTEM RESET session_preload_libraries");

    // The guard off.
    let f = expect(&mut db.dba(), "require_protection_off", "setting tenant_guard.require_protection", "info");
    apply(&mut db.dba(), f.remedy.as_deref().unwrap());
    gone_after_reload(&db, "require_protection_off", "setting tenant_guard.require_protection");

    // A secret setting set with ALTER SYSTEM (the same value as the file's).
    exec(&mut db.dba(), &format!("ALTER SYSTEM SET tenant_guard.jwt_secret = '{JWT_SECRET}'"));
    exec(&mut db.dba(), "SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let f = expect(&mut db.dba(), "secret_setting_outside_file", "setting tenant_guard.jwt_secret", "warn");
    assert!(!f.detail.contains(JWT_SECRET) && !f.remedy.as_deref().unwrap().contains(JWT_SECRET));
    apply(&mut db.dba(), f.remedy.as_deref().unwrap());
    gone_after_reload(&db, "secret_setting_outside_file", "setting tenant_guard.jwt_secret");

    // Missing and short secrets (fixed in the file, as the remedy says).
    let good = format!("tenant_guard.passphrase = '{PASSPHRASE}'\ntenant_guard.jwt_secret = '{JWT_SECRET}'\n");
    for (file, code, object, level) in [
        (
            format!("tenant_guard.passphrase = '{PASSPHRASE}'\n"),
            "jwt_secret_missing",
            "setting tenant_guard.jwt_secret",
            "warn",
        ),
        (
            format!("tenant_guard.passphrase = '{PASSPHRASE}'\ntenant_guard.jwt_secret = 'short'\n"),
            "jwt_secret_too_short",
            "setting tenant_guard.jwt_secret",
            "error",
        ),
        (
            format!("tenant_guard.jwt_secret = '{JWT_SECRET}'\n"),
            "passphrase_missing",
            "setting tenant_guard.passphrase",
            "error",
        ),
        (
            format!("tenant_guard.passphrase = 'short'\ntenant_guard.jwt_secret = '{JWT_SECRET}'\n"),
            "passphrase_too_short",
            "setting tenant_guard.passphrase",
            "error",
        ),
    ] {
        c.write_secrets(&file);
        expect(&mut db.dba(), code, object, level);
        c.write_secrets(&good);
        gone_after_reload(&db, code, object);
    }

    // Rotation: secrets under the old passphrase, then an old passphrase nothing needs.
    let org = val(&mut dba, &format!("SELECT tenant_guard.create_organization('Acme', '{OWNER_A}')")).unwrap();
    exec(&mut dba, &format!("SELECT tenant_guard.put_secret_for('{org}', 'github', 'token', 'ghp_rotate_me')"));
    let new_pass = tenant_guard_harness::generate_secret();
    c.write_secrets(&format!(
        "tenant_guard.passphrase = '{new_pass}'\ntenant_guard.old_passphrases = '{PASSPHRASE}'\ntenant_guard.jwt_secret = '{JWT_SECRET}'\n"
    ));
    let f = expect(&mut db.dba(), "secrets_under_old_key", "table tenant_guard.secrets", "warn");
    apply(&mut db.dba(), f.remedy.as_deref().unwrap());
    assert!(find(&mut db.dba(), "secrets_under_old_key", "table tenant_guard.secrets").is_none());
    expect(&mut db.dba(), "old_passphrases_unneeded", "setting tenant_guard.old_passphrases", "warn");
    c.write_secrets(&format!("tenant_guard.passphrase = '{new_pass}'\ntenant_guard.jwt_secret = '{JWT_SECRET}'\n"));
    gone_after_reload(&db, "old_passphrases_unneeded", "setting tenant_guard.old_passphrases");
    // Under a passphrase no longer configured at all: an error.
    c.write_secrets(&good);
    let f = expect(&mut db.dba(), "secrets_under_old_key", "table tenant_guard.secrets", "error");
    assert!(f.detail.contains("cannot be read"), "{f:?}");
    c.write_secrets(&format!("tenant_guard.passphrase = '{new_pass}'\ntenant_guard.jwt_secret = '{JWT_SECRET}'\n"));

    // pg_stat_statements keeping SET statements.
    exec(&mut db.dba(), "ALTER SYSTEM SET shared_preload_libraries = 'tenant_guard', 'pg_stat_statements'");
    c.restart();
    let f = expect(&mut db.dba(), "pg_stat_statements_utility", "setting pg_stat_statements.track_utility", "warn");
    apply(&mut db.dba(), f.remedy.as_deref().unwrap());
    gone_after_reload(&db, "pg_stat_statements_utility", "setting pg_stat_statements.track_utility");

    // The library not preloaded: the audit still runs, and says so.
    exec(&mut db.dba(), "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'");
    c.restart();
    let all = audit(&mut db.dba());
    let f = expect(&mut db.dba(), "library_not_preloaded", "setting shared_preload_libraries", "error");
    assert!(all.iter().any(|(k, _)| k == "schema_create_public"), "the catalog checks still ran: {all:#?}");
    apply(&mut db.dba(), f.remedy.as_deref().unwrap());
    c.restart();
    assert!(find(&mut db.dba(), "library_not_preloaded", "setting shared_preload_libraries").is_none());
    // And nothing of a secret ever appeared in a finding.
    for (_, f) in audit(&mut db.dba()) {
        let text = format!("{} {}", f.detail, f.remedy.unwrap_or_default());
        for s in [PASSPHRASE, JWT_SECRET, new_pass.as_str()] {
            assert!(!text.contains(&s[..16]), "{text}");
        }
    }
}
