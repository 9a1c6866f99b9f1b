//! The server-log hook: keys, tokens and secrets stay out of what
//! PostgreSQL logs, whatever logging a role or a DBA turns on.

mod common;
use common::*;
use std::time::Duration;
use tenant_guard_harness::{cluster, sqlstate, Cluster, Options};

#[test]
fn keys_and_secrets_given_as_literals_stay_out_of_the_log() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    // Errors inside these functions would normally log the statement, literal and all.
    let _ = app.simple_query("SELECT tenant_guard.authenticate('tgk_LITERALKEYMARKER0123456789abcdefghijklmn0000')");
    begin_as(&mut app, &w.org_a, MEMBER_A);
    let r = app.simple_query("SELECT tenant_guard.put_secret('smtp', 'pw', 'LITERALSECRETMARKER')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");
    let _ = app.simple_query("SELECT tenant_guard.authenticate_jwt('LITERALJWTMARKER.x.y')");
    let _ = app.simple_query("SELECT tenant_guard.webhook_sign('whsec_LITERALWHSECMARKER%%%', 'm', 1, 'p')");
    // A statement that fails outside them is logged as usual (the control).
    let _ = app.simple_query("SELECT 'CONTROLMARKER'::int");
    std::thread::sleep(Duration::from_millis(300));
    let log = cluster().server_log();
    assert!(log.contains("CONTROLMARKER"), "the log does record failing statements");
    for m in ["LITERALKEYMARKER", "LITERALSECRETMARKER", "LITERALJWTMARKER", "LITERALWHSECMARKER"] {
        assert!(!log.contains(m), "{m} reached the server log");
    }
}

/// Settings any role may give itself, or a DBA may turn on, make PostgreSQL
/// log bound parameters and plans: the log hook keeps API keys, JWTs and
/// secrets out of them (and the controls show the settings did work).
#[test]
fn keys_and_secrets_stay_out_of_logged_parameters_and_plans() {
    let c = Cluster::start(Options::default());
    let db = c.fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (_, key) = create_key(&mut app, &w.org_a, ADMIN_A, "'k'");
    let (never_issued, _) = {
        let (id, k) = create_key(&mut app, &w.org_a, ADMIN_A, "'tmp'");
        db.dba().batch_execute(&format!("DELETE FROM tenant_guard.api_keys WHERE id = '{id}'")).unwrap();
        (k, id)
    };
    let secret = "sk_live_BOUNDSECRETMARKER";
    let jwt = token_for(&w.org_a, ADMIN_A);
    exec(
        &mut app,
        "SET log_parameter_max_length_on_error = -1;
         SET debug_print_plan = on; SET debug_print_parse = on; SET client_min_messages = warning",
    );
    exec(&mut app, "BEGIN");
    assert_eq!(auth(&mut app, &key).unwrap(), w.org_a);
    exec(&mut app, "COMMIT");
    assert_eq!(sqlstate(&auth(&mut app, &never_issued)).as_deref(), Some("28000"));
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let r = app.query_one("SELECT tenant_guard.put_secret('webhook', 'n', $1)::text", &[&secret]);
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"), "reserved kind");
    exec(&mut app, "ROLLBACK");
    let r = app.query_one("SELECT tenant_guard.authenticate_jwt($1)::text", &[&format!("{jwt}x")]);
    assert!(r.is_err());
    // Through a wrapper of the application's, whose statements do not name tenant_guard.
    db.dba()
        .batch_execute(
            "CREATE FUNCTION public.my_auth(k text) RETURNS uuid LANGUAGE sql AS 'SELECT tenant_guard.authenticate(k)'",
        )
        .unwrap();
    exec(&mut app, "BEGIN");
    app.query_one("SELECT public.my_auth($1)::text", &[&key]).unwrap();
    exec(&mut app, "COMMIT");
    assert_eq!(sqlstate(&app.query_one("SELECT public.my_auth($1)::text", &[&never_issued])).as_deref(), Some("28000"));
    // Controls: a statement that does not involve tenant_guard has its parameters logged.
    let r = app.query_one("SELECT 1 / $1::text::int", &[&"0"]);
    assert!(r.is_err());
    app.query_one("SELECT length($1::text || random()::text)", &[&"CONTROLPLANMARKER"]).unwrap();
    // A DBA's log_min_duration_statement = 0 logs every statement with its parameters.
    db.dba().batch_execute("ALTER ROLE app SET log_min_duration_statement = 0").unwrap();
    let mut app2 = db.app();
    exec(&mut app2, "BEGIN");
    assert_eq!(auth(&mut app2, &key).unwrap(), w.org_a);
    app2.simple_query(&format!("SELECT tenant_guard.authenticate('{key}', 'literal')")).unwrap();
    exec(&mut app2, "COMMIT");
    db.dba().batch_execute("ALTER ROLE app RESET log_min_duration_statement").unwrap();
    // Control: a superuser's own plans are still dumped (unless they name tenant_guard).
    let mut dba = db.dba();
    exec(&mut dba, "SET debug_print_plan = on");
    dba.query_one("SELECT length($1::text || random()::text)", &[&"CONTROLPLANMARKER"]).unwrap();
    dba.query_one("SELECT tenant_guard.authenticate($1)::text", &[&key]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let log = c.server_log();
    // Node dumps print a Const's bytes in decimal, wrapped over lines (even
    // inside a number): compare with all whitespace removed.
    let flat: String = log.chars().filter(|c| !c.is_whitespace()).collect();
    let decimal = |s: &str| s.bytes().map(|b| b.to_string()).collect::<String>();
    assert!(log.contains("parameters: $1 = '0'"), "control: parameters are logged");
    // Plan dumps of a non-superuser's session are not written at all.
    assert_eq!(flat.matches(&decimal("CONTROLPLANMARKER")).count(), 1, "only the superuser's control plan is dumped");
    assert_eq!(log.matches("LOG:  plan:").count(), 1, "only the superuser's control plan is dumped");
    assert!(log.contains("duration:"), "control: durations are logged");
    // (The display prefix may stay; literals in calls of tenant_guard's
    // key-taking functions are masked whole.)
    for (what, needle) in [
        ("key", key[12..].to_string()),
        ("key as plan bytes", decimal(&key[4..16])),
        ("never-issued key", never_issued[12..].to_string()),
        ("secret", "BOUNDSECRETMARKER".to_string()),
        ("secret as plan bytes", decimal("BOUNDSECRETMARKER")),
        ("JWT", jwt[jwt.len() - 20..].to_string()),
    ] {
        assert!(!log.contains(&needle) && !flat.contains(&needle), "{what} reached the server log");
    }
}
