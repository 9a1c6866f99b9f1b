//! The audit trail: every privileged action leaves an entry (reads at
//! once, so a rolled-back read stays recorded; writes when they commit or
//! roll back; refusals with their SQLSTATE); no entry holds a secret; the
//! chain catches what a superuser changes behind the extension's back; org
//! admins read their own org's entries only; the trail keeps up under load.

mod common;
use common::*;
use postgres::Client;
use tenant_guard_harness::{cluster, sqlstate, Cluster, Db, Options, JWT_SECRET, PASSPHRASE};

/// Wait until the trail holds at least `n` entries matching `filter`.
fn wait_entries(db: &Db, filter: &str, n: usize) {
    let sql = format!("SELECT count(*) FROM tenant_guard.audit_log WHERE {filter}");
    poll(&mut db.dba(), &sql, 20, &format!("the trail never got {n} entries where {filter}"), |v| {
        v.parse::<usize>().unwrap_or(0) >= n
    });
}

/// (action, outcome, sqlstate) of every entry, in order.
fn actions(c: &mut Client) -> Vec<(String, String, String)> {
    rows(c, "SELECT action, outcome, coalesce(sqlstate, '') FROM tenant_guard.audit_log ORDER BY seq")
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap(), r[2].clone().unwrap()))
        .collect()
}

fn verify(c: &mut Client) -> (bool, Option<String>, Option<String>) {
    let r = rows(c, "SELECT verified, first_bad_seq, problem FROM tenant_guard.verify_audit_log()");
    (r[0][0].as_deref() == Some("t"), r[0][1].clone(), r[0][2].clone())
}

/// Every event the trail promises, each with its entry; then the whole
/// table and a pg_dump of the database are searched for every plaintext
/// the test used (secrets, a WordPress password, API keys, webhook
/// secrets, JWTs, the passphrase): none may appear.
#[test]
fn every_event_has_its_entry_and_no_entry_holds_a_secret() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let mut svc = db.svc();
    let mut plaintexts: Vec<String> = vec![PASSPHRASE.into(), JWT_SECRET.into()];

    // Secrets: written by an admin, read (and written) by the service role.
    let secret = "sk_live_trail_0a1b2c3d4e5f60718293";
    let wp = "abcd EFGH ijkl MNOP qrst UVWX";
    plaintexts.extend([secret.to_string(), wp.to_string()]);
    begin_as(&mut app, &w.org_a, ADMIN_A);
    app.execute("SELECT tenant_guard.put_secret('stripe', 'live', $1)", &[&secret]).unwrap();
    app.execute("SELECT tenant_guard.put_secret('smtp', 'password', $1)", &[&"smtp-pass-77aa88bb99cc"]).unwrap();
    plaintexts.push("smtp-pass-77aa88bb99cc".into());
    app.execute("SELECT tenant_guard.put_wordpress_credentials('https://blog.example.com', 'editor', $1)", &[&wp])
        .unwrap();
    exec(&mut app, "SELECT tenant_guard.delete_secret('smtp', 'password'); COMMIT");
    let org_a = &w.org_a;
    let got: String =
        svc.query_one("SELECT tenant_guard.get_secret($1::text::uuid, 'stripe', 'live')", &[org_a]).unwrap().get(0);
    assert_eq!(got, secret);
    exec(
        &mut svc,
        &format!("SELECT * FROM tenant_guard.get_wordpress_credentials('{org_a}', 'https://blog.example.com')"),
    );
    let auth_header =
        val(&mut svc, &format!("SELECT tenant_guard.wordpress_authorization('{org_a}', 'https://blog.example.com')"))
            .unwrap();
    plaintexts.push(auth_header);
    let env: Vec<u8> =
        svc.query_one("SELECT tenant_guard.encrypt('enc-payload-5566'::bytea, 'aad'::bytea)", &[]).unwrap().get(0);
    plaintexts.push("enc-payload-5566".into());
    svc.execute("SELECT tenant_guard.decrypt($1, 'aad'::bytea)", &[&env]).unwrap();
    svc.execute(
        "SELECT tenant_guard.put_secret_for($1::text::uuid, 'github', 'token', 'ghp_trail_99887766554433221100')",
        &[org_a],
    )
    .unwrap();
    plaintexts.push("ghp_trail_99887766554433221100".into());
    exec(&mut svc, "SELECT tenant_guard.rotate_secrets(100)");

    // assume, allowed and refused.
    exec(&mut svc, &format!("BEGIN; SELECT tenant_guard.assume('{org_a}', '{MEMBER_A}'); COMMIT"));
    let r = svc.simple_query(&format!("SELECT tenant_guard.assume('{org_a}', '{STRANGER}')"));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));

    // Members: added, re-roled, removed; and a refusal (a viewer may not).
    begin_as(&mut app, &w.org_a, ADMIN_A);
    exec(&mut app, &format!("SELECT tenant_guard.add_member('{STRANGER}', 'viewer')"));
    exec(&mut app, &format!("SELECT tenant_guard.set_member_role('{STRANGER}', 'member')"));
    exec(&mut app, &format!("SELECT tenant_guard.remove_member('{STRANGER}'); COMMIT"));
    begin_as(&mut app, &w.org_a, VIEWER_A);
    let r = app.simple_query(&format!("SELECT tenant_guard.add_member('{STRANGER}', 'viewer')"));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");

    // API keys: created, rotated, revoked, imported.
    let (k1, key1) = create_key(&mut app, &w.org_a, ADMIN_A, "'trail-key'");
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let r = rows(&mut app, &format!("SELECT key_id, api_key FROM tenant_guard.rotate_api_key('{k1}')"));
    let key2 = r[0][1].clone().unwrap();
    exec(&mut app, &format!("SELECT tenant_guard.revoke_api_key('{}'); COMMIT", r[0][0].clone().unwrap()));
    plaintexts.extend([key1.clone(), key2]);
    let legacy = "legacy-key-trail-0011223344556677";
    plaintexts.push(legacy.into());
    exec(&mut svc, &format!("SELECT tenant_guard.import_api_key_hash('{org_a}', 'legacy', sha256('{legacy}'::bytea))"));
    // Using a key is the request log's, not the trail's.
    auth(&mut app, &key1).unwrap();

    // Webhook endpoints: created, rotated, disabled.
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let r = rows(
        &mut app,
        "SELECT endpoint_id, secret FROM tenant_guard.create_webhook_endpoint('https://hooks.example.com/in')",
    );
    let (ep, whsec) = (r[0][0].clone().unwrap(), r[0][1].clone().unwrap());
    let whsec2 = val(&mut app, &format!("SELECT tenant_guard.rotate_webhook_secret('{ep}')")).unwrap();
    exec(&mut app, &format!("SELECT tenant_guard.disable_webhook_endpoint('{ep}'); COMMIT"));
    plaintexts.extend([whsec, whsec2]);

    // Tables: protect and unprotect; an organization created.
    let mut dba = db.dba();
    exec(&mut dba, "CREATE TABLE notes (id int, org_id uuid); SELECT tenant_guard.protect('notes'); SELECT tenant_guard.unprotect('notes')");
    let r = app.simple_query("SELECT tenant_guard.protect('docs')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "app does not own docs");
    exec(&mut svc, &format!("SELECT tenant_guard.create_organization('Charlie', '{STRANGER}')"));
    let jwt = token_for(&w.org_a, ADMIN_A);
    plaintexts.push(jwt);

    let expected: &[(&str, &str, &str)] = &[
        ("put_secret", "allowed", ""),
        ("put_wordpress_credentials", "allowed", ""),
        ("delete_secret", "allowed", ""),
        ("get_secret", "allowed", ""),
        ("get_wordpress_credentials", "allowed", ""),
        ("wordpress_authorization", "allowed", ""),
        ("decrypt", "allowed", ""),
        ("rotate_secrets", "allowed", ""),
        ("assume", "allowed", ""),
        ("assume", "refused", "42501"),
        ("add_member", "allowed", ""),
        ("set_member_role", "allowed", ""),
        ("remove_member", "allowed", ""),
        ("add_member", "refused", "42501"),
        ("create_api_key", "allowed", ""),
        ("rotate_api_key", "allowed", ""),
        ("revoke_api_key", "allowed", ""),
        ("import_api_key", "allowed", ""),
        ("create_webhook_endpoint", "allowed", ""),
        ("rotate_webhook_secret", "allowed", ""),
        ("disable_webhook_endpoint", "allowed", ""),
        ("put_webhook_secret", "allowed", ""),
        ("protect", "allowed", ""),
        ("unprotect", "allowed", ""),
        ("protect", "refused", "42501"),
        ("create_organization", "allowed", ""),
    ];
    wait_entries(&db, "action = 'create_organization' AND object_name = 'Charlie'", 1);
    let got = actions(&mut dba);
    for (a, o, s) in expected {
        assert!(got.iter().any(|(ga, go, gs)| ga == a && go == o && gs == s), "no entry ({a}, {o}, {s}) in {got:#?}");
    }
    // Who and what, for one read and one write.
    let r = rows(
        &mut dba,
        &format!(
            "SELECT db_role, session_role, org_id::text, ctx_org_id IS NULL, object_type, object_kind, object_name
               FROM tenant_guard.audit_log WHERE action = 'get_secret' AND org_id = '{org_a}'"
        ),
    );
    assert_eq!(
        r[0],
        ["svc", "svc", org_a.as_str(), "t", "secret", "stripe", "live"].map(|s| Some(s.to_string())).to_vec()
    );
    let r = rows(
        &mut dba,
        &format!(
            "SELECT db_role, ctx_org_id::text, ctx_user_id::text, object_id::text, object_kind
               FROM tenant_guard.audit_log WHERE action = 'add_member' AND outcome = 'allowed' AND object_id = '{STRANGER}'
              ORDER BY seq"
        ),
    );
    assert_eq!(r[0], ["app", org_a.as_str(), ADMIN_A, STRANGER, "viewer"].map(|s| Some(s.to_string())).to_vec());
    // Rotation is one entry for the run, not one per re-encrypted row.
    assert_eq!(val(&mut dba, "SELECT count(*) FROM tenant_guard.audit_log WHERE action = 'put_secret'").unwrap(), "3");

    // No plaintext anywhere: not in the table, not in a dump.
    let table = val(&mut dba, "SELECT string_agg(l::text, E'\\n') FROM tenant_guard.audit_log l").unwrap();
    let port = cluster().port.to_string();
    let dump = cluster().run_tool("pg_dump", &["-h", "127.0.0.1", "-p", &port, "-U", "dba", "-d", &db.name]);
    assert!(dump.contains("COPY tenant_guard.audit_log"), "pg_dump keeps the trail");
    for p in &plaintexts {
        for piece in p.as_bytes().chunks(16).filter(|c| c.len() >= 12) {
            let piece = String::from_utf8_lossy(piece);
            assert!(!table.contains(&*piece), "a piece of a plaintext is in the audit log: {piece}");
            let in_dump = dump.lines().filter(|l| !l.starts_with("--")).any(|l| l.contains(&*piece));
            assert!(!in_dump, "a piece of a plaintext is in the dump: {piece}");
        }
    }
    assert!(verify(&mut dba).0, "the trail verifies");
}

/// A read stays recorded when its transaction rolls back; a write that
/// rolls back (whole, or to a savepoint) is recorded as rolled_back.
#[test]
fn a_rolled_back_read_stays_audited_and_writes_say_what_happened() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut svc = db.svc();
    exec(
        &mut svc,
        &format!("SELECT tenant_guard.put_secret_for('{}', 'stripe', 'rb', 'sk_rolled_back_123456')", w.org_a),
    );
    exec(&mut svc, &format!("BEGIN; SELECT tenant_guard.get_secret('{}', 'stripe', 'rb'); ROLLBACK", w.org_a));
    // Even when the transaction is killed by an error right after the read.
    exec(&mut svc, "BEGIN");
    exec(&mut svc, &format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'rb')", w.org_a));
    assert!(svc.simple_query("SELECT 1/0").is_err());
    exec(&mut svc, "ROLLBACK");
    wait_entries(&db, "action = 'get_secret' AND object_name = 'rb' AND outcome = 'allowed'", 2);

    let mut app = db.app();
    begin_as(&mut app, &w.org_a, ADMIN_A);
    exec(&mut app, "SELECT tenant_guard.put_secret('stripe', 'never', 'sk_never_kept_0000'); ROLLBACK");
    begin_as(&mut app, &w.org_a, ADMIN_A);
    exec(&mut app, "SAVEPOINT s; SELECT tenant_guard.put_secret('stripe', 'undone', 'sk_undone_0000'); ROLLBACK TO s");
    exec(&mut app, "SELECT tenant_guard.put_secret('stripe', 'kept', 'sk_kept_0000'); COMMIT");
    wait_entries(&db, "object_name = 'kept'", 1);
    let mut dba = db.dba();
    let outcome = |dba: &mut Client, name: &str| {
        val(dba, &format!("SELECT string_agg(outcome, ',') FROM tenant_guard.audit_log WHERE action = 'put_secret' AND object_name = '{name}'"))
    };
    assert_eq!(outcome(&mut dba, "never").as_deref(), Some("rolled_back"));
    assert_eq!(outcome(&mut dba, "undone").as_deref(), Some("rolled_back"));
    assert_eq!(outcome(&mut dba, "kept").as_deref(), Some("allowed"));
}

/// What a superuser changes in the trail behind the extension's back shows
/// in verify_audit_log(): an UPDATE, a DELETE (in the middle or at the
/// end), an INSERT; a purge keeps the chain verifiable; a position seen
/// before catches a log replaced or cut after a restart.
#[test]
fn verify_catches_what_a_superuser_changes_behind_the_extensions_back() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut svc = db.svc();
    for i in 0..6 {
        exec(&mut svc, &format!("SELECT tenant_guard.get_secret('{}', 'k', 'n{i}')", w.org_a));
    }
    wait_entries(&db, "action = 'get_secret'", 6);
    let mut dba = db.dba();
    assert_eq!(verify(&mut dba), (true, None, None));
    let seq = |dba: &mut Client, name: &str| {
        val(dba, &format!("SELECT seq FROM tenant_guard.audit_log WHERE object_name = '{name}'")).unwrap()
    };
    let s2 = seq(&mut dba, "n2");
    let s5 = seq(&mut dba, "n5");

    let attacks: Vec<(String, &str, String)> = vec![
        (format!("UPDATE tenant_guard.audit_log SET object_name = 'n9' WHERE seq = {s2}"), "altered", s2.clone()),
        (format!("UPDATE tenant_guard.audit_log SET outcome = 'refused', sqlstate = '42501' WHERE seq = {s2}"), "altered", s2.clone()),
        (format!("UPDATE tenant_guard.audit_log SET at = at - interval '1 day' WHERE seq = {s2}"), "altered", s2.clone()),
        (format!("DELETE FROM tenant_guard.audit_log WHERE seq = {s2}"), "removed", s2.clone()),
        (format!("DELETE FROM tenant_guard.audit_log WHERE seq = {s5}"), "removed", s5.clone()),
        (
            format!(
                "INSERT INTO tenant_guard.audit_log (seq, at, db_role, session_role, action, object_type, outcome, chain, key_id, mac)
                 SELECT seq, at, db_role, session_role, action, object_type, outcome, chain, key_id, mac
                   FROM tenant_guard.audit_log WHERE seq = {s2}"
            ),
            "inserted",
            s2.clone(),
        ),
        (
            "INSERT INTO tenant_guard.audit_log (seq, at, db_role, session_role, action, object_type, outcome, chain, key_id, mac)
             SELECT max(seq) + 1, now(), 'svc', 'svc', 'get_secret', 'secret', 'allowed', sha256('x'), max(key_id), sha256('y')
               FROM tenant_guard.audit_log".to_string(),
            "inserted",
            (s5.parse::<i64>().unwrap() + 1).to_string(),
        ),
    ];
    for (attack, kind, at) in attacks {
        exec(&mut dba, "BEGIN");
        exec(&mut dba, &attack);
        let (ok, bad, problem) = verify(&mut dba);
        exec(&mut dba, "ROLLBACK");
        assert!(!ok, "not caught: {attack}");
        assert_eq!(bad.as_deref(), Some(at.as_str()), "{attack}: {problem:?}");
        assert!(problem.as_deref().unwrap_or("").starts_with(kind), "{attack}: {problem:?}");
    }
    assert_eq!(verify(&mut dba), (true, None, None));

    // Keep the head outside; it later catches a log cut after a restart.
    let r = rows(&mut dba, "SELECT head_seq, encode(head_chain, 'hex') FROM tenant_guard.verify_audit_log()");
    let (head, chain) = (r[0][0].clone().unwrap(), r[0][1].clone().unwrap());
    let known =
        format!("SELECT verified, problem FROM tenant_guard.verify_audit_log({head}, decode('{chain}', 'hex'))");
    assert_eq!(val(&mut dba, &known).as_deref(), Some("t"));
    exec(&mut dba, "BEGIN");
    exec(&mut dba, &format!("DELETE FROM tenant_guard.audit_log WHERE seq = {head}"));
    let r = rows(&mut dba, &known);
    exec(&mut dba, "ROLLBACK");
    assert_eq!(r[0][0].as_deref(), Some("f"));
    let wrong = format!("SELECT verified FROM tenant_guard.verify_audit_log({head}, sha256('other'))");
    assert_eq!(val(&mut dba, &wrong).as_deref(), Some("f"));
    let r = dba.simple_query("SELECT * FROM tenant_guard.verify_audit_log(1, '\\x00')");
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"));

    // The purge: superuser only; it keeps the rest verifiable and is itself recorded.
    let r = svc.simple_query("SELECT tenant_guard.purge_audit_log('0')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    let n: i64 = dba.query_one("SELECT tenant_guard.purge_audit_log('0')", &[]).unwrap().get(0);
    assert!(n >= 6);
    wait_entries(&db, "action = 'purge_audit_log'", 1);
    exec(&mut svc, &format!("SELECT tenant_guard.get_secret('{}', 'k', 'after')", w.org_a));
    wait_entries(&db, "object_name = 'after'", 1);
    assert_eq!(verify(&mut dba), (true, None, None));
    // Deleting more of the oldest entries, or forging the anchor, is caught.
    for attack in [
        "DELETE FROM tenant_guard.audit_log WHERE seq = (SELECT min(seq) FROM tenant_guard.audit_log)",
        "UPDATE tenant_guard.audit_log_anchor SET seq = seq + 1",
        "DELETE FROM tenant_guard.audit_log_anchor",
    ] {
        exec(&mut dba, "BEGIN");
        exec(&mut dba, attack);
        let (ok, _, problem) = verify(&mut dba);
        exec(&mut dba, "ROLLBACK");
        assert!(!ok, "not caught: {attack} ({problem:?})");
    }
    // A purge refuses to anchor on an entry that does not verify.
    exec(&mut dba, "UPDATE tenant_guard.audit_log SET mac = sha256('z')");
    let r = dba.simple_query("SELECT tenant_guard.purge_audit_log('0')");
    assert_eq!(sqlstate(&r).as_deref(), Some("XX001"));
}

/// Org admins read their own org's entries; members, other orgs' admins
/// and roles without a context read none; the service role reads all;
/// nobody but the extension writes.
#[test]
fn org_admins_read_their_own_orgs_entries_only() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut svc = db.svc();
    for org in [&w.org_a, &w.org_b] {
        exec(&mut svc, &format!("SELECT tenant_guard.get_secret('{org}', 'k', 'iso')"));
    }
    wait_entries(&db, "object_name = 'iso'", 2);
    let mut app = db.app();
    let count = "SELECT count(*) FROM tenant_guard.audit_log WHERE object_name = 'iso'";
    begin_as(&mut app, &w.org_a, ADMIN_A);
    assert_eq!(val(&mut app, count).as_deref(), Some("1"));
    assert_eq!(
        val(&mut app, &format!("SELECT count(*) FROM tenant_guard.audit_log WHERE org_id <> '{}'", w.org_a)).as_deref(),
        Some("0")
    );
    exec(&mut app, "COMMIT");
    begin_as(&mut app, &w.org_b, OWNER_B);
    assert_eq!(
        val(&mut app, &format!("SELECT count(*) FROM tenant_guard.audit_log WHERE org_id = '{}'", w.org_a)).as_deref(),
        Some("0")
    );
    exec(&mut app, "COMMIT");
    begin_as(&mut app, &w.org_a, MEMBER_A);
    assert_eq!(val(&mut app, "SELECT count(*) FROM tenant_guard.audit_log").as_deref(), Some("0"));
    exec(&mut app, "COMMIT");
    assert_eq!(val(&mut app, "SELECT count(*) FROM tenant_guard.audit_log").as_deref(), Some("0"));
    assert_eq!(val(&mut svc, count).as_deref(), Some("2"));
    for who in [&mut app, &mut svc] {
        for sql in [
            "INSERT INTO tenant_guard.audit_log (seq, at, db_role, session_role, action, object_type, outcome, chain) VALUES (1, now(), 'x', 'x', 'x', 'x', 'allowed', '')",
            "UPDATE tenant_guard.audit_log SET detail = 'x'",
            "DELETE FROM tenant_guard.audit_log",
            "TRUNCATE tenant_guard.audit_log",
            "DELETE FROM tenant_guard.audit_log_anchor",
        ] {
            assert_eq!(sqlstate(&who.simple_query(sql)).as_deref(), Some("42501"), "{sql}");
        }
        assert_eq!(sqlstate(&who.simple_query("SET tenant_guard.audit = off")).as_deref(), Some("42501"));
        assert_eq!(sqlstate(&who.simple_query("SELECT tenant_guard.purge_audit_log('0')")).as_deref(), Some("42501"));
    }
    // Nor can a role forge an entry through what protect() calls.
    let r = app.simple_query("SELECT tenant_guard._trail_protect('docs'::regclass, 'protect')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    let r = app.simple_query("SELECT tenant_guard._trail_note('get_secret', NULL, 'secret', NULL, NULL, NULL, NULL)");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
}

/// Under a pgbench load of secret reads from 8 clients, the trail records
/// every read, or counts what it could not and security_audit() says so.
#[test]
fn the_trail_keeps_up_under_load() {
    let c = Cluster::start(Options::default());
    let db = c.fresh_db();
    let w = world(&db);
    let mut svc = db.svc();
    exec(
        &mut svc,
        &format!("SELECT tenant_guard.put_secret_for('{}', 'stripe', 'load', 'sk_load_000111222')", w.org_a),
    );
    let script = c.datadir.join("audit_load.sql");
    std::fs::write(&script, format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'load');\n", w.org_a)).unwrap();
    let port = c.port.to_string();
    let out = c.run_tool(
        "pgbench",
        &["-n", "-c", "8", "-j", "8", "-T", "5", "-M", "prepared", "-h", "127.0.0.1", "-p", &port, "-U", "svc", "-f"]
            .into_iter()
            .chain([script.to_str().unwrap(), db.name.as_str()])
            .collect::<Vec<_>>(),
    );
    let done: i64 = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in pgbench output:\n{out}"));
    assert!(done > 1000, "pgbench ran only {done} transactions");
    let mut dba = db.dba();
    let sql =
        "SELECT (SELECT count(*) FROM tenant_guard.audit_log WHERE action = 'get_secret' AND object_name = 'load')
                      + (SELECT lost FROM tenant_guard.audit_log_queue())";
    poll(&mut dba, sql, 60, "the trail never caught up", |v| v.parse::<i64>().unwrap_or(0) >= done);
    let lost: i64 = dba.query_one("SELECT lost FROM tenant_guard.audit_log_queue()", &[]).unwrap().get(0);
    let findings =
        val(&mut dba, "SELECT count(*) FROM tenant_guard.security_audit() WHERE code = 'audit_entries_lost'");
    assert_eq!(findings.as_deref(), Some(if lost > 0 { "1" } else { "0" }), "{lost} lost");
    eprintln!("{done} reads under load, {lost} entries lost");
    assert!(verify(&mut dba).0);
}

/// Turned off (a superuser's decision), the trail records nothing and
/// security_audit() reports it; on a standby, where nothing can be
/// written, audited reads are refused.
#[test]
fn off_is_reported_and_a_standby_refuses_audited_reads() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut dba = db.dba();
    exec(&mut dba, &format!("SELECT tenant_guard.put_secret_for('{}', 'stripe', 'sb', 'sk_standby_424242')", w.org_a));
    exec(&mut dba, "SET tenant_guard.audit = off");
    exec(&mut dba, &format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'sb')", w.org_a));
    exec(&mut dba, "RESET tenant_guard.audit");
    exec(&mut dba, &format!("ALTER ROLE svc IN DATABASE {} SET tenant_guard.audit = off", db.name));
    let codes =
        val(&mut dba, "SELECT string_agg(code, ',') FROM tenant_guard.security_audit() WHERE code LIKE 'audit_%'");
    assert_eq!(codes.as_deref(), Some("audit_trail_off"));
    exec(&mut dba, &format!("ALTER ROLE svc IN DATABASE {} RESET tenant_guard.audit", db.name));
    exec(&mut dba, &format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'sb')", w.org_a));
    wait_entries(&db, "action = 'get_secret' AND object_name = 'sb'", 1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        val(&mut dba, "SELECT count(*) FROM tenant_guard.audit_log WHERE action = 'get_secret' AND object_name = 'sb'")
            .as_deref(),
        Some("1")
    );

    let standby = cluster().start_standby();
    let mut s = standby.connect(&db.name, "svc");
    let r = s.simple_query(&format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'sb')", w.org_a));
    assert_eq!(sqlstate(&r).as_deref(), Some("25006"));
    let r = s.simple_query(&format!("SELECT tenant_guard.assume('{}', '{}')", w.org_a, OWNER_A));
    assert_eq!(sqlstate(&r).as_deref(), Some("25006"));
}

/// After a passphrase rotation, rotate_secrets() re-seals the trail under
/// the new key: it verifies once the old passphrase is gone.
#[test]
fn rotation_reseals_the_trail() {
    let c = Cluster::start(Options::default());
    let db = c.fresh_db();
    let w = world(&db);
    let mut svc = db.svc();
    exec(&mut svc, &format!("SELECT tenant_guard.put_secret_for('{}', 'stripe', 'rot', 'sk_rotation_111')", w.org_a));
    exec(&mut svc, &format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'rot')", w.org_a));
    wait_entries(&db, "object_name = 'rot'", 2);
    let mut dba = db.dba();
    exec(&mut dba, "SELECT tenant_guard.purge_audit_log('0')");
    exec(&mut svc, &format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'rot')", w.org_a));
    wait_entries(&db, "action = 'purge_audit_log'", 1);
    let new = "rotated-passphrase-9f8e7d6c5b4a39281706f5e4d3c2b1a0";
    c.write_secrets(&format!(
        "tenant_guard.passphrase = '{new}'\ntenant_guard.old_passphrases = '{PASSPHRASE}'\ntenant_guard.jwt_secret = '{JWT_SECRET}'\n"
    ));
    let mut svc = db.svc();
    loop {
        let n: i64 = svc.query_one("SELECT tenant_guard.rotate_secrets(2)", &[]).unwrap().get(0);
        if n == 0 {
            break;
        }
    }
    wait_entries(&db, "action = 'rotate_secrets'", 2);
    // Entries written after the rotation started are under the new key already; one more run catches any stragglers.
    exec(&mut svc, "SELECT tenant_guard.rotate_secrets(1000)");
    c.write_secrets(&format!("tenant_guard.passphrase = '{new}'\ntenant_guard.jwt_secret = '{JWT_SECRET}'\n"));
    let mut dba = db.dba();
    let (ok, bad, problem) = verify(&mut dba);
    assert!(ok, "{bad:?} {problem:?}");
    assert_eq!(
        val(&mut dba, "SELECT count(DISTINCT key_id) FROM tenant_guard.audit_log").as_deref(),
        Some("1"),
        "every entry under the new key"
    );
}

/// What the first black-box review of the trail found, each closed: no role
/// can stall the writer (its advisory lock is gone: writers take turns in
/// shared memory); a read the trail cannot record is refused, not returned;
/// a commit reserves room for its changes' entries first, and past 1,000
/// audited changes in one transaction the rest are counted into one entry.
#[test]
fn the_trail_cannot_be_stalled_or_overflowed_into_silence() {
    let c = Cluster::start(Options::default());
    let db = c.fresh_db();
    let w = world(&db);
    let mut svc = db.svc();
    exec(&mut svc, &format!("SELECT tenant_guard.put_secret_for('{}', 'stripe', 'st', 'sk_stall_0001')", w.org_a));
    // The writer's old advisory lock, held by another role: entries still come.
    let mut app = db.app();
    exec(&mut app, "SELECT pg_advisory_lock(8387779987824538624)");
    exec(&mut svc, &format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'st')", w.org_a));
    wait_entries(&db, "action = 'get_secret' AND object_name = 'st'", 1);
    // A writer held up for real (a superuser's lock on the table): reads are
    // recorded or refused (53000), never returned unrecorded.
    let mut dba = db.dba();
    let mut locker = db.dba();
    exec(&mut locker, "BEGIN; LOCK tenant_guard.audit_log IN SHARE MODE");
    let mut returned = 0;
    let refused = loop {
        let r = svc.simple_query(&format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'st')", w.org_a));
        match sqlstate(&r) {
            None => returned += 1,
            Some(code) => break code,
        }
        assert!(returned < 20_000, "the queue never filled");
    };
    assert_eq!(refused, "53000");
    exec(&mut locker, "COMMIT");
    wait_entries(&db, "action = 'get_secret' AND object_name = 'st'", returned + 1);
    // Commits reserve room first; past 1,000 audited changes in one
    // transaction, the rest are counted into one entry ("and N more").
    let mut a = db.app();
    begin_as(&mut a, &w.org_a, ADMIN_A);
    exec(
        &mut a,
        "SELECT count(tenant_guard.put_secret('noise', 'n' || i, 'v')) FROM generate_series(1, 1100) i; COMMIT",
    );
    wait_entries(&db, "action = 'put_secret' AND object_kind = 'noise'", 1001);
    assert_eq!(
        val(
            &mut dba,
            "SELECT detail FROM tenant_guard.audit_log WHERE action = 'put_secret' AND object_kind = 'noise' AND object_name IS NULL"
        )
        .as_deref(),
        Some("and 100 more like it, not listed one by one (past 1000 audited changes in one transaction)")
    );
    let lost: i64 = dba.query_one("SELECT lost FROM tenant_guard.audit_log_queue()", &[]).unwrap().get(0);
    assert_eq!(lost, 0, "no allowed entry lost");
    assert_eq!(val(&mut dba, "SELECT dropped FROM tenant_guard.request_log_queue()").as_deref(), Some("0"));
}

/// The rest of the review: a superuser's ALTER ROLE ALL, parameter grants
/// and function SET clauses that switch the trail off are reported (and a
/// granted SET is refused anyway); a URL with a password never reaches the
/// trail; a tampered anchor gives no XX000; SET SESSION AUTHORIZATION does
/// not hide the login role; protect()'s PUBLIC helper files no fake entry.
#[test]
fn review_findings_stay_fixed() {
    // Its own cluster: ALTER ROLE ALL and parameter grants are cluster-wide.
    let c = Cluster::start(Options::default());
    let db = c.fresh_db();
    let w = world(&db);
    let mut dba = db.dba();
    let codes = |dba: &mut Client| {
        val(dba, "SELECT string_agg(code || ' ' || object, ', ' ORDER BY code, object) FROM tenant_guard.security_audit() WHERE code IN ('audit_trail_off', 'setting_granted')")
            .unwrap_or_default()
    };
    exec(&mut dba, "ALTER ROLE ALL SET tenant_guard.audit = off");
    let found = codes(&mut dba);
    exec(&mut dba, "ALTER ROLE ALL RESET tenant_guard.audit");
    assert!(found.contains("audit_trail_off setting tenant_guard.audit for every role"), "{found}");
    exec(&mut dba, "GRANT SET ON PARAMETER tenant_guard.audit, tenant_guard.jwt_secret TO svc");
    let mut svc = db.svc();
    for sql in
        ["SET tenant_guard.audit = off", "SET tenant_guard.jwt_secret = 'svc-own-secret-0123456789abcdefghijklmn'"]
    {
        assert_eq!(sqlstate(&svc.simple_query(sql)).as_deref(), Some("42501"), "{sql}");
    }
    exec(
        &mut dba,
        "CREATE FUNCTION public.quiet() RETURNS int LANGUAGE sql SET tenant_guard.audit = off AS 'SELECT 1'",
    );
    let found = codes(&mut dba);
    exec(
        &mut dba,
        "REVOKE SET ON PARAMETER tenant_guard.audit, tenant_guard.jwt_secret FROM svc; DROP FUNCTION public.quiet()",
    );
    for want in [
        "setting_granted setting tenant_guard.audit",
        "setting_granted setting tenant_guard.jwt_secret",
        "audit_trail_off function public.quiet()",
    ] {
        assert!(found.contains(want), "{want} in {found}");
    }
    // A WordPress password inside a refused site URL.
    let mut app = db.app();
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let r = app.simple_query(
        "SELECT tenant_guard.put_wordpress_credentials('https://bot:PwInUrl-9876 xyz@blog.example.com', 'bot', 'x')",
    );
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"));
    exec(&mut app, "ROLLBACK");
    wait_entries(&db, "action = 'put_wordpress_credentials' AND outcome = 'refused'", 1);
    let table = val(&mut dba, "SELECT string_agg(l::text, E'\\n') FROM tenant_guard.audit_log l").unwrap();
    assert!(!table.contains("PwInUrl"), "a password in the trail");
    // Under SET SESSION AUTHORIZATION the login role is still the superuser's.
    exec(&mut dba, &format!("SET SESSION AUTHORIZATION svc; SELECT tenant_guard.get_secret('{}', 'x', 'ssa'); RESET SESSION AUTHORIZATION", w.org_a));
    wait_entries(&db, "object_name = 'ssa'", 1);
    let who = rows(&mut dba, "SELECT db_role, session_role FROM tenant_guard.audit_log WHERE object_name = 'ssa'");
    assert_eq!(who[0], vec![Some("svc".to_string()), Some("dba".to_string())]);
    // A tampered anchor at the largest position: reported, no XX000.
    exec(&mut dba, "SELECT tenant_guard.purge_audit_log('0')");
    exec(&mut dba, "BEGIN; UPDATE tenant_guard.audit_log_anchor SET seq = 9223372036854775807");
    let r = rows(&mut dba, "SELECT verified, problem FROM tenant_guard.verify_audit_log()");
    exec(&mut dba, "ROLLBACK");
    assert_eq!(r[0][0].as_deref(), Some("f"));
    assert!(r[0][1].as_deref().unwrap_or("").starts_with("anchor"), "{r:?}");
    let r = dba.simple_query("SELECT * FROM tenant_guard.verify_audit_log(-1, sha256('x'))");
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"));
    // protect()'s PUBLIC helper: no entry for a relation that does not
    // exist, nor for a temporary table.
    let before = val(&mut dba, "SELECT count(*) FROM tenant_guard.audit_log WHERE object_type = 'table'").unwrap();
    exec(&mut app, "SELECT tenant_guard._trail_protect(4000000000::oid, 'unprotect', '42501')");
    exec(&mut app, "CREATE TEMP TABLE t (org_id uuid); SELECT tenant_guard.protect('t'), tenant_guard.unprotect('t')");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        val(&mut dba, "SELECT count(*) FROM tenant_guard.audit_log WHERE object_type = 'table'").unwrap(),
        before
    );
}

/// A loss is an error in the database whose trail it breaks, and only a
/// warning in the others (the server's counters are shared by all).
#[test]
fn a_loss_is_an_error_in_its_own_database_only() {
    let c = Cluster::start(Options::default());
    let (x, y) = (c.fresh_db(), c.fresh_db());
    let w = world(&x);
    let mut dba = x.dba();
    exec(&mut dba, &format!("SELECT tenant_guard.put_secret_for('{}', 'stripe', 'gap', 'sk_gap_5150')", w.org_a));
    wait_entries(&x, "action = 'put_secret'", 1);
    // The writer of x fails its next batch (a superuser's trigger).
    exec(
        &mut dba,
        "CREATE FUNCTION public.no_trail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no'; END $$;
         CREATE TRIGGER no_trail BEFORE INSERT ON tenant_guard.audit_log FOR EACH ROW EXECUTE FUNCTION public.no_trail();",
    );
    exec(&mut x.svc(), &format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'gap')", w.org_a));
    poll(&mut dba, "SELECT lost FROM tenant_guard.audit_log_queue()", 20, "the batch lost", |v| v != "0");
    exec(&mut dba, "DROP TRIGGER no_trail ON tenant_guard.audit_log");
    let findings =
        "SELECT coalesce(string_agg(level, ','), '') FROM tenant_guard.security_audit() WHERE code = 'audit_entries_lost'";
    assert_eq!(val(&mut y.dba(), findings).as_deref(), Some("warn"), "another database's loss");
    // The next write of x records the gap in x's trail: an error there.
    exec(&mut x.svc(), &format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'gap')", w.org_a));
    wait_entries(&x, "action = 'audit_entries_lost'", 1);
    assert_eq!(val(&mut dba, findings).as_deref(), Some("error"));
    assert_eq!(val(&mut y.dba(), findings).as_deref(), Some(""), "the loss is x's, recorded there");
    assert!(verify(&mut dba).0);
}
