//! The request log: every attempt recorded, also when the caller rolls
//! back; back-pressure instead of drops; a writer that hostile database
//! settings cannot turn against the cluster.

mod common;
use common::*;
use postgres::Client;
use std::time::{Duration, Instant};
use tenant_guard_harness::{cluster, sqlstate, Cluster, Db, Options};

/// Poll the request log (as the superuser) until `pred` holds, or time out.
fn wait_for_log(db: &Db, sql: &str) -> String {
    poll(&mut db.dba(), sql, 15, "request_log never showed it", |v| v != "0" && !v.is_empty())
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
/// up (a lock on request_log), 6,000 calls overflow the request log's share
/// of the queue (3,072 of its 4,096 entries; the rest is kept for the audit trail);
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
    while val(&mut dba, "SELECT queued FROM tenant_guard.request_log_queue()").unwrap() != "3072" {
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
