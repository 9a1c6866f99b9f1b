//! Benchmark for issue 4: one authenticate() call (checksum + SHA-256 +
//! index lookup + GCRA rate limit + request-log enqueue + signed context)
//! versus a bare indexed lookup of the same SHA-256 in SQL, each in its own
//! transaction; first from one client with prepared statements, then under
//! pgbench with 2 clients. Run with `scripts/bench.sh apikeys`.

use std::time::Instant;
use tenant_guard_harness::{bench_table, generate_secret, test_jwt, Cluster, Options};

fn main() {
    let quick = std::env::var("TG_BENCH_QUICK").is_ok();
    let c = Cluster::start(Options { passphrase: generate_secret(), ..Options::default() });
    let mut dba = c.connect("postgres", "dba");
    let user = "00000000-0000-4000-8000-000000000001";
    dba.batch_execute("CREATE EXTENSION IF NOT EXISTS tenant_guard").unwrap();
    let org: String = dba
        .query_one(&format!("SELECT tenant_guard.create_organization('bench', '{user}')::text"), &[])
        .unwrap()
        .get(0);
    // 10,000 keys in the table so the lookup is a real index probe.
    dba.batch_execute(&format!(
        "INSERT INTO tenant_guard.api_keys (org_id, name, prefix, key_hash, role)
         SELECT '{org}', 'filler', 'tgk_x', sha256(('filler' || g)::bytea), 'member' FROM generate_series(1, 10000) g"
    ))
    .unwrap();
    let mut app = c.connect("postgres", "app");
    app.batch_execute("BEGIN").unwrap();
    app.query_one("SELECT tenant_guard.authenticate_jwt($1)::text", &[&test_jwt(&org, user)]).unwrap();
    let key: String = app
        .query_one("SELECT api_key FROM tenant_guard.create_api_key('bench', 'member', '{}', '1 day', 2000000000)", &[])
        .unwrap()
        .get(0);
    app.batch_execute("COMMIT").unwrap();
    dba.batch_execute("ANALYZE tenant_guard.api_keys").unwrap();

    let bare_sql =
        "SELECT id, org_id, role, scopes FROM tenant_guard.api_keys WHERE key_hash = sha256(convert_to($1, 'UTF8'))";
    let bare = dba.prepare(bare_sql).unwrap();
    let auth = app.prepare("SELECT tenant_guard.authenticate($1, 'bench')").unwrap();
    assert_eq!(dba.query(&bare, &[&key]).unwrap().len(), 1);
    app.query_one(&auth, &[&key]).unwrap();

    let (rounds, per_round) = if quick { (3, 200) } else { (11, 2000) };
    let (mut b, mut a) = (vec![], vec![]);
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..per_round {
            dba.query(&bare, &[&key]).unwrap();
        }
        b.push(t.elapsed().as_secs_f64() / per_round as f64);
        let t = Instant::now();
        for _ in 0..per_round {
            app.query_one(&auth, &[&key]).unwrap();
        }
        a.push(t.elapsed().as_secs_f64() / per_round as f64);
    }
    println!("\nAPI key benchmark: one client, prepared statements, {rounds} interleaved rounds of {per_round}, median per call\n");
    print!("{}", bench_table(&[("authenticate() vs bare SHA-256 index lookup", &b, &a)]));

    // pgbench, 2 clients.
    let dir = c.datadir.join("pgbench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("bare.sql"), format!("SELECT id, org_id, role, scopes FROM tenant_guard.api_keys WHERE key_hash = sha256(convert_to('{key}', 'UTF8'));\n")).unwrap();
    std::fs::write(dir.join("auth.sql"), format!("SELECT tenant_guard.authenticate('{key}', 'bench');\n")).unwrap();
    let secs = if quick { 2 } else { 8 };
    let pgbench = |script: &str, user: &str| -> f64 { c.pgbench(&dir.join(script), user, 2, secs) };
    let (mut pb, mut pa) = (vec![], vec![]);
    for _ in 0..if quick { 1 } else { 3 } {
        pb.push(pgbench("bare.sql", "dba"));
        pa.push(pgbench("auth.sql", "app"));
    }
    println!("\npgbench, 2 clients, -M prepared, {secs} s per run, median time per transaction (1/tps)\n");
    print!("{}", bench_table(&[("authenticate() vs bare lookup under pgbench -c 2", &pb, &pa)]));
    let q: Vec<postgres::Row> = dba.query("SELECT queued, dropped FROM tenant_guard.request_log_queue()", &[]).unwrap();
    let logged: i64 = dba.query_one("SELECT count(*) FROM tenant_guard.request_log", &[]).unwrap().get(0);
    println!(
        "\nrequest log: {logged} rows written, {} queued, {} dropped because the queue was full",
        q[0].get::<_, i64>(0),
        q[0].get::<_, i64>(1)
    );
}
