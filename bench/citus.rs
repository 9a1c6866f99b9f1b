//! Citus: a tenant's queries through RLS (the app role in a request
//! context) against the same queries with an explicit `WHERE org_id = $1`
//! (the superuser, no context), on a coordinator and two workers, 200,000
//! rows in 200 orgs of a table distributed by org_id. Target: at most 1.2x.
//! Interleaved rounds, medians:
//! (1) inside one transaction that holds the context: count one org, and
//!     a primary-key lookup;
//! (2) a whole request: BEGIN; sign in; count; COMMIT, against BEGIN;
//!     count with WHERE; COMMIT (what the context costs per request,
//!     carrying it to the worker included).
//! Run with `scripts/bench.sh citus` (needs Citus installed: scripts/setup.sh).

use std::time::Instant;
use tenant_guard_harness::{bench_table, sign_hs256, CitusCluster, JWT_SECRET};

const ROWS: i64 = 200_000;
const ORGS: i64 = 200;

fn main() {
    let quick = std::env::var("TG_BENCH_QUICK").is_ok();
    let rounds = if quick { 3 } else { 11 };
    let per = if quick { 50 } else { 300 };
    let citus = CitusCluster::start();
    let mut dba = citus.connect("dba");
    let t = Instant::now();
    dba.batch_execute(&format!(
        "CREATE TABLE orgs AS SELECT g AS n, gen_random_uuid() AS id FROM generate_series(1, {ORGS}) g;
         INSERT INTO tenant_guard.organizations (id, name) SELECT id, 'org ' || n FROM orgs;
         INSERT INTO tenant_guard.memberships (org_id, user_id, role)
              SELECT id, '00000000-0000-4000-8000-000000000001', 'member' FROM orgs;
         CREATE TABLE items (org_id uuid NOT NULL, id bigint NOT NULL, payload text NOT NULL, PRIMARY KEY (org_id, id));
         SELECT create_distributed_table('items', 'org_id');
         SELECT tenant_guard.protect('items');
         INSERT INTO items SELECT o.id, g, md5(g::text) FROM generate_series(1, {ROWS}) g JOIN orgs o ON o.n = 1 + (g % {ORGS});
         GRANT SELECT ON items TO app;
         ANALYZE items;"
    ))
    .expect("load");
    eprintln!("loaded {ROWS} rows in {:.1}s", t.elapsed().as_secs_f64());
    let org: String = dba.query_one("SELECT id::text FROM orgs WHERE n = 100", &[]).unwrap().get(0);
    let id: i64 = dba.query_one(&format!("SELECT min(id) FROM items WHERE org_id = '{org}'"), &[]).unwrap().get(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let jwt = sign_hs256(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(
            r#"{{"sub":"00000000-0000-4000-8000-000000000001","org_id":"{org}","exp":{},"iat":{now}}}"#,
            now + 3600
        ),
        JWT_SECRET,
    );

    let mut app = citus.connect("app");
    let count_rls = app.prepare("SELECT count(*) FROM items").unwrap();
    let lookup_rls = app.prepare("SELECT payload FROM items WHERE id = $1").unwrap();
    let count_where = dba.prepare("SELECT count(*) FROM items WHERE org_id = $1::text::uuid").unwrap();
    let lookup_where = dba.prepare("SELECT payload FROM items WHERE org_id = $1::text::uuid AND id = $2").unwrap();
    // Same answers.
    app.batch_execute("BEGIN").unwrap();
    app.query_one("SELECT tenant_guard.authenticate_jwt($1)", &[&jwt]).unwrap();
    let a: i64 = app.query_one(&count_rls, &[]).unwrap().get(0);
    let b: i64 = dba.query_one(&count_where, &[&org]).unwrap().get(0);
    assert_eq!(a, b);
    assert_eq!(a, ROWS / ORGS);

    // (1) inside one transaction holding the context.
    let mut s: [Vec<f64>; 4] = Default::default();
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per {
            dba.query_one(&count_where, &[&org]).unwrap();
        }
        s[0].push(t.elapsed().as_secs_f64() / per as f64);
        let t = Instant::now();
        for _ in 0..per {
            app.query_one(&count_rls, &[]).unwrap();
        }
        s[1].push(t.elapsed().as_secs_f64() / per as f64);
        let t = Instant::now();
        for _ in 0..per {
            dba.query_one(&lookup_where, &[&org, &id]).unwrap();
        }
        s[2].push(t.elapsed().as_secs_f64() / per as f64);
        let t = Instant::now();
        for _ in 0..per {
            app.query_one(&lookup_rls, &[&id]).unwrap();
        }
        s[3].push(t.elapsed().as_secs_f64() / per as f64);
    }
    app.batch_execute("COMMIT").unwrap();

    // (2) a whole request per transaction.
    let per_tx = per / 3;
    let mut r: [Vec<f64>; 2] = Default::default();
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_tx {
            dba.batch_execute("BEGIN").unwrap();
            dba.query_one(&count_where, &[&org]).unwrap();
            dba.batch_execute("COMMIT").unwrap();
        }
        r[0].push(t.elapsed().as_secs_f64() / per_tx as f64);
        let t = Instant::now();
        for _ in 0..per_tx {
            app.batch_execute("BEGIN").unwrap();
            app.query_one("SELECT tenant_guard.authenticate_jwt($1)", &[&jwt]).unwrap();
            app.query_one(&count_rls, &[]).unwrap();
            app.batch_execute("COMMIT").unwrap();
        }
        r[1].push(t.elapsed().as_secs_f64() / per_tx as f64);
    }
    println!("\nCitus benchmark: {ROWS} rows, {ORGS} orgs, a coordinator and two workers; {rounds} interleaved rounds, median per query\n");
    print!(
        "{}",
        bench_table(&[
            ("count one org, in a transaction [want <= 1.2]", &s[0], &s[1]),
            ("primary-key lookup, in a transaction [want <= 1.2]", &s[2], &s[3]),
            ("request: BEGIN, sign in, count, COMMIT (vs no sign-in)", &r[0], &r[1]),
        ])
    );
}
