//! Rate limiting: exact under concurrency, buckets per org and parameters.
//! (Eviction and fail-closed behaviour under a flood: hardening.rs.)

mod common;
use common::*;
use tenant_guard_harness::{cluster, sqlstate, Db};

/// Poll the request log (as the superuser) until `pred` holds, or time out.
fn wait_for_log(db: &Db, sql: &str) -> String {
    poll(&mut db.dba(), sql, 15, "request_log never showed it", |v| v != "0" && !v.is_empty())
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
