//! Benchmark for issue 3: RLS with a tenant_guard context versus an explicit
//! `WHERE org_id = $1` as a superuser, on 1,000,000 rows in 1,000 orgs.
//! Run with `scripts/bench.sh rls` (installs the release build first).
//!
//! Each query is a prepared statement run from a client; the runs of the
//! two sides are interleaved in rounds so drift affects both equally, and the
//! table reports the median time per query and the ratio.

use std::time::Instant;
use tenant_guard_harness::{bench_table, generate_secret, Cluster, Options};

const ROWS: i64 = 1_000_000;
const ORGS: i64 = 1_000;

fn main() {
    let quick = std::env::var("TG_BENCH_QUICK").is_ok();
    let rounds = if quick { 3 } else { 15 };
    let c = Cluster::start(Options {
        passphrase: generate_secret(),
        extra_conf: vec!["shared_buffers = '512MB'".into(), "max_parallel_workers_per_gather = 0".into()],
        ..Options::default()
    });
    let mut dba = c.connect("postgres", "dba");
    let t = Instant::now();
    dba.batch_execute(&format!(
        "CREATE EXTENSION IF NOT EXISTS tenant_guard;
         CREATE TABLE orgs AS SELECT g AS n, gen_random_uuid() AS id FROM generate_series(1, {ORGS}) g;
         CREATE TABLE items_naive (id bigint PRIMARY KEY, org_id uuid NOT NULL, payload text NOT NULL);
         INSERT INTO items_naive SELECT g, o.id, md5(g::text) FROM generate_series(1, {ROWS}) g JOIN orgs o ON o.n = 1 + (g % {ORGS});
         CREATE INDEX ON items_naive (org_id);
         ALTER TABLE items_naive ENABLE ROW LEVEL SECURITY;
         CREATE POLICY naive ON items_naive USING (org_id = tenant_guard.current_org_id());
         CREATE TABLE items_protected AS SELECT * FROM items_naive;
         ALTER TABLE items_protected ADD PRIMARY KEY (id);
         SELECT tenant_guard.protect('items_protected');
         GRANT SELECT ON items_naive, items_protected TO app;"
    ))
    .expect("load");
    dba.batch_execute("VACUUM ANALYZE items_naive").unwrap();
    dba.batch_execute("VACUUM ANALYZE items_protected").unwrap();
    eprintln!("loaded {ROWS} rows in {:.1}s", t.elapsed().as_secs_f64());
    let org: String = dba.query_one("SELECT id::text FROM orgs WHERE n = 500", &[]).unwrap().get(0);
    let user = "00000000-0000-4000-8000-000000000001";
    dba.batch_execute(&format!(
        "INSERT INTO tenant_guard.organizations (id, name) VALUES ('{org}', 'bench');
         INSERT INTO tenant_guard.memberships VALUES ('{org}', '{user}', 'owner');"
    ))
    .unwrap();
    let ids: Vec<i64> = dba
        .query(&format!("SELECT id FROM items_naive WHERE org_id = '{org}' ORDER BY id"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    // The tenant side: app role, one transaction with a context.
    let mut app = c.connect("postgres", "app");
    app.batch_execute("BEGIN").unwrap();
    app.query_one(&format!("SELECT tenant_guard.assume('{org}', '{user}')"), &[]).err(); // app may not assume
    app.batch_execute("ROLLBACK; BEGIN").unwrap();
    let tok = tenant_guard_harness::test_jwt(&org, user);
    app.query_one("SELECT tenant_guard.authenticate_jwt($1)::text", &[&tok]).expect("authenticate");

    let su_count = dba.prepare("SELECT count(*) FROM items_naive WHERE org_id = $1::text::uuid").unwrap();
    let su_pk = dba.prepare("SELECT payload FROM items_naive WHERE id = $1 AND org_id = $2::text::uuid").unwrap();
    let rls_count_naive = app.prepare("SELECT count(*) FROM items_naive").unwrap();
    let rls_count_prot = app.prepare("SELECT count(*) FROM items_protected").unwrap();
    let rls_pk_naive = app.prepare("SELECT payload FROM items_naive WHERE id = $1").unwrap();
    let rls_pk_prot = app.prepare("SELECT payload FROM items_protected WHERE id = $1").unwrap();

    // Correctness first: both sides return the same thing.
    let a: i64 = dba.query_one(&su_count, &[&org]).unwrap().get(0);
    let b: i64 = app.query_one(&rls_count_naive, &[]).unwrap().get(0);
    let b2: i64 = app.query_one(&rls_count_prot, &[]).unwrap().get(0);
    assert_eq!((a, a), (b, b2));

    let counts_per_round = if quick { 20 } else { 100 };
    let lookups_per_round = if quick { 200 } else { 1000 };
    let mut s: [Vec<f64>; 6] = Default::default();
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..counts_per_round {
            dba.query_one(&su_count, &[&org]).unwrap();
        }
        s[0].push(t.elapsed().as_secs_f64() / counts_per_round as f64);
        let t = Instant::now();
        for _ in 0..counts_per_round {
            app.query_one(&rls_count_naive, &[]).unwrap();
        }
        s[1].push(t.elapsed().as_secs_f64() / counts_per_round as f64);
        let t = Instant::now();
        for _ in 0..counts_per_round {
            app.query_one(&rls_count_prot, &[]).unwrap();
        }
        s[2].push(t.elapsed().as_secs_f64() / counts_per_round as f64);
        let t = Instant::now();
        for i in 0..lookups_per_round {
            dba.query_one(&su_pk, &[&ids[i % ids.len()], &org]).unwrap();
        }
        s[3].push(t.elapsed().as_secs_f64() / lookups_per_round as f64);
        let t = Instant::now();
        for i in 0..lookups_per_round {
            app.query_one(&rls_pk_naive, &[&ids[i % ids.len()]]).unwrap();
        }
        s[4].push(t.elapsed().as_secs_f64() / lookups_per_round as f64);
        let t = Instant::now();
        for i in 0..lookups_per_round {
            app.query_one(&rls_pk_prot, &[&ids[i % ids.len()]]).unwrap();
        }
        s[5].push(t.elapsed().as_secs_f64() / lookups_per_round as f64);
    }
    // View 2: the same queries in a PL/pgSQL loop on the server, so the
    // network and the client are out of the measurement.
    let ids_lit =
        format!("ARRAY[{}]::bigint[]", ids.iter().take(500).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
    let loops = if quick { 50 } else { 200 };
    let su_count_loop = format!("DO $$ DECLARE n bigint; BEGIN FOR i IN 1..{loops} LOOP SELECT count(*) INTO n FROM items_naive WHERE org_id = '{org}'; END LOOP; END $$");
    let rls_count_loop = |t: &str| {
        format!(
            "DO $$ DECLARE n bigint; BEGIN FOR i IN 1..{loops} LOOP SELECT count(*) INTO n FROM {t}; END LOOP; END $$"
        )
    };
    let su_pk_loop = format!("DO $$ DECLARE p text; ids bigint[] := {ids_lit}; BEGIN FOR r IN 1..4 LOOP FOR i IN 1..500 LOOP SELECT payload INTO p FROM items_naive WHERE id = ids[i] AND org_id = '{org}'; END LOOP; END LOOP; END $$");
    let rls_pk_loop = |t: &str| {
        format!("DO $$ DECLARE p text; ids bigint[] := {ids_lit}; BEGIN FOR r IN 1..4 LOOP FOR i IN 1..500 LOOP SELECT payload INTO p FROM {t} WHERE id = ids[i]; END LOOP; END LOOP; END $$")
    };
    let timed = |c: &mut postgres::Client, sql: &str, n: f64| -> f64 {
        let t = Instant::now();
        c.batch_execute(sql).unwrap();
        t.elapsed().as_secs_f64() / n
    };
    let mut v: [Vec<f64>; 6] = Default::default();
    for _ in 0..rounds {
        v[0].push(timed(&mut dba, &su_count_loop, loops as f64));
        v[1].push(timed(&mut app, &rls_count_loop("items_naive"), loops as f64));
        v[2].push(timed(&mut app, &rls_count_loop("items_protected"), loops as f64));
        v[3].push(timed(&mut dba, &su_pk_loop, 2000.0));
        v[4].push(timed(&mut app, &rls_pk_loop("items_naive"), 2000.0));
        v[5].push(timed(&mut app, &rls_pk_loop("items_protected"), 2000.0));
    }

    println!(
        "\nRLS benchmark: {ROWS} rows, {ORGS} orgs, {} rows per org, {rounds} interleaved rounds, median per query\n",
        a
    );
    print!(
        "{}",
        bench_table(&[
            ("count one org: naive policy vs superuser WHERE", &s[0], &s[1]),
            ("count one org: protect() policies vs superuser WHERE", &s[0], &s[2]),
            ("pk lookup: naive policy vs superuser WHERE", &s[3], &s[4]),
            ("pk lookup: protect() policies vs superuser WHERE", &s[3], &s[5]),
        ])
    );
    println!("\nview 2: the same queries in a server-side PL/pgSQL loop (no network), median per query\n");
    print!(
        "{}",
        bench_table(&[
            ("count one org: naive policy vs superuser WHERE", &v[0], &v[1]),
            ("count one org: protect() policies vs superuser WHERE", &v[0], &v[2]),
            ("pk lookup: naive policy vs superuser WHERE", &v[3], &v[4]),
            ("pk lookup: protect() policies vs superuser WHERE", &v[3], &v[5]),
        ])
    );
}
