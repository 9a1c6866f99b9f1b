//! Operations: backup and restore, crash-safe rotation, the partitioned
//! request log, upgrades, the Debian package, scheduled jobs with pg_cron,
//! and the PL/pgSQL lint.

mod common;
use common::*;
use postgres::Client;
use std::time::{Duration, Instant};
use tenant_guard_harness::{cluster, full_error, sqlstate, Cluster, Options, JWT_SECRET, PASSPHRASE};

/// pg_dump | pg_restore into a new database: keys authenticate, secrets
/// decrypt (the same envelopes: nothing encrypted twice), policies are in
/// force, the audit chain verifies, the request log keeps its partitions;
/// with `require_protection = error` in force during the restore.
#[test]
fn dump_and_restore_keep_everything_working() {
    let c = Cluster::start(Options {
        extra_conf: vec!["tenant_guard.require_protection = 'error'".into()],
        ..Options::default()
    });
    let db = c.fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (key_id, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'backup-key'");
    let mut svc = db.svc();
    exec(&mut svc, &format!("SELECT tenant_guard.put_secret_for('{}', 'stripe', 'live', 'sk_restore_0123')", w.org_a));
    exec(&mut app, "BEGIN");
    auth(&mut app, &key).unwrap();
    exec(&mut app, "COMMIT");
    exec(&mut svc, &format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'live')", w.org_a));
    let mut dba = db.dba();
    poll(
        &mut dba,
        &format!("SELECT count(*) FROM tenant_guard.request_log WHERE api_key_id = '{key_id}'"),
        20,
        "logged",
        |v| v != "0",
    );
    poll(&mut dba, "SELECT count(*) FROM tenant_guard.audit_log WHERE action = 'get_secret'", 20, "audited", |v| {
        v != "0"
    });
    let envelopes =
        val(&mut dba, "SELECT string_agg(encode(ciphertext, 'hex'), ',' ORDER BY id) FROM tenant_guard.secrets")
            .unwrap();

    let port = c.port.to_string();
    let dump = c.datadir.join("backup.dump");
    c.run_tool(
        "pg_dump",
        &["-h", "127.0.0.1", "-p", &port, "-U", "dba", "-Fc", "-f", dump.to_str().unwrap(), &db.name],
    );
    let restored = format!("{}_restored", db.name);
    exec(&mut c.connect("postgres", "dba"), &format!("CREATE DATABASE {restored} TEMPLATE template0"));
    let out = c.run_tool_merged(
        "pg_restore",
        &["-h", "127.0.0.1", "-p", &port, "-U", "dba", "-d", &restored, dump.to_str().unwrap()],
    );
    assert!(!out.contains("ERROR"), "pg_restore failed:\n{out}");

    let mut r = c.connect(&restored, "dba");
    assert_eq!(
        val(&mut r, "SELECT string_agg(encode(ciphertext, 'hex'), ',' ORDER BY id) FROM tenant_guard.secrets").unwrap(),
        envelopes,
        "the same envelopes: nothing encrypted twice"
    );
    let mut rsvc = c.connect(&restored, "svc");
    assert_eq!(
        val(&mut rsvc, &format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'live')", w.org_a)).as_deref(),
        Some("sk_restore_0123")
    );
    let mut rapp = c.connect(&restored, "app");
    exec(&mut rapp, "BEGIN");
    assert_eq!(auth(&mut rapp, &key).unwrap(), w.org_a);
    assert_eq!(val(&mut rapp, "SELECT count(*) FROM docs").as_deref(), Some("30"), "policies in force");
    assert_eq!(
        val(&mut rapp, &format!("SELECT count(*) FROM docs WHERE org_id = '{}'", w.org_b)).as_deref(),
        Some("0")
    );
    exec(&mut rapp, "COMMIT");
    assert_eq!(val(&mut rapp, "SELECT count(*) FROM docs").as_deref(), Some("0"), "no context, no rows");
    assert_eq!(
        val(&mut r, "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = 'docs'::regclass")
            .as_deref(),
        Some("t")
    );
    assert_ne!(
        val(&mut r, "SELECT count(*) FROM tenant_guard.request_log").as_deref(),
        Some("0"),
        "the request log came along"
    );
    let v = rows(&mut r, "SELECT verified, problem, entries FROM tenant_guard.verify_audit_log()");
    assert_eq!(v[0][0].as_deref(), Some("t"), "{v:?}");
    // The restore recorded nothing of its own, and new events continue the chain.
    exec(&mut rsvc, &format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'live')", w.org_a));
    poll(
        &mut r,
        "SELECT count(*) FROM tenant_guard.audit_log WHERE action = 'get_secret'",
        20,
        "audited after restore",
        |v| v == "3",
    );
    assert_eq!(val(&mut r, "SELECT verified FROM tenant_guard.verify_audit_log()").as_deref(), Some("t"));
}

/// A backend running rotate_secrets() is SIGKILLed in the middle of its
/// batch while other sessions read and write secrets; the server restarts,
/// the rotation is run again: no secret is lost or left unreadable, and
/// the trail shows both runs.
#[test]
fn a_rotation_killed_mid_batch_loses_nothing() {
    let p1 = "crash-rotation-passphrase-one-0123456789";
    let p2 = "crash-rotation-passphrase-two-9876543210";
    let c = Cluster::start(Options { passphrase: p1.into(), ..Options::default() });
    let db = c.fresh_db();
    let w = world(&db);
    let mut svc = db.svc();
    const N: i64 = 20_000;
    exec(
        &mut svc,
        &format!("SELECT count(tenant_guard.put_secret_for('{}', 'bulk', 's' || g, 'value-' || g)) FROM generate_series(1, {N}) g", w.org_a),
    );
    c.write_secrets(&format!("tenant_guard.passphrase = '{p2}'\ntenant_guard.old_passphrases = '{p1}'\ntenant_guard.jwt_secret = '{JWT_SECRET}'\n"));
    // Readers and writers while the rotation runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(
        std::collections::HashMap::<String, (Option<String>, String)>::new(),
    ));
    let mut load = vec![];
    for t in 0..2 {
        let (stop, acked) = (stop.clone(), acked.clone());
        let mut s = db.svc();
        let org = w.org_a.clone();
        load.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let name = format!("w{t}");
                let v = format!("v{t}-{i}");
                acked.lock().unwrap().entry(name.clone()).or_insert((None, String::new())).1 = v.clone();
                if s.execute("SELECT tenant_guard.put_secret_for($1::text::uuid, 'live', $2, $3)", &[&org, &name, &v])
                    .is_err()
                {
                    break;
                }
                acked.lock().unwrap().get_mut(&name).unwrap().0 = Some(v);
                if s.query_one("SELECT tenant_guard.get_secret($1::text::uuid, 'bulk', 's7')", &[&org]).is_err() {
                    break;
                }
                i += 1;
            }
        }));
    }
    let mut rot = db.svc();
    let pid: i32 = rot.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let runner = std::thread::spawn(move || {
        rot.query_one("SELECT tenant_guard.rotate_secrets(1000000)", &[]).map(|r| r.get::<_, i64>(0))
    });
    let mut dba = db.dba();
    poll(
        &mut dba,
        "SELECT count(*) FROM tenant_guard.audit_log WHERE action = 'rotate_secrets' AND detail LIKE 'started%'",
        20,
        "the run's start is recorded",
        |v| v == "1",
    );
    // In its batch, on an UPDATE.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let busy = val(&mut dba, &format!("SELECT state = 'active' FROM pg_stat_activity WHERE pid = {pid}"));
        if busy.as_deref() == Some("t") {
            break;
        }
        assert!(Instant::now() < deadline, "the rotation never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(!runner.is_finished(), "the rotation finished before it could be killed: make N larger");
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(runner.join().unwrap().is_err(), "the killed rotation returned");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        let _ = t.join();
    }
    // The postmaster restarts every backend after a crash: wait for it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut svc = loop {
        if let Ok(mut s) =
            Client::configure().host("127.0.0.1").port(c.port).user("svc").dbname(&db.name).connect(postgres::NoTls)
        {
            if s.simple_query("SELECT 1").is_ok() {
                break s;
            }
        }
        assert!(Instant::now() < deadline, "the server did not come back");
        std::thread::sleep(Duration::from_millis(200));
    };
    // Everything still reads back (old or new key), and the writes that were acknowledged stayed.
    let bad: i64 = svc
        .query_one(
            &format!("SELECT count(*) FROM generate_series(1, {N}) g WHERE tenant_guard.get_secret('{}', 'bulk', 's' || g) IS DISTINCT FROM 'value-' || g", w.org_a),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(bad, 0, "secrets lost or unreadable after the crash");
    for (name, (acked, tried)) in acked.lock().unwrap().iter() {
        let v = val(&mut svc, &format!("SELECT tenant_guard.get_secret('{}', 'live', '{name}')", w.org_a));
        assert!(v == *acked || v.as_deref() == Some(tried.as_str()), "{name}: {v:?}, acknowledged {acked:?}");
    }
    // The rerun finishes the job.
    loop {
        let n: i64 = svc.query_one("SELECT tenant_guard.rotate_secrets(5000)", &[]).unwrap().get(0);
        if n == 0 {
            break;
        }
    }
    let mut dba = db.dba();
    let old = val(&mut dba, "SELECT count(DISTINCT key_id) FROM tenant_guard.secrets").unwrap();
    assert_eq!(old, "1", "every secret under the new key");
    poll(
        &mut dba,
        "SELECT count(*) FROM tenant_guard.audit_log WHERE action = 'rotate_secrets' AND detail LIKE 'started%'",
        20,
        "both runs' starts",
        |v| v.parse::<i64>().unwrap_or(0) >= 2,
    );
    poll(
        &mut dba,
        "SELECT count(*) FROM tenant_guard.audit_log WHERE action = 'rotate_secrets' AND detail LIKE 're-encrypted%'",
        20,
        "the rerun's end",
        |v| v != "0",
    );
    let bad: i64 = svc
        .query_one(
            &format!("SELECT count(*) FROM generate_series(1, {N}) g WHERE tenant_guard.get_secret('{}', 'bulk', 's' || g) IS DISTINCT FROM 'value-' || g", w.org_a),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(bad, 0);
    let _ = PASSPHRASE;
}

/// The request log is partitioned by day: the writer makes the day's (and
/// the next day's) partition ahead of need, the purge drops whole days and
/// deletes only inside the day the cut falls in; nobody but its owner reads
/// a partition directly.
#[test]
fn the_request_log_is_partitioned_by_day_and_purged_by_dropping_days() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (_, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'part'");
    auth(&mut app, &key).unwrap();
    let mut dba = db.dba();
    poll(&mut dba, "SELECT count(*) FROM tenant_guard.request_log", 20, "logged", |v| v != "0");
    let parts = |dba: &mut Client| {
        rows(dba, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'tenant_guard.request_log'::regclass ORDER BY 1")
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect::<Vec<_>>()
    };
    let today = val(&mut dba, "SELECT 'request_log_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')").unwrap();
    let tomorrow =
        val(&mut dba, "SELECT 'request_log_p' || to_char((now() AT TIME ZONE 'UTC') + interval '1 day', 'YYYYMMDD')")
            .unwrap();
    let p = parts(&mut dba);
    assert!(p.contains(&today) && p.contains(&tomorrow), "{p:?}");
    // Old days (made by hand here, as the writer would have made them
    // then), their rows at 06:00 UTC; the cut at noon two days ago, whatever
    // the time of day the test runs at.
    exec(
        &mut dba,
        "SELECT tenant_guard._request_log_partition((now() AT TIME ZONE 'UTC')::date - d) FROM generate_series(1, 3) d;
         INSERT INTO tenant_guard.request_log (at, outcome)
         SELECT (((now() AT TIME ZONE 'UTC')::date - d) + time '06:00') AT TIME ZONE 'UTC', 'ok' FROM generate_series(1, 3) d, generate_series(1, 100);",
    );
    assert_eq!(parts(&mut dba).len(), 5);
    let cut = "(((now() AT TIME ZONE 'UTC')::date - 2) + time '12:00') AT TIME ZONE 'UTC'";
    let n: i64 =
        db.svc().query_one(&format!("SELECT tenant_guard.purge_request_log(now() - {cut})"), &[]).unwrap().get(0);
    assert_eq!(n, 200, "one day dropped, the rows before the cut of the day it falls in deleted");
    assert_eq!(parts(&mut dba).len(), 4, "the day the cut falls in stays: {:?}", parts(&mut dba));
    assert_eq!(
        val(&mut dba, &format!("SELECT count(*) FROM tenant_guard.request_log WHERE at < {cut}")).as_deref(),
        Some("0")
    );
    // A partition read directly: its owner only.
    let r = app.simple_query(&format!("SELECT count(*) FROM tenant_guard.{today}"));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{}", full_error(&r));
    let r = db.svc().simple_query(&format!("SELECT count(*) FROM tenant_guard.{today}"));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));

    // A transaction that reads the log and stays open (anyone may: org
    // admins read it) keeps the purge from dropping days, not from purging:
    // it deletes their rows instead, and a later run drops them.
    exec(
        &mut dba,
        "SELECT tenant_guard._request_log_partition((now() AT TIME ZONE 'UTC')::date - d) FROM generate_series(3, 4) d;
         INSERT INTO tenant_guard.request_log (at, outcome) SELECT now() - d * interval '1 day', 'ok' FROM generate_series(3, 4) d, generate_series(1, 50);",
    );
    let before = parts(&mut dba).len();
    let mut reader = db.app();
    exec(&mut reader, "BEGIN; SELECT count(*) FROM tenant_guard.request_log");
    let t = Instant::now();
    let purge = format!("SELECT tenant_guard.purge_request_log(now() - {cut})");
    let n: i64 = db.svc().query_one(&purge, &[]).unwrap().get(0);
    assert_eq!(n, 100, "the old days' rows deleted while a reader holds the log");
    assert!(t.elapsed() < Duration::from_secs(3), "the purge waited {:?}", t.elapsed());
    assert_eq!(parts(&mut dba).len(), before, "no day dropped under the reader");
    exec(&mut reader, "COMMIT");
    let n: i64 = db.svc().query_one(&purge, &[]).unwrap().get(0);
    assert_eq!(n, 0);
    assert_eq!(parts(&mut dba).len(), before - 2, "the emptied days dropped once the reader is gone");

    // The cut is never in the future, whatever the interval compares as.
    for (arg, code) in [("'-1 mon +30 days 1 hour'", "22023"), ("'-1 second'", "22023"), ("NULL", "22004")] {
        let r = db.svc().simple_query(&format!("SELECT tenant_guard.purge_request_log({arg})"));
        assert_eq!(sqlstate(&r).as_deref(), Some(code), "purge_request_log({arg}): {}", full_error(&r));
        let r = dba.simple_query(&format!("SELECT tenant_guard.purge_audit_log({arg})"));
        assert_eq!(sqlstate(&r).as_deref(), Some(code), "purge_audit_log({arg}): {}", full_error(&r));
    }
}

/// The catalog facts tests/catalog.rs compares (functions, relations,
/// columns in order, constraints, indexes, policies, triggers, grants,
/// extension members and config-dump tables).
const CATALOG_SQL: &str = include_str!("catalog.sql");

/// A database made with 0.1.0 (the release before this one, commit 9209dcf,
/// its install script frozen in sql/) is served by the new library until
/// ALTER EXTENSION tenant_guard UPDATE, which then keeps everything: keys
/// authenticate, secrets decrypt, policies hold, the request log keeps its
/// rows; and the catalog it leaves equals a fresh 0.2.0 install.
#[test]
fn an_update_from_0_1_0_keeps_everything_and_equals_a_fresh_install() {
    // A cluster of its own: the audit-loss counters are the server's.
    let c = Cluster::start(Options::default());
    let name = "upgraded";
    exec(&mut c.connect("postgres", "dba"), &format!("CREATE DATABASE {name} TEMPLATE template0"));
    let db = tenant_guard_harness::Db { cluster: &c, name: name.into() };
    let mut dba = db.dba();
    exec(&mut dba, "GRANT ALL ON SCHEMA public TO PUBLIC; CREATE EXTENSION tenant_guard VERSION '0.1.0'");

    // Every C function of the 0.1.0 catalog finds its symbol in the new
    // library (CREATE EXTENSION above checked that), taking and returning
    // the same types as in 0.2.0 (a mismatch would read arguments that are
    // not there).
    let c_functions = "SELECT string_agg(format('%s(%s) -> %s%s', prosrc, pg_get_function_identity_arguments(oid),
                                                  CASE WHEN proretset THEN 'setof ' ELSE '' END, prorettype::regtype), E'\\n' ORDER BY prosrc)
                         FROM pg_proc WHERE pronamespace = 'tenant_guard'::regnamespace
                          AND prolang = (SELECT oid FROM pg_language WHERE lanname = 'c')";
    let old_c = val(&mut dba, c_functions).unwrap();
    let new_c = val(&mut c.connect("template1", "dba"), c_functions).unwrap();
    let new_c: std::collections::HashSet<&str> = new_c.lines().collect();
    for f in old_c.lines() {
        assert!(new_c.contains(f), "0.1.0's {f} is not served the same way by 0.2.0's library");
    }

    // 0.1.0 at work, on the new library.
    let w = world(&db);
    let mut app = db.app();
    let (key_id, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'old-key'");
    let mut svc = db.svc();
    exec(&mut svc, &format!("SELECT tenant_guard.put_secret_for('{}', 'stripe', 'live', 'sk_upgrade_0123')", w.org_a));
    begin_as(&mut svc, &w.org_a, OWNER_A);
    exec(
        &mut svc,
        "SELECT tenant_guard.put_wordpress_credentials('https://blog.example.com', 'editor', 'abcd efgh ijkl mnop qrst uvwx');
         SELECT tenant_guard.create_webhook_endpoint('https://hooks.example.com/in');
         COMMIT",
    );
    exec(&mut app, "BEGIN");
    assert_eq!(auth(&mut app, &key).unwrap(), w.org_a);
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").as_deref(), Some("30"));
    exec(&mut app, "COMMIT");
    poll(
        &mut dba,
        &format!("SELECT count(*) FROM tenant_guard.request_log WHERE api_key_id = '{key_id}'"),
        20,
        "logged by 0.1.0's request log",
        |v| v == "1",
    );
    // 0.1.0's guard still refuses an unprotected tenant table.
    exec(&mut dba, "SET tenant_guard.require_protection = 'error'");
    let r = dba.batch_execute("CREATE TABLE leaky (id int, org_id uuid)");
    assert_eq!(sqlstate(&r).as_deref(), Some("55000"), "{}", full_error(&r));
    exec(&mut dba, "RESET tenant_guard.require_protection");
    let secrets_before =
        val(&mut dba, "SELECT string_agg(encode(ciphertext, 'hex'), ',' ORDER BY id) FROM tenant_guard.secrets")
            .unwrap();
    // A table whose 0.1.0 policies someone changed: the update leaves it as
    // it is and says why.
    exec(
        &mut dba,
        "BEGIN;
         CREATE TABLE half (id int, org_id uuid NOT NULL);
         SELECT tenant_guard.protect('half');
         COMMIT;
         DROP POLICY tenant_guard_delete ON half;",
    );

    exec(&mut dba, "ALTER EXTENSION tenant_guard UPDATE");
    assert!(
        c.server_log().contains("half keeps its 0.1.0 policies: they are not the ones 0.1.0's protect() made"),
        "the update's warning about half"
    );
    exec(&mut dba, "DROP TABLE half");
    assert_eq!(
        val(&mut dba, "SELECT extversion FROM pg_extension WHERE extname = 'tenant_guard'").as_deref(),
        Some("0.2.0")
    );

    // The catalog equals a fresh 0.2.0 install (template1's) in every fact.
    let fresh = val(&mut c.connect("template1", "dba"), CATALOG_SQL).unwrap();
    let updated = val(&mut dba, CATALOG_SQL).unwrap();
    if fresh != updated {
        let f: std::collections::BTreeSet<&str> = fresh.lines().collect();
        let u: std::collections::BTreeSet<&str> = updated.lines().collect();
        let only_fresh: Vec<_> = f.difference(&u).collect();
        let only_updated: Vec<_> = u.difference(&f).collect();
        panic!("the updated catalog differs from a fresh 0.2.0 install:\nonly in the fresh one: {only_fresh:#?}\nonly in the updated one: {only_updated:#?}");
    }

    // Data intact: the same envelopes, decrypting; the key; the policies.
    assert_eq!(
        val(&mut dba, "SELECT string_agg(encode(ciphertext, 'hex'), ',' ORDER BY id) FROM tenant_guard.secrets")
            .unwrap(),
        secrets_before
    );
    let mut svc = db.svc();
    assert_eq!(
        val(&mut svc, &format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'live')", w.org_a)).as_deref(),
        Some("sk_upgrade_0123")
    );
    let basic = val(
        &mut svc,
        &format!("SELECT tenant_guard.wordpress_authorization('{}', 'https://blog.example.com')", w.org_a),
    )
    .unwrap();
    assert_eq!(basic, "Basic ZWRpdG9yOmFiY2QgZWZnaCBpamtsIG1ub3AgcXJzdCB1dnd4");
    let mut app = db.app();
    exec(&mut app, "BEGIN");
    assert_eq!(auth(&mut app, &key).unwrap(), w.org_a);
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").as_deref(), Some("30"), "policies hold");
    assert_eq!(
        affected(&mut app, &format!("UPDATE docs SET title = 'x' WHERE org_id = '{}'", w.org_b)),
        0,
        "nor may org A write org B's rows"
    );
    exec(&mut app, "COMMIT");
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").as_deref(), Some("0"), "no context, no rows");
    assert_eq!(
        val(
            &mut dba,
            "SELECT count(*) FROM pg_policy WHERE polrelid = 'docs'::regclass AND polname = 'tenant_guard_allow'"
        )
        .as_deref(),
        Some("0"),
        "0.1.0's permissive `true` policy gave way to protect()'s twins"
    );
    // The request log: the old rows, and new ones beside them.
    poll(
        &mut dba,
        &format!("SELECT count(*) FROM tenant_guard.request_log WHERE api_key_id = '{key_id}'"),
        20,
        "the old row kept and the new one logged",
        |v| v == "2",
    );
    assert_eq!(
        val(&mut dba, "SELECT count(DISTINCT id) = count(*) FROM tenant_guard.request_log").as_deref(),
        Some("t"),
        "ids continue the old sequence"
    );
    // The trail starts with the update, verifies, and has lost nothing
    // (0.1.0's catalog had no trail to lose entries from).
    poll(
        &mut dba,
        "SELECT count(*) FROM tenant_guard.audit_log WHERE action IN ('get_secret', 'wordpress_authorization')",
        20,
        "reads after the update audited",
        |v| v == "2",
    );
    assert_eq!(val(&mut dba, "SELECT verified FROM tenant_guard.verify_audit_log()").as_deref(), Some("t"));
    let lost = rows(&mut svc, "SELECT lost, lost_failures, lost_unrecorded FROM tenant_guard.audit_log_queue()");
    assert_eq!(lost[0], vec![Some("0".into()), Some("0".into()), Some("0".into())]);
    // Nothing for security_audit() that a fresh install does not show too.
    let findings = "SELECT coalesce(string_agg(code, ',' ORDER BY code), '') FROM tenant_guard.security_audit() WHERE level <> 'info'";
    assert_eq!(val(&mut dba, findings), val(&mut c.fresh_db().dba(), findings));
    // An endpoint made under 0.1.0 (no maker on record) still delivers.
    begin_as(&mut svc, &w.org_a, OWNER_A);
    exec(&mut svc, "SELECT tenant_guard.enqueue_webhook('invoice.paid', '{\"id\": 1}'); COMMIT");
    assert_eq!(val(&mut svc, "SELECT count(*) FROM tenant_guard.claim_webhook_deliveries(10)").as_deref(), Some("1"));
    // The purge reaches the rows of the 0.1.0 table (now a partition).
    let n: i64 = svc.query_one("SELECT tenant_guard.purge_request_log('0 seconds')", &[]).unwrap().get(0);
    assert!(n >= 2, "{n}");
    assert_eq!(val(&mut dba, "SELECT count(*) FROM tenant_guard.request_log").as_deref(), Some("0"));
}

/// The extension's version (its Cargo.toml's, not this test crate's).
fn extension_version() -> String {
    let manifest = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"));
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("the version in Cargo.toml")
        .to_string()
}

/// Run a command (with sudo when not root); its output, or a panic with it.
fn run_as_root(cmd: &[&str]) -> String {
    let root = std::process::Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    let mut c = if root {
        std::process::Command::new(cmd[0])
    } else {
        let mut c = std::process::Command::new("sudo");
        c.arg(cmd[0]);
        c
    };
    let out = c.args(&cmd[1..]).env("DEBIAN_FRONTEND", "noninteractive").output().expect(cmd[0]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// scripts/package.sh builds a .deb that `apt-get install ./….deb` installs
/// on this machine (the library, the control file, this version's install
/// script, 0.1.0's as it shipped and the update), and a server then creates
/// the extension from it, at this version or at 0.1.0 and updated.
#[test]
fn the_debian_package_installs_with_apt_and_creates_the_extension() {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = std::env::temp_dir().join(format!("tenant_guard_deb_{}", std::process::id()));
    let built = std::process::Command::new("bash")
        .arg(format!("{repo}/scripts/package.sh"))
        .arg("--debug")
        .arg(&out)
        .output()
        .expect("scripts/package.sh");
    assert!(built.status.success(), "scripts/package.sh failed:\n{}", String::from_utf8_lossy(&built.stderr));
    let deb = String::from_utf8_lossy(&built.stdout).trim().to_string();
    let version = extension_version();
    let version = version.as_str();
    assert!(deb.contains(&format!("postgresql-15-tenant-guard_{version}-1_")), "{deb}");

    let contents = run_as_root(&["dpkg-deb", "--contents", &deb]);
    for f in [
        "./usr/lib/postgresql/15/lib/tenant_guard.so".to_string(),
        "./usr/share/postgresql/15/extension/tenant_guard.control".to_string(),
        format!("./usr/share/postgresql/15/extension/tenant_guard--{version}.sql"),
        "./usr/share/postgresql/15/extension/tenant_guard--0.1.0.sql".to_string(),
        format!("./usr/share/postgresql/15/extension/tenant_guard--0.1.0--{version}.sql"),
    ] {
        assert!(contents.contains(&f), "{f} is not in the package:\n{contents}");
    }
    run_as_root(&["apt-get", "install", "-y", "--allow-downgrades", "--reinstall", &deb]);
    let status = run_as_root(&["dpkg-query", "-W", "-f=${Status} ${Version}", "postgresql-15-tenant-guard"]);
    assert_eq!(status, format!("install ok installed {version}-1"));
    // What is on disk is what the package holds.
    run_as_root(&["dpkg", "--verify", "postgresql-15-tenant-guard"]);
    let _ = std::fs::remove_dir_all(&out);

    // A server with the library preloaded creates the extension from it
    // (Cluster::start creates it in template1).
    let c = Cluster::start(Options::default());
    let mut dba = c.connect("template1", "dba");
    assert_eq!(
        val(&mut dba, "SELECT extversion FROM pg_extension WHERE extname = 'tenant_guard'").as_deref(),
        Some(version)
    );
    let org = val(&mut dba, &format!("SELECT tenant_guard.create_organization('Pkg', '{OWNER_A}')")).unwrap();
    assert_eq!(org.len(), 36);
    exec(&mut c.connect("postgres", "dba"), "CREATE DATABASE from_0_1_0 TEMPLATE template0");
    let mut old = c.connect("from_0_1_0", "dba");
    exec(&mut old, "CREATE EXTENSION tenant_guard VERSION '0.1.0'; ALTER EXTENSION tenant_guard UPDATE");
    assert_eq!(
        val(&mut old, "SELECT extversion FROM pg_extension WHERE extname = 'tenant_guard'").as_deref(),
        Some(version)
    );
}

/// The README's pg_cron recipe, as written there: pg_cron preloaded beside
/// tenant_guard, jobs run by background workers in the application's
/// database: rotate_secrets() and purge_request_log() by a maintenance role
/// in tenant_guard_service, purge_audit_log() by a superuser. (pg_cron 1.4,
/// Debian's for PostgreSQL 15, schedules by the minute: the jobs here run
/// every minute, and the test waits for their first runs.)
#[test]
fn scheduled_maintenance_with_pg_cron_runs_rotation_and_both_purges() {
    let p1 = "cron-rotation-passphrase-one-0123456789ab";
    let p2 = "cron-rotation-passphrase-two-ba9876543210";
    let c = Cluster::start(Options {
        preload_libraries: "pg_cron,tenant_guard".into(),
        passphrase: p1.into(),
        extra_conf: vec![
            "cron.database_name = 'postgres'".into(),
            "cron.use_background_workers = on".into(),
            "max_worker_processes = 32".into(),
        ],
        ..Options::default()
    });
    let db = c.fresh_db();
    let w = world(&db);
    let mut svc = db.svc();
    exec(
        &mut svc,
        &format!("SELECT count(tenant_guard.put_secret_for('{}', 'bulk', 's' || g, 'value-' || g)) FROM generate_series(1, 50) g", w.org_a),
    );
    exec(&mut svc, &format!("SELECT tenant_guard.get_secret('{}', 'bulk', 's1')", w.org_a));
    // The passphrase changes; the old one stays readable until rotated away.
    c.write_secrets(&format!(
        "tenant_guard.passphrase = '{p2}'\ntenant_guard.old_passphrases = '{p1}'\ntenant_guard.jwt_secret = '{JWT_SECRET}'\n"
    ));
    let mut dba = db.dba();
    // Request-log days older than the retention.
    exec(
        &mut dba,
        "SELECT tenant_guard._request_log_partition((now() AT TIME ZONE 'UTC')::date - d) FROM generate_series(2, 4) d;
         INSERT INTO tenant_guard.request_log (at, outcome) SELECT now() - d * interval '1 day', 'ok' FROM generate_series(2, 4) d, generate_series(1, 10);",
    );
    poll(&mut dba, "SELECT count(*) FROM tenant_guard.audit_log", 20, "trail entries", |v| v != "0");
    let before = val(&mut dba, "SELECT max(id) FROM tenant_guard.audit_log").unwrap();

    // The recipe.
    let mut cron = c.connect("postgres", "dba");
    exec(
        &mut cron,
        &format!(
            "CREATE EXTENSION pg_cron;
             CREATE ROLE tg_maintenance LOGIN IN ROLE tenant_guard_service;
             SELECT cron.schedule_in_database('tenant_guard: rotate secrets', '* * * * *',
                 $$SELECT tenant_guard.rotate_secrets(10000)$$, '{db}', 'tg_maintenance');
             SELECT cron.schedule_in_database('tenant_guard: purge request log', '* * * * *',
                 $$SELECT tenant_guard.purge_request_log('36 hours')$$, '{db}', 'tg_maintenance');
             SELECT cron.schedule_in_database('tenant_guard: purge audit trail', '* * * * *',
                 $$SELECT tenant_guard.purge_audit_log('0 seconds')$$, '{db}', 'dba');",
            db = db.name
        ),
    );
    let runs = poll(
        &mut cron,
        "SELECT count(DISTINCT jobid) FILTER (WHERE status = 'succeeded') || '/' || count(*) FILTER (WHERE status = 'failed')
           FROM cron.job_run_details",
        150,
        "each job's first run",
        |v| v.starts_with("3/") || !v.ends_with("/0"),
    );
    let failed = rows(&mut cron, "SELECT command, return_message FROM cron.job_run_details WHERE status = 'failed'");
    assert_eq!(runs, "3/0", "{failed:?}");
    // Stop them (the next minute's audit purge would remove what is checked below).
    exec(&mut cron, "SELECT cron.unschedule(jobid) FROM cron.job");
    poll(
        &mut cron,
        "SELECT count(*) FROM cron.job_run_details WHERE status NOT IN ('succeeded', 'failed')",
        60,
        "runs under way to end",
        |v| v == "0",
    );
    assert_eq!(
        val(&mut cron, "SELECT count(*) FROM cron.job_run_details WHERE status = 'failed'").as_deref(),
        Some("0"),
        "{:?}",
        rows(&mut cron, "SELECT command, return_message FROM cron.job_run_details WHERE status = 'failed'")
    );

    // The rotation: every secret under the new passphrase, and still readable.
    assert_eq!(val(&mut dba, "SELECT count(DISTINCT key_id) FROM tenant_guard.secrets").as_deref(), Some("1"));
    assert_eq!(
        val(&mut svc, &format!("SELECT tenant_guard.get_secret('{}', 'bulk', 's50')", w.org_a)).as_deref(),
        Some("value-50")
    );
    // The request log: the old days gone, their partitions dropped.
    assert_eq!(
        val(&mut dba, "SELECT count(*) FROM tenant_guard.request_log WHERE at < now() - interval '36 hours'")
            .as_deref(),
        Some("0")
    );
    assert_eq!(
        val(&mut dba, "SELECT string_agg(task, ',' ORDER BY task) FROM tenant_guard.maintenance_runs").as_deref(),
        Some("purge_audit_log,purge_request_log")
    );
    // The trail: the entries from before the jobs purged, the chain still
    // verifying from its anchor, and the purge's own run recorded with the
    // role it ran as.
    assert_eq!(
        val(&mut dba, &format!("SELECT count(*) FROM tenant_guard.audit_log WHERE id <= {before}")).as_deref(),
        Some("0")
    );
    poll(
        &mut dba,
        "SELECT count(*) FROM tenant_guard.audit_log WHERE action = 'purge_audit_log' AND db_role = 'dba'",
        30,
        "the audit purge in the trail",
        |v| v != "0",
    );
    assert_eq!(val(&mut dba, "SELECT verified FROM tenant_guard.verify_audit_log()").as_deref(), Some("t"));
}

/// plpgsql_check over the PL/pgSQL functions of `schema`: (function, line,
/// level, message) of every finding that is an error, or a warning its
/// function does not explain. A warning is explained by a comment line in
/// the function's body: `-- plpgsql_check: "<the message>" <why it is fine>`.
/// A trigger function is checked against each table it is a trigger of.
fn plpgsql_lint(c: &mut Client, schema: &str) -> Vec<Vec<Option<String>>> {
    rows(
        c,
        &format!(
            r#"WITH fns AS (
                 SELECT p.oid, p.prosrc, coalesce(t.tgrelid, 0) AS rel, p.prorettype = 'trigger'::regtype AS is_trigger
                   FROM pg_proc p
                   LEFT JOIN LATERAL (SELECT DISTINCT tgrelid FROM pg_trigger WHERE tgfoid = p.oid) t ON true
                  WHERE p.pronamespace = '{schema}'::regnamespace
                    AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql'))
               SELECT f.oid::regprocedure::text, 'no table has it as a trigger: give the test one', 'error', ''
                 FROM fns f WHERE f.is_trigger AND f.rel = 0
               UNION ALL
               SELECT f.oid::regprocedure::text || coalesce(' on ' || nullif(f.rel, 0)::regclass::text, ''),
                      coalesce(r.lineno::text, '-'), r.level, r.message
                 FROM fns f, plpgsql_check_function_tb(f.oid, f.rel, security_warnings => true) r
                WHERE NOT (f.is_trigger AND f.rel = 0)
                  AND (r.level = 'error'
                       OR NOT f.prosrc ~ ('--\s*plpgsql_check:\s*"' || regexp_replace(r.message, '([^\w\s])', '\\\1', 'g') || '"\s*\S.{{9,}}'))
               ORDER BY 1, 2"#
        ),
    )
}

/// Every PL/pgSQL function of the extension passes plpgsql_check (Debian's
/// postgresql-15-plpgsql-check) with security warnings on: no error, and no
/// warning that a comment beside it does not explain. The lint is shown to
/// fail on a planted error and an unexplained warning.
#[test]
fn every_plpgsql_function_passes_plpgsql_check() {
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    exec(
        &mut dba,
        "CREATE EXTENSION plpgsql_check;
         -- forbid_self_approval()'s trigger function needs a table to be checked against.
         CREATE TABLE lint_approvals (id int, org_id uuid NOT NULL, requested_by uuid, approved_by uuid);
         SELECT tenant_guard.protect('lint_approvals');
         SELECT tenant_guard.forbid_self_approval('lint_approvals', 'requested_by', 'approved_by');",
    );
    let checked = val(
        &mut dba,
        "SELECT count(*) FROM pg_proc WHERE pronamespace = 'tenant_guard'::regnamespace
            AND prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql')",
    )
    .unwrap();
    assert!(checked.parse::<i32>().unwrap() >= 25, "only {checked} PL/pgSQL functions found");
    let findings = plpgsql_lint(&mut dba, "tenant_guard");
    assert!(findings.is_empty(), "plpgsql_check findings: {findings:#?}");

    // The lint itself: an error, an unexplained warning, an explained one.
    exec(
        &mut dba,
        r#"CREATE SCHEMA lint_control;
           CREATE FUNCTION lint_control.broken() RETURNS bigint LANGUAGE plpgsql AS $$
           BEGIN
               RETURN (SELECT count(no_such_column) FROM pg_class);
           END $$;
           CREATE FUNCTION lint_control.unexplained() RETURNS void LANGUAGE plpgsql AS $$
           DECLARE
               unused int;
           BEGIN
           END $$;
           CREATE FUNCTION lint_control.explained() RETURNS void LANGUAGE plpgsql AS $$
           DECLARE
               -- plpgsql_check: "unused variable "unused"" kept for the example: it is never used
               unused int;
           BEGIN
           END $$;"#,
    );
    let control: Vec<String> =
        plpgsql_lint(&mut dba, "lint_control").into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(control, ["lint_control.broken()", "lint_control.unexplained()"], "{control:?}");
}
