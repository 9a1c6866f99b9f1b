//! The secret settings never reach a non-superuser, cannot be stored
//! in a catalog PUBLIC can read, and the extension refuses to run unpreloaded
//! or without a usable passphrase.

use tenant_guard_harness::{cluster, full_error, message, sqlstate, Cluster, Options, JWT_SECRET, PASSPHRASE};

const SECRET_GUCS: [&str; 3] = ["tenant_guard.passphrase", "tenant_guard.old_passphrases", "tenant_guard.jwt_secret"];

/// Every text a result set holds, for "does the secret appear anywhere" checks.
fn all_text(rows: &[postgres::SimpleQueryMessage]) -> String {
    let mut s = String::new();
    for m in rows {
        if let postgres::SimpleQueryMessage::Row(r) = m {
            for i in 0..r.len() {
                s.push_str(r.get(i).unwrap_or(""));
                s.push('\n');
            }
        }
    }
    s
}

#[test]
fn superuser_reads_and_non_superuser_cannot_read_secret_settings() {
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    // The value really is configured (so the negative checks below mean something).
    let v: String = dba.query_one("SELECT current_setting('tenant_guard.passphrase')", &[]).unwrap().get(0);
    assert_eq!(v, PASSPHRASE);

    let mut app = db.app();
    for g in SECRET_GUCS {
        for q in [
            format!("SELECT current_setting('{g}')"),
            format!("SELECT current_setting('{g}', true)"),
            format!("SHOW {g}"),
        ] {
            let r = app.simple_query(&q);
            assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{q} must be refused");
            assert!(!full_error(&r).contains(PASSPHRASE) && !full_error(&r).contains(JWT_SECRET));
        }
    }
    let show_all = all_text(&app.simple_query("SHOW ALL").unwrap());
    assert!(show_all.contains("work_mem"), "SHOW ALL works");
    assert!(!show_all.contains(PASSPHRASE) && !show_all.contains(JWT_SECRET));
    assert!(!show_all.contains("tenant_guard.passphrase"));

    let settings = all_text(&app.simple_query("SELECT * FROM pg_settings").unwrap());
    assert!(settings.contains("work_mem"));
    assert!(!settings.contains(PASSPHRASE) && !settings.contains(JWT_SECRET));
    let n: i64 = app
        .query_one("SELECT count(*) FROM pg_settings WHERE name IN ('tenant_guard.passphrase','tenant_guard.old_passphrases','tenant_guard.jwt_secret')", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // boot_val / reset_val of every visible row: none holds a secret.
    let vals = all_text(
        &app.simple_query("SELECT name, boot_val, reset_val FROM pg_settings WHERE name LIKE 'tenant_guard.%'")
            .unwrap(),
    );
    assert!(!vals.contains(PASSPHRASE));
    // The config-file view shows raw file contents: closed to PUBLIC.
    let r = app.simple_query("SELECT * FROM pg_file_settings");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
}

#[test]
fn non_superuser_cannot_set_secret_settings() {
    let db = cluster().fresh_db();
    let mut app = db.app();
    for g in SECRET_GUCS {
        for q in [
            format!("SET {g} = 'attacker-chosen-value-0123456789abcdef'"),
            format!("SET LOCAL {g} = 'attacker-chosen-value-0123456789abcdef'"),
            format!("SELECT set_config('{g}', 'attacker-chosen-value-0123456789abcdef', false)"),
            format!("RESET {g}"),
        ] {
            let r = app.simple_query(&q);
            assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "{q}");
        }
    }
    // Nor through connection start-up options.
    let r = postgres::Config::new()
        .host("127.0.0.1")
        .port(cluster().port)
        .user("app")
        .dbname(&db.name)
        .options("-c tenant_guard.passphrase=attacker-chosen-value-0123456789abcdef")
        .connect(postgres::NoTls);
    assert!(r.is_err(), "a startup option must not set the passphrase");
    // The prefix is reserved: no placeholder can be invented under it.
    let r = app.simple_query("SET tenant_guard.made_up = 'x'");
    assert!(r.is_err());
}

#[test]
fn secrets_cannot_be_stored_in_public_catalogs() {
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    let attempt = "stored-in-catalog-0123456789abcdefghijkl";
    for g in SECRET_GUCS {
        for q in [
            format!("ALTER ROLE app SET {g} = '{attempt}'"),
            format!("ALTER ROLE ALL SET {g} = '{attempt}'"),
            format!("ALTER DATABASE {} SET {g} = '{attempt}'", db.name),
            format!("ALTER ROLE app IN DATABASE {} SET {g} = '{attempt}'", db.name),
            format!(
                "CREATE FUNCTION leak_{}() RETURNS int LANGUAGE sql SET {g} = '{attempt}' AS 'SELECT 1'",
                g.replace('.', "_")
            ),
        ] {
            let r = dba.simple_query(&q);
            assert!(r.is_err(), "{q} must fail");
            let e = full_error(&r);
            assert!(e.contains("cannot be set with ALTER ROLE, ALTER DATABASE"), "{q}: {e}");
            assert!(!e.contains(attempt), "the value must not be echoed: {e}");
        }
    }
    let n: i64 = dba
        .query_one(
            "SELECT count(*) FROM pg_db_role_setting s, unnest(s.setconfig) c WHERE c LIKE 'tenant_guard.%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing landed in pg_db_role_setting");
    let n: i64 = dba
        .query_one("SELECT count(*) FROM pg_proc p, unnest(p.proconfig) c WHERE c LIKE 'tenant_guard.%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing landed in pg_proc");
    // The superuser may still SET it for its own session (not stored anywhere).
    dba.batch_execute("SET tenant_guard.passphrase = 'session-only-passphrase-0123456789abcdef'").unwrap();
}

#[test]
fn missing_or_short_passphrase_gives_a_clear_error() {
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    let org: String = dba
        .query_one("SELECT tenant_guard.create_organization('acme', '00000000-0000-4000-8000-000000000001')::text", &[])
        .unwrap()
        .get(0);
    let assume = format!("SELECT tenant_guard.assume('{org}', '00000000-0000-4000-8000-000000000001')");
    // Works with the configured passphrase.
    dba.batch_execute(&format!("BEGIN; {assume}; COMMIT")).unwrap();

    let short = "tooshort-0123456789";
    dba.batch_execute(&format!("SET tenant_guard.passphrase = '{short}'")).unwrap();
    let r = dba.simple_query(&format!("BEGIN; {assume}; COMMIT"));
    assert_eq!(sqlstate(&r).as_deref(), Some("55000"));
    assert!(message(&r).contains("too short"), "{}", message(&r));
    assert!(!full_error(&r).contains(short));
    dba.batch_execute("ROLLBACK").unwrap();

    dba.batch_execute("SET tenant_guard.passphrase = ''").unwrap();
    let r = dba.simple_query(&format!("BEGIN; {assume}; COMMIT"));
    assert_eq!(sqlstate(&r).as_deref(), Some("55000"));
    assert!(message(&r).contains("tenant_guard.passphrase is not set"), "{}", message(&r));
    dba.batch_execute("ROLLBACK; RESET tenant_guard.passphrase").unwrap();
    dba.batch_execute(&format!("BEGIN; {assume}; COMMIT")).unwrap();

    // JWT secret likewise.
    dba.batch_execute("SET tenant_guard.jwt_secret = ''").unwrap();
    let r = dba.simple_query("SELECT tenant_guard.authenticate_jwt('a.b.c')");
    assert_eq!(sqlstate(&r).as_deref(), Some("55000"));
    assert!(message(&r).contains("jwt_secret is not set"));
}

#[test]
fn refuses_to_work_without_preloading() {
    let c = Cluster::start(Options { preload: false, ..Options::default() });
    let mut dba = c.connect("postgres", "dba");
    let r = dba.simple_query("CREATE EXTENSION tenant_guard");
    let e = full_error(&r);
    assert_eq!(sqlstate(&r).as_deref(), Some("55000"), "{e}");
    assert!(e.contains("shared_preload_libraries"), "{e}");
    assert!(e.contains("placeholders"), "the error says why: {e}");
    let n: i64 = dba.query_one("SELECT count(*) FROM pg_extension WHERE extname = 'tenant_guard'", &[]).unwrap().get(0);
    assert_eq!(n, 0);
}

#[test]
fn secrets_never_reach_the_server_log() {
    // Run the failing paths above once more, then read the log.
    let db = cluster().fresh_db();
    let mut app = db.app();
    let _ = app.simple_query("SELECT current_setting('tenant_guard.passphrase')");
    let _ = app.simple_query("SHOW tenant_guard.jwt_secret");
    let mut dba = db.dba();
    let _ = dba.simple_query("SET tenant_guard.passphrase = ''");
    let _ = dba.simple_query("BEGIN; SELECT tenant_guard.assume(gen_random_uuid(), gen_random_uuid())");
    let log = cluster().server_log();
    assert!(!log.is_empty());
    assert!(!log.contains(PASSPHRASE), "passphrase in server log");
    assert!(!log.contains(JWT_SECRET), "jwt secret in server log");
}

#[test]
fn plain_roles_can_execute_exactly_the_documented_functions() {
    // A grant left to PUBLIC by accident (an internal helper that returns a
    // secret, say) shows up here.
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    let got: String = dba
        .query_one(
            "SELECT string_agg(DISTINCT p.proname, ',' ORDER BY p.proname) FROM pg_proc p
              WHERE p.pronamespace = 'tenant_guard'::regnamespace AND has_function_privilege('app', p.oid, 'EXECUTE')",
            &[],
        )
        .unwrap()
        .get(0);
    let expected = "_forbid_self_approval,_is_citus_table,_is_uuid_column,_org_column_check,_rate_limit,_trail_protect,add_member,authenticate,\
authenticate_jwt,clear_context,create_api_key,create_webhook_endpoint,current_api_key_id,current_org_id,current_org_id_if,\
current_scopes,current_user_id,current_user_role,delete_secret,disable_webhook_endpoint,enqueue_webhook,forbid_self_approval,has_role,has_scope,hmac_sha256,\
protect,put_secret,put_wordpress_credentials,rate_limit,remove_member,require_role,require_scope,revoke_api_key,\
rotate_api_key,rotate_webhook_secret,set_member_role,unprotect,verify_github_signature,verify_slack_signature,\
verify_stripe_signature,webhook_sign,webhook_verify";
    assert_eq!(got, expected);
    // Secret-bearing columns are never readable by a plain role.
    for (t, c) in [("api_keys", "key_hash"), ("secrets", "ciphertext")] {
        let q = format!("SELECT has_column_privilege('app', 'tenant_guard.{t}', '{c}', 'SELECT')");
        assert!(!dba.query_one(&q, &[]).unwrap().get::<_, bool>(0), "{t}.{c}");
    }
    let n: i64 = dba
        .query_one("SELECT count(*) FROM pg_class WHERE relnamespace = 'tenant_guard'::regnamespace AND relkind = 'r' AND has_table_privilege('app', oid, 'INSERT, UPDATE, DELETE, TRUNCATE')", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "no tenant_guard table is writable by a plain role");
}
