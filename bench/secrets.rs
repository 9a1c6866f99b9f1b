//! Benchmark for issue 5: get_secret() of 1 KB values versus pgcrypto's
//! pgp_sym_decrypt() and raw decrypt(..., 'aes') (AES-CBC, unauthenticated)
//! on the same 1,000 values. Two views, both measured in this run:
//! (1) one call per round trip from a client, each side doing an index
//!     lookup of one value and decrypting it (what an application does);
//! (2) the same calls from pgbench (libpq, one client, a random value per
//!     call): per call as an application written in C sees it; the
//!     Rust client of view 1 adds about 80 us per round trip;
//! (3) 1,000 decryptions inside one statement (no network; get_secret()
//!     still does its own lookup per value, the pgcrypto sides read the row
//!     from the scan, or look it up per value), plus tenant_guard.decrypt()
//!     for the bare envelope.
//! Run with `scripts/bench.sh secrets`.

use std::time::Instant;
use tenant_guard_harness::{bench_table, generate_secret, Cluster, Options};

const N: i32 = 1000;

fn main() {
    let quick = std::env::var("TG_BENCH_QUICK").is_ok();
    let c = Cluster::start(Options { passphrase: generate_secret(), ..Options::default() });
    let mut dba = c.connect("postgres", "dba");
    dba.batch_execute(&format!(
        "CREATE EXTENSION IF NOT EXISTS tenant_guard; CREATE EXTENSION IF NOT EXISTS pgcrypto;
         SELECT tenant_guard.create_organization('bench', '00000000-0000-4000-8000-000000000001');
         CREATE TABLE plain AS SELECT g AS n, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 32) i) AS v
           FROM generate_series(1, {N}) g;
         CREATE TABLE pgp AS SELECT n, pgp_sym_encrypt(v, 'bench-key') AS ct FROM plain;
         CREATE TABLE cbc AS SELECT n, encrypt(convert_to(v, 'UTF8'), 'bench-key-0123456789abcdef01234', 'aes') AS ct FROM plain;
         CREATE UNIQUE INDEX ON pgp (n); CREATE UNIQUE INDEX ON cbc (n);
         GRANT SELECT ON plain, pgp, cbc TO svc;"
    ))
    .unwrap();
    let org: String = dba.query_one("SELECT id::text FROM tenant_guard.organizations", &[]).unwrap().get(0);
    // The same CBC values in the table a team on pgcrypto would keep them in:
    // keyed like tenant_guard.secrets, by (org_id, kind, name).
    dba.batch_execute(&format!(
        "CREATE TABLE cbc_named AS SELECT '{org}'::uuid AS org_id, 'bench'::text AS kind, n::text AS name, ct FROM cbc;
         CREATE UNIQUE INDEX ON cbc_named (org_id, kind, name); GRANT SELECT ON cbc_named TO svc;"
    ))
    .unwrap();
    let mut svc = c.connect("postgres", "svc");
    svc.batch_execute(&format!("SELECT count(tenant_guard.put_secret_for('{org}', 'bench', n::text, v)) FROM plain"))
        .unwrap();
    svc.batch_execute("CREATE TEMP TABLE env AS SELECT n, tenant_guard.encrypt(convert_to(v, 'UTF8'), 'bench'::bytea) AS ct FROM plain").unwrap();
    dba.batch_execute("ANALYZE").unwrap();
    let len: i32 = svc.query_one("SELECT length(v) FROM plain LIMIT 1", &[]).unwrap().get(0);
    // Same answers everywhere.
    let a: String =
        svc.query_one(&format!("SELECT tenant_guard.get_secret('{org}', 'bench', '7')"), &[]).unwrap().get(0);
    let b: String = svc.query_one("SELECT pgp_sym_decrypt(ct, 'bench-key') FROM pgp WHERE n = 7", &[]).unwrap().get(0);
    let d: String = svc
        .query_one(
            "SELECT convert_from(decrypt(ct, 'bench-key-0123456789abcdef01234', 'aes'), 'UTF8') FROM cbc WHERE n = 7",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(a == b && b == d);

    let get = svc.prepare("SELECT tenant_guard.get_secret($1::text::uuid, 'bench', $2)").unwrap();
    let pgp = svc.prepare("SELECT pgp_sym_decrypt(ct, 'bench-key') FROM pgp WHERE n = $1").unwrap();
    let cbc =
        svc.prepare("SELECT decrypt(ct, 'bench-key-0123456789abcdef01234', 'aes') FROM cbc WHERE n = $1").unwrap();
    let (rounds, per): (usize, i32) = if quick { (3, 100) } else { (9, 500) };
    let mut s: [Vec<f64>; 3] = Default::default();
    for _ in 0..rounds {
        let t = Instant::now();
        for i in 0..per {
            svc.query_one(&get, &[&org, &(1 + i % N).to_string()]).unwrap();
        }
        s[0].push(t.elapsed().as_secs_f64() / per as f64);
        let t = Instant::now();
        for i in 0..per {
            svc.query_one(&pgp, &[&(1 + i % N)]).unwrap();
        }
        s[1].push(t.elapsed().as_secs_f64() / per as f64);
        let t = Instant::now();
        for i in 0..per {
            svc.query_one(&cbc, &[&(1 + i % N)]).unwrap();
        }
        s[2].push(t.elapsed().as_secs_f64() / per as f64);
    }
    println!("\nSecrets benchmark ({len}-byte values), view 1: one call per round trip, {rounds} interleaved rounds of {per}, median per call\n");
    print!(
        "{}",
        bench_table(&[
            ("get_secret() vs pgp_sym_decrypt() [want <= 0.1]", &s[1], &s[0]),
            ("get_secret() vs raw decrypt(...,'aes') [want <= 2]", &s[2], &s[0]),
        ])
    );

    // View 2: pgbench, one client, prepared, a random value per call.
    let dir = c.datadir.join("pgbench");
    std::fs::create_dir_all(&dir).unwrap();
    let scripts = [
        ("get.sql", format!("\\set n random(1, {N})\nSELECT tenant_guard.get_secret('{org}', 'bench', :n::text);\n")),
        ("pgp.sql", format!("\\set n random(1, {N})\nSELECT pgp_sym_decrypt(ct, 'bench-key') FROM pgp WHERE n = :n;\n")),
        ("cbc.sql", format!("\\set n random(1, {N})\nSELECT decrypt(ct, 'bench-key-0123456789abcdef01234', 'aes') FROM cbc WHERE n = :n;\n")),
        ("floor.sql", format!("\\set n random(1, {N})\nSELECT :n::text;\n")),
    ];
    for (f, body) in &scripts {
        std::fs::write(dir.join(f), body).unwrap();
    }
    let secs = if quick { 1 } else { 4 };
    let mut p: [Vec<f64>; 4] = Default::default();
    for _ in 0..if quick { 1 } else { 3 } {
        for (i, (f, _)) in scripts.iter().enumerate() {
            p[i].push(c.pgbench(&dir.join(f), "svc", 1, secs));
        }
    }
    // The same calls less the round trip itself (a query that does nothing), per round.
    let net = |i: usize| -> Vec<f64> { p[i].iter().zip(&p[3]).map(|(x, f)| x - f).collect() };
    let (get_net, pgp_net, cbc_net) = (net(0), net(1), net(2));
    println!("\nview 2: pgbench, 1 client, -M prepared, {secs} s per run, median time per call (1/tps)\n");
    print!(
        "{}",
        bench_table(&[
            ("get_secret() vs pgp_sym_decrypt() [want <= 0.1]", &p[1], &p[0]),
            ("get_secret() vs raw decrypt(...,'aes') [want <= 2]", &p[2], &p[0]),
            ("round trip alone (SELECT :n::text) vs get_secret()", &p[0], &p[3]),
            ("less the round trip: get_secret() vs pgp_sym_decrypt()", &pgp_net, &get_net),
            ("less the round trip: get_secret() vs raw AES-CBC", &cbc_net, &get_net),
        ])
    );

    let stmt = |sql: &str, svc: &mut postgres::Client| -> f64 {
        let t = Instant::now();
        svc.query_one(sql, &[]).unwrap();
        t.elapsed().as_secs_f64() / N as f64
    };
    let mut v: [Vec<f64>; 7] = Default::default();
    for _ in 0..if quick { 2 } else { 5 } {
        v[0].push(stmt(
            &format!("SELECT count(tenant_guard.get_secret('{org}', 'bench', n::text)) FROM plain"),
            &mut svc,
        ));
        v[1].push(stmt("SELECT count(pgp_sym_decrypt(ct, 'bench-key')) FROM pgp", &mut svc));
        v[2].push(stmt("SELECT count(decrypt(ct, 'bench-key-0123456789abcdef01234', 'aes')) FROM cbc", &mut svc));
        v[3].push(stmt("SELECT count(tenant_guard.decrypt(ct, 'bench'::bytea)) FROM env", &mut svc));
        v[4].push(stmt("SELECT count((SELECT decrypt(c.ct, 'bench-key-0123456789abcdef01234', 'aes') FROM cbc c WHERE c.n = p.n)) FROM plain p", &mut svc));
        v[5].push(stmt(
            "SELECT count((SELECT pgp_sym_decrypt(c.ct, 'bench-key') FROM pgp c WHERE c.n = p.n)) FROM plain p",
            &mut svc,
        ));
        v[6].push(stmt(
            &format!(
                "SELECT count((SELECT decrypt(c.ct, 'bench-key-0123456789abcdef01234', 'aes') FROM cbc_named c
                                WHERE c.org_id = '{org}' AND c.kind = 'bench' AND c.name = p.n::text)) FROM plain p"
            ),
            &mut svc,
        ));
    }
    println!("\nview 3: {N} decryptions in one statement, per decryption\n");
    print!(
        "{}",
        bench_table(&[
            ("get_secret() (lookup + decrypt) vs pgp_sym_decrypt()", &v[1], &v[0]),
            ("get_secret() (lookup + decrypt) vs raw AES-CBC decrypt()", &v[2], &v[0]),
            ("tenant_guard.decrypt() (envelope only) vs raw AES-CBC", &v[2], &v[3]),
            ("get_secret() vs raw AES-CBC, both with a per-value index lookup", &v[4], &v[0]),
            ("  the same, CBC rows keyed by (org_id, kind, name) as secrets are", &v[6], &v[0]),
            ("get_secret() vs pgp_sym_decrypt(), both with a per-value lookup", &v[5], &v[0]),
        ])
    );
}
