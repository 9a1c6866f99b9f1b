//! API keys: shown once and stored as SHA-256 only; authenticate() with
//! scopes, revocation and expiry as committed now, rotation, import of
//! existing hashes, no oracle; the attacker is the plain login role `app`.

mod common;
use common::*;
use tenant_guard_harness::{cluster, full_error, sqlstate, Db};

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
