//! What the audit trail costs. get_secret() with the trail on against
//! get_secret() with it off, measured side by side in the same run
//! (interleaved rounds; target: at most 1.3x), in two views:
//! (1) a server loop: 2,000 reads of different secrets in one statement
//!     (the work itself: no network, no client), each statement starting
//!     with the queue drained, so that it measures the caller's cost; and,
//!     for comparison without a target, 8,000 reads with the writer
//!     draining alongside (it competes for this machine's two cores);
//! (2) a client: one read per round trip, prepared.
//! "Off" is the same service role with `tenant_guard.audit = off` set for
//! it (ALTER ROLE ... SET). Then the log writer's CPU per entry: the
//! writer's user + system time (/proc) while it writes 100,000 entries,
//! divided by them.
//! Run with `scripts/bench.sh audit`.

use std::time::{Duration, Instant};
use tenant_guard_harness::{bench_table, generate_secret, Cluster, Options};

const N: i32 = 1000;

/// The log writer's CPU time so far (user + system), in seconds.
fn writer_cpu(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the writer's /proc/<pid>/stat");
    // Fields after the command name (which is in parentheses): utime is the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { sysconf(2) } as f64; // _SC_CLK_TCK
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / hz
}

extern "C" {
    fn sysconf(name: i32) -> i64;
}

fn main() {
    let quick = std::env::var("TG_BENCH_QUICK").is_ok();
    let c = Cluster::start(Options { passphrase: generate_secret(), ..Options::default() });
    let mut dba = c.connect("postgres", "dba");
    dba.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS tenant_guard;
         SELECT tenant_guard.create_organization('bench', '00000000-0000-4000-8000-000000000001');
         CREATE ROLE svc_off LOGIN IN ROLE tenant_guard_service;
         ALTER ROLE svc_off SET tenant_guard.audit = off;",
    )
    .unwrap();
    let org: String = dba.query_one("SELECT id::text FROM tenant_guard.organizations", &[]).unwrap().get(0);
    let mut on = c.connect("postgres", "svc");
    let mut off = c.connect("postgres", "svc_off");
    off.batch_execute(&format!(
        "SELECT count(tenant_guard.put_secret_for('{org}', 'bench', g::text, md5(g::text) || md5(g::text || 'x')))
           FROM generate_series(1, {N}) g"
    ))
    .unwrap();
    let audit_on = |c: &mut postgres::Client| -> String { c.query_one("SHOW tenant_guard.audit", &[]).unwrap().get(0) };
    assert_eq!((audit_on(&mut on).as_str(), audit_on(&mut off).as_str()), ("on", "off"));

    // Wait until the writer has written everything queued.
    let settle = |dba: &mut postgres::Client| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let q: i64 = dba.query_one("SELECT queued FROM tenant_guard.audit_log_queue()", &[]).unwrap().get(0);
            if q == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the writer never caught up");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // (1) server loop: the caller's cost (each statement starts with the
    // queue drained: the writer's own CPU is measured apart, below) ...
    let per_stmt = 2000;
    let loop_sql = |n: i32| {
        format!("SELECT count(tenant_guard.get_secret('{org}', 'bench', (1 + g % {N})::text)) FROM generate_series(1, {n}) g")
    };
    let rounds = if quick { 3 } else { 11 };
    let mut s: [Vec<f64>; 4] = Default::default();
    for _ in 0..rounds {
        for (i, c) in [&mut off, &mut on].into_iter().enumerate() {
            settle(&mut dba);
            let t = Instant::now();
            c.query_one(&loop_sql(per_stmt), &[]).unwrap();
            s[i].push(t.elapsed().as_secs_f64() / per_stmt as f64);
        }
    }
    // ... and with the writer draining alongside (8,000 reads a statement:
    // past half the queue the caller wakes it), on this 2-core machine.
    let long = 8000;
    for _ in 0..rounds {
        for (i, c) in [&mut off, &mut on].into_iter().enumerate() {
            settle(&mut dba);
            let t = Instant::now();
            c.query_one(&loop_sql(long), &[]).unwrap();
            s[2 + i].push(t.elapsed().as_secs_f64() / long as f64);
        }
    }
    // (2) client, one read per round trip.
    let per = if quick { 200 } else { 1000 };
    let sql = "SELECT tenant_guard.get_secret($1::text::uuid, 'bench', $2)";
    let (p_off, p_on) = (off.prepare(sql).unwrap(), on.prepare(sql).unwrap());
    let mut r: [Vec<f64>; 2] = Default::default();
    for _ in 0..rounds {
        for (i, (c, p)) in [(&mut off, &p_off), (&mut on, &p_on)].into_iter().enumerate() {
            let t = Instant::now();
            for k in 0..per {
                c.query_one(p, &[&org, &(1 + k % N).to_string()]).unwrap();
            }
            r[i].push(t.elapsed().as_secs_f64() / per as f64);
        }
    }
    println!("\nAudit trail benchmark: get_secret() with the trail on against off, {rounds} interleaved rounds, median per call\n");
    print!(
        "{}",
        bench_table(&[
            ("server loop, 2,000 reads per statement [want <= 1.3]", &s[0], &s[1]),
            ("server loop, 8,000 reads, the writer draining alongside", &s[2], &s[3]),
            ("client, one read per round trip [want <= 1.3]", &r[0], &r[1]),
        ])
    );

    // The writer's CPU per entry.
    let entries = if quick { 20_000 } else { 100_000 };
    let count = |dba: &mut postgres::Client| -> i64 {
        dba.query_one("SELECT count(*) FROM tenant_guard.audit_log", &[]).unwrap().get(0)
    };
    settle(&mut dba);
    let pid: i32 = dba
        .query_one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'tenant_guard log writer' LIMIT 1", &[])
        .unwrap()
        .get(0);
    let (before_n, before_cpu) = (count(&mut dba), writer_cpu(pid));
    let t = Instant::now();
    let batch = 2000;
    for _ in 0..entries / batch {
        on.query_one(&loop_sql(batch), &[]).unwrap();
    }
    // Queued, then taken by the writer: wait until all of them are in the table.
    let deadline = Instant::now() + Duration::from_secs(120);
    while count(&mut dba) < before_n + entries as i64 {
        assert!(Instant::now() < deadline, "the writer never caught up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = t.elapsed().as_secs_f64();
    let (after_n, after_cpu) = (count(&mut dba), writer_cpu(pid));
    let written = after_n - before_n;
    assert!(written >= entries as i64, "the writer wrote {written} of {entries} entries");
    let lost: i64 = dba.query_one("SELECT lost FROM tenant_guard.audit_log_queue()", &[]).unwrap().get(0);
    println!(
        "\nlog writer (pid {pid}): {written} entries in {wall:.1} s of reads; writer CPU {:.2} s = {:.1} us per entry; {lost} lost\n",
        after_cpu - before_cpu,
        (after_cpu - before_cpu) * 1e6 / written as f64
    );
    let v: bool = dba.query_one("SELECT verified FROM tenant_guard.verify_audit_log()", &[]).unwrap().get(0);
    assert!(v, "the trail verifies");
}
