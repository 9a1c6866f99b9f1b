//! Secrets at rest under AES-256-GCM, bound to their org, with
//! rotation and a pgcrypto migration path.

mod common;
use common::*;
use postgres::Client;
use tenant_guard_harness::{cluster, full_error, sqlstate, Cluster, Options, PASSPHRASE};

fn put(c: &mut Client, org: &str, user: &str, kind: &str, name: &str, secret: &str) -> String {
    begin_as(c, org, user);
    let id: String = c
        .query_one("SELECT tenant_guard.put_secret($1, $2, $3)::text", &[&kind, &name, &secret])
        .unwrap_or_else(|e| panic!("put_secret: {}", full_error::<()>(&Err(e))))
        .get(0);
    exec(c, "COMMIT");
    id
}

fn get(c: &mut Client, org: &str, kind: &str, name: &str) -> Result<Option<String>, postgres::Error> {
    c.query_one("SELECT tenant_guard.get_secret($1::text::uuid, $2, $3)", &[&org, &kind, &name]).map(|r| r.get(0))
}

#[test]
fn round_trip_upsert_delete() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let mut svc = db.svc();
    let id1 = put(&mut app, &w.org_a, ADMIN_A, "stripe", "live", "sk_live_first");
    assert_eq!(get(&mut svc, &w.org_a, "stripe", "live").unwrap().as_deref(), Some("sk_live_first"));
    let id2 = put(&mut app, &w.org_a, OWNER_A, "stripe", "live", "sk_live_second ✓");
    assert_eq!(id1, id2, "an upsert keeps the row");
    assert_eq!(get(&mut svc, &w.org_a, "stripe", "live").unwrap().as_deref(), Some("sk_live_second ✓"));
    assert_eq!(get(&mut svc, &w.org_b, "stripe", "live").unwrap(), None, "other org has none");
    assert_eq!(get(&mut svc, &w.org_a, "stripe", "test").unwrap(), None);
    begin_as(&mut app, &w.org_a, ADMIN_A);
    assert_eq!(val(&mut app, "SELECT tenant_guard.delete_secret('stripe', 'live')").unwrap(), "t");
    assert_eq!(val(&mut app, "SELECT tenant_guard.delete_secret('stripe', 'live')").unwrap(), "f");
    exec(&mut app, "COMMIT");
    assert_eq!(get(&mut svc, &w.org_a, "stripe", "live").unwrap(), None);
}

/// get_secret() reads through a direct index probe (src/probe.rs): values
/// stored out of line (TOAST) come back whole, names match exactly (case,
/// non-ASCII), and a write is visible to the next statement of its transaction.
#[test]
fn large_values_exact_names_and_same_transaction_reads() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut svc = db.svc();
    // 60 KB that does not compress: its envelope is stored out of line.
    let big: String = val(&mut svc, "SELECT string_agg(md5(g::text), '') FROM generate_series(1, 1875) g").unwrap();
    assert_eq!(big.len(), 60_000);
    let org = w.org_a.as_str();
    exec(&mut svc, "BEGIN");
    svc.execute("SELECT tenant_guard.put_secret_for($1::text::uuid, 'blob', 'Big', $2)", &[&org, &big]).unwrap();
    assert_eq!(
        get(&mut svc, org, "blob", "Big").unwrap().as_deref(),
        Some(big.as_str()),
        "read in the same transaction"
    );
    exec(&mut svc, "COMMIT");
    let mut dba = db.dba();
    let external = val(
        &mut dba,
        "SELECT pg_relation_size(reltoastrelid) > 0 FROM pg_class WHERE oid = 'tenant_guard.secrets'::regclass",
    )
    .unwrap();
    assert_eq!(external, "t", "the envelope went to the TOAST table");
    assert_eq!(get(&mut svc, org, "blob", "Big").unwrap().as_deref(), Some(big.as_str()));
    for (name, secret) in [("big", "lower"), ("BIG", "upper"), ("Bïg", "accent"), ("Big ", "trailing space")] {
        svc.execute("SELECT tenant_guard.put_secret_for($1::text::uuid, 'blob', $2, $3)", &[&org, &name, &secret])
            .unwrap();
    }
    for (name, secret) in [("big", "lower"), ("BIG", "upper"), ("Bïg", "accent"), ("Big ", "trailing space")] {
        assert_eq!(get(&mut svc, org, "blob", name).unwrap().as_deref(), Some(secret), "{name:?}");
    }
    assert_eq!(get(&mut svc, org, "blob", "Big").unwrap().map(|s| s.len()), Some(60_000));
    assert_eq!(get(&mut svc, org, "blob", "bIg").unwrap(), None);
    assert_eq!(get(&mut svc, org, "Blob", "Big").unwrap(), None, "kinds match exactly too");
    // NULL arguments give NULL, not an error.
    assert_eq!(val(&mut svc, "SELECT tenant_guard.get_secret(NULL, 'blob', 'Big') IS NULL").unwrap(), "t");
    assert_eq!(val(&mut svc, &format!("SELECT tenant_guard.get_secret('{org}', 'blob', NULL) IS NULL")).unwrap(), "t");
}

/// probe.rs caches table and index OIDs per backend: after the extension is
/// dropped and created again on the same connection, the lookup finds the
/// new tables (not an error, not the old ones).
#[test]
fn lookups_follow_a_recreated_extension_on_the_same_connection() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut dba = db.dba();
    let org = w.org_a.as_str();
    dba.execute("SELECT tenant_guard.put_secret_for($1::text::uuid, 'k', 'n', 'first')", &[&org]).unwrap();
    assert_eq!(get(&mut dba, org, "k", "n").unwrap().as_deref(), Some("first"));
    // (a key of a foreign format skips the checksum and is looked up: api_keys' OIDs are cached too)
    assert_eq!(
        sqlstate(&dba.simple_query("SELECT tenant_guard.authenticate('legacy-key-1')")).as_deref(),
        Some("28000")
    );
    // Let the request-log writer finish with that entry: a DROP EXTENSION
    // racing a writing writer can deadlock with it (PostgreSQL resolves it by
    // failing one of them).
    poll(&mut dba, "SELECT count(*) FROM tenant_guard.request_log", 15, "the attempt was never logged", |v| v != "0");
    exec(&mut dba, "DROP EXTENSION tenant_guard CASCADE; CREATE EXTENSION tenant_guard");
    assert_eq!(get(&mut dba, org, "k", "n").unwrap(), None, "a new, empty table");
    let org2 = val(&mut dba, &format!("SELECT tenant_guard.create_organization('again', '{OWNER_A}')")).unwrap();
    dba.execute("SELECT tenant_guard.put_secret_for($1::text::uuid, 'k', 'n', 'second')", &[&org2]).unwrap();
    assert_eq!(get(&mut dba, &org2, "k", "n").unwrap().as_deref(), Some("second"));
    assert_eq!(
        sqlstate(&dba.simple_query("SELECT tenant_guard.authenticate('legacy-key-1')")).as_deref(),
        Some("28000"),
        "api_keys too"
    );
}

#[test]
fn who_may_do_what() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    put(&mut app, &w.org_a, ADMIN_A, "github", "token", "ghp_secret_value_1");
    begin_as(&mut app, &w.org_a, MEMBER_A);
    let r = app.query_one("SELECT tenant_guard.put_secret('a', 'b', 'c')::text", &[]);
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "members cannot write secrets");
    exec(&mut app, "ROLLBACK");
    for q in [
        format!("SELECT tenant_guard.get_secret('{}', 'github', 'token')", w.org_a),
        "SELECT tenant_guard.decrypt('\\x00'::bytea, ''::bytea)".to_string(),
        "SELECT tenant_guard.encrypt('x'::bytea, ''::bytea)".to_string(),
        format!("SELECT tenant_guard.put_secret_for('{}', 'a', 'b', 'c')", w.org_a),
        format!("SELECT * FROM tenant_guard.get_wordpress_credentials('{}', 'https://x.org')", w.org_a),
        format!("SELECT tenant_guard.wordpress_authorization('{}', 'https://x.org')", w.org_a),
        "SELECT tenant_guard.rotate_secrets()".to_string(),
    ] {
        begin_as(&mut app, &w.org_a, OWNER_A);
        assert_eq!(sqlstate(&app.simple_query(&q)).as_deref(), Some("42501"), "{q}");
        exec(&mut app, "ROLLBACK");
    }
    // Admins list metadata of their own org, never the ciphertext.
    begin_as(&mut app, &w.org_a, ADMIN_A);
    assert_eq!(
        val(&mut app, "SELECT string_agg(kind || '/' || name, ',') FROM tenant_guard.secrets").unwrap(),
        "github/token"
    );
    exec(&mut app, "SAVEPOINT s");
    assert_eq!(sqlstate(&app.simple_query("SELECT ciphertext FROM tenant_guard.secrets")).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");
    begin_as(&mut app, &w.org_b, OWNER_B);
    assert_eq!(val(&mut app, "SELECT count(*) FROM tenant_guard.secrets").unwrap(), "0");
    exec(&mut app, "ROLLBACK");
}

#[test]
fn ciphertext_is_bound_to_its_row_and_tamper_evident() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let mut svc = db.svc();
    let mut dba = db.dba();
    put(&mut app, &w.org_a, ADMIN_A, "smtp", "password", "hunter2-of-org-a");
    put(&mut app, &w.org_b, OWNER_B, "smtp", "password", "bravo-password");
    put(&mut app, &w.org_a, ADMIN_A, "smtp", "other", "another-of-a");
    let orig: Vec<u8> = dba
        .query_one(
            &format!("SELECT ciphertext FROM tenant_guard.secrets WHERE org_id = '{}' AND name = 'password'", w.org_b),
            &[],
        )
        .unwrap()
        .get(0);
    // Copy A's ciphertext over B's row, and over another name of A.
    exec(&mut dba, &format!(
        "UPDATE tenant_guard.secrets SET ciphertext = (SELECT ciphertext FROM tenant_guard.secrets WHERE org_id = '{a}' AND name = 'password')
          WHERE org_id = '{b}' AND name = 'password';
         UPDATE tenant_guard.secrets SET ciphertext = (SELECT ciphertext FROM tenant_guard.secrets WHERE org_id = '{a}' AND name = 'password')
          WHERE org_id = '{a}' AND name = 'other';",
        a = w.org_a, b = w.org_b
    ));
    for (org, name) in [(&w.org_b, "password"), (&w.org_a, "other")] {
        let r = get(&mut svc, org, "smtp", name);
        assert_eq!(sqlstate(&r).as_deref(), Some("XX001"), "swap into {name}");
        assert!(!full_error(&r).contains("hunter2"), "no plaintext in the error");
    }
    assert_eq!(get(&mut svc, &w.org_a, "smtp", "password").unwrap().as_deref(), Some("hunter2-of-org-a"));
    // One flipped bit, anywhere, fails.
    // (Byte 0, the version, cannot even be stored wrong: a CHECK constraint refuses it.)
    for bit in [8, 39, 40, 100, 140, 8 * (orig.len() as i32) - 1] {
        exec(&mut dba, "BEGIN");
        dba.execute(
            &format!("UPDATE tenant_guard.secrets SET ciphertext = set_bit($1::bytea, {bit}, 1 - get_bit($1::bytea, {bit})) WHERE org_id = '{}' AND name = 'password'", w.org_b),
            &[&orig],
        )
        .unwrap();
        let r = dba.query_one(&format!("SELECT tenant_guard.get_secret('{}', 'smtp', 'password')", w.org_b), &[]);
        assert!(r.is_err(), "bit {bit} flipped and still decrypted");
        exec(&mut dba, "ROLLBACK");
    }
    // Truncated envelopes.
    for n in [0usize, 5, 17, 32, orig.len() - 1] {
        let r = svc.query_one("SELECT tenant_guard.decrypt($1, ''::bytea)", &[&&orig[..n]]);
        assert!(matches!(sqlstate(&r).as_deref(), Some("XX001")), "truncated to {n}: {}", full_error(&r));
    }
    // encrypt/decrypt with associated data.
    let env: Vec<u8> =
        svc.query_one("SELECT tenant_guard.encrypt('payload'::bytea, 'ctx-1'::bytea)", &[]).unwrap().get(0);
    let back: Vec<u8> = svc.query_one("SELECT tenant_guard.decrypt($1, 'ctx-1'::bytea)", &[&env]).unwrap().get(0);
    assert_eq!(back, b"payload");
    assert_eq!(
        sqlstate(&svc.query_one("SELECT tenant_guard.decrypt($1, 'ctx-2'::bytea)", &[&env])).as_deref(),
        Some("XX001")
    );
}

#[test]
fn fresh_nonce_every_write_and_no_plaintext_anywhere_on_disk() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let mut dba = db.dba();
    let plaintext = "PLAINTEXT-MARKER-7f3a9c1e-never-on-disk";
    put(&mut app, &w.org_a, ADMIN_A, "k", "n", plaintext);
    let c1: Vec<u8> = dba.query_one("SELECT ciphertext FROM tenant_guard.secrets", &[]).unwrap().get(0);
    put(&mut app, &w.org_a, ADMIN_A, "k", "n", plaintext);
    let c2: Vec<u8> = dba.query_one("SELECT ciphertext FROM tenant_guard.secrets", &[]).unwrap().get(0);
    assert_ne!(c1, c2, "same secret, new ciphertext");
    assert_ne!(c1[5..17], c2[5..17], "new nonce");
    // WordPress credentials too.
    begin_as(&mut app, &w.org_a, ADMIN_A);
    app.execute(
        "SELECT tenant_guard.put_wordpress_credentials('https://blog.example.com', 'editor', $1)",
        &[&"WPPASS-MARKER-2b8d aaaa bbbb"],
    )
    .unwrap();
    exec(&mut app, "COMMIT");
    // pg_dump
    let port = cluster().port.to_string();
    let dump = cluster().run_tool("pg_dump", &["-h", "127.0.0.1", "-p", &port, "-U", "dba", "-d", &db.name]);
    assert!(dump.contains("COPY tenant_guard.secrets"), "the dump holds the secrets table");
    assert!(!dump.contains(plaintext) && !dump.contains("WPPASS-MARKER"));
    // Tables, WAL and logs: search every file of the cluster for the plaintext.
    exec(&mut dba, "CHECKPOINT");
    let mut hits = vec![];
    fn walk(dir: &std::path::Path, needles: &[&[u8]], hits: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, needles, hits);
            } else if let Ok(bytes) = std::fs::read(&p) {
                for n in needles {
                    if bytes.windows(n.len()).any(|w| w == *n) {
                        hits.push(p.display().to_string());
                    }
                }
            }
        }
    }
    walk(&cluster().datadir, &[plaintext.as_bytes(), b"WPPASS-MARKER"], &mut hits);
    assert!(hits.is_empty(), "plaintext found in {hits:?}");
}

#[test]
fn wordpress_credentials() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    begin_as(&mut app, &w.org_a, ADMIN_A);
    exec(&mut app, "SELECT tenant_guard.put_wordpress_credentials('https://Blog.Example.com/', 'editor', 'abcd EFGH ijkl MNOP qrst UVWX')");
    let r = app.simple_query("SELECT tenant_guard.put_wordpress_credentials('http://blog.example.com', 'editor', 'x')");
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"), "plain http is refused");
    exec(&mut app, "ROLLBACK");
    begin_as(&mut app, &w.org_a, ADMIN_A);
    exec(&mut app, "SELECT tenant_guard.put_wordpress_credentials('https://Blog.Example.com/', 'editor', 'abcd EFGH ijkl MNOP qrst UVWX')");
    exec(&mut app, "COMMIT");
    let mut svc = db.svc();
    let r = rows(
        &mut svc,
        &format!("SELECT * FROM tenant_guard.get_wordpress_credentials('{}', 'https://blog.example.com')", w.org_a),
    );
    assert_eq!(r, vec![vec![Some("editor".to_string()), Some("abcd EFGH ijkl MNOP qrst UVWX".to_string())]]);
    let auth = val(
        &mut svc,
        &format!("SELECT tenant_guard.wordpress_authorization('{}', 'https://blog.example.com/')", w.org_a),
    )
    .unwrap();
    use base64::Engine;
    assert_eq!(
        auth,
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("editor:abcd EFGH ijkl MNOP qrst UVWX"))
    );
    assert!(rows(
        &mut svc,
        &format!("SELECT * FROM tenant_guard.get_wordpress_credentials('{}', 'https://blog.example.com')", w.org_b)
    )
    .is_empty());
}

#[test]
fn python_cryptography_decrypts_our_envelope_from_the_readme_alone() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut svc = db.svc();
    let env: Vec<u8> = svc
        .query_one("SELECT tenant_guard.encrypt(convert_to('hello from rust', 'UTF8'), 'my-aad'::bytea)", &[])
        .unwrap()
        .get(0);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/decrypt_envelope.py");
    let out =
        std::process::Command::new("python3").args([script, PASSPHRASE, &hex(&env), &hex(b"my-aad")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from rust");
    // A stored secret, with the documented row binding.
    let mut app = db.app();
    put(&mut app, &w.org_a, ADMIN_A, "slack", "bot-token", "xoxb-1234-abcd");
    let ct: Vec<u8> = db.dba().query_one("SELECT ciphertext FROM tenant_guard.secrets", &[]).unwrap().get(0);
    let out = std::process::Command::new("python3")
        .args([script, "--secret", PASSPHRASE, &hex(&ct), &w.org_a, "slack", "bot-token"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "xoxb-1234-abcd");
    // ...and refuses it for another org (the binding is real).
    let out = std::process::Command::new("python3")
        .args([script, "--secret", PASSPHRASE, &hex(&ct), &w.org_b, "slack", "bot-token"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn pgcrypto_migration() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut dba = db.dba();
    exec(
        &mut dba,
        &format!(
            "CREATE EXTENSION pgcrypto;
             CREATE TABLE legacy_secrets (org_id uuid, kind text, name text, ciphertext bytea);
             INSERT INTO legacy_secrets VALUES
               ('{a}', 'stripe', 'live', pgp_sym_encrypt('sk_live_legacy_a', 'old-app-key')),
               ('{a}', 'smtp', 'password', pgp_sym_encrypt('smtp-legacy-a', 'old-app-key')),
               ('{b}', 'stripe', 'live', pgp_sym_encrypt('sk_live_legacy_b', 'old-app-key'));
             GRANT SELECT ON legacy_secrets TO tenant_guard_service;",
            a = w.org_a,
            b = w.org_b
        ),
    );
    let mut svc = db.svc();
    let r = svc.query_one("SELECT tenant_guard.import_pgcrypto_secrets('legacy_secrets', 'wrong-key')", &[]);
    assert!(r.is_err(), "a wrong pgcrypto key fails");
    assert_eq!(val(&mut dba, "SELECT count(*) FROM tenant_guard.secrets").unwrap(), "0", "nothing half-imported");
    let n: i64 = svc
        .query_one("SELECT tenant_guard.import_pgcrypto_secrets('legacy_secrets', 'old-app-key')", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    assert_eq!(get(&mut svc, &w.org_a, "stripe", "live").unwrap().as_deref(), Some("sk_live_legacy_a"));
    assert_eq!(get(&mut svc, &w.org_a, "smtp", "password").unwrap().as_deref(), Some("smtp-legacy-a"));
    assert_eq!(get(&mut svc, &w.org_b, "stripe", "live").unwrap().as_deref(), Some("sk_live_legacy_b"));
    let mut app = db.app();
    assert_eq!(
        sqlstate(&app.simple_query("SELECT tenant_guard.import_pgcrypto_secrets('legacy_secrets', 'old-app-key')"))
            .as_deref(),
        Some("42501")
    );
}

#[test]
fn passphrase_rotation_with_reload() {
    // A cluster of its own: this test changes the passphrase.
    let p1 = "rotation-passphrase-one-0123456789abcdef";
    let p2 = "rotation-passphrase-two-fedcba9876543210";
    let c = Cluster::start(Options { passphrase: p1.into(), ..Options::default() });
    let db = c.fresh_db();
    let w = world(&db);
    let mut app = db.app();
    for i in 0..5 {
        put(&mut app, &w.org_a, ADMIN_A, "k", &format!("n{i}"), &format!("value-{i}"));
    }
    let mut svc = db.svc(); // a long-lived connection: keys must follow the reload
    assert_eq!(get(&mut svc, &w.org_a, "k", "n0").unwrap().as_deref(), Some("value-0"));
    let old_id = val(&mut svc, "SELECT DISTINCT key_id FROM tenant_guard.secrets").unwrap();

    // New passphrase, the previous one kept for decryption, reload.
    c.write_secrets(&format!(
        "tenant_guard.passphrase = '{p2}'\ntenant_guard.old_passphrases = '{p1}'\ntenant_guard.jwt_secret = '{}'\n",
        tenant_guard_harness::JWT_SECRET
    ));
    assert_eq!(get(&mut svc, &w.org_a, "k", "n1").unwrap().as_deref(), Some("value-1"), "reads keep working");
    put(&mut app, &w.org_a, ADMIN_A, "k", "new", "written-after-rotation");
    let mut total = 0;
    loop {
        let n: i64 = svc.query_one("SELECT tenant_guard.rotate_secrets(2)", &[]).unwrap().get(0);
        assert!(n <= 2);
        if n == 0 {
            break;
        }
        total += n;
    }
    // The count includes the audit trail's entries it re-sealed; each run
    // says in the trail how many secrets it re-encrypted.
    assert!(total >= 5);
    poll(
        &mut svc,
        "SELECT sum(substring(detail FROM 're-encrypted (\\d+) secrets')::int) FROM tenant_guard.audit_log
          WHERE action = 'rotate_secrets'",
        15,
        "every old row re-encrypted once",
        |v| v == "5",
    );
    assert_eq!(
        val(&mut svc, &format!("SELECT count(*) FROM tenant_guard.secrets WHERE key_id = {old_id}")).unwrap(),
        "0"
    );

    // The old passphrase can go.
    c.write_secrets(&format!(
        "tenant_guard.passphrase = '{p2}'\ntenant_guard.jwt_secret = '{}'\n",
        tenant_guard_harness::JWT_SECRET
    ));
    for i in 0..5 {
        assert_eq!(get(&mut svc, &w.org_a, "k", &format!("n{i}")).unwrap(), Some(format!("value-{i}")));
    }
    assert_eq!(get(&mut svc, &w.org_a, "k", "new").unwrap().as_deref(), Some("written-after-rotation"));

    // Had we dropped the old passphrase too early, reads would say what to do.
    c.write_secrets(&format!(
        "tenant_guard.passphrase = '{p1}'\ntenant_guard.jwt_secret = '{}'\n",
        tenant_guard_harness::JWT_SECRET
    ));
    let r = get(&mut svc, &w.org_a, "k", "n0");
    assert_eq!(sqlstate(&r).as_deref(), Some("XX001"));
    assert!(full_error(&r).contains("old_passphrases"), "{}", full_error(&r));
    assert!(!full_error(&r).contains(p1) && !full_error(&r).contains(p2));
}
