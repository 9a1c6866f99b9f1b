//! Purging the request log: 1,000,000 rows older than the cut, through the
//! two designs side by side in one run: a plain table purged with
//! `DELETE ... WHERE at < cut` (as before the log was partitioned), against
//! the day-partitioned log, whose purge_request_log() drops whole days.
//! Each round loads both afresh. Run with `scripts/bench.sh purge`.

use std::time::Instant;
use tenant_guard_harness::{bench_table, generate_secret, Cluster, Options};

const ROWS: i64 = 1_000_000;
const DAYS: i64 = 5;

fn main() {
    let quick = std::env::var("TG_BENCH_QUICK").is_ok();
    let rounds = if quick { 1 } else { 3 };
    let c = Cluster::start(Options {
        passphrase: generate_secret(),
        extra_conf: vec!["shared_buffers = '512MB'".into(), "max_wal_size = '4GB'".into()],
        ..Options::default()
    });
    let mut dba = c.connect("postgres", "dba");
    dba.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS tenant_guard;
         CREATE TABLE plain_log (
             id bigserial PRIMARY KEY, at timestamptz NOT NULL, org_id uuid, api_key_id uuid,
             outcome text NOT NULL CHECK (outcome IN ('ok', 'invalid', 'revoked', 'expired', 'rate_limited')),
             action text, client_addr inet);
         CREATE INDEX ON plain_log (org_id, at);
         CREATE INDEX ON plain_log USING brin (at);",
    )
    .unwrap();
    let rows = format!(
        "SELECT now() - interval '{DAYS} days' - interval '1 hour' + (g % ({DAYS} * 86400)) * interval '1 second',
                gen_random_uuid(), gen_random_uuid(), 'ok', 'GET /v1/things', '203.0.113.7'::inet
           FROM generate_series(1, {ROWS}) g"
    );
    let (mut delete, mut vacuum, mut drop) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        dba.batch_execute(&format!(
            "TRUNCATE plain_log;
             INSERT INTO plain_log (at, org_id, api_key_id, outcome, action, client_addr) {rows};
             SELECT tenant_guard._request_log_partition((now() AT TIME ZONE 'UTC')::date - d) FROM generate_series(0, {DAYS} + 1) d;
             INSERT INTO tenant_guard.request_log (at, org_id, api_key_id, outcome, action, client_addr) {rows};
             CHECKPOINT;"
        ))
        .unwrap();
        let t = Instant::now();
        let n = dba.execute("DELETE FROM plain_log WHERE at < now() - interval '1 hour'", &[]).unwrap();
        delete.push(t.elapsed().as_secs_f64());
        // The space a DELETE leaves is reclaimed by VACUUM (dropping a partition returns it at once).
        dba.batch_execute("VACUUM plain_log").unwrap();
        vacuum.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let m: i64 = dba.query_one("SELECT tenant_guard.purge_request_log('1 hour')", &[]).unwrap().get(0);
        drop.push(t.elapsed().as_secs_f64());
        assert_eq!(n as i64, ROWS);
        assert_eq!(m, ROWS, "the partitioned purge removed another number of rows");
        eprintln!(
            "round {round}: DELETE {:.2} s, with VACUUM {:.2} s, partition drop {:.2} s",
            delete[round], vacuum[round], drop[round]
        );
    }
    println!("\nRequest-log purge of {ROWS} rows over {DAYS} days, {rounds} round(s), median\n");
    print!(
        "{}",
        bench_table(&[
            ("purge: DELETE on one table vs dropping day partitions", &delete, &drop),
            ("purge: DELETE + VACUUM vs dropping day partitions", &vacuum, &drop),
        ])
    );
}
