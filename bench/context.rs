//! Benchmark: the web request's path. authenticate_jwt() (JWT verify, the
//! membership as committed now, a signed context) against a bare
//! membership lookup, the least any request needs; target at most 2x.
//! Run with `scripts/bench.sh context` (installs the release build first).
//!
//! View 1 is a server-side PL/pgSQL loop (no network: the figure to trust);
//! view 2 one prepared call per round trip from a client. The two sides are
//! interleaved in rounds so drift affects both equally.

use std::time::Instant;
use tenant_guard_harness::{bench_table, generate_secret, test_jwt, Cluster, Options};

const ORGS: i64 = 1_000;
const MEMBERS: i64 = 10;

fn main() {
    let quick = std::env::var("TG_BENCH_QUICK").is_ok();
    let rounds = if quick { 3 } else { 11 };
    let loops = if quick { 2_000 } else { 20_000 };
    let c = Cluster::start(Options { passphrase: generate_secret(), ..Options::default() });
    let mut dba = c.connect("postgres", "dba");
    dba.batch_execute(&format!(
        "CREATE EXTENSION IF NOT EXISTS tenant_guard;
         INSERT INTO tenant_guard.organizations (id, name)
              SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'org ' || g FROM generate_series(1, {ORGS}) g;
         INSERT INTO tenant_guard.memberships (org_id, user_id, role)
              SELECT o.id, ('00000000-0000-4000-9000-' || lpad((o.n * 100 + m)::text, 12, '0'))::uuid,
                     (ARRAY['viewer', 'member', 'admin', 'owner'])[1 + m % 4]
                FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM tenant_guard.organizations) o,
                     generate_series(1, {MEMBERS}) m;"
    ))
    .expect("load");
    dba.batch_execute("VACUUM ANALYZE tenant_guard.memberships").unwrap();
    let (org, user): (String, String) = {
        let r = dba
            .query_one("SELECT org_id::text, user_id::text FROM tenant_guard.memberships WHERE role = 'admin' ORDER BY org_id OFFSET 500 LIMIT 1", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    let tok = test_jwt(&org, &user);
    let mut app = c.connect("postgres", "app");
    let got: String = app.query_one("SELECT tenant_guard.authenticate_jwt($1)::text", &[&tok]).unwrap().get(0);
    assert_eq!(got, org);

    let bare_loop = format!(
        "DO $$ DECLARE r text; BEGIN FOR i IN 1..{loops} LOOP
             SELECT m.role INTO r FROM tenant_guard.memberships m WHERE m.org_id = '{org}' AND m.user_id = '{user}';
         END LOOP; END $$"
    );
    let jwt_loop = format!(
        "DO $$ DECLARE o uuid; t text := '{tok}'; BEGIN FOR i IN 1..{loops} LOOP
             o := tenant_guard.authenticate_jwt(t);
         END LOOP; END $$"
    );
    // The same with 100 different members in turn: every token is verified
    // in full (a backend keeps only the last one verified).
    let members: Vec<(String, String)> = dba
        .query("SELECT org_id::text, user_id::text FROM tenant_guard.memberships ORDER BY user_id LIMIT 100", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let toks: Vec<String> = members.iter().map(|(o, u)| format!("'{}'", test_jwt(o, u))).collect();
    let orgs: Vec<String> = members.iter().map(|(o, _)| format!("'{o}'")).collect();
    let users: Vec<String> = members.iter().map(|(_, u)| format!("'{u}'")).collect();
    let bare_many = format!(
        "DO $$ DECLARE r text; os uuid[] := ARRAY[{}]::uuid[]; us uuid[] := ARRAY[{}]::uuid[]; BEGIN FOR i IN 1..{loops} LOOP
             SELECT m.role INTO r FROM tenant_guard.memberships m WHERE m.org_id = os[1 + i % 100] AND m.user_id = us[1 + i % 100];
         END LOOP; END $$",
        orgs.join(","),
        users.join(",")
    );
    let jwt_many = format!(
        "DO $$ DECLARE o uuid; ts text[] := ARRAY[{}]; BEGIN FOR i IN 1..{loops} LOOP
             o := tenant_guard.authenticate_jwt(ts[1 + i % 100]);
         END LOOP; END $$",
        toks.join(",")
    );
    let timed = |c: &mut postgres::Client, sql: &str| -> f64 {
        let t = Instant::now();
        c.batch_execute(sql).unwrap();
        t.elapsed().as_secs_f64() / loops as f64
    };
    let bare = dba.prepare("SELECT m.role FROM tenant_guard.memberships m WHERE m.org_id = $1::text::uuid AND m.user_id = $2::text::uuid").unwrap();
    let auth = app.prepare("SELECT tenant_guard.authenticate_jwt($1)::text").unwrap();
    let calls = if quick { 500 } else { 3_000 };
    let mut v: [Vec<f64>; 6] = Default::default();
    for _ in 0..rounds {
        v[0].push(timed(&mut dba, &bare_loop));
        v[1].push(timed(&mut app, &jwt_loop));
        v[4].push(timed(&mut dba, &bare_many));
        v[5].push(timed(&mut app, &jwt_many));
        let t = Instant::now();
        for _ in 0..calls {
            dba.query_one(&bare, &[&org, &user]).unwrap();
        }
        v[2].push(t.elapsed().as_secs_f64() / calls as f64);
        let t = Instant::now();
        for _ in 0..calls {
            app.query_one(&auth, &[&tok]).unwrap();
        }
        v[3].push(t.elapsed().as_secs_f64() / calls as f64);
    }
    println!("\nRequest-context benchmark: {ORGS} orgs x {MEMBERS} members, {rounds} interleaved rounds, median per call; target ratio <= 2\n");
    print!(
        "{}",
        bench_table(&[
            ("server loop: authenticate_jwt() vs bare membership lookup", &v[0], &v[1]),
            ("server loop, 100 members in turn (every token verified)", &v[4], &v[5]),
            ("client, prepared: authenticate_jwt() vs bare lookup", &v[2], &v[3]),
        ])
    );
}
