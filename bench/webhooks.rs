//! Benchmark for issue 6: tenant_guard.hmac_sha256() and webhook_verify()
//! on 1 KB payloads versus pgcrypto's hmac(..., 'sha256'), 10,000 calls
//! inside one statement (the crypto cost, no network), interleaved rounds.
//! Run with `scripts/bench.sh webhooks`.

use std::time::Instant;
use tenant_guard_harness::{bench_table, generate_secret, Cluster, Options};

fn main() {
    let quick = std::env::var("TG_BENCH_QUICK").is_ok();
    let c = Cluster::start(Options { passphrase: generate_secret(), ..Options::default() });
    let mut dba = c.connect("postgres", "dba");
    dba.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS tenant_guard; CREATE EXTENSION IF NOT EXISTS pgcrypto;
         CREATE TABLE msgs AS
           SELECT g AS n, 'msg_' || g AS id, 1700000000 + g AS ts,
                  (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 32) i) AS payload
             FROM generate_series(1, 10000) g;
         ALTER TABLE msgs ADD COLUMN sig text;
         UPDATE msgs SET sig = tenant_guard.webhook_sign('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', id, ts, payload);
         ANALYZE msgs;",
    )
    .unwrap();
    let n: i64 = dba
        .query_one(
            "SELECT count(*) FROM msgs WHERE tenant_guard.hmac_sha256(convert_to(payload, 'UTF8'), 'k'::bytea) = hmac(convert_to(payload, 'UTF8'), 'k'::bytea, 'sha256')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 10000, "same answers");
    let time = |sql: &str, c: &mut postgres::Client| -> f64 {
        let t = Instant::now();
        c.query_one(sql, &[]).unwrap();
        t.elapsed().as_secs_f64() / 10000.0
    };
    let pg_hmac =
        "SELECT count(hmac(convert_to(payload, 'UTF8'), 'whsec-key-bytes-0123456789'::bytea, 'sha256')) FROM msgs";
    let tg_hmac = "SELECT count(tenant_guard.hmac_sha256(convert_to(payload, 'UTF8'), 'whsec-key-bytes-0123456789'::bytea)) FROM msgs";
    // The same check written with pgcrypto, as teams do today: sign id.ts.payload and compare.
    let pg_verify = "SELECT count(*) FILTER (WHERE 'v1,' || encode(hmac(convert_to(id || '.' || ts || '.' || payload, 'UTF8'), decode('MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'base64'), 'sha256'), 'base64') = sig) FROM msgs";
    let tg_verify = "SELECT count(*) FILTER (WHERE tenant_guard.webhook_verify('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', id, ts, payload, sig, NULL)) FROM msgs";
    let v: i64 = dba.query_one(tg_verify, &[]).unwrap().get(0);
    let p: i64 = dba.query_one(pg_verify, &[]).unwrap().get(0);
    assert_eq!((v, p), (10000, 10000));
    let mut s: [Vec<f64>; 4] = Default::default();
    for _ in 0..if quick { 2 } else { 9 } {
        s[0].push(time(pg_hmac, &mut dba));
        s[1].push(time(tg_hmac, &mut dba));
        s[2].push(time(pg_verify, &mut dba));
        s[3].push(time(tg_verify, &mut dba));
    }
    println!("\nWebhook benchmark: 1 KB payloads, 10,000 calls per statement, median per call\n");
    print!(
        "{}",
        bench_table(&[
            ("hmac_sha256() vs pgcrypto hmac(..., 'sha256')", &s[0], &s[1]),
            ("webhook_verify() vs the same check with pgcrypto", &s[2], &s[3]),
        ])
    );
}
