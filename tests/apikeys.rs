//! Issue 4: API keys shown once and stored as SHA-256 only; authenticate()
//! with scopes, rate limiting, and a request log that survives rollback.

mod common;
use common::*;
use postgres::Client;
use std::time::{Duration, Instant};
use tenant_guard_harness::{cluster, full_error, sqlstate, Cluster, Db, Options};

/// Poll the request log (as the superuser) until `pred` holds, or time out.
fn wait_for_log(db: &Db, sql: &str) -> String {
    poll(&mut db.dba(), sql, 15, "request_log never showed it", |v| v != "0" && !v.is_empty())
}

#[test]
fn create_authenticate_and_context() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (id, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'ci', 'member', ARRAY['read','write']");
    assert!(key.starts_with("tgk_") && key.len() == 50, "{key}");
    exec(&mut app, "BEGIN");
    assert_eq!(auth(&mut app, &key).unwrap(), w.org_a);
    assert_eq!(val(&mut app, "SELECT tenant_guard.current_api_key_id()").unwrap(), id);
    assert_eq!(val(&mut app, "SELECT tenant_guard.current_user_role()").unwrap(), "member");
    assert_eq!(val(&mut app, "SELECT tenant_guard.current_user_id()"), None);
    assert_eq!(val(&mut app, "SELECT tenant_guard.has_scope('write')").unwrap(), "t");
    assert_eq!(val(&mut app, "SELECT tenant_guard.has_scope('admin')").unwrap(), "f");
    assert_eq!(sqlstate(&app.simple_query("SELECT tenant_guard.require_scope('admin')")).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK; BEGIN");
    auth(&mut app, &key).unwrap();
    assert_eq!(val(&mut app, "SELECT count(*) FROM docs").unwrap(), "30", "RLS follows the key's org");
    // An API key context cannot manage members, nor mint, rotate or revoke keys.
    for q in [
        format!("SELECT tenant_guard.add_member('{STRANGER}', 'viewer')"),
        "SELECT * FROM tenant_guard.create_api_key('minted', 'member', '{*}', NULL)".to_string(),
        format!("SELECT * FROM tenant_guard.rotate_api_key('{id}')"),
        format!("SELECT tenant_guard.revoke_api_key('{id}')"),
    ] {
        exec(&mut app, "SAVEPOINT s");
        assert_eq!(sqlstate(&app.simple_query(&q)).as_deref(), Some("42501"), "{q}");
        exec(&mut app, "ROLLBACK TO SAVEPOINT s");
    }
    exec(&mut app, "ROLLBACK");
    // Even an admin-role key.
    let (_, admin_key) = create_key(&mut app, &w.org_a, ADMIN_A, "'admin-key', 'admin'");
    exec(&mut app, "BEGIN");
    auth(&mut app, &admin_key).unwrap();
    assert_eq!(
        sqlstate(&app.simple_query("SELECT * FROM tenant_guard.create_api_key('minted', 'admin')")).as_deref(),
        Some("42501")
    );
    exec(&mut app, "ROLLBACK");
}

#[test]
fn only_the_hash_is_stored_and_it_is_sha256() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (id, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'deploy'");
    exec(&mut app, "BEGIN");
    auth(&mut app, &key).unwrap();
    exec(&mut app, "COMMIT");
    let _ = auth(&mut app, &format!("{key}x"));
    let mut dba = db.dba();
    let same: bool = dba
        .query_one(
            "SELECT key_hash = sha256(convert_to($1, 'UTF8')) FROM tenant_guard.api_keys WHERE id = $2::text::uuid",
            &[&key, &id],
        )
        .unwrap()
        .get(0);
    assert!(same, "stored hash is PostgreSQL's sha256() of the key");
    assert_eq!(
        val(&mut dba, &format!("SELECT prefix FROM tenant_guard.api_keys WHERE id = '{id}'")).unwrap(),
        &key[..12]
    );
    // Not in any table...
    wait_for_log(&db, "SELECT count(*) FROM tenant_guard.request_log");
    let everything = rows(
        &mut dba,
        "SELECT string_agg(t::text, ' ') FROM (SELECT k::text AS t FROM tenant_guard.api_keys k
           UNION ALL SELECT l::text FROM tenant_guard.request_log l) s",
    );
    let everything = format!("{everything:?}");
    assert!(!everything.contains(&key[4..]), "plaintext found in a table");
    // ...nor in a dump.
    let port = cluster().port.to_string();
    let dump = cluster().run_tool("pg_dump", &["-h", "127.0.0.1", "-p", &port, "-U", "dba", "-d", &db.name]);
    assert!(dump.contains(&key[..12]), "the dump holds the keys' rows (pg_extension_config_dump)");
    assert!(!dump.contains(&key[4..]), "plaintext in pg_dump output");
    // ...nor in the server log.
    assert!(!cluster().server_log().contains(&key[4..]));
}

#[test]
fn who_may_create_and_see_keys() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    begin_as(&mut app, &w.org_a, MEMBER_A);
    let r = app.simple_query("SELECT * FROM tenant_guard.create_api_key('m')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "a member cannot create keys");
    exec(&mut app, "ROLLBACK");
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let r = app.simple_query("SELECT * FROM tenant_guard.create_api_key('o', 'owner')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "a key cannot outrank its creator");
    exec(&mut app, "ROLLBACK");
    for (args, code) in [
        ("'', 'member'", "22023"),
        ("'x', 'god'", "22023"),
        ("'x', 'member', '{}', '90 days', 0", "22023"),
        ("'x', 'member', '{}', '-1 day'", "22023"),
    ] {
        begin_as(&mut app, &w.org_a, ADMIN_A);
        let r = app.simple_query(&format!("SELECT * FROM tenant_guard.create_api_key({args})"));
        assert_eq!(sqlstate(&r).as_deref(), Some(code), "{args}: {}", full_error(&r));
        exec(&mut app, "ROLLBACK");
    }
    create_key(&mut app, &w.org_a, ADMIN_A, "'a1', 'admin'");
    create_key(&mut app, &w.org_b, OWNER_B, "'b1'");
    // Admins list their own org's keys; nobody but the service role reads a hash.
    begin_as(&mut app, &w.org_a, ADMIN_A);
    assert_eq!(val(&mut app, "SELECT string_agg(name, ',') FROM tenant_guard.api_keys").unwrap(), "a1");
    for q in ["SELECT key_hash FROM tenant_guard.api_keys", "SELECT * FROM tenant_guard.api_keys"] {
        exec(&mut app, "SAVEPOINT s");
        assert_eq!(sqlstate(&app.simple_query(q)).as_deref(), Some("42501"), "{q}");
        exec(&mut app, "ROLLBACK TO SAVEPOINT s");
    }
    exec(&mut app, "ROLLBACK");
    begin_as(&mut app, &w.org_a, MEMBER_A);
    assert_eq!(val(&mut app, "SELECT count(*) FROM tenant_guard.api_keys").unwrap(), "0", "members do not list keys");
    exec(&mut app, "ROLLBACK");
    let mut svc = db.svc();
    assert_eq!(val(&mut svc, "SELECT count(key_hash) FROM tenant_guard.api_keys").unwrap(), "2");
}

#[test]
fn bad_keys_all_fail_alike() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (revoked_id, revoked) = create_key(&mut app, &w.org_a, ADMIN_A, "'r'");
    let (expired_id, expired) = create_key(&mut app, &w.org_a, ADMIN_A, "'e'");
    let (_, good) = create_key(&mut app, &w.org_a, ADMIN_A, "'g'");
    begin_as(&mut app, &w.org_a, ADMIN_A);
    exec(&mut app, &format!("SELECT tenant_guard.revoke_api_key('{revoked_id}')"));
    exec(&mut app, "COMMIT");
    db.dba()
        .batch_execute(&format!(
            "UPDATE tenant_guard.api_keys SET expires_at = now() - interval '1 second' WHERE id = '{expired_id}'"
        ))
        .unwrap();
    let mut tampered = good.clone().into_bytes();
    tampered[10] = if tampered[10] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    // A well-formed key with a valid checksum that was never issued.
    let never_issued = {
        let mut d = db.dba();
        // Make one through the real generator, then delete it.
        exec(&mut d, "BEGIN");
        let k = create_key(&mut app, &w.org_a, ADMIN_A, "'tmp'");
        exec(&mut d, &format!("DELETE FROM tenant_guard.api_keys WHERE id = '{}'", k.0));
        exec(&mut d, "COMMIT");
        k.1
    };
    let cases = [
        ("revoked", revoked.as_str()),
        ("expired", expired.as_str()),
        ("tampered", tampered.as_str()),
        ("truncated", &good[..good.len() - 3]),
        ("empty", ""),
        ("foreign prefix", "ghp_0123456789abcdefghijABCDEFGHIJ012345"),
        ("never issued", never_issued.as_str()),
        ("huge", &"tgk_".repeat(1000)),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (what, key) in cases {
        let r = auth(&mut app, key);
        assert_eq!(sqlstate(&r).as_deref(), Some("28000"), "{what}");
        seen.insert(full_error(&r));
        let leaked = !key.is_empty() && full_error(&r).contains(key);
        assert!(!leaked, "{what}: key echoed");
    }
    let r = app.query_one("SELECT tenant_guard.authenticate(NULL)::text", &[]);
    assert_eq!(sqlstate(&r).as_deref(), Some("28000"));
    seen.insert(full_error(&r));
    assert_eq!(seen.len(), 1, "one generic error for every failure: {seen:?}");
    assert!(auth(&mut app, &good).is_ok());
    // The log tells them apart for the org's admins.
    wait_for_log(&db, "SELECT count(*) FROM tenant_guard.request_log WHERE outcome = 'revoked'");
    wait_for_log(&db, "SELECT count(*) FROM tenant_guard.request_log WHERE outcome = 'expired'");
    wait_for_log(&db, "SELECT count(*) FROM tenant_guard.request_log WHERE outcome = 'invalid'");
}

/// authenticate() finds keys by a direct index probe under the latest
/// snapshot: a revocation counts as soon as it is committed (or made earlier
/// in the same transaction), whatever the isolation level or imported snapshot.
#[test]
fn revocation_is_seen_by_the_next_statement() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let mut admin = db.app();
    let (id, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'k'");
    exec(&mut app, "BEGIN");
    assert_eq!(auth(&mut app, &key).unwrap(), w.org_a);
    begin_as(&mut admin, &w.org_a, ADMIN_A);
    exec(&mut admin, &format!("SELECT tenant_guard.revoke_api_key('{id}')"));
    assert_eq!(auth(&mut app, &key).unwrap(), w.org_a, "not committed yet");
    exec(&mut admin, "COMMIT");
    assert_eq!(
        sqlstate(&auth(&mut app, &key)).as_deref(),
        Some("28000"),
        "same READ COMMITTED transaction, next statement"
    );
    exec(&mut app, "ROLLBACK");
    // Revoked and then un-revoked inside one transaction that rolls back.
    let (id2, key2) = create_key(&mut app, &w.org_a, ADMIN_A, "'k2'");
    begin_as(&mut app, &w.org_a, ADMIN_A);
    exec(&mut app, &format!("SELECT tenant_guard.revoke_api_key('{id2}')"));
    assert_eq!(sqlstate(&auth(&mut app, &key2)).as_deref(), Some("28000"), "own uncommitted revocation");
    exec(&mut app, "ROLLBACK");
    assert_eq!(auth(&mut app, &key2).unwrap(), w.org_a, "the rollback undid it");
    // Expiry follows the clock, not the transaction's start.
    let (id3, key3) = create_key(&mut app, &w.org_a, ADMIN_A, "'k3'");
    exec(&mut app, "BEGIN");
    assert_eq!(auth(&mut app, &key3).unwrap(), w.org_a);
    db.dba()
        .batch_execute(&format!("UPDATE tenant_guard.api_keys SET expires_at = clock_timestamp() WHERE id = '{id3}'"))
        .unwrap();
    assert_eq!(sqlstate(&auth(&mut app, &key3)).as_deref(), Some("28000"), "expired during the transaction");
    exec(&mut app, "ROLLBACK");
    // Nor does a REPEATABLE READ transaction that started before it, nor one
    // that imports a snapshot exported before the revocation.
    let (id4, key4) = create_key(&mut app, &w.org_a, ADMIN_A, "'k4'");
    exec(&mut app, "BEGIN ISOLATION LEVEL REPEATABLE READ");
    assert_eq!(auth(&mut app, &key4).unwrap(), w.org_a);
    let mut exporter = db.app();
    exec(&mut exporter, "BEGIN ISOLATION LEVEL REPEATABLE READ");
    let snap = val(&mut exporter, "SELECT pg_export_snapshot()").unwrap();
    begin_as(&mut admin, &w.org_a, ADMIN_A);
    exec(&mut admin, &format!("SELECT tenant_guard.revoke_api_key('{id4}')"));
    exec(&mut admin, "COMMIT");
    assert_eq!(
        sqlstate(&auth(&mut app, &key4)).as_deref(),
        Some("28000"),
        "REPEATABLE READ begun before the revocation"
    );
    exec(&mut app, "ROLLBACK");
    exec(&mut app, &format!("BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snap}'"));
    assert_eq!(sqlstate(&auth(&mut app, &key4)).as_deref(), Some("28000"), "snapshot exported before the revocation");
    exec(&mut app, "ROLLBACK");
    exec(&mut exporter, "COMMIT");
    // A DO block that commits between calls is one statement: expiry still
    // follows the clock.
    let (id5, key5) = create_key(&mut app, &w.org_a, ADMIN_A, "'k5'");
    db.dba()
        .batch_execute(&format!(
            "UPDATE tenant_guard.api_keys SET expires_at = clock_timestamp() + interval '1 second' WHERE id = '{id5}'"
        ))
        .unwrap();
    let r = app.batch_execute(&format!(
        "DO $$ BEGIN FOR i IN 1..30 LOOP PERFORM tenant_guard.authenticate('{key5}'); COMMIT; PERFORM pg_sleep(0.1); END LOOP; END $$"
    ));
    assert_eq!(sqlstate(&r).as_deref(), Some("28000"), "an expired key kept working inside a committing DO loop");
}

#[test]
fn rotation_keeps_the_old_key_until_the_grace_ends() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (old_id, old) = create_key(&mut app, &w.org_a, ADMIN_A, "'svc', 'member', ARRAY['read']");
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let r = rows(&mut app, &format!("SELECT key_id, api_key FROM tenant_guard.rotate_api_key('{old_id}', '1 hour')"));
    exec(&mut app, "COMMIT");
    let (new_id, new) = (r[0][0].clone().unwrap(), r[0][1].clone().unwrap());
    assert_ne!(new, old);
    exec(&mut app, "BEGIN");
    auth(&mut app, &new).unwrap();
    assert_eq!(val(&mut app, "SELECT tenant_guard.has_scope('read')").unwrap(), "t", "scopes carried over");
    exec(&mut app, "COMMIT");
    assert!(auth(&mut app, &old).is_ok(), "old key works during the grace period");
    // The grace period ends.
    db.dba()
        .batch_execute(&format!(
            "UPDATE tenant_guard.api_keys SET expires_at = now() - interval '1 second' WHERE id = '{old_id}'"
        ))
        .unwrap();
    assert_eq!(sqlstate(&auth(&mut app, &old)).as_deref(), Some("28000"));
    assert!(auth(&mut app, &new).is_ok());
    let mut dba = db.dba();
    assert_eq!(
        val(&mut dba, &format!("SELECT rotated_to FROM tenant_guard.api_keys WHERE id = '{old_id}'")).unwrap(),
        new_id
    );
    // Zero grace: the old key stops at once. Another org's key cannot be rotated.
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let r = rows(&mut app, &format!("SELECT api_key FROM tenant_guard.rotate_api_key('{new_id}', '0')"));
    exec(&mut app, "COMMIT");
    assert!(auth(&mut app, &r[0][0].clone().unwrap()).is_ok());
    assert_eq!(sqlstate(&auth(&mut app, &new)).as_deref(), Some("28000"));
    begin_as(&mut app, &w.org_b, OWNER_B);
    let r = app.simple_query(&format!("SELECT * FROM tenant_guard.rotate_api_key('{old_id}')"));
    assert_eq!(sqlstate(&r).as_deref(), Some("02000"));
    exec(&mut app, "ROLLBACK");
}

#[test]
fn rate_limit_is_exact_under_concurrency() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (_, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'limited', 'member', '{}', '1 day', 10");
    let clients = 4;
    let per_client = 12;
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let mut c = db.app();
            let key = key.clone();
            std::thread::spawn(move || {
                let mut ok = 0;
                let mut limited = 0;
                for _ in 0..per_client {
                    match auth(&mut c, &key) {
                        Ok(_) => ok += 1,
                        Err(e) => {
                            let db_err = e.as_db_error().expect("db error");
                            assert_eq!(db_err.code().code(), "53400");
                            assert!(
                                db_err.detail().unwrap_or("").starts_with("retry_after_ms="),
                                "{:?}",
                                db_err.detail()
                            );
                            limited += 1;
                        }
                    }
                }
                (ok, limited)
            })
        })
        .collect();
    let (mut ok, mut limited) = (0, 0);
    for h in handles {
        let (o, l) = h.join().unwrap();
        ok += o;
        limited += l;
    }
    // 10 per minute, all usable at once: exactly 10 of 48 pass within the test's few seconds.
    assert_eq!(ok, 10, "admitted");
    assert_eq!(limited, clients * per_client - 10);
    wait_for_log(&db, "SELECT count(*) >= 38 FROM tenant_guard.request_log WHERE outcome = 'rate_limited'");
}

#[test]
fn failed_attempt_in_a_rolled_back_transaction_is_logged() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    exec(&mut app, "BEGIN");
    let r = app
        .query_one("SELECT tenant_guard.authenticate('tgk_nope', 'login-in-rolled-back-tx', '203.0.113.9')::text", &[]);
    assert_eq!(sqlstate(&r).as_deref(), Some("28000"));
    exec(&mut app, "ROLLBACK");
    let n = wait_for_log(
        &db,
        "SELECT count(*) FROM tenant_guard.request_log WHERE outcome = 'invalid' AND action = 'login-in-rolled-back-tx' AND client_addr = '203.0.113.9'",
    );
    assert_eq!(n, "1");
    // A success inside a rolled-back transaction is logged too, and updates last_used_at.
    let (id, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'k'");
    exec(&mut app, "BEGIN");
    auth(&mut app, &key).unwrap();
    exec(&mut app, "ROLLBACK");
    wait_for_log(
        &db,
        &format!("SELECT count(*) FROM tenant_guard.request_log WHERE outcome = 'ok' AND api_key_id = '{id}'"),
    );
    wait_for_log(
        &db,
        &format!("SELECT count(*) FROM tenant_guard.api_keys WHERE id = '{id}' AND last_used_at IS NOT NULL"),
    );
    // Admins of the org read its log; others do not.
    begin_as(&mut app, &w.org_a, ADMIN_A);
    assert_eq!(
        val(
            &mut app,
            "SELECT count(*) FROM tenant_guard.request_log WHERE org_id IS DISTINCT FROM tenant_guard.current_org_id()"
        )
        .unwrap(),
        "0"
    );
    assert_eq!(val(&mut app, "SELECT count(*) > 0 FROM tenant_guard.request_log").unwrap(), "t");
    exec(&mut app, "COMMIT");
    begin_as(&mut app, &w.org_a, MEMBER_A);
    assert_eq!(val(&mut app, "SELECT count(*) FROM tenant_guard.request_log").unwrap(), "0");
    exec(&mut app, "COMMIT");
    // Purging is the service role's.
    assert_eq!(sqlstate(&app.simple_query("SELECT tenant_guard.purge_request_log('0')")).as_deref(), Some("42501"));
    let mut svc = db.svc();
    assert_ne!(val(&mut svc, "SELECT tenant_guard.purge_request_log('0')").unwrap(), "0");
}

/// The request log loses nothing when the queue fills: with the writer held
/// up (a lock on request_log), 6,000 calls overflow the 4,096-entry queue;
/// the callers then wait for room instead of dropping entries, and once the
/// writer can go on, every entry reaches the table.
#[test]
fn a_full_queue_makes_callers_wait_instead_of_dropping() {
    // Its own cluster: the queue is shared by all databases of a cluster.
    let c = Cluster::start(Options::default());
    let db = c.fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (id, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'burst', 'member', '{}', NULL, 100000000");
    let mut dba = db.dba();
    let mut locker = db.dba();
    let dropped = |c: &mut Client| val(c, "SELECT dropped FROM tenant_guard.request_log_queue()").unwrap();
    let before = dropped(&mut dba);
    // Make sure this database's writer is running, then block its INSERTs.
    auth(&mut app, &key).unwrap();
    wait_for_log(&db, "SELECT count(*) FROM tenant_guard.request_log WHERE action = 'test'");
    exec(&mut locker, "BEGIN; LOCK tenant_guard.request_log IN SHARE MODE");
    let burst = std::thread::spawn(move || {
        let n: i64 = app
            .query_one("SELECT count(tenant_guard.authenticate($1, 'burst')) FROM generate_series(1, 6000)", &[&key])
            .unwrap()
            .get(0);
        n
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while val(&mut dba, "SELECT queued FROM tenant_guard.request_log_queue()").unwrap() != "4096" {
        assert!(!burst.is_finished(), "the burst finished without filling the queue");
        assert!(Instant::now() < deadline, "the queue never filled");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Full, and the burst is still running: it is waiting, not dropping.
    assert!(!burst.is_finished());
    assert_eq!(dropped(&mut dba), before, "entries were dropped while the queue was full");
    exec(&mut locker, "COMMIT");
    assert_eq!(burst.join().unwrap(), 6000);
    poll(
        &mut dba,
        "SELECT count(*) FROM tenant_guard.request_log WHERE action = 'burst'",
        30,
        "not all 6000 entries logged",
        |v| v == "6000",
    );
    assert_eq!(dropped(&mut dba), before, "nothing dropped");
    let last_used =
        val(&mut dba, &format!("SELECT last_used_at IS NOT NULL FROM tenant_guard.api_keys WHERE id = '{id}'"));
    assert_eq!(last_used.as_deref(), Some("t"));
}

/// A writer whose batch fails (here a trigger rejects one entry) exits; the
/// batch it took is counted as dropped, its slot is freed at once, and the
/// next call starts a new writer that logs again.
#[test]
fn a_failing_writer_is_replaced_and_its_loss_counted() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (_, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'k'");
    let mut dba = db.dba();
    exec(
        &mut dba,
        "CREATE FUNCTION public.reject_boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'boom'; END $$;
         CREATE TRIGGER reject_boom BEFORE INSERT ON tenant_guard.request_log FOR EACH ROW
           WHEN (NEW.action = 'boom') EXECUTE FUNCTION public.reject_boom();",
    );
    auth(&mut app, &key).unwrap();
    wait_for_log(&db, "SELECT count(*) FROM tenant_guard.request_log WHERE action = 'test'");
    let dropped_sql = "SELECT dropped FROM tenant_guard.request_log_queue()";
    let before = val(&mut dba, dropped_sql).unwrap();
    app.query_one("SELECT tenant_guard.authenticate($1, 'boom')::text", &[&key]).unwrap();
    poll(&mut dba, dropped_sql, 15, "the failed batch was never counted as dropped", |v| v != before);
    // Logging goes on at once, with a new writer (no 5 s wait for a stale slot).
    let t = Instant::now();
    app.query_one("SELECT tenant_guard.authenticate($1, 'after')::text", &[&key]).unwrap();
    wait_for_log(&db, "SELECT count(*) FROM tenant_guard.request_log WHERE action = 'after'");
    assert!(t.elapsed() < Duration::from_secs(4), "logging resumed only after {:?}", t.elapsed());
    assert_eq!(val(&mut dba, "SELECT count(*) FROM tenant_guard.request_log WHERE action = 'boom'").unwrap(), "0");
}

/// The log writer runs as the bootstrap superuser in the database, so it
/// must not pick up what a database owner can set there: a search_path that
/// puts the owner's functions and operators before pg_catalog (run as
/// superuser, they could make anyone a superuser), or settings that stop it
/// writing (read-only transactions, a lock timeout).
#[test]
fn the_log_writer_ignores_hostile_database_settings() {
    // 1. A planted to_timestamp() and = for uuid, first on the database's search_path.
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (_, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'k'");
    let mallory = format!("mallory_{}", db.name);
    let mut dba = db.dba();
    exec(&mut dba, &format!("CREATE ROLE {mallory} LOGIN; CREATE SCHEMA evil AUTHORIZATION app"));
    exec(
        &mut app,
        &format!(
            "CREATE FUNCTION evil.to_timestamp(double precision) RETURNS timestamptz LANGUAGE plpgsql AS $$
               BEGIN EXECUTE 'ALTER ROLE {mallory} SUPERUSER'; RETURN pg_catalog.to_timestamp($1); END $$;
             CREATE FUNCTION evil.eq(uuid, uuid) RETURNS boolean LANGUAGE plpgsql AS $$
               BEGIN EXECUTE 'ALTER ROLE {mallory} SUPERUSER'; RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
             CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.eq);"
        ),
    );
    exec(&mut dba, &format!("ALTER DATABASE {} SET search_path = evil, pg_catalog, public", db.name));
    let mut fresh = db.app();
    auth(&mut fresh, &key).unwrap();
    wait_for_log(&db, "SELECT count(*) FROM tenant_guard.request_log WHERE action = 'test'");
    wait_for_log(&db, "SELECT count(*) FROM tenant_guard.api_keys WHERE last_used_at IS NOT NULL");
    let sup = val(&mut dba, &format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{mallory}'"));
    exec(&mut dba, &format!("DROP ROLE {mallory}"));
    assert_eq!(sup.as_deref(), Some("f"), "the writer ran a planted function as superuser");

    // 2. Read-only transactions and a 1 ms lock timeout by default.
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (_, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'k'");
    let mut dba = db.dba();
    exec(
        &mut dba,
        &format!(
            "ALTER DATABASE {0} SET default_transaction_read_only = on; ALTER DATABASE {0} SET lock_timeout = '1ms'",
            db.name
        ),
    );
    let mut fresh = db.app();
    auth(&mut fresh, &key).unwrap();
    wait_for_log(&db, "SELECT count(*) FROM tenant_guard.request_log WHERE action = 'test'");
}

/// "No oracle": a failed authenticate() must not tell a stored (revoked,
/// expired) key from one never issued, not even through the statistics
/// counters of api_keys and its index, which any role can read for its own
/// transaction.
#[test]
fn statistics_counters_are_no_oracle() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (id, revoked) = create_key(&mut app, &w.org_a, ADMIN_A, "'r'");
    begin_as(&mut app, &w.org_a, ADMIN_A);
    exec(&mut app, &format!("SELECT tenant_guard.revoke_api_key('{id}')"));
    exec(&mut app, "COMMIT");
    let (never, _) = {
        let (nid, k) = create_key(&mut app, &w.org_a, ADMIN_A, "'tmp'");
        db.dba().batch_execute(&format!("DELETE FROM tenant_guard.api_keys WHERE id = '{nid}'")).unwrap();
        (k, nid)
    };
    let counters = "SELECT pg_stat_get_xact_tuples_returned('tenant_guard.api_keys_key_hash_key'::regclass)::text || '/' ||
                           pg_stat_get_xact_tuples_fetched('tenant_guard.api_keys_key_hash_key'::regclass)::text || '/' ||
                           pg_stat_get_xact_numscans('tenant_guard.api_keys_key_hash_key'::regclass)::text || '/' ||
                           pg_stat_get_xact_tuples_fetched('tenant_guard.api_keys'::regclass)::text";
    let mut seen = vec![];
    for key in [revoked.as_str(), never.as_str()] {
        exec(&mut app, "BEGIN");
        let before = val(&mut app, counters).unwrap();
        exec(&mut app, "SAVEPOINT s");
        assert_eq!(sqlstate(&auth(&mut app, key)).as_deref(), Some("28000"));
        exec(&mut app, "ROLLBACK TO SAVEPOINT s");
        seen.push((before, val(&mut app, counters).unwrap()));
        exec(&mut app, "ROLLBACK");
    }
    assert_eq!(seen[0], seen[1], "the counters tell a revoked key from a never-issued one");
}

/// A database owner's ALTER DATABASE ... SET role must not turn the
/// (superuser) log writer into a role that cannot write the log.
#[test]
fn the_log_writer_ignores_a_database_role_setting() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (_, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'k'");
    db.dba().batch_execute(&format!("ALTER DATABASE {} SET role = 'app'", db.name)).unwrap();
    let mut fresh = db.app();
    auth(&mut fresh, &key).unwrap();
    // dba's own connections to this database now start as app too.
    let mut dba = db.dba();
    exec(&mut dba, "SET ROLE NONE");
    let sql = "SELECT count(*) FROM tenant_guard.request_log WHERE action = 'test'";
    poll(&mut dba, sql, 15, "the writer did not log under ALTER DATABASE ... SET role", |v| v != "0");
    exec(&mut dba, &format!("ALTER DATABASE {} RESET role", db.name));
}

/// The direct lookup checks the schema it reads: a column of another type
/// (an owner's ALTER TABLE) is a clear error, not a misread value or a crash.
#[test]
fn a_changed_column_type_fails_loudly() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (_, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'k'");
    db.dba().batch_execute("ALTER TABLE tenant_guard.api_keys ALTER COLUMN rate_limit_per_minute TYPE bigint").unwrap();
    let r = db.app().query_one("SELECT tenant_guard.authenticate($1)::text", &[&key]);
    assert_eq!(sqlstate(&r).as_deref(), Some("55000"), "{}", full_error(&r));
    assert!(full_error(&r).contains("has another type"), "{}", full_error(&r));
}

#[test]
fn import_existing_hashes() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let legacy = "sk_live_legacy-system-key-123456";
    let mut app = db.app();
    let r = app.simple_query(&format!(
        "SELECT tenant_guard.import_api_key_hash('{}', 'legacy', sha256('{legacy}'::bytea))",
        w.org_a
    ));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "service role only");
    let mut svc = db.svc();
    exec(
        &mut svc,
        &format!(
            "SELECT tenant_guard.import_api_key_hash('{}', 'legacy', sha256('{legacy}'::bytea), 'viewer', ARRAY['read'], now() + interval '1 day', 100, 'sk_live_leg')",
            w.org_a
        ),
    );
    let r = svc.simple_query(&format!("SELECT tenant_guard.import_api_key_hash('{}', 'short', '\\x0102')", w.org_a));
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"));
    exec(&mut app, "BEGIN");
    assert_eq!(auth(&mut app, legacy).unwrap(), w.org_a);
    assert_eq!(val(&mut app, "SELECT tenant_guard.current_user_role()").unwrap(), "viewer");
    exec(&mut app, "COMMIT");
    assert_eq!(sqlstate(&auth(&mut app, "sk_live_legacy-system-key-123457")).as_deref(), Some("28000"));
}

#[test]
fn keys_and_secrets_given_as_literals_stay_out_of_the_log() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    // Errors inside these functions would normally log the statement, literal and all.
    let _ = app.simple_query("SELECT tenant_guard.authenticate('tgk_LITERALKEYMARKER0123456789abcdefghijklmn0000')");
    begin_as(&mut app, &w.org_a, MEMBER_A);
    let r = app.simple_query("SELECT tenant_guard.put_secret('smtp', 'pw', 'LITERALSECRETMARKER')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");
    let _ = app.simple_query("SELECT tenant_guard.authenticate_jwt('LITERALJWTMARKER.x.y')");
    let _ = app.simple_query("SELECT tenant_guard.webhook_sign('whsec_LITERALWHSECMARKER%%%', 'm', 1, 'p')");
    // A statement that fails outside them is logged as usual (the control).
    let _ = app.simple_query("SELECT 'CONTROLMARKER'::int");
    std::thread::sleep(Duration::from_millis(300));
    let log = cluster().server_log();
    assert!(log.contains("CONTROLMARKER"), "the log does record failing statements");
    for m in ["LITERALKEYMARKER", "LITERALSECRETMARKER", "LITERALJWTMARKER", "LITERALWHSECMARKER"] {
        assert!(!log.contains(m), "{m} reached the server log");
    }
}

/// Settings any role may give itself, or a DBA may turn on, make PostgreSQL
/// log bound parameters and plans: the log hook keeps API keys, JWTs and
/// secrets out of them (and the controls show the settings did work).
#[test]
fn keys_and_secrets_stay_out_of_logged_parameters_and_plans() {
    let c = Cluster::start(Options::default());
    let db = c.fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (_, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'k'");
    let (never_issued, _) = {
        let (id, k) = create_key(&mut app, &w.org_a, ADMIN_A, "'tmp'");
        db.dba().batch_execute(&format!("DELETE FROM tenant_guard.api_keys WHERE id = '{id}'")).unwrap();
        (k, id)
    };
    let secret = "sk_live_BOUNDSECRETMARKER";
    let jwt = token_for(&w.org_a, ADMIN_A);
    exec(
        &mut app,
        "SET log_parameter_max_length_on_error = -1;
         SET debug_print_plan = on; SET debug_print_parse = on; SET client_min_messages = warning",
    );
    exec(&mut app, "BEGIN");
    assert_eq!(auth(&mut app, &key).unwrap(), w.org_a);
    exec(&mut app, "COMMIT");
    assert_eq!(sqlstate(&auth(&mut app, &never_issued)).as_deref(), Some("28000"));
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let r = app.query_one("SELECT tenant_guard.put_secret('webhook', 'n', $1)::text", &[&secret]);
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"), "reserved kind");
    exec(&mut app, "ROLLBACK");
    let r = app.query_one("SELECT tenant_guard.authenticate_jwt($1)::text", &[&format!("{jwt}x")]);
    assert!(r.is_err());
    // Through a wrapper of the application's, whose statements do not name tenant_guard.
    db.dba()
        .batch_execute(
            "CREATE FUNCTION public.my_auth(k text) RETURNS uuid LANGUAGE sql AS 'SELECT tenant_guard.authenticate(k)'",
        )
        .unwrap();
    exec(&mut app, "BEGIN");
    app.query_one("SELECT public.my_auth($1)::text", &[&key]).unwrap();
    exec(&mut app, "COMMIT");
    assert_eq!(sqlstate(&app.query_one("SELECT public.my_auth($1)::text", &[&never_issued])).as_deref(), Some("28000"));
    // Controls: a statement that does not involve tenant_guard has its parameters logged.
    let r = app.query_one("SELECT 1 / $1::text::int", &[&"0"]);
    assert!(r.is_err());
    app.query_one("SELECT length($1::text || random()::text)", &[&"CONTROLPLANMARKER"]).unwrap();
    // A DBA's log_min_duration_statement = 0 logs every statement with its parameters.
    db.dba().batch_execute("ALTER ROLE app SET log_min_duration_statement = 0").unwrap();
    let mut app2 = db.app();
    exec(&mut app2, "BEGIN");
    assert_eq!(auth(&mut app2, &key).unwrap(), w.org_a);
    app2.simple_query(&format!("SELECT tenant_guard.authenticate('{key}', 'literal')")).unwrap();
    exec(&mut app2, "COMMIT");
    db.dba().batch_execute("ALTER ROLE app RESET log_min_duration_statement").unwrap();
    // Control: a superuser's own plans are still dumped (unless they name tenant_guard).
    let mut dba = db.dba();
    exec(&mut dba, "SET debug_print_plan = on");
    dba.query_one("SELECT length($1::text || random()::text)", &[&"CONTROLPLANMARKER"]).unwrap();
    dba.query_one("SELECT tenant_guard.authenticate($1)::text", &[&key]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let log = c.server_log();
    // Node dumps print a Const's bytes in decimal, wrapped over lines (even
    // inside a number): compare with all whitespace removed.
    let flat: String = log.chars().filter(|c| !c.is_whitespace()).collect();
    let decimal = |s: &str| s.bytes().map(|b| b.to_string()).collect::<String>();
    assert!(log.contains("parameters: $1 = '0'"), "control: parameters are logged");
    // Plan dumps of a non-superuser's session are not written at all.
    assert_eq!(flat.matches(&decimal("CONTROLPLANMARKER")).count(), 1, "only the superuser's control plan is dumped");
    assert_eq!(log.matches("LOG:  plan:").count(), 1, "only the superuser's control plan is dumped");
    assert!(log.contains("duration:"), "control: durations are logged");
    // (The display prefix may stay; literals in calls of tenant_guard's
    // key-taking functions are masked whole.)
    for (what, needle) in [
        ("key", key[12..].to_string()),
        ("key as plan bytes", decimal(&key[4..16])),
        ("never-issued key", never_issued[12..].to_string()),
        ("secret", "BOUNDSECRETMARKER".to_string()),
        ("secret as plan bytes", decimal("BOUNDSECRETMARKER")),
        ("JWT", jwt[jwt.len() - 20..].to_string()),
    ] {
        assert!(!log.contains(&needle) && !flat.contains(&needle), "{what} reached the server log");
    }
}

#[test]
fn general_rate_limit() {
    let db = cluster().fresh_db();
    let mut app = db.app();
    let got: Vec<bool> = (0..5)
        .map(|_| val(&mut app, "SELECT tenant_guard.rate_limit('login:alice', 1, '1 minute', 2)").unwrap() == "t")
        .collect();
    assert_eq!(got, vec![true, true, true, false, false]);
    assert_eq!(val(&mut app, "SELECT tenant_guard.rate_limit('login:bob', 1, '1 minute', 2)").unwrap(), "t");
    let r = app.simple_query("SELECT tenant_guard.rate_limit('x', 0, '1 minute')");
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"));
    let r = app.simple_query("SELECT tenant_guard.rate_limit('x', 1, '0')");
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"));
    // Nobody parks a bucket for a thousand years...
    let r = app.simple_query("SELECT tenant_guard.rate_limit('login:alice', 1, '1000 years')");
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"));
    // (a bucket whose tolerance would exceed a day is refused too)
    let r = app.simple_query("SELECT tenant_guard.rate_limit('login:alice', 1, '1 day', 5)");
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"));
    // NULL never comes back as NULL (which `IF NOT rate_limit(...)` would let through).
    let r = app.simple_query("SELECT tenant_guard.rate_limit(NULL, 1, '1 minute')");
    assert_eq!(sqlstate(&r).as_deref(), Some("22004"));
    // ...and other parameters mean another bucket, not alice's.
    assert_eq!(val(&mut app, "SELECT tenant_guard.rate_limit('login:alice', 1, '1 day')").unwrap(), "t");
    assert_eq!(val(&mut app, "SELECT tenant_guard.rate_limit('login:bob', 1, '1 minute', 2)").unwrap(), "t");
}

#[test]
fn rate_limit_buckets_are_per_org() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    begin_as(&mut app, &w.org_a, OWNER_A);
    assert_eq!(val(&mut app, "SELECT tenant_guard.rate_limit('exports', 1, '1 hour')").unwrap(), "t");
    assert_eq!(val(&mut app, "SELECT tenant_guard.rate_limit('exports', 1, '1 hour')").unwrap(), "f");
    exec(&mut app, "COMMIT");
    begin_as(&mut app, &w.org_b, OWNER_B);
    assert_eq!(
        val(&mut app, "SELECT tenant_guard.rate_limit('exports', 1, '1 hour')").unwrap(),
        "t",
        "org B has its own bucket"
    );
    exec(&mut app, "COMMIT");
}

#[test]
fn authenticate_works_on_a_hot_standby() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (_, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'ro'");
    let standby = cluster().start_standby();
    let mut s = standby.connect(&db.name, "app");
    assert_eq!(val(&mut s, "SELECT pg_is_in_recovery()").unwrap(), "t");
    exec(&mut s, "BEGIN");
    assert_eq!(auth(&mut s, &key).unwrap(), w.org_a);
    assert_eq!(val(&mut s, "SELECT count(*) FROM docs").unwrap(), "30");
    exec(&mut s, "COMMIT");
    assert_eq!(sqlstate(&auth(&mut s, "tgk_bad")).as_deref(), Some("28000"));
}

#[test]
fn a_hostile_search_path_cannot_hijack_authenticate() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (_, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'k'");
    db.dba().batch_execute("CREATE SCHEMA evil AUTHORIZATION app").unwrap();
    // Operators and functions that would match any key, or shout if ever run.
    exec(
        &mut app,
        "CREATE FUNCTION evil.eq(bytea, bytea) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'evil operator ran'; END $$;
         CREATE OPERATOR evil.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = evil.eq);
         CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'evil now ran'; END $$;
         CREATE FUNCTION evil.le(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'evil <= ran'; END $$;
         CREATE OPERATOR evil.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.le);",
    );
    for path in ["evil, pg_catalog", "pg_temp, evil, pg_catalog, public"] {
        // A fresh backend, so nothing is cached from another search_path.
        let mut c = db.app();
        exec(&mut c, &format!("SET search_path = {path}"));
        let r = auth(&mut c, "tgk_this-is-not-a-key");
        assert_eq!(sqlstate(&r).as_deref(), Some("28000"), "{}", full_error(&r));
        exec(&mut c, "BEGIN");
        assert_eq!(auth(&mut c, &key).unwrap(), w.org_a, "{}", path);
        exec(&mut c, "COMMIT");
    }
}
