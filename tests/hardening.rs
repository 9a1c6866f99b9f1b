//! Attacks from the outside review of the first release, one test per class:
//! unbounded error messages, secret settings in the server log, rights
//! granted from stale snapshots, approvals, rate-limit eviction, webhook URL
//! spellings, the protection guard, backtraces, NULLs, encodings and the
//! outbox. Each runs as the attacker would: a plain login role with SQL.

mod common;
use common::*;
use postgres::Client;
use tenant_guard_harness::{cluster, full_error, message, sqlstate, Cluster, Options};

fn postmaster_start(c: &mut Client) -> String {
    val(c, "SELECT pg_postmaster_start_time()::text").unwrap()
}

#[test]
fn huge_arguments_give_small_errors_and_never_crash_the_cluster() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let started = postmaster_start(&mut app);
    // 30 MB, of a character that escaping would make six times longer.
    let huge = "repeat(chr(1), 30000000)";
    let calls = [
        format!("SELECT tenant_guard.has_role({huge})"),
        format!("SELECT tenant_guard.current_org_id_if({huge})"),
        format!("SELECT tenant_guard.require_role({huge})"),
        format!("SELECT tenant_guard.require_scope({huge})"),
        format!("SELECT tenant_guard.has_scope({huge})"),
        format!("SELECT * FROM tenant_guard.create_api_key('k', {huge})"),
        format!("SELECT * FROM tenant_guard.create_api_key({huge})"),
        format!("SELECT tenant_guard.add_member('{STRANGER}', {huge})"),
        format!("SELECT tenant_guard.protect('docs', 'org_id', {huge})"),
        format!("SELECT tenant_guard.put_secret('k', {huge}, 'v')"),
        format!("SELECT tenant_guard.put_secret({huge}, 'n', 'v')"),
        format!("SELECT * FROM tenant_guard.create_webhook_endpoint('https://x.example.com/' || {huge})"),
        format!("SELECT tenant_guard.enqueue_webhook({huge}, '{{}}')"),
    ];
    for with_context in [false, true] {
        for sql in &calls {
            exec(&mut app, "BEGIN");
            if with_context {
                val(&mut app, &format!("SELECT tenant_guard.authenticate_jwt('{}')", token_for(&w.org_a, OWNER_A)));
            }
            let r = app.simple_query(sql);
            let e = full_error(&r);
            assert!(e.len() < 2000, "{sql} (context: {with_context}): an error of {} bytes", e.len());
            if let Some(code) = sqlstate(&r) {
                assert_ne!(code, "XX000", "{sql}: {e}");
            }
            let _ = app.simple_query("ROLLBACK");
        }
    }
    assert_eq!(postmaster_start(&mut db.dba()), started, "the postmaster restarted");
}

#[test]
fn secret_settings_never_reach_the_server_log() {
    // Its own cluster: it rewrites the secrets and logs verbosely.
    let c = Cluster::start(Options {
        extra_conf: vec!["log_min_messages = debug2".into(), "log_statement = all".into()],
        ..Default::default()
    });
    let old = tenant_guard_harness::PASSPHRASE.to_string();
    let new = format!("rotated-passphrase-{}", tenant_guard_harness::generate_secret());
    let jwt2 = format!("rotated-jwt-secret-{}", tenant_guard_harness::generate_secret());
    let alt = format!("alter-system-secret-{}", tenant_guard_harness::generate_secret());
    let typo_a = format!("typoA{}", &tenant_guard_harness::generate_secret()[..24]);
    let typo_b = format!("typoB{}", &tenant_guard_harness::generate_secret()[..24]);
    let role_set = format!("role-set-secret-{}", &tenant_guard_harness::generate_secret()[..24]);
    let session_set = format!("session-set-secret-{}", &tenant_guard_harness::generate_secret()[..24]);
    // The rotation runbook: new passphrase, old one kept for decryption, new JWT secret.
    c.write_secrets(&format!(
        "tenant_guard.passphrase = '{new}'\ntenant_guard.old_passphrases = '{old}'\ntenant_guard.jwt_secret = '{jwt2}'\n"
    ));
    // A typo in the file (an unquoted value with a space): a syntax error.
    c.write_secrets(&format!("tenant_guard.passphrase = {typo_a} {typo_b}\n"));
    // ...fixed, and the old passphrase dropped at the end of the runbook.
    c.write_secrets(&format!("tenant_guard.passphrase = '{new}'\ntenant_guard.jwt_secret = '{jwt2}'\n"));
    let mut dba = c.connect("postgres", "dba");
    exec(&mut dba, &format!("ALTER SYSTEM SET tenant_guard.jwt_secret = '{alt}'"));
    exec(&mut dba, "SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(500));
    exec(&mut dba, "ALTER SYSTEM RESET tenant_guard.jwt_secret");
    exec(&mut dba, "SELECT pg_reload_conf()");
    // Refused by the check hook, and a superuser's SET.
    let r = dba.simple_query(&format!("ALTER ROLE app SET tenant_guard.passphrase = '{role_set}'"));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut dba, &format!("SET tenant_guard.passphrase = '{session_set}'"));
    let r = dba.simple_query(&format!("SELECT 1/0, '{session_set}'"));
    assert!(r.is_err());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let log = c.server_log();
    assert!(log.contains("tenant_guard.passphrase"), "the log shows the reloads happened");
    for (what, v) in [
        ("old", &old),
        ("new", &new),
        ("jwt", &jwt2),
        ("alter system", &alt),
        ("typo a", &typo_a),
        ("typo b", &typo_b),
        ("alter role", &role_set),
        ("set", &session_set),
    ] {
        // Also any 16-byte piece of it.
        for i in (0..v.len().saturating_sub(16)).step_by(8) {
            let piece = &v[i..i + 16];
            if let Some(at) = log.find(piece) {
                panic!(
                    "the {what} secret is in the server log: ...{}",
                    &log[at.saturating_sub(200)..(at + 50).min(log.len())]
                );
            }
        }
    }
}

#[test]
fn rights_are_never_granted_from_an_old_snapshot() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let mut owner = db.app();
    let admin_token = token_for(&w.org_a, ADMIN_A);
    // (1) A REPEATABLE READ transaction begun before the removal.
    exec(&mut app, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM tenant_guard.roles");
    // (2) A snapshot exported before the removal.
    let mut exporter = db.app();
    exec(&mut exporter, "BEGIN ISOLATION LEVEL REPEATABLE READ");
    let snap = val(&mut exporter, "SELECT pg_export_snapshot()").unwrap();
    begin_as(&mut owner, &w.org_a, OWNER_A);
    exec(&mut owner, &format!("SELECT tenant_guard.remove_member('{ADMIN_A}'); COMMIT"));
    let r = app.simple_query(&format!("SELECT tenant_guard.authenticate_jwt('{admin_token}')"));
    assert_eq!(sqlstate(&r).as_deref(), Some("28000"), "REPEATABLE READ brought a removed admin back");
    exec(&mut app, "ROLLBACK");
    let mut importer = db.app();
    exec(&mut importer, &format!("BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snap}'"));
    let r = importer.simple_query(&format!("SELECT tenant_guard.authenticate_jwt('{admin_token}')"));
    assert_eq!(sqlstate(&r).as_deref(), Some("28000"), "an imported snapshot brought a removed admin back");
    exec(&mut importer, "ROLLBACK");
    exec(&mut exporter, "ROLLBACK");

    // (3) Demotion, seen through an old snapshot: the context has the new role.
    let mut dba = db.dba();
    exec(
        &mut dba,
        &format!(
            "INSERT INTO tenant_guard.memberships (org_id, user_id, role) VALUES ('{}', '{ADMIN_A}', 'admin')",
            w.org_a
        ),
    );
    exec(&mut app, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM tenant_guard.roles");
    begin_as(&mut owner, &w.org_a, OWNER_A);
    exec(&mut owner, &format!("SELECT tenant_guard.set_member_role('{ADMIN_A}', 'viewer'); COMMIT"));
    val(&mut app, &format!("SELECT tenant_guard.authenticate_jwt('{admin_token}')"));
    assert_eq!(val(&mut app, "SELECT tenant_guard.current_user_role()").unwrap(), "viewer");
    let r = app.simple_query("SELECT * FROM tenant_guard.create_api_key('minted', 'admin')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");

    // (4) Removed while its own transaction is open: privileged functions
    // read the latest membership, not the context's copy of it.
    exec(&mut dba, &format!("UPDATE tenant_guard.memberships SET role = 'admin' WHERE user_id = '{ADMIN_A}'"));
    begin_as(&mut app, &w.org_a, ADMIN_A);
    begin_as(&mut owner, &w.org_a, OWNER_A);
    exec(&mut owner, &format!("SELECT tenant_guard.remove_member('{ADMIN_A}'); COMMIT"));
    for sql in [
        "SELECT * FROM tenant_guard.create_api_key('minted', 'admin')",
        "SELECT * FROM tenant_guard.create_webhook_endpoint('https://evil.example.com/x')",
        "SELECT tenant_guard.require_role('admin')",
    ] {
        exec(&mut app, "SAVEPOINT s");
        let r = app.simple_query(sql);
        assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{sql}: a removed admin kept the role");
        exec(&mut app, "ROLLBACK TO SAVEPOINT s");
    }
    exec(&mut app, "ROLLBACK");

    // (5) Row-level security follows too: a member demoted or removed while
    // their transaction is open loses the rows from their next statement.
    exec(
        &mut dba,
        &format!(
            "INSERT INTO tenant_guard.memberships (org_id, user_id, role) VALUES ('{}', '{ADMIN_A}', 'admin')",
            w.org_a
        ),
    );
    for isolation in ["READ COMMITTED", "REPEATABLE READ"] {
        exec(&mut dba, &format!("UPDATE tenant_guard.memberships SET role = 'admin' WHERE user_id = '{ADMIN_A}'"));
        exec(&mut app, &format!("BEGIN ISOLATION LEVEL {isolation}"));
        val(&mut app, &format!("SELECT tenant_guard.authenticate_jwt('{admin_token}')"));
        assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), "30");
        exec(&mut dba, &format!("UPDATE tenant_guard.memberships SET role = 'viewer' WHERE user_id = '{ADMIN_A}'"));
        assert_eq!(val(&mut app, "SELECT tenant_guard.current_user_role()").unwrap(), "viewer", "{isolation}");
        assert_eq!(val(&mut app, "SELECT tenant_guard.has_role('admin')").unwrap(), "f");
        assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), "30", "a viewer still reads");
        assert_eq!(
            affected(&mut app, "DELETE FROM docs WHERE title = 'a-1'"),
            0,
            "{isolation}: a demoted admin deleted a row"
        );
        exec(&mut dba, &format!("DELETE FROM tenant_guard.memberships WHERE user_id = '{ADMIN_A}'"));
        assert_eq!(
            val(&mut app, "SELECT count(*) FROM docs").unwrap(),
            "0",
            "{isolation}: a removed member still reads the org's rows"
        );
        assert_eq!(val(&mut app, "SELECT tenant_guard.current_org_id()"), None);
        exec(&mut app, "ROLLBACK");
        exec(
            &mut dba,
            &format!(
                "INSERT INTO tenant_guard.memberships (org_id, user_id, role) VALUES ('{}', '{ADMIN_A}', 'admin')",
                w.org_a
            ),
        );
    }
}

#[test]
fn keys_and_endpoints_stop_when_their_creator_loses_the_role() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (admin_key_id, admin_key) = create_key(&mut app, &w.org_a, ADMIN_A, "'ops', 'admin'");
    let (_, member_key) = create_key(&mut app, &w.org_a, ADMIN_A, "'ci', 'member'");
    let (_, owner_key) = create_key(&mut app, &w.org_a, OWNER_A, "'owner-ci', 'admin'");
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let ep =
        val(&mut app, "SELECT endpoint_id FROM tenant_guard.create_webhook_endpoint('https://hooks.example.com/a')")
            .unwrap();
    exec(&mut app, "COMMIT");
    for k in [&admin_key, &member_key, &owner_key] {
        auth(&mut app, k).unwrap();
    }
    // An API key cannot create an endpoint (it would outlive the key's creator).
    exec(&mut app, "BEGIN");
    auth(&mut app, &admin_key).unwrap();
    let r =
        app.simple_query("SELECT * FROM tenant_guard.create_webhook_endpoint('https://hooks.example.com/from-a-key')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "an API key created a webhook endpoint");
    exec(&mut app, "ROLLBACK");
    // Demoted to member: keys above the new role stop; endpoints (an admin's) stop.
    let mut owner = db.app();
    begin_as(&mut owner, &w.org_a, OWNER_A);
    exec(&mut owner, &format!("SELECT tenant_guard.set_member_role('{ADMIN_A}', 'member'); COMMIT"));
    assert_eq!(
        sqlstate(&auth(&mut app, &admin_key)).as_deref(),
        Some("28000"),
        "an admin key outlived its creator's demotion"
    );
    auth(&mut app, &member_key).unwrap();
    auth(&mut app, &owner_key).unwrap();
    let mut dba = db.dba();
    assert_eq!(
        val(&mut dba, &format!("SELECT revoked_at IS NOT NULL FROM tenant_guard.api_keys WHERE id = '{admin_key_id}'"))
            .unwrap(),
        "t"
    );
    assert_eq!(
        val(&mut dba, &format!("SELECT active FROM tenant_guard.webhook_endpoints WHERE id = '{ep}'")).unwrap(),
        "f"
    );
    begin_as(&mut app, &w.org_a, OWNER_A);
    assert_eq!(val(&mut app, "SELECT tenant_guard.enqueue_webhook('x', '{}')").unwrap(), "0");
    exec(&mut app, "COMMIT");
    // Removed: every key the user made stops, even one whose revocation a
    // concurrent transaction missed (authenticate() checks the creator too).
    exec(&mut dba, &format!("UPDATE tenant_guard.api_keys SET revoked_at = NULL WHERE id = '{admin_key_id}'"));
    begin_as(&mut owner, &w.org_a, OWNER_A);
    exec(&mut owner, &format!("SELECT tenant_guard.remove_member('{ADMIN_A}'); COMMIT"));
    assert_eq!(sqlstate(&auth(&mut app, &member_key)).as_deref(), Some("28000"));
    exec(&mut dba, &format!("UPDATE tenant_guard.api_keys SET revoked_at = NULL WHERE created_by = '{ADMIN_A}'"));
    assert_eq!(
        sqlstate(&auth(&mut app, &admin_key)).as_deref(),
        Some("28000"),
        "a creator who left still vouches for the key"
    );
    auth(&mut app, &owner_key).unwrap();
}

#[test]
fn approvals_cover_only_what_the_approver_saw() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut dba = db.dba();
    // A nullable requester column this time.
    exec(
        &mut dba,
        "CREATE TABLE requests (id bigserial PRIMARY KEY, org_id uuid NOT NULL, requester uuid, approver uuid, amount int);
         SELECT tenant_guard.protect('requests');
         SELECT tenant_guard.forbid_self_approval('requests', 'requester', 'approver');
         GRANT SELECT, INSERT, UPDATE ON requests TO app; GRANT USAGE ON SEQUENCE requests_id_seq TO app;",
    );
    let mut svc = db.svc();
    let key = val(
        &mut svc,
        &format!(
            "SELECT * FROM tenant_guard.import_api_key_hash('{}', 'bot', sha256('legacy-bot-key-0123456789'), 'admin')",
            w.org_a
        ),
    );
    assert!(key.is_some());
    let mut app = db.app();
    // (a) An API key files a request with no requester.
    exec(&mut app, "BEGIN");
    auth(&mut app, "legacy-bot-key-0123456789").unwrap();
    let r = app.simple_query(&format!("INSERT INTO requests (org_id, amount) VALUES ('{}', 10)", w.org_a));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "a request was filed with no requester");
    exec(&mut app, "ROLLBACK");
    // A proper request, approved by the admin.
    begin_as(&mut app, &w.org_a, MEMBER_A);
    exec(
        &mut app,
        &format!("INSERT INTO requests (org_id, requester, amount) VALUES ('{}', '{MEMBER_A}', 10); COMMIT", w.org_a),
    );
    begin_as(&mut app, &w.org_a, ADMIN_A);
    exec(&mut app, &format!("UPDATE requests SET approver = '{ADMIN_A}'; COMMIT"));
    // (b) After approval, an API key (or anyone but the approver) changes the content.
    exec(&mut app, "BEGIN");
    auth(&mut app, "legacy-bot-key-0123456789").unwrap();
    let r = app.simple_query("UPDATE requests SET amount = 1000000");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "the approval stayed on content nobody approved");
    exec(&mut app, "ROLLBACK");
    begin_as(&mut app, &w.org_a, OWNER_A);
    let r = app.simple_query("UPDATE requests SET amount = 1000000");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");
    // Clearing the approval together with the change is allowed: it needs approving again.
    begin_as(&mut app, &w.org_a, OWNER_A);
    exec(&mut app, "UPDATE requests SET amount = 20, approver = NULL; COMMIT");
    let mut dba = db.dba();
    assert_eq!(val(&mut dba, "SELECT amount::text || coalesce(approver::text, '-') FROM requests").unwrap(), "20-");
}

#[test]
fn a_limiting_bucket_is_never_evicted() {
    // Its own cluster: it fills the shared-memory table.
    let c = Cluster::start(Options::default());
    let db = c.fresh_db();
    let mut app = db.app();
    assert_eq!(val(&mut app, "SELECT tenant_guard.rate_limit('login:alice', 1, '1 hour')").unwrap(), "t");
    assert_eq!(val(&mut app, "SELECT tenant_guard.rate_limit('login:alice', 1, '1 hour')").unwrap(), "f");
    // Thousands of short-lived buckets, from another session.
    let mut flood = db.app();
    let admitted: i64 = val(
        &mut flood,
        "SELECT count(*) FILTER (WHERE tenant_guard.rate_limit('flood:' || g, 1, '1 minute')) FROM generate_series(1, 60000) g",
    )
    .unwrap()
    .parse()
    .unwrap();
    assert!(admitted < 30_000, "{admitted} of 60,000 buckets admitted: one owner took the table");
    assert_eq!(
        val(&mut app, "SELECT tenant_guard.rate_limit('login:alice', 1, '1 hour')").unwrap(),
        "f",
        "the lockout was evicted and admits again"
    );
    // Under pressure a new bucket is refused (fail closed), not given someone's slot.
    assert_eq!(val(&mut app, "SELECT tenant_guard.rate_limit('login:bob', 1, '1 hour')").unwrap(), "f");
    // ...but only the flooder's own: an org (another owner) still gets new
    // buckets, and its webhooks are still admitted.
    let w = world(&db);
    begin_as(&mut app, &w.org_b, OWNER_B);
    assert_eq!(
        val(&mut app, "SELECT tenant_guard.rate_limit('login:carol', 1, '1 hour')").unwrap(),
        "t",
        "one flooder denied other tenants"
    );
    val(&mut app, "SELECT endpoint_id FROM tenant_guard.create_webhook_endpoint('https://hooks.example.com/b')");
    assert_eq!(val(&mut app, "SELECT tenant_guard.enqueue_webhook('e', '{}')").unwrap(), "1");
    exec(&mut app, "COMMIT");
    // An org flooding from its own context is bounded the same way.
    begin_as(&mut app, &w.org_a, OWNER_A);
    let admitted: i64 = val(&mut app, "SELECT count(*) FILTER (WHERE tenant_guard.rate_limit('f:' || g, 1, '1 day')) FROM generate_series(1, 60000) g")
        .unwrap()
        .parse()
        .unwrap();
    assert!(admitted < 30_000, "{admitted}");
    exec(&mut app, "COMMIT");
    begin_as(&mut app, &w.org_b, OWNER_B);
    assert_eq!(val(&mut app, "SELECT tenant_guard.rate_limit('login:dave', 1, '1 hour')").unwrap(), "t");
    exec(&mut app, "COMMIT");
}

#[test]
fn webhook_urls_are_judged_by_their_canonical_host() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let long = format!("https://hooks.example.com/{}", "a".repeat(100_000));
    for url in [
        "https://localhost./x",
        "https://127.0.0.1./x",
        "https://\u{ff11}\u{ff12}\u{ff17}.0.0.1/x",
        "https://\u{ff4c}\u{ff4f}\u{ff43}\u{ff41}\u{ff4c}\u{ff48}\u{ff4f}\u{ff53}\u{ff54}/x",
        "https://127\u{3002}0\u{3002}0\u{3002}1/x",
        "https://127%2e0%2e0%2e1/x",
        "https://169.254.169.254%2f/x",
        "https://[::127.0.0.1]/x",
        "https://[::ffff:127.0.0.1]/x",
        "https://[::ffff:7f00:1]/x",
        "https://[64:ff9b::a00:1]/x",
        "https://[2002:7f00:1::]/x",
        "https://[2001::1]/x",
        "https://[fec0::1]/x",
        "https://[fc00::1]/x",
        "https://[2001:db8::1]/x",
        "https://[::]/x",
        "https://192.0.2.1/x",
        "https://198.51.100.7/x",
        "https://203.0.113.9/x",
        "https://198.18.0.1/x",
        "https://0.0.0.0/x",
        "https://0/x",
        "https://255.255.255.255/x",
        "https://224.0.0.1/x",
        "https://intranet/x",
        "https://metadata.google.internal./x",
        "https://router.home.arpa/x",
        "https://user:pw@hooks.example.com/x",
        "https://[::1%25eth0]/x",
        long.as_str(),
    ] {
        exec(&mut app, "SAVEPOINT s");
        let r = app.query("SELECT * FROM tenant_guard.create_webhook_endpoint($1)", &[&url]);
        assert_eq!(sqlstate(&r).as_deref(), Some("22023"), "{} was accepted", &url[..url.len().min(80)]);
        assert!(full_error(&r).len() < 1000);
        exec(&mut app, "ROLLBACK TO SAVEPOINT s");
    }
    // Public hosts pass, stored in their canonical form (what was judged is what is delivered to).
    for (url, stored) in [
        ("https://Hooks.Example.COM/x?a=1", "https://hooks.example.com/x?a=1"),
        ("https://93.184.216.34/hook", "https://93.184.216.34/hook"),
        ("https://[2606:4700:0::1111]/h", "https://[2606:4700::1111]/h"),
        ("https://b\u{fc}cher.example/x", ""),
    ] {
        exec(&mut app, "SAVEPOINT s");
        let r = app.query("SELECT endpoint_id::text FROM tenant_guard.create_webhook_endpoint($1)", &[&url]);
        if stored.is_empty() {
            // `.example` is a reserved name.
            assert_eq!(sqlstate(&r).as_deref(), Some("22023"));
        } else {
            let id: String = r.unwrap_or_else(|e| panic!("{url}: {e}"))[0].get(0);
            let got =
                val(&mut app, &format!("SELECT url FROM tenant_guard.webhook_endpoints WHERE id = '{id}'")).unwrap();
            assert_eq!(got, stored);
        }
        exec(&mut app, "ROLLBACK TO SAVEPOINT s");
    }
    exec(&mut app, "ROLLBACK");
}

#[test]
fn the_protection_guard_sees_every_way_an_org_table_appears() {
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    exec(&mut dba, "SET tenant_guard.require_protection = error");
    exec(
        &mut dba,
        "CREATE DOMAIN org_ref AS uuid; CREATE TYPE doc_row AS (id int);
         CREATE TABLE parent (org_id uuid NOT NULL) PARTITION BY LIST (org_id);
         SELECT tenant_guard.protect('parent');
         CREATE TABLE base (id int); CREATE TABLE heir () INHERITS (base);
         CREATE TABLE kept (org_id uuid NOT NULL); SELECT tenant_guard.protect('kept');",
    );
    let cases = [
        ("schema elements", "CREATE SCHEMA s1 CREATE TABLE t (id int, org_id uuid)"),
        ("a domain over uuid", "CREATE TABLE dom (org_id org_ref)"),
        ("a column renamed", "CREATE TABLE ren (x uuid); ALTER TABLE ren RENAME COLUMN x TO org_id"),
        ("a typed table whose type grows", "CREATE TABLE typed OF doc_row; ALTER TYPE doc_row ADD ATTRIBUTE org_id uuid CASCADE"),
        ("an inherited column", "ALTER TABLE base ADD COLUMN org_id uuid"),
        ("an attached partition", "CREATE TABLE part_a (org_id uuid NOT NULL); ALTER TABLE parent ATTACH PARTITION part_a FOR VALUES IN ('00000000-0000-0000-0000-000000000001')"),
        ("an unlogged table", "CREATE UNLOGGED TABLE ul (org_id uuid)"),
        ("a dropped policy of protect()", "DROP POLICY tenant_guard_select ON kept"),
        ("a policy of protect() made always true", "ALTER POLICY tenant_guard_delete ON kept USING (true)"),
        ("FORCE taken away", "ALTER TABLE kept NO FORCE ROW LEVEL SECURITY"),
        ("a policy of protect() for one role only", "ALTER POLICY tenant_guard_select ON kept TO dba"),
        ("an OR true", "ALTER POLICY tenant_guard_select ON kept USING (org_id = tenant_guard.current_org_id_if('viewer') OR true)"),
        ("a coalesce", "ALTER POLICY tenant_guard_select ON kept USING (org_id = coalesce(tenant_guard.current_org_id_if('viewer'), org_id))"),
        ("another column", "ALTER TABLE kept ADD COLUMN other uuid; ALTER POLICY tenant_guard_select ON kept USING (other = tenant_guard.current_org_id_if('viewer'))"),
        ("a policy re-made for another command", "DROP POLICY tenant_guard_select ON kept; CREATE POLICY tenant_guard_select ON kept AS RESTRICTIVE FOR INSERT WITH CHECK (org_id = tenant_guard.current_org_id_if('viewer'))"),
        ("the org column renamed away", "ALTER TABLE kept RENAME COLUMN org_id TO old_org; ALTER TABLE kept ADD COLUMN org_id uuid"),
        ("a parent without RLS", "CREATE TABLE leak (); ALTER TABLE kept INHERIT leak"),
        ("TRUNCATE granted back", "GRANT TRUNCATE ON kept TO app"),
        ("TRIGGER granted back", "GRANT TRIGGER ON kept TO app"),
        ("a view that reads as its owner", "CREATE VIEW v_kept AS SELECT * FROM kept"),
    ];
    for (what, sql) in cases {
        let r = dba.simple_query(&format!("BEGIN; {sql}; COMMIT"));
        assert_eq!(sqlstate(&r).as_deref(), Some("55000"), "{what}: {}", full_error(&r));
        let _ = dba.simple_query("ROLLBACK");
    }
    // A table whose org column is a domain over uuid can be protected, and
    // then passes the guard.
    exec(
        &mut dba,
        "BEGIN; CREATE TABLE dom_ok (org_id org_ref NOT NULL); SELECT tenant_guard.protect('dom_ok'); COMMIT",
    );
    // A view that runs as its caller is fine.
    exec(&mut dba, "BEGIN; CREATE VIEW v_ok WITH (security_invoker = true) AS SELECT * FROM kept; COMMIT");
    // The child that inherits the new column is named too, not only the parent.
    let r = dba.simple_query("ALTER TABLE base ADD COLUMN org_id uuid");
    assert!(message(&r).contains("heir"), "{}", full_error(&r));
}

#[test]
fn spi_errors_keep_their_sqlstate_and_carry_no_backtrace() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let r = app.simple_query("SELECT * FROM tenant_guard.create_api_key('k', 'member', '{}', '300000 years')");
    let e = full_error(&r);
    assert_eq!(sqlstate(&r).as_deref(), Some("22008"), "{e}");
    for needle in ["backtrace", ".rs:", "/src/", "registry", "0: "] {
        assert!(!e.contains(needle), "{needle:?} in: {e}");
    }
    exec(&mut app, "ROLLBACK");
}

#[test]
fn null_arguments_give_documented_results() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    for sql in [
        "SELECT tenant_guard.webhook_verify(NULL, 'id', 1, 'p', 'v1,x')",
        "SELECT tenant_guard.webhook_verify('whsec_AAAA', NULL, 1, 'p', 'v1,x')",
        "SELECT tenant_guard.webhook_verify('whsec_AAAA', 'id', NULL, 'p', 'v1,x')",
        "SELECT tenant_guard.webhook_verify('whsec_AAAA', 'id', 1, NULL, 'v1,x')",
        "SELECT tenant_guard.verify_stripe_signature(NULL, 'p', 't=1,v1=00')",
        "SELECT tenant_guard.verify_stripe_signature('s', NULL, 't=1,v1=00')",
        "SELECT tenant_guard.verify_github_signature(NULL, 'p', 'sha256=00')",
        "SELECT tenant_guard.verify_github_signature('s', NULL, 'sha256=00')",
        "SELECT tenant_guard.verify_slack_signature(NULL, 1, 'p', 'v0=00')",
        "SELECT tenant_guard.verify_slack_signature('s', NULL, 'p', 'v0=00')",
        "SELECT tenant_guard.verify_slack_signature('s', 1, NULL, 'v0=00')",
    ] {
        assert_eq!(val(&mut app, sql).as_deref(), Some("f"), "{sql}");
    }
    begin_as(&mut app, &w.org_a, ADMIN_A);
    for sql in [
        "SELECT * FROM tenant_guard.create_api_key(NULL)",
        "SELECT * FROM tenant_guard.create_api_key('k', NULL)",
        "SELECT * FROM tenant_guard.create_api_key('k', 'member', '{}', '1 day', NULL)",
    ] {
        exec(&mut app, "SAVEPOINT s");
        let r = app.simple_query(sql);
        assert_eq!(sqlstate(&r).as_deref(), Some("22004"), "{sql}: {}", full_error(&r));
        exec(&mut app, "ROLLBACK TO SAVEPOINT s");
    }
    exec(&mut app, "ROLLBACK");
}

#[test]
fn a_commit_time_warning_cannot_fail_the_commit() {
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    // U&"\8868" is a table name LATIN1 cannot spell.
    let r = dba.simple_query("SET client_encoding = 'LATIN1'; CREATE TABLE U&\"\\8868\" (org_id uuid)");
    assert!(r.is_ok(), "the commit failed: {}", full_error(&r));
    exec(&mut dba, "SET client_encoding = 'UTF8'");
    assert_eq!(val(&mut dba, "SELECT count(*) FROM pg_class WHERE relname = U&'\\8868'").unwrap(), "1");
    // In error mode the commit is refused with the guard's own SQLSTATE.
    exec(&mut dba, "SET tenant_guard.require_protection = error");
    let r = dba.simple_query("SET client_encoding = 'LATIN1'; CREATE TABLE U&\"\\8869\" (org_id uuid)");
    assert_eq!(sqlstate(&r).as_deref(), Some("55000"), "{}", full_error(&r));
}

#[test]
fn outbox_claims_are_fair_across_orgs_and_enqueue_is_bounded() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    for (org, user) in [(&w.org_a, ADMIN_A), (&w.org_b, OWNER_B)] {
        begin_as(&mut app, org, user);
        val(&mut app, "SELECT endpoint_id FROM tenant_guard.create_webhook_endpoint('https://hooks.example.com/x')");
        exec(&mut app, "COMMIT");
    }
    // Org A floods first; org B enqueues one delivery afterwards.
    begin_as(&mut app, &w.org_a, ADMIN_A);
    exec(
        &mut app,
        "SELECT tenant_guard.enqueue_webhook('e', jsonb_build_object('n', g)) FROM generate_series(1, 300) g; COMMIT",
    );
    begin_as(&mut app, &w.org_b, OWNER_B);
    exec(&mut app, "SELECT tenant_guard.enqueue_webhook('e', '{\"b\": 1}'); COMMIT");
    let mut svc = db.svc();
    let orgs = rows(&mut svc, "SELECT org_id FROM tenant_guard.claim_webhook_deliveries(10)");
    assert_eq!(orgs.len(), 10);
    assert!(orgs.iter().any(|r| r[0].as_deref() == Some(w.org_b.as_str())), "org B waits behind org A's flood");
    // A payload over the documented limit is refused.
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let r = app.simple_query("SELECT tenant_guard.enqueue_webhook('e', jsonb_build_object('x', repeat('a', 300000)))");
    assert_eq!(sqlstate(&r).as_deref(), Some("54000"), "{}", message(&r));
    exec(&mut app, "ROLLBACK");
    // And an org cannot enqueue without bound.
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let r = app.simple_query(
        "DO $$ BEGIN FOR i IN 1..12000 LOOP PERFORM tenant_guard.enqueue_webhook('e', '{}'); END LOOP; END $$",
    );
    assert_eq!(sqlstate(&r).as_deref(), Some("53400"), "{}", message(&r));
    exec(&mut app, "ROLLBACK");
}

#[test]
fn literal_secrets_stay_out_of_statement_lines() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let s1 = format!("ABORTED-TX-{}", &tenant_guard_harness::generate_secret()[..20]);
    let s2 = format!("CAST-ERROR-{}", &tenant_guard_harness::generate_secret()[..20]);
    let s3 = format!("WP-PASS-{}", &tenant_guard_harness::generate_secret()[..20]);
    // The error is not raised inside the function (which hides its own
    // statement), but by the statement around it.
    begin_as(&mut app, &w.org_a, OWNER_A);
    assert!(app.simple_query("SELECT 1/0").is_err());
    let r = app.simple_query(&format!("SELECT tenant_guard.put_secret('stripe', 'live', '{s1}')"));
    assert_eq!(sqlstate(&r).as_deref(), Some("25P02"));
    exec(&mut app, "ROLLBACK");
    begin_as(&mut app, &w.org_a, OWNER_A);
    assert!(app.simple_query(&format!("SELECT tenant_guard.put_secret('k', 'n', '{s2}')::int")).is_err());
    exec(&mut app, "ROLLBACK");
    begin_as(&mut app, &w.org_a, OWNER_A);
    assert!(app
        .simple_query(&format!(
            "SELECT tenant_guard.put_wordpress_credentials('https://wp.example.com', 'admin', '{s3}')::int"
        ))
        .is_err());
    exec(&mut app, "ROLLBACK");
    // The second review's spellings: a secret quoted back by PostgreSQL's
    // own error, a JSON typo, a U&-escaped function name, dollar quotes
    // under log_statement, secret settings spelled other ways.
    let more: Vec<String> =
        (0..7).map(|i| format!("REVIEW2-{i}-{}", &tenant_guard_harness::generate_secret()[..16])).collect();
    exec(&mut db.dba(), &format!("ALTER ROLE app IN DATABASE {} SET log_statement = 'all'", db.name));
    let mut app = db.app();
    for sql in [
        format!("SELECT tenant_guard.put_secret('k', 'n', '{}'::int::text)", more[0]),
        format!("SELECT tenant_guard.put_secret('k', 'n', '{{\"a\": {}'::jsonb::text)", more[1]),
        format!("SELECT U&\"tenant_guard\".U&\"put\\005fsecret\"('k', 'n', '{}')::text::int", more[2]),
        format!("SELECT tenant_guard.put_secret('k', 'n', $x${}$x$)::text::int", more[3]),
    ] {
        begin_as(&mut app, &w.org_a, OWNER_A);
        let _ = app.simple_query(&sql);
        let _ = app.simple_query("ROLLBACK");
    }
    let mut dba = db.dba();
    exec(&mut dba, "SET log_statement = 'all'");
    for sql in [
        format!("BEGIN; SELECT set_config('tenant_guard.old_passphrases', '{}', true); ROLLBACK", more[4]),
        format!("BEGIN; SET LOCAL \"tenant_guard\".\"old_passphrases\" = $q${}$q$; ROLLBACK", more[5]),
        format!("BEGIN; SET LOCAL tenant_guard.old_passphrases /* c */ = '{}'; ROLLBACK", more[6]),
    ] {
        let _ = dba.simple_query(&sql);
    }
    exec(&mut db.dba(), &format!("ALTER ROLE app IN DATABASE {} RESET log_statement", db.name));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = cluster().server_log();
    for s in [&s1, &s2, &s3].into_iter().chain(more.iter()) {
        assert!(!log.contains(s.as_str()), "{s} is in the server log");
    }
}

#[test]
fn a_removal_reaches_a_statement_that_is_already_running() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let admin_token = token_for(&w.org_a, ADMIN_A);
    let mut app = db.app();
    exec(&mut app, "BEGIN");
    val(&mut app, &format!("SELECT tenant_guard.authenticate_jwt('{admin_token}')"));
    // A long DO block checks the role after the removal has committed: no
    // new query starts there (an IF is a plain expression), the helper itself
    // must notice.
    let runner = std::thread::spawn(move || {
        let r = app.simple_query(
            "DO $$ BEGIN PERFORM pg_sleep(1.5);
               IF tenant_guard.has_role('admin') OR tenant_guard.current_org_id() IS NOT NULL THEN
                   RAISE EXCEPTION 'stale rights';
               END IF; END $$",
        );
        full_error(&r)
    });
    std::thread::sleep(std::time::Duration::from_millis(400));
    exec(&mut db.dba(), &format!("DELETE FROM tenant_guard.memberships WHERE user_id = '{ADMIN_A}'"));
    let e = runner.join().unwrap();
    assert!(e.is_empty(), "a removed admin kept the role inside a running statement: {e}");
}
