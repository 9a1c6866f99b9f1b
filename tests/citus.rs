//! Isolation that survives scale-out: tables distributed with Citus (a
//! coordinator and two workers), attacked as on one node. Needs Citus 13.2
//! installed (scripts/setup.sh installs it).

mod common;
use common::*;
use postgres::Client;
use std::sync::OnceLock;
use tenant_guard_harness::{full_error, sqlstate, CitusCluster};

struct World {
    citus: CitusCluster,
    org_a: String,
    org_b: String,
}

/// One Citus cluster for this file: two orgs; `docs` protected then
/// distributed, `notes` distributed then protected; a reference table.
fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let citus = CitusCluster::start();
        let mut dba = citus.connect("dba");
        let org_a = val(&mut dba, &format!("SELECT tenant_guard.create_organization('Acme', '{OWNER_A}')")).unwrap();
        let org_b = val(&mut dba, &format!("SELECT tenant_guard.create_organization('Bravo', '{OWNER_B}')")).unwrap();
        exec(
            &mut dba,
            &format!(
                "INSERT INTO tenant_guard.memberships (org_id, user_id, role) VALUES
                   ('{org_a}', '{ADMIN_A}', 'admin'), ('{org_a}', '{MEMBER_A}', 'member'), ('{org_a}', '{VIEWER_A}', 'viewer');
                 BEGIN;
                 CREATE TABLE docs (org_id uuid NOT NULL, id bigserial, title text NOT NULL, PRIMARY KEY (org_id, id));
                 SELECT tenant_guard.protect('docs');
                 COMMIT;
                 SELECT create_distributed_table('docs', 'org_id');
                 CREATE TABLE notes (org_id uuid NOT NULL, id bigserial, body text, PRIMARY KEY (org_id, id));
                 SELECT create_distributed_table('notes', 'org_id', colocate_with => 'docs');
                 SELECT tenant_guard.protect('notes');
                 CREATE TABLE categories (id int PRIMARY KEY, name text);
                 SELECT create_reference_table('categories');
                 INSERT INTO categories VALUES (1, 'one'), (2, 'two');
                 INSERT INTO docs (org_id, title) SELECT '{org_a}', 'a-' || g FROM generate_series(1, 30) g;
                 INSERT INTO docs (org_id, title) SELECT '{org_b}', 'b-' || g FROM generate_series(1, 20) g;
                 INSERT INTO notes (org_id, body) SELECT '{org_a}', 'note-a-' || g FROM generate_series(1, 5) g;
                 INSERT INTO notes (org_id, body) SELECT '{org_b}', 'note-b-' || g FROM generate_series(1, 5) g;
                 GRANT SELECT, INSERT, UPDATE, DELETE ON docs, notes TO app;
                 GRANT SELECT ON categories TO app;
                 GRANT USAGE ON SEQUENCE docs_id_seq, notes_id_seq TO app;"
            ),
        );
        World { citus, org_a, org_b }
    })
}

/// app on the coordinator, in a transaction, signed in as `user` of `org`.
fn signed_in(w: &World, org: &str, user: &str) -> Client {
    let mut c = w.citus.connect("app");
    begin_as(&mut c, org, user);
    c
}

fn count(c: &mut Client, sql: &str) -> i64 {
    val(c, sql).unwrap().parse().unwrap()
}

#[test]
fn reads_and_writes_stay_in_the_org_on_every_shard_in_both_orders() {
    let w = world();
    for t in ["docs", "notes"] {
        let (a_rows, b_rows) = if t == "docs" { (30, 20) } else { (5, 5) };
        // No context: nothing, on any shard.
        let mut app = w.citus.connect("app");
        assert_eq!(count(&mut app, &format!("SELECT count(*) FROM {t}")), 0, "{t} without a context");
        // A's member: A's rows only, through router and multi-shard queries.
        let mut c = signed_in(w, &w.org_a, MEMBER_A);
        assert_eq!(count(&mut c, &format!("SELECT count(*) FROM {t}")), a_rows, "{t}");
        assert_eq!(
            count(&mut c, &format!("SELECT count(*) FROM {t} WHERE org_id = '{}'", w.org_b)),
            0,
            "{t}: router to B's shard"
        );
        assert_eq!(
            count(&mut c, &format!("SELECT count(*) FROM {t} WHERE org_id IN ('{}', '{}')", w.org_a, w.org_b)),
            a_rows,
            "{t}: multi-shard"
        );
        assert_eq!(count(&mut c, &format!("SELECT count(DISTINCT org_id) FROM {t} WHERE id > 0")), 1);
        // Writes into B, or out of A into B: refused or nothing touched.
        let r = c.simple_query(&format!(
            "SAVEPOINT s; INSERT INTO {t} (org_id, {}) VALUES ('{}', 'x')",
            if t == "docs" { "title" } else { "body" },
            w.org_b
        ));
        assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{t}: insert into B: {}", full_error(&r));
        exec(&mut c, "ROLLBACK TO s");
        assert_eq!(affected(&mut c, &format!("UPDATE {t} SET org_id = org_id WHERE org_id = '{}'", w.org_b)), 0);
        // (Citus refuses to change a distribution column at all: 0A000.)
        let r =
            c.simple_query(&format!("SAVEPOINT s; UPDATE {t} SET org_id = '{}' WHERE org_id = '{}'", w.org_b, w.org_a));
        assert!(matches!(sqlstate(&r).as_deref(), Some("42501" | "0A000")), "{t}: move rows to B: {}", full_error(&r));
        exec(&mut c, "ROLLBACK TO s");
        assert_eq!(affected(&mut c, &format!("DELETE FROM {t} WHERE org_id = '{}'", w.org_b)), 0);
        exec(&mut c, "COMMIT");
        // A member deletes nothing (delete needs admin), even in A.
        let mut c = signed_in(w, &w.org_a, MEMBER_A);
        assert_eq!(affected(&mut c, &format!("DELETE FROM {t} WHERE org_id = '{}'", w.org_a)), 0);
        exec(&mut c, "ROLLBACK");
        // B's owner sees B's rows only.
        let mut c = signed_in(w, &w.org_b, OWNER_B);
        assert_eq!(count(&mut c, &format!("SELECT count(*) FROM {t}")), b_rows);
        exec(&mut c, "COMMIT");
    }
    let mut dba = w.citus.connect("dba");
    assert_eq!(count(&mut dba, "SELECT count(*) FROM docs"), 50, "nothing was lost or moved");
}

#[test]
fn insert_select_copy_and_reference_joins_stay_in_the_org() {
    let w = world();
    let mut c = signed_in(w, &w.org_a, MEMBER_A);
    // INSERT ... SELECT between colocated distributed tables, pushed down to
    // the shards: A's rows only.
    let n = affected(
        &mut c,
        "INSERT INTO notes (org_id, id, body) SELECT org_id, id + 1000, 'copy of ' || title FROM docs",
    );
    assert_eq!(n, 30);
    // Into B: refused (42501 when pushed down; 0A000 when Citus routes it
    // through the coordinator, below).
    let r = c.simple_query(&format!(
        "SAVEPOINT s; INSERT INTO notes (org_id, id, body) SELECT '{}', id + 2000, title FROM docs",
        w.org_b
    ));
    assert!(matches!(sqlstate(&r).as_deref(), Some("42501" | "0A000")), "{}", full_error(&r));
    exec(&mut c, "ROLLBACK TO s");
    // One Citus runs through the coordinator (a volatile default: nextval)
    // writes the shards with COPY, which PostgreSQL refuses under
    // row-level security: refused, nothing written (docs/citus.md).
    let r =
        c.simple_query(&format!("SAVEPOINT s; INSERT INTO notes (org_id, body) SELECT '{}', title FROM docs", w.org_b));
    assert!(sqlstate(&r).is_some(), "INSERT ... SELECT into B through the coordinator went through");
    exec(&mut c, "ROLLBACK TO s");
    // A join with a reference table, and a join of two distributed tables.
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs d JOIN categories k ON k.id = 1 + d.id % 2"), 30);
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM docs d JOIN notes n USING (org_id) WHERE n.body LIKE 'note-%'"),
        150
    );
    exec(&mut c, "ROLLBACK");
    // COPY into a protected distributed table: B's rows are refused.
    let mut c = signed_in(w, &w.org_a, MEMBER_A);
    let copy = "COPY docs (org_id, title) FROM STDIN";
    let r = (|| -> Result<u64, postgres::Error> {
        let mut wr = c.copy_in(copy)?;
        use std::io::Write;
        wr.write_all(format!("{}\tsmuggled\n", w.org_b).as_bytes()).unwrap();
        wr.finish()
    })();
    assert!(r.is_err(), "COPY of B's rows from A's context went through");
    exec(&mut c, "ROLLBACK");
    let mut dba = w.citus.connect("dba");
    assert_eq!(count(&mut dba, "SELECT count(*) FROM docs WHERE title = 'smuggled'"), 0);
}

#[test]
fn a_forged_or_copied_context_gives_nothing_on_any_node() {
    let w = world();
    let mut dba = w.citus.connect("dba");
    // A forged value: refused by every node.
    for mut c in [w.citus.connect("app"), w.citus.worker(0, "app")] {
        exec(&mut c, "BEGIN");
        let r = c.simple_query("SET LOCAL tenant_guard.carried_context = 'tgc1.e30.AAAA'");
        assert_eq!(sqlstate(&r).as_deref(), Some("22023"));
        assert!(!full_error(&r).contains("e30"), "the value is not echoed");
        exec(&mut c, "ROLLBACK");
        let r = c.simple_query("SET tenant_guard.context = 'v1.e30.AAAA'");
        assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    }
    // A genuine token, captured as it is sent (citus.log_remote_commands
    // shows the session its own remote commands).
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut cfg = postgres::Config::new();
    cfg.host("127.0.0.1").port(w.citus.coordinator.port).user("app").dbname("postgres");
    let sink = notices.clone();
    let mut c = cfg
        .notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()))
        .connect(postgres::NoTls)
        .unwrap();
    begin_as(&mut c, &w.org_a, MEMBER_A);
    exec(&mut c, "SET LOCAL citus.log_remote_commands = on");
    assert_eq!(count(&mut c, "SELECT count(*) FROM docs"), 30);
    let token = notices
        .lock()
        .unwrap()
        .iter()
        .find_map(|m| m.split('\'').find(|p| p.starts_with("tgc1.")).map(str::to_string))
        .expect("the carried context in the remote commands");
    assert!(token.len() > 40, "{token}");
    let assign = notices
        .lock()
        .unwrap()
        .iter()
        .find_map(|m| {
            m.find("assign_distributed_transaction_id(").map(|i| m[i..].split(')').next().unwrap().to_string() + ")")
        })
        .expect("the distributed transaction id in the remote commands");
    // Which worker served A's query (holds A's shard of docs).
    let served = val(
        &mut dba,
        &format!(
            "SELECT n.nodeport FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n USING (groupid)
              WHERE s.logicalrelid = 'docs'::regclass AND s.shardid = get_shard_id_for_distribution_column('docs', '{}')",
            w.org_a
        ),
    )
    .unwrap();
    // While A's transaction is still open: the token on the node that made
    // it, and straight on each worker, in other sessions.
    // The node that made it takes it from tenant_guard only: from anyone
    // else, Citus would send it on to the workers as theirs.
    let mut co = w.citus.connect("app");
    for set in [
        format!("SET LOCAL tenant_guard.carried_context = '{token}'"),
        format!("SELECT set_config('tenant_guard.carried_context', '{token}', true)"),
    ] {
        exec(&mut co, "BEGIN");
        let r = co.simple_query(&set);
        assert_eq!(sqlstate(&r).as_deref(), Some("22023"), "{set}: {}", full_error(&r));
        exec(&mut co, "ROLLBACK");
    }
    for (i, wk) in w.citus.workers.iter().enumerate() {
        let mut wk_app = wk.connect("postgres", "app");
        exec(&mut wk_app, "SET citus.show_shards_for_app_name_prefixes = '*'");
        let shard = val(&mut wk_app, "SELECT relname FROM pg_class WHERE relname ~ '^docs_[0-9]+$' LIMIT 1").unwrap();
        // Outside A's distributed transaction: refused.
        exec(&mut wk_app, "BEGIN");
        exec(&mut wk_app, &format!("SET LOCAL tenant_guard.carried_context = '{token}'"));
        let r = wk_app.simple_query(&format!("SELECT count(*) FROM {shard}"));
        assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "worker {i}: {}", full_error(&r));
        exec(&mut wk_app, "ROLLBACK");
        // Even claiming A's distributed transaction id (any session may call
        // assign_distributed_transaction_id): refused where A's query ran,
        // which claimed the token first: the transaction is that session's
        // on this node, and a session that joins it runs nothing.
        if wk.port.to_string() == served {
            exec(&mut wk_app, &format!("BEGIN; SELECT {assign}"));
            let r = wk_app.simple_query(&format!("SET LOCAL tenant_guard.carried_context = '{token}'"));
            assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "worker {i}: {}", full_error(&r));
            assert!(full_error(&r).contains("belongs to another session"), "{}", full_error(&r));
            exec(&mut wk_app, "ROLLBACK");
        }
    }
    exec(&mut c, "COMMIT");
    // What pg_stat_activity and the server logs hold: never the token.
    let tail = &token[5..];
    for (i, wk) in w.citus.workers.iter().enumerate() {
        let activity = val(&mut w.citus.worker(i, "dba"), "SELECT string_agg(query, ' | ') FROM pg_stat_activity")
            .unwrap_or_default();
        assert!(!activity.contains(tail), "the token is in worker {i}'s pg_stat_activity");
        assert!(!wk.server_log().contains(tail), "the token is in worker {i}'s log");
    }
    assert!(!w.citus.coordinator.server_log().contains(tail));
    // The app role straight on a worker: no way to a context.
    let mut wk = w.citus.worker(0, "app");
    let r = wk.simple_query(&format!("SELECT tenant_guard.authenticate_jwt('{}')", token_for(&w.org_a, MEMBER_A)));
    assert_eq!(sqlstate(&r).as_deref(), Some("28000"), "memberships live on the coordinator");
    assert_eq!(count(&mut dba, "SELECT count(*) FROM docs"), 50);
}

#[test]
fn isolation_holds_after_shard_moves_splits_and_rebalancing_and_drift_is_reported() {
    let w = world();
    let mut dba = w.citus.connect("dba");
    exec(&mut dba, "CREATE TABLE moved (org_id uuid NOT NULL, id int, PRIMARY KEY (org_id, id))");
    exec(&mut dba, "BEGIN; SELECT tenant_guard.protect('moved'); COMMIT");
    exec(&mut dba, "SELECT create_distributed_table('moved', 'org_id', shard_count => 4, colocate_with => 'none')");
    exec(
        &mut dba,
        &format!(
            "INSERT INTO moved SELECT '{}', g FROM generate_series(1, 10) g; INSERT INTO moved SELECT '{}', g FROM generate_series(1, 10) g;
             GRANT SELECT, INSERT, UPDATE, DELETE ON moved TO app;",
            w.org_a, w.org_b
        ),
    );
    // Protected before it was distributed: its shards got every policy as
    // permissive (Citus drops AS RESTRICTIVE): reported, isolation intact.
    let drift = "SELECT string_agg(level || ' ' || code || ' ' || object, E'\\n') FROM tenant_guard.security_audit()
                  WHERE code = 'citus_shard_policies_differ' AND object = 'table public.moved'";
    let found = val(&mut dba, drift).unwrap_or_default();
    assert!(found.contains("warn citus_shard_policies_differ table public.moved"), "{found}");
    // Move a shard, then rebalance.
    let (shard, from, to): (i64, i32, i32) = {
        let r = rows(
            &mut dba,
            "SELECT s.shardid, p.nodeport, (SELECT nodeport FROM pg_dist_node WHERE nodeport <> p.nodeport AND noderole = 'primary' AND shouldhaveshards LIMIT 1)
               FROM pg_dist_shard s JOIN pg_dist_placement pl USING (shardid) JOIN pg_dist_node p ON p.groupid = pl.groupid
              WHERE s.logicalrelid = 'moved'::regclass ORDER BY s.shardid LIMIT 1",
        );
        (
            r[0][0].clone().unwrap().parse().unwrap(),
            r[0][1].clone().unwrap().parse().unwrap(),
            r[0][2].clone().unwrap().parse().unwrap(),
        )
    };
    exec(
        &mut dba,
        &format!("SELECT citus_move_shard_placement({shard}, '127.0.0.1', {from}, '127.0.0.1', {to}, shard_transfer_mode => 'block_writes')"),
    );
    exec(&mut dba, "SELECT rebalance_table_shards('moved', shard_transfer_mode => 'block_writes')");
    let mut c = signed_in(w, &w.org_a, MEMBER_A);
    assert_eq!(count(&mut c, "SELECT count(*) FROM moved"), 10);
    assert_eq!(count(&mut c, &format!("SELECT count(*) FROM moved WHERE org_id = '{}'", w.org_b)), 0);
    exec(&mut c, "COMMIT");
    // Split the shards that hold A's and B's rows, each in two on its node.
    for org in [&w.org_a, &w.org_b] {
        exec(
            &mut dba,
            &format!(
                "SELECT citus_split_shard_by_split_points(s.shardid,
                        ARRAY[((s.shardminvalue::bigint + s.shardmaxvalue::bigint) / 2)::int::text],
                        ARRAY[n.nodeid, n.nodeid], 'block_writes')
                   FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n USING (groupid)
                  WHERE s.shardid = get_shard_id_for_distribution_column('moved', '{org}')"
            ),
        );
    }
    assert_eq!(count(&mut dba, "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'moved'::regclass"), 6);
    for (org, user) in [(&w.org_a, MEMBER_A), (&w.org_b, OWNER_B)] {
        let mut c = signed_in(w, org, user);
        assert_eq!(count(&mut c, "SELECT count(*) FROM moved"), 10);
        assert_eq!(count(&mut c, "SELECT count(*) FROM moved WHERE org_id <> tenant_guard.current_org_id()"), 0);
        assert_eq!(affected(&mut c, "UPDATE moved SET id = id WHERE org_id <> tenant_guard.current_org_id()"), 0);
        exec(&mut c, "ROLLBACK");
    }
    let mut nobody = w.citus.connect("app");
    assert_eq!(count(&mut nobody, "SELECT count(*) FROM moved"), 0);
    // protect() again, now that it is distributed: coordinator and shards agree.
    exec(&mut dba, "BEGIN; SELECT tenant_guard.protect('moved'); COMMIT");
    assert_eq!(val(&mut dba, drift), None);
    let mut c = signed_in(w, &w.org_b, OWNER_B);
    assert_eq!(count(&mut c, "SELECT count(*) FROM moved"), 10);
    exec(&mut c, "COMMIT");
    // A shard policy changed behind Citus's back: an error.
    exec(
        &mut dba,
        "SELECT run_command_on_placements('moved', 'ALTER POLICY tenant_guard_allow_select ON %s USING (true)')",
    );
    let found = val(&mut dba, drift).unwrap_or_default();
    assert!(found.contains("error citus_shard_policies_differ table public.moved"), "{found}");
    exec(&mut dba, "BEGIN; SELECT tenant_guard.protect('moved'); COMMIT");
    assert_eq!(val(&mut dba, drift), None);
}

#[test]
fn tenant_queries_route_to_the_tenants_shard() {
    let w = world();
    let mut c = signed_in(w, &w.org_a, MEMBER_A);
    let plan = rows(&mut c, "EXPLAIN SELECT count(*) FROM docs")
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("Task Count: 1"), "not pruned to one shard:\n{plan}");
    // A table protect()ed after create_distributed_table() (its policies
    // are all permissive: Citus could not copy restrictive ones).
    let plan = rows(&mut c, "EXPLAIN SELECT count(*) FROM notes")
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("Task Count: 1"), "notes not pruned to one shard:\n{plan}");
    let plan = rows(&mut c, "EXPLAIN UPDATE docs SET title = title WHERE id = 1")
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(plan.contains("Task Count: 1"), "not pruned to one shard:\n{plan}");
    // A prepared statement planned under A is not reused under B.
    let st = c.prepare("SELECT count(*) FROM docs").unwrap();
    for _ in 0..6 {
        assert_eq!(c.query_one(&st, &[]).unwrap().get::<_, i64>(0), 30);
    }
    exec(&mut c, "COMMIT");
    begin_as(&mut c, &w.org_b, OWNER_B);
    assert_eq!(c.query_one(&st, &[]).unwrap().get::<_, i64>(0), 20, "a plan of A's context was reused");
    exec(&mut c, "COMMIT");
    assert_eq!(c.query_one(&st, &[]).unwrap().get::<_, i64>(0), 0, "no context, no rows");
}

#[test]
fn the_rest_works_on_the_coordinator() {
    let w = world();
    let mut app = w.citus.connect("app");
    let (key_id, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'citus-key'");
    exec(&mut app, "BEGIN");
    assert_eq!(auth(&mut app, &key).unwrap(), w.org_a);
    assert_eq!(count(&mut app, "SELECT count(*) FROM docs"), 30);
    exec(&mut app, "COMMIT");
    let mut svc = w.citus.connect("svc");
    exec(&mut svc, &format!("SELECT tenant_guard.put_secret_for('{}', 'stripe', 'citus', 'sk_citus_000111')", w.org_a));
    assert_eq!(
        val(&mut svc, &format!("SELECT tenant_guard.get_secret('{}', 'stripe', 'citus')", w.org_a)).as_deref(),
        Some("sk_citus_000111")
    );
    assert_eq!(val(&mut svc, "SELECT tenant_guard.rate_limit('citus-test', 1, '1 minute')").as_deref(), Some("t"));
    assert_eq!(val(&mut svc, "SELECT tenant_guard.rate_limit('citus-test', 1, '1 minute')").as_deref(), Some("f"));
    let mut dba = w.citus.connect("dba");
    poll(
        &mut dba,
        &format!("SELECT count(*) FROM tenant_guard.request_log WHERE api_key_id = '{key_id}'"),
        20,
        "the request log on the coordinator",
        |v| v != "0",
    );
    poll(
        &mut dba,
        "SELECT count(*) FROM tenant_guard.audit_log WHERE action = 'get_secret' AND object_name = 'citus'",
        20,
        "the audit trail on the coordinator",
        |v| v != "0",
    );
    assert_eq!(val(&mut dba, "SELECT verified FROM tenant_guard.verify_audit_log()").as_deref(), Some("t"));
    // tenant_guard's own tables are local to the coordinator.
    assert_eq!(
        count(
            &mut dba,
            "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::regclass::text LIKE 'tenant_guard.%'"
        ),
        0
    );
}

/// What the black-box review of the Citus work found, each closed: a
/// session that joins another's distributed transaction by naming its id
/// cannot read the intermediate results it left (they hold that org's
/// rows); the queries Citus 13.2 crashes the server planning are refused;
/// a data-modifying WITH under RLS gives no XX000; ROLLBACK TO leaves no
/// plan routed for the org it undid.
#[test]
fn what_the_citus_review_found_stays_fixed() {
    let w = world();
    // A request of org B that keeps intermediate results on the
    // coordinator (a CTE joined with a temporary table), still open.
    let mut victim = signed_in(w, &w.org_b, OWNER_B);
    exec(
        &mut victim,
        "CREATE TEMP TABLE ids (id int); INSERT INTO ids SELECT generate_series(1, 100);
         DECLARE cur CURSOR FOR WITH c AS MATERIALIZED (SELECT * FROM docs) SELECT c.title FROM c JOIN ids ON ids.id = c.id;",
    );
    assert_eq!(rows(&mut victim, "FETCH 2 FROM cur").len(), 2);
    let tx =
        rows(&mut victim, "SELECT initiator_node_identifier, transaction_number FROM get_current_transaction_id()");
    let (initiator, number) = (tx[0][0].clone().unwrap(), tx[0][1].clone().unwrap());
    // Another app session names B's transaction and reads its results.
    let mut attacker = w.citus.connect("app");
    exec(&mut attacker, &format!("BEGIN; SELECT assign_distributed_transaction_id({initiator}, {number}, now())"));
    let r = attacker.simple_query(
        "SELECT count(*) FROM read_intermediate_result('1_1', 'binary') AS r(org_id uuid, id bigint, title text)",
    );
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{}", full_error(&r));
    exec(&mut attacker, "ROLLBACK");
    // ... nor with Citus's own COPY reader, nor run anything else there.
    exec(&mut attacker, &format!("BEGIN; SELECT assign_distributed_transaction_id({initiator}, {number}, now())"));
    let r = attacker.simple_query("COPY \"1_1\" TO STDOUT WITH (format result)");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{}", full_error(&r));
    exec(&mut attacker, "ROLLBACK");
    exec(&mut attacker, &format!("BEGIN; SELECT assign_distributed_transaction_id({initiator}, {number}, now())"));
    let r = attacker.simple_query("SELECT count(*) FROM categories");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{}", full_error(&r));
    exec(&mut attacker, "ROLLBACK");
    // B's own request goes on.
    assert_eq!(rows(&mut victim, "FETCH ALL FROM cur").len(), 18);
    exec(&mut victim, "COMMIT");

    // Citus sends the whole query string of a SET LOCAL on to the workers:
    // one that holds anything else is refused; alone, it works.
    let mut app = w.citus.connect("app");
    let r = app.simple_query("BEGIN; SET LOCAL work_mem = '5MB'; SELECT 1");
    assert_eq!(sqlstate(&r).as_deref(), Some("0A000"), "{}", full_error(&r));
    exec(&mut app, "ROLLBACK");
    exec(&mut app, "BEGIN");
    exec(&mut app, "SET LOCAL work_mem = '5MB'; -- a comment is fine\n");
    assert_eq!(count(&mut app, "SELECT count(*) FROM categories"), 2);
    exec(&mut app, "COMMIT");

    // Shapes Citus 13.2 crashes the server planning (a table with RLS it
    // wraps into a subquery): refused, with and without a context; the
    // subquery form plans.
    for (sql, ctx) in [
        ("SELECT c.name, d.title FROM categories c LEFT JOIN docs d ON d.id = c.id", false),
        ("SELECT d.title FROM (SELECT id FROM docs LIMIT 1) x LEFT JOIN docs d ON d.id = x.id", false),
        ("SELECT d.title FROM (SELECT max(id) AS m FROM docs) x LEFT JOIN docs d ON d.id = x.m", true),
        ("SELECT c.name, d.title FROM categories c LEFT JOIN docs d ON d.id = c.id", true),
        ("SELECT count(*) FROM docs d JOIN tenant_guard.organizations o ON o.id = d.org_id", true),
    ] {
        if ctx {
            begin_as(&mut app, &w.org_a, MEMBER_A);
        }
        let r = app.simple_query(sql);
        assert_eq!(sqlstate(&r).as_deref(), Some("0A000"), "{sql}: {}", full_error(&r));
        if ctx {
            exec(&mut app, "ROLLBACK");
        }
    }
    begin_as(&mut app, &w.org_a, MEMBER_A);
    assert_eq!(
        count(&mut app, "SELECT count(d.title) FROM categories c LEFT JOIN (SELECT * FROM docs) d ON d.id = c.id"),
        2
    );
    // A data-modifying WITH: no XX000, with an org that contradicts the
    // query's filter or with none.
    let other = format!(
        "WITH u AS (UPDATE docs SET title = title WHERE org_id = '{}' RETURNING *) SELECT count(*) FROM u",
        w.org_b
    );
    assert_eq!(count(&mut app, &other), 0);
    exec(&mut app, "ROLLBACK");
    assert_eq!(
        count(&mut app, "WITH u AS (UPDATE docs SET title = title WHERE id = 2 RETURNING *) SELECT count(*) FROM u"),
        0
    );

    // ROLLBACK TO undoes a context, and the plans routed for it.
    begin_as(&mut app, &w.org_a, MEMBER_A);
    let st = app.prepare("SELECT count(*) FROM docs").unwrap();
    assert_eq!(app.query_one(&st, &[]).unwrap().get::<_, i64>(0), 30);
    exec(&mut app, "SAVEPOINT s");
    assert_eq!(
        val(&mut app, &format!("SELECT tenant_guard.authenticate_jwt('{}')", token_for(&w.org_b, OWNER_B))).unwrap(),
        w.org_b
    );
    assert_eq!(app.query_one(&st, &[]).unwrap().get::<_, i64>(0), 20);
    exec(&mut app, "ROLLBACK TO SAVEPOINT s");
    assert_eq!(app.query_one(&st, &[]).unwrap().get::<_, i64>(0), 30, "A's rows again, routed to A's shard");
    exec(&mut app, "COMMIT");
    // The coordinator is still up (no crash went by).
    assert_eq!(count(&mut w.citus.connect("dba"), "SELECT count(*) FROM docs"), 50);
}

/// What the later black-box reviews found, each closed: SQL smuggled into
/// a SET LOCAL through a literal the coordinator and a worker read apart
/// (`standard_conforming_strings = off` here, on there), which put a
/// copied context onto a worker from the coordinator alone; a worker that
/// took COMMIT and BEGIN inside what it took for Citus's first command;
/// RESET and a trailing `--` comment, which Citus also sends on; a
/// session that named the number of a transaction yet to start, signed in
/// and so refused that transaction's owner; a literal Citus writes for a
/// worker that reads `standard_conforming_strings` otherwise.
#[test]
fn what_the_later_citus_reviews_found_stays_fixed() {
    let w = world();
    let mut dba = w.citus.connect("dba");
    // Victim: org B's request, open, its remote commands shown to it.
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut cfg = postgres::Config::new();
    cfg.host("127.0.0.1").port(w.citus.coordinator.port).user("app").dbname("postgres");
    let sink = notices.clone();
    let mut victim = cfg
        .notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()))
        .connect(postgres::NoTls)
        .unwrap();
    begin_as(&mut victim, &w.org_b, OWNER_B);
    exec(&mut victim, "SET LOCAL citus.log_remote_commands = on");
    assert_eq!(count(&mut victim, "SELECT count(*) FROM docs"), 20);
    let seen = notices.lock().unwrap().clone();
    let token = seen
        .iter()
        .find_map(|m| m.split('\'').find(|p| p.starts_with("tgc1.")).map(str::to_string))
        .expect("the carried context in the remote commands");
    let assign = seen
        .iter()
        .find_map(|m| {
            m.find("assign_distributed_transaction_id(").map(|i| m[i..].split(')').next().unwrap().to_string() + ")")
        })
        .expect("the distributed transaction id in the remote commands")
        .replace('\'', "$s$");
    // An org whose notes live on the worker B's request has not used.
    let b_node = val(
        &mut dba,
        &format!(
            "SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
              WHERE p.shardid = get_shard_id_for_distribution_column('notes', '{}')",
            w.org_b
        ),
    )
    .unwrap();
    let elsewhere = val(
        &mut dba,
        &format!(
            "SELECT u::text FROM (SELECT md5(g::text)::uuid AS u FROM generate_series(1, 200) g) c
              WHERE (SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
                      WHERE p.shardid = get_shard_id_for_distribution_column('notes', c.u)) <> {b_node}
              LIMIT 1"
        ),
    )
    .unwrap();
    // The attacker, on the coordinator only, with no context: a literal
    // that ends at a backslash on the worker only.
    let mut app = w.citus.connect("app");
    exec(&mut app, "BEGIN");
    exec(&mut app, "SET LOCAL citus.propagate_set_commands = 'local'");
    let opened =
        format!("WITH u AS (DELETE FROM notes WHERE org_id = '{elsewhere}' RETURNING 1) SELECT count(*) FROM u");
    assert_eq!(count(&mut app, &opened), 0);
    exec(&mut app, "SET LOCAL standard_conforming_strings = off");
    let smuggled = format!(
        "SET LOCAL myapp.x = 'x\\'; COMMIT; BEGIN; SET LOCAL tenant_guard.carried_context TO $t${token}$t$; SELECT {assign}; --'"
    );
    let r = app.simple_query(&smuggled);
    assert_eq!(sqlstate(&r).as_deref(), Some("0A000"), "{}", full_error(&r));
    assert!(full_error(&r).contains("backslash"), "{}", full_error(&r));
    exec(&mut app, "ROLLBACK");
    // SQL that reaches a worker inside another command Citus writes (as the
    // reviews did, through literals and names Citus failed to quote) may
    // name B's transaction and set B's copied token there: a carried context
    // is taken only in a transaction Citus's own first command began.
    let (i, _) = w.citus.workers.iter().enumerate().find(|(_, wk)| wk.port.to_string() != b_node).unwrap();
    let mut wk = w.citus.worker(i, "app");
    exec(&mut wk, "BEGIN");
    exec(&mut wk, &format!("SELECT 1; SELECT {}", assign.replace("$s$", "'")));
    exec(&mut wk, &format!("SET LOCAL tenant_guard.carried_context = '{token}'"));
    let r = wk.simple_query("SELECT tenant_guard.current_org_id()");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{}", full_error(&r));
    assert!(full_error(&r).contains("not begun by Citus"), "{}", full_error(&r));
    exec(&mut wk, "ROLLBACK");
    // ... nor set the copied context inside a function or EXECUTE there,
    // where Citus would replay it on its own connections from that node.
    exec(&mut wk, "BEGIN");
    let r =
        wk.simple_query(&format!("DO $$BEGIN EXECUTE 'SET LOCAL tenant_guard.carried_context TO ''{token}'''; END$$"));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{}", full_error(&r));
    exec(&mut wk, "ROLLBACK");
    // ... nor with set_config() (or a function's SET clause): only a query
    // of its own sets it.
    exec(&mut wk, "BEGIN");
    let r = wk.simple_query(&format!("SELECT set_config('tenant_guard.carried_context', '{token}', true)"));
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"), "{}", full_error(&r));
    exec(&mut wk, "ROLLBACK");
    // On a connection Citus opened (its application_name), transaction
    // control in the middle of a query string is SQL that came in another
    // command: refused. Elsewhere a client's own BEGIN ...; COMMIT works.
    let mut cfg = postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(w.citus.workers[i].port)
        .user("app")
        .dbname("postgres")
        .application_name("citus_internal gpid=10000000001");
    let mut internal = cfg.connect(postgres::NoTls).unwrap();
    exec(&mut internal, "BEGIN");
    let r = internal.simple_query("SELECT 1; COMMIT; BEGIN; SELECT 1");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{}", full_error(&r));
    exec(&mut internal, "ROLLBACK");
    exec(&mut wk, "BEGIN; SELECT 1; COMMIT; BEGIN; SELECT 1; COMMIT");
    exec(&mut victim, "COMMIT");

    // Citus writes ANALYZE's column names unquoted, and sends the command
    // even for a role PostgreSQL skips as not the owner: refused.
    let r = app.simple_query("ANALYZE docs (\"x) ; SELECT 1/0 ; --\")");
    assert_eq!(sqlstate(&r).as_deref(), Some("42601"), "{}", full_error(&r));
    let r = app.simple_query("VACUUM (ANALYZE) docs (\"x) ; SELECT 1/0 ; --\")");
    assert_eq!(sqlstate(&r).as_deref(), Some("42601"), "{}", full_error(&r));

    // A transaction that carried a context stays its session's on the
    // coordinator until the last token carried for it expires: naming its
    // id right after it ended gets nothing run (Citus would have sent that
    // id, and a copy of the token, to a worker it had not used).
    let mut ended = signed_in(w, &w.org_b, OWNER_B);
    assert_eq!(count(&mut ended, "SELECT count(*) FROM docs"), 20);
    let id = rows(
        &mut ended,
        "SELECT initiator_node_identifier, transaction_number, transaction_stamp FROM get_current_transaction_id()",
    );
    exec(&mut ended, "COMMIT");
    let (init, num, stamp) = (id[0][0].clone().unwrap(), id[0][1].clone().unwrap(), id[0][2].clone().unwrap());
    exec(&mut app, &format!("BEGIN; SELECT assign_distributed_transaction_id({init}, {num}, '{stamp}')"));
    let r = app.simple_query("SELECT count(*) FROM categories");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{}", full_error(&r));
    exec(&mut app, "ROLLBACK");

    // Citus writes the result id of broadcast_intermediate_result()
    // unescaped into the COPY it sends every worker: a quote in it ran the
    // rest as SQL there. Only a superuser may call it (or its local twin).
    exec(&mut app, "BEGIN");
    let t = std::time::Instant::now();
    let r = app.simple_query(
        "SELECT * FROM broadcast_intermediate_result('a\" FROM STDIN WITH (format result); SELECT pg_sleep(1); --', 'SELECT 1')",
    );
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{}", full_error(&r));
    assert!(t.elapsed() < std::time::Duration::from_secs(1), "{:?}", t.elapsed());
    exec(&mut app, "ROLLBACK");
    exec(&mut app, "BEGIN");
    let r = app.simple_query("SELECT * FROM create_intermediate_result('r1', 'SELECT 1')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{}", full_error(&r));
    exec(&mut app, "ROLLBACK");
    // A parallel plan on a worker: its parallel workers take the carried
    // context their leader claimed (they failed to restore it, 22023).
    begin_as(&mut app, &w.org_a, MEMBER_A);
    for set in [
        "SET LOCAL force_parallel_mode = on",
        "SET LOCAL parallel_setup_cost = 0",
        "SET LOCAL parallel_tuple_cost = 0",
        "SET LOCAL min_parallel_table_scan_size = 0",
    ] {
        exec(&mut app, set);
    }
    assert_eq!(count(&mut app, "SELECT count(*) FROM docs"), 30);
    assert_eq!(count(&mut app, "SELECT count(*) FROM notes"), 5);
    exec(&mut app, "ROLLBACK");
    // What Citus itself sends its connections still runs: EXPLAIN ANALYZE
    // (two statements per task), savepoints replayed on a new connection.
    begin_as(&mut app, &w.org_a, MEMBER_A);
    exec(&mut app, "SAVEPOINT s1");
    let plan = rows(&mut app, "EXPLAIN ANALYZE SELECT count(*) FROM docs");
    assert!(!plan.is_empty());
    assert_eq!(count(&mut app, "SELECT count(*) FROM notes"), 5);
    exec(&mut app, "ROLLBACK");

    // What Citus also sends on: RESET, and a trailing -- comment (which
    // would swallow what Citus appends); backslashes in any SET LOCAL.
    // A dollar-quoted value, and a comment ended by a newline, are fine.
    for refused in [
        "RESET work_mem; SELECT 1",
        "RESET ALL; SELECT 1",
        "SET LOCAL work_mem = '5MB' -- no newline",
        "SET LOCAL application_name = E'a\\\\b'",
    ] {
        exec(&mut app, "BEGIN");
        let r = app.simple_query(refused);
        assert_eq!(sqlstate(&r).as_deref(), Some("0A000"), "{refused}: {}", full_error(&r));
        exec(&mut app, "ROLLBACK");
    }
    exec(&mut app, "BEGIN");
    exec(&mut app, "SET LOCAL application_name = $$a b$$ -- a note\n");
    exec(&mut app, "RESET work_mem");
    assert_eq!(count(&mut app, "SELECT count(*) FROM categories"), 2);
    exec(&mut app, "COMMIT");
    // A superuser's text is its own (Citus's maintenance joins such commands).
    exec(&mut dba, "BEGIN; SET LOCAL work_mem = '5MB'; RESET work_mem; SELECT 1; COMMIT");

    // On a worker: what passes for Citus's first command of a transaction
    // is BEGIN, SETs and SAVEPOINTs, and the id last; nothing else.
    let mut wk = w.citus.worker(0, "app");
    let r = wk.simple_query(
        "BEGIN; SET LOCAL work_mem = '5MB'; COMMIT; BEGIN; SELECT assign_distributed_transaction_id(0, 123456789, '2026-01-01')",
    );
    assert_eq!(sqlstate(&r).as_deref(), Some("0A000"), "{}", full_error(&r));
    exec(&mut wk, "ROLLBACK");
    exec(
        &mut wk,
        "BEGIN TRANSACTION ISOLATION LEVEL READ COMMITTED; SET LOCAL work_mem = '5MB'; SAVEPOINT savepoint_1; \
         SELECT assign_distributed_transaction_id(0, 123456789, '2026-01-01')",
    );
    exec(&mut wk, "ROLLBACK");

    // A data-modifying WITH read with a reference table, in a request
    // context: Citus runs it over a connection to the coordinator itself,
    // which cannot take the context (it failed with XX000); refused with
    // 0A000. As two statements it works.
    begin_as(&mut app, &w.org_a, MEMBER_A);
    let r = app.simple_query(
        "WITH u AS (UPDATE notes SET body = body RETURNING id) SELECT count(*) FROM u JOIN categories c USING (id)",
    );
    assert_eq!(sqlstate(&r).as_deref(), Some("0A000"), "{}", full_error(&r));
    exec(&mut app, "ROLLBACK");
    begin_as(&mut app, &w.org_a, MEMBER_A);
    exec(&mut app, "CREATE TEMP TABLE touched ON COMMIT DROP AS WITH u AS (UPDATE notes SET body = body RETURNING id) SELECT id FROM u");
    assert_eq!(count(&mut app, "SELECT count(*) FROM touched"), 5);
    assert_eq!(count(&mut app, "SELECT count(*) FROM categories c WHERE c.id IN (1, 2)"), 2);
    exec(&mut app, "ROLLBACK");

    // A literal Citus writes for a worker that reads it otherwise: SET
    // LOCAL standard_conforming_strings = off is replayed on the workers, a
    // session SET turns it on here again; a backslash in a value then ended
    // the literal on the worker only, and the rest ran there as SQL (here:
    // reporting the worker's port and the org it saw). Refused on the
    // worker, and here while the setting is off.
    begin_as(&mut app, &w.org_a, MEMBER_A);
    exec(&mut app, "SET LOCAL standard_conforming_strings = off");
    exec(&mut app, "SET standard_conforming_strings = on");
    let r = app.simple_query(
        "SELECT title FROM docs WHERE title = 'x\\' AND title <> '))) UNION ALL SELECT concat_ws($$|$$, inet_server_port(), tenant_guard.current_org_id()) --'",
    );
    assert_eq!(sqlstate(&r).as_deref(), Some("0A000"), "{}", full_error(&r));
    assert!(full_error(&r).contains("standard_conforming_strings"), "{}", full_error(&r));
    exec(&mut app, "ROLLBACK");
    // Nor as the role's default (Citus would copy it to every node, and
    // every statement of the role, the ALTER ROLE undoing it included,
    // would be refused there).
    let r = app.simple_query("ALTER ROLE app SET standard_conforming_strings = off");
    assert_eq!(sqlstate(&r).as_deref(), Some("0A000"), "{}", full_error(&r));
    let r = app.simple_query("ALTER ROLE app IN DATABASE postgres SET standard_conforming_strings TO DEFAULT");
    assert_eq!(sqlstate(&r).as_deref(), Some("0A000"), "{}", full_error(&r));
    exec(&mut app, "SET standard_conforming_strings = off");
    let r = app.simple_query("SELECT count(*) FROM categories");
    assert_eq!(sqlstate(&r).as_deref(), Some("0A000"), "{}", full_error(&r));
    exec(&mut app, "RESET standard_conforming_strings");
    assert_eq!(count(&mut app, "SELECT count(*) FROM categories"), 2);
    // Citus writes a COPY's option names unquoted into the COPY it sends
    // each shard: a quoted name ran the rest as SQL on every worker
    // (here, a sleep of 0.2 s per shard). Refused; COPY's own options work.
    let t = std::time::Instant::now();
    let r = app.simple_query("COPY docs TO STDOUT WITH (\"format text); SELECT pg_sleep(0.2) --\")");
    assert_eq!(sqlstate(&r).as_deref(), Some("42601"), "{}", full_error(&r));
    assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
    let r = app.simple_query("COPY docs FROM STDIN WITH (\"Format\" csv)");
    assert_eq!(sqlstate(&r).as_deref(), Some("42601"), "{}", full_error(&r));
    begin_as(&mut app, &w.org_a, MEMBER_A);
    let mut out = Vec::new();
    std::io::Read::read_to_end(
        &mut app.copy_out("COPY docs TO STDOUT WITH (format csv, header, delimiter ';')").unwrap(),
        &mut out,
    )
    .unwrap();
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 31, "a header and A's 30 rows");
    exec(&mut app, "ROLLBACK");

    // Naming a distributed transaction id after signing in (which gave the
    // transaction one): a proper SQLSTATE, not Citus's XX000.
    begin_as(&mut app, &w.org_a, MEMBER_A);
    let r = app.simple_query("SELECT assign_distributed_transaction_id(0, 5, now())");
    assert_eq!(sqlstate(&r).as_deref(), Some("25001"), "{}", full_error(&r));
    exec(&mut app, "ROLLBACK");

    // A session that names a transaction number itself and signs in does
    // not make that transaction its own (it would refuse its owner), and
    // carries no context to the workers.
    let number = 4_000_000_000u64 + u64::from(std::process::id());
    let mut squatter = w.citus.connect("app");
    exec(&mut squatter, &format!("BEGIN; SELECT assign_distributed_transaction_id(0, {number}, now())"));
    val(&mut squatter, &format!("SELECT tenant_guard.authenticate_jwt('{}')", token_for(&w.org_a, MEMBER_A))).unwrap();
    assert_eq!(count(&mut squatter, "SELECT count(*) FROM docs"), 0, "no context reaches the workers");
    let mut owner = w.citus.connect("app");
    exec(&mut owner, &format!("BEGIN; SELECT assign_distributed_transaction_id(0, {number}, now())"));
    assert_eq!(count(&mut owner, "SELECT count(*) FROM categories"), 2, "not refused: nobody owns it");
    exec(&mut owner, "ROLLBACK");
    exec(&mut squatter, "ROLLBACK");
}
