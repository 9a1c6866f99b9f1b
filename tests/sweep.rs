//! The hostile-input sweep: every function of schema tenant_guard that a
//! role may execute, found in the catalog (so a new function is covered
//! without editing this file), called by that role with each argument in
//! turn NULL, empty, huge (10 MB and more), malformed and at its bounds,
//! with and without a request context. Nothing may crash the server, raise
//! XX000, hang (statement_timeout), or answer with an error longer than a
//! few KB.

mod common;
use common::*;
use postgres::Client;
use tenant_guard_harness::{cluster, full_error, sqlstate, Db};

const TEN_MB: &str = "10485760";

/// (a value that makes the call plausible, the hostile values) for a type.
fn values(typ: &str, org: &str) -> (String, Vec<String>) {
    let huge_text = format!("repeat('x', {TEN_MB})");
    let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match typ {
        "text" | "name" => (
            "'member'".into(),
            vec![
                "NULL".into(),
                "''".into(),
                huge_text.clone(),
                format!("repeat(chr(1), {TEN_MB})"),
                "E'\\u00e9\\u8868 \\t%s%n'".into(),
                "'tgk_' || repeat('0', 46)".into(),
                "'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.' || repeat('A', 43)".into(),
                "'v1.e30.AAAA'".into(),
                "'owner'".into(),
                "'*'".into(),
            ],
        ),
        "uuid" => (
            format!("'{org}'"),
            v(&["NULL", "'00000000-0000-0000-0000-000000000000'", "'ffffffff-ffff-ffff-ffff-ffffffffffff'"]),
        ),
        "bytea" => (
            "'\\x00'::bytea".into(),
            vec![
                "NULL".into(),
                "''::bytea".into(),
                format!("convert_to({huge_text}, 'UTF8')"),
                "'\\x01'::bytea".into(),
            ],
        ),
        "integer" => ("10".into(), v(&["NULL", "0", "-1", "2147483647", "-2147483648"])),
        "bigint" => ("1".into(), v(&["NULL", "0", "-1", "9223372036854775807", "-9223372036854775808"])),
        "interval" => (
            "'1 minute'".into(),
            v(&[
                "NULL",
                "'0'",
                "'-1 second'",
                "'1 microsecond'",
                "'178000000 years'",
                "'-178000000 years'",
                "'2147483647 days'",
            ]),
        ),
        "inet" => ("'192.0.2.1'".into(), v(&["NULL", "'::1'", "'0.0.0.0/0'"])),
        "text[]" | "name[]" => (
            "'{}'".into(),
            vec![
                "NULL".into(),
                "'{NULL}'".into(),
                "'{\"\"}'".into(),
                "array_fill('x'::text, ARRAY[200000])".into(),
                format!("ARRAY[{huge_text}]"),
            ],
        ),
        "jsonb" | "json" => (
            "'{}'".into(),
            vec!["NULL".into(), "'null'".into(), "'[]'".into(), format!("jsonb_build_object('x', {huge_text})")],
        ),
        "regclass" => {
            ("'docs'".into(), v(&["NULL", "'pg_class'", "'tenant_guard.api_keys'", "'0'", "'tenant_guard.roles'"]))
        }
        "boolean" => ("true".into(), v(&["NULL", "false"])),
        "timestamp with time zone" => ("now()".into(), v(&["NULL", "'infinity'", "'-infinity'", "'epoch'"])),
        "oid" => ("0".into(), v(&["NULL", "4294967295", "'pg_class'::regclass::oid"])),
        other => panic!("the sweep has no values for type {other}: add them"),
    }
}

struct Func {
    name: String,
    types: Vec<String>,
}

/// Every function of the schema `role` may execute (trigger functions
/// cannot be called directly and are left out).
fn functions(c: &mut Client, role: &str) -> Vec<Func> {
    rows(
        c,
        &format!(
            "SELECT p.oid::regproc::text,
                    coalesce((SELECT string_agg(format_type(t, NULL), ';' ORDER BY n)
                                FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY u(t, n)), '')
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'tenant_guard' AND p.prokind = 'f'
                AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype)
                AND has_function_privilege('{role}', p.oid, 'EXECUTE')
              ORDER BY 1"
        ),
    )
    .into_iter()
    .map(|r| Func {
        name: r[0].clone().unwrap(),
        types: r[1].clone().unwrap().split(';').filter(|s| !s.is_empty()).map(str::to_string).collect(),
    })
    .collect()
}

fn sweep(db: &Db, role: &str, context: Option<&str>, org: &str) -> usize {
    let mut c = db.connect(role);
    let mut dba = db.dba();
    let started = val(&mut dba, "SELECT pg_postmaster_start_time()::text").unwrap();
    let funcs = functions(&mut c, role);
    assert!(funcs.len() >= 10, "{role} executes only {} functions?", funcs.len());
    let mut failures = vec![];
    let mut calls = 0;
    for f in &funcs {
        let typed: Vec<(String, Vec<String>)> = f.types.iter().map(|t| values(t, org)).collect();
        let mut variants: Vec<Vec<String>> = vec![typed.iter().map(|(base, _)| base.clone()).collect()];
        for (i, (_, hostile)) in typed.iter().enumerate() {
            for h in hostile {
                let mut args: Vec<String> = typed.iter().map(|(base, _)| base.clone()).collect();
                args[i] = h.clone();
                variants.push(args);
            }
        }
        for args in variants {
            let call = format!(
                "SELECT {}({})",
                f.name,
                args.iter().zip(&f.types).map(|(a, t)| format!("({a})::{t}")).collect::<Vec<_>>().join(", ")
            );
            exec(&mut c, "BEGIN; SET LOCAL statement_timeout = '30s'");
            if let Some(ctx) = context {
                exec(&mut c, ctx);
            }
            calls += 1;
            let r = c.simple_query(&call);
            let shown = if call.len() > 300 { format!("{}...", &call[..300]) } else { call.clone() };
            match sqlstate(&r).as_deref() {
                None => {}
                Some("XX000") => {
                    failures.push(format!("XX000: {shown}: {}", &full_error(&r)[..full_error(&r).len().min(300)]))
                }
                Some("57014") => failures.push(format!("hang (statement_timeout): {shown}")),
                Some(code) if code.starts_with("non-db error") => {
                    failures.push(format!("connection lost: {shown}: {code}"));
                    c = db.connect(role);
                    continue;
                }
                Some(_) => {
                    let e = full_error(&r);
                    if e.len() > 4096 {
                        failures.push(format!("an error of {} bytes: {shown}: {}...", e.len(), &e[..200]));
                    }
                }
            }
            let _ = c.simple_query("ROLLBACK");
        }
    }
    assert_eq!(val(&mut dba, "SELECT pg_postmaster_start_time()::text").unwrap(), started, "the server restarted");
    assert!(failures.is_empty(), "{} of {calls} calls as {role} failed:\n{}", failures.len(), failures.join("\n"));
    calls
}

#[test]
fn sweep_plain_role_without_context() {
    let db = cluster().fresh_db();
    let w = world(&db);
    sweep(&db, "app", None, &w.org_a);
}

#[test]
fn sweep_plain_role_in_an_owner_context() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let ctx = format!("SELECT tenant_guard.authenticate_jwt('{}')", token_for(&w.org_a, OWNER_A));
    sweep(&db, "app", Some(&ctx), &w.org_a);
}

#[test]
fn sweep_plain_role_in_an_api_key_context() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut svc = db.svc();
    val(&mut svc, &format!("SELECT tenant_guard.import_api_key_hash('{}', 'bot', sha256('sweep-legacy-key-0123456789'), 'owner', rate_limit_per_minute => 1000000)", w.org_a));
    sweep(&db, "app", Some("SELECT tenant_guard.authenticate('sweep-legacy-key-0123456789')"), &w.org_a);
}

#[test]
fn sweep_service_role() {
    let db = cluster().fresh_db();
    let w = world(&db);
    sweep(&db, "svc", None, &w.org_a);
}
