//! Webhook signing and verification, replay protection, endpoints
//! and the signed outbox.

mod common;
use common::*;
use postgres::Client;
use tenant_guard_harness::{cluster, sqlstate};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const MSG: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const TS: i64 = 1614265330;
const PAYLOAD: &str = r#"{"test": 2432232314}"#;
const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn verify(
    c: &mut Client,
    secret: &str,
    id: &str,
    ts: i64,
    payload: &str,
    header: Option<&str>,
    tolerance: Option<&str>,
) -> bool {
    c.query_one(
        "SELECT tenant_guard.webhook_verify($1, $2, $3, $4, $5, $6::text::interval)",
        &[&secret, &id, &ts, &payload, &header, &tolerance],
    )
    .unwrap()
    .get(0)
}

#[test]
fn standard_webhooks_known_answer_and_attacks() {
    let db = cluster().fresh_db();
    let mut app = db.app();
    let sig: String = app
        .query_one("SELECT tenant_guard.webhook_sign($1, $2, $3, $4)", &[&SECRET, &MSG, &TS, &PAYLOAD])
        .unwrap()
        .get(0);
    assert_eq!(sig, EXPECTED);
    assert!(verify(&mut app, SECRET, MSG, TS, PAYLOAD, Some(EXPECTED), None), "NULL tolerance skips the time check");
    assert!(
        !verify(&mut app, SECRET, MSG, TS, PAYLOAD, Some(EXPECTED), Some("5 minutes")),
        "a 2021 timestamp is stale"
    );
    let now = now();
    let fresh: String = app
        .query_one("SELECT tenant_guard.webhook_sign($1, $2, $3, $4)", &[&SECRET, &MSG, &now, &PAYLOAD])
        .unwrap()
        .get(0);
    assert!(verify(&mut app, SECRET, MSG, now, PAYLOAD, Some(&fresh), Some("5 minutes")));
    assert!(!verify(&mut app, SECRET, MSG, now, r#"{"test": 1}"#, Some(&fresh), Some("5 minutes")), "tampered payload");
    assert!(
        !verify(&mut app, "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAA", MSG, now, PAYLOAD, Some(&fresh), None),
        "wrong secret"
    );
    assert!(!verify(&mut app, SECRET, "msg_other", now, PAYLOAD, Some(&fresh), None), "wrong id");
    for (ts, what) in [(now - 600, "stale"), (now + 600, "future")] {
        let s: String = app
            .query_one("SELECT tenant_guard.webhook_sign($1, $2, $3, $4)", &[&SECRET, &MSG, &ts, &PAYLOAD])
            .unwrap()
            .get(0);
        assert!(!verify(&mut app, SECRET, MSG, ts, PAYLOAD, Some(&s), Some("5 minutes")), "{what}");
    }
    // Several signatures: any valid v1 passes, other versions are ignored.
    let multi = format!("v2,{} v1,AAAA {fresh}", &fresh[3..]);
    assert!(verify(&mut app, SECRET, MSG, now, PAYLOAD, Some(&multi), Some("5 minutes")));
    for bad in ["", " ", "v1,", "v1,???", "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", "nonsense"] {
        assert!(!verify(&mut app, SECRET, MSG, TS, PAYLOAD, Some(bad), None), "{bad:?}");
    }
    assert!(!verify(&mut app, SECRET, MSG, TS, PAYLOAD, None, None), "NULL header");
    assert!(
        !verify(&mut app, "whsec_%%%not-base64", MSG, TS, PAYLOAD, Some(EXPECTED), None),
        "malformed secret is false"
    );
    let r = app.query_one("SELECT tenant_guard.webhook_sign('whsec_%%%', 'm', 1, 'p')", &[]);
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"));
}

#[test]
fn hmac_sha256_agrees_with_pgcrypto() {
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    exec(&mut dba, "CREATE EXTENSION pgcrypto");
    let n = val(
        &mut dba,
        "SELECT count(*) FROM (SELECT gen_random_bytes(1 + (random() * 1023)::int) AS d, gen_random_bytes(1 + (random() * 200)::int) AS k
                                 FROM generate_series(1, 2000)) s
          WHERE tenant_guard.hmac_sha256(d, k) IS DISTINCT FROM hmac(d, k, 'sha256')",
    );
    assert_eq!(n.unwrap(), "0");
    assert_eq!(val(&mut dba, "SELECT count(*) FROM generate_series(1, 2000)").unwrap(), "2000");
    // RFC 4231 case 2 through SQL.
    assert_eq!(
        val(&mut dba, "SELECT encode(tenant_guard.hmac_sha256('what do ya want for nothing?', 'Jefe'), 'hex')")
            .unwrap(),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

#[test]
fn stripe_github_slack() {
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    exec(&mut dba, "CREATE EXTENSION pgcrypto");
    let now = now();
    let secret = "whsec_stripe_endpoint_secret";
    let body = r#"{"id":"evt_1","type":"invoice.paid"}"#;
    let good: String = dba
        .query_one(
            "SELECT 't=' || $1::bigint || ',v1=' || encode(hmac($1::bigint || '.' || $2, $3, 'sha256'), 'hex')",
            &[&now, &body, &secret],
        )
        .unwrap()
        .get(0);
    let stripe = |c: &mut Client, payload: &str, header: &str, tol: Option<&str>| -> bool {
        c.query_one(
            "SELECT tenant_guard.verify_stripe_signature($1, $2, $3, $4::text::interval)",
            &[&secret, &payload, &header, &tol],
        )
        .unwrap()
        .get(0)
    };
    assert!(stripe(&mut dba, body, &good, Some("5 minutes")));
    assert!(stripe(&mut dba, body, &format!("{good},v1={}", "ab".repeat(32)), Some("5 minutes")), "several v1");
    assert!(!stripe(&mut dba, "{}", &good, Some("5 minutes")));
    let stale = good.replacen(&format!("t={now}"), &format!("t={}", now - 1000), 1);
    assert!(!stripe(&mut dba, body, &stale, None), "t is signed");
    for bad in ["", "t=", "v1=00", "t=abc,v1=00", "t=1,v1=zz", "garbage"] {
        assert!(!stripe(&mut dba, body, bad, None), "{bad:?}");
    }
    // GitHub
    let gh: String = dba
        .query_one("SELECT 'sha256=' || encode(hmac(convert_to($1, 'UTF8'), 'gh-secret', 'sha256'), 'hex')", &[&body])
        .unwrap()
        .get(0);
    let github = |c: &mut Client, payload: &str, header: Option<&str>| -> bool {
        c.query_one(
            "SELECT tenant_guard.verify_github_signature('gh-secret', convert_to($1, 'UTF8'), $2)",
            &[&payload, &header],
        )
        .unwrap()
        .get(0)
    };
    assert!(github(&mut dba, body, Some(&gh)));
    assert!(!github(&mut dba, "x", Some(&gh)));
    for bad in [Some(""), Some("sha256="), Some("sha1=abc"), Some(&gh[7..]), None] {
        assert!(!github(&mut dba, body, bad), "{bad:?}");
    }
    // Slack
    let sl: String = dba
        .query_one(
            "SELECT 'v0=' || encode(hmac('v0:' || $1::bigint || ':' || $2, 'slack-secret', 'sha256'), 'hex')",
            &[&now, &body],
        )
        .unwrap()
        .get(0);
    let slack = |c: &mut Client, ts: i64, header: &str| -> bool {
        c.query_one("SELECT tenant_guard.verify_slack_signature('slack-secret', $1, $2, $3)", &[&ts, &body, &header])
            .unwrap()
            .get(0)
    };
    assert!(slack(&mut dba, now, &sl));
    assert!(!slack(&mut dba, now + 1, &sl));
    assert!(!slack(&mut dba, now, "v0=zz"));
    assert!(!slack(&mut dba, now, ""));
}

#[test]
fn replayed_ids_are_refused() {
    let db = cluster().fresh_db();
    let mut app = db.svc(); // inbound webhook handlers are server code
    let now = now();
    let sig: String = app
        .query_one("SELECT tenant_guard.webhook_sign($1, $2, $3, $4)", &[&SECRET, &MSG, &now, &PAYLOAD])
        .unwrap()
        .get(0);
    let once = |c: &mut Client, source: &str, header: &str| -> bool {
        c.query_one(
            "SELECT tenant_guard.webhook_verify_once($1, $2, $3, $4, $5, $6)",
            &[&source, &SECRET, &MSG, &now, &PAYLOAD, &header],
        )
        .unwrap()
        .get(0)
    };
    assert!(!once(&mut app, "billing", "v1,AAAA"), "an invalid delivery is not recorded");
    assert!(once(&mut app, "billing", &sig), "first delivery");
    assert!(!once(&mut app, "billing", &sig), "replay refused");
    assert!(!once(&mut app, "billing", &sig), "replay refused again");
    assert!(once(&mut app, "other-source", &sig), "sources are separate");
    let r = app
        .query_one("SELECT tenant_guard.webhook_verify_once('x', $1, 'm', 1, 'p', 'v1,AAAA', '100 years')", &[&SECRET]);
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"), "the window is capped");
    // A plain role can neither record ids (and so block real deliveries) nor touch the table.
    let mut plain = db.app();
    let r = plain.query_one(
        "SELECT tenant_guard.webhook_verify_once('billing', $1, 'msg_future', $2, $3, $4)",
        &[&SECRET, &now, &PAYLOAD, &sig],
    );
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    assert_eq!(sqlstate(&plain.simple_query("DELETE FROM tenant_guard.webhook_seen")).as_deref(), Some("42501"));
}

fn endpoint(app: &mut Client, org: &str, user: &str, url: &str) -> (String, String) {
    begin_as(app, org, user);
    let r = rows(
        app,
        &format!(
            "SELECT endpoint_id, secret FROM tenant_guard.create_webhook_endpoint('{url}', ARRAY['invoice.paid'])"
        ),
    );
    exec(app, "COMMIT");
    (r[0][0].clone().unwrap(), r[0][1].clone().unwrap())
}

/// Verify an outbox row's headers with `secret`, as a receiver would.
fn receiver_accepts(c: &mut Client, secret: &str, delivery: &str) -> bool {
    c.query_one(
        "SELECT tenant_guard.webhook_verify($1, headers->>'webhook-id', (headers->>'webhook-timestamp')::bigint, payload, headers->>'webhook-signature')
           FROM tenant_guard.webhook_outbox WHERE id = $2::text::uuid",
        &[&secret, &delivery],
    )
    .unwrap()
    .get(0)
}

#[test]
fn endpoints_and_signed_outbox() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    begin_as(&mut app, &w.org_a, ADMIN_A);
    for url in [
        "http://insecure.example.com/hook",
        "https://127.0.0.1/hook",
        "https://localhost:8443/x",
        "https://169.254.169.254/latest",
        "https://[::1]/x",
        "https://10.1.2.3/x",
        "https://2130706433/x",
        "https://0x7f.0.0.1/x",
        "https://0177.0.0.1/x",
        "https://100.64.1.1/x",
        "https://[fe80::1]/x",
        "https://metadata.google.internal/x",
    ] {
        exec(&mut app, "SAVEPOINT s");
        let r = app.simple_query(&format!("SELECT * FROM tenant_guard.create_webhook_endpoint('{url}')"));
        assert_eq!(sqlstate(&r).as_deref(), Some("22023"), "{url}");
        exec(&mut app, "ROLLBACK TO SAVEPOINT s");
    }
    // A public literal address is fine.
    exec(&mut app, "SAVEPOINT s");
    assert_eq!(
        sqlstate(&app.simple_query("SELECT * FROM tenant_guard.create_webhook_endpoint('https://93.184.216.34/hook')")),
        None
    );
    exec(&mut app, "ROLLBACK TO SAVEPOINT s");
    // Endpoint secrets are managed by these functions only.
    let r = app.simple_query("SELECT tenant_guard.put_secret('webhook', 'x:current', 'whsec_AAAA')");
    assert_eq!(sqlstate(&r).as_deref(), Some("22023"));
    exec(&mut app, "ROLLBACK");
    begin_as(&mut app, &w.org_a, MEMBER_A);
    let r = app.simple_query("SELECT * FROM tenant_guard.create_webhook_endpoint('https://a.example.com/hook')");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"), "members cannot add endpoints");
    exec(&mut app, "ROLLBACK");
    let (ep_a, secret_a) = endpoint(&mut app, &w.org_a, ADMIN_A, "https://a.example.com/hook");
    assert!(secret_a.starts_with("whsec_"));
    endpoint(&mut app, &w.org_b, OWNER_B, "https://b.example.com/hook");

    begin_as(&mut app, &w.org_a, MEMBER_A);
    assert_eq!(
        val(&mut app, r#"SELECT tenant_guard.enqueue_webhook('invoice.paid', '{"invoice": 42}')"#).unwrap(),
        "1"
    );
    assert_eq!(
        val(&mut app, r#"SELECT tenant_guard.enqueue_webhook('user.created', '{}')"#).unwrap(),
        "0",
        "not subscribed"
    );
    exec(&mut app, "COMMIT");
    begin_as(&mut app, &w.org_b, OWNER_B);
    assert_eq!(val(&mut app, r#"SELECT tenant_guard.enqueue_webhook('invoice.paid', '{"invoice": 7}')"#).unwrap(), "1");
    exec(&mut app, "COMMIT");

    // Org A's admin sees A's delivery, and it verifies with A's secret only.
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let ids = rows(&mut app, "SELECT id FROM tenant_guard.webhook_outbox");
    assert_eq!(ids.len(), 1, "outbox rows of another org are invisible");
    let delivery = ids[0][0].clone().unwrap();
    assert!(receiver_accepts(&mut app, &secret_a, &delivery));
    assert!(!receiver_accepts(&mut app, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &delivery));
    assert_eq!(
        val(&mut app, &format!("SELECT endpoint_id FROM tenant_guard.webhook_outbox WHERE id = '{delivery}'")).unwrap(),
        ep_a
    );
    exec(&mut app, "COMMIT");
    begin_as(&mut app, &w.org_a, MEMBER_A);
    assert_eq!(
        val(&mut app, "SELECT count(*) FROM tenant_guard.webhook_outbox").unwrap(),
        "0",
        "members do not read the outbox"
    );
    exec(&mut app, "COMMIT");
    // The signing secret is stored encrypted, and only the service role could decrypt it.
    let mut dba = db.dba();
    assert_eq!(
        val(
            &mut dba,
            &format!("SELECT count(*) FROM tenant_guard.secrets WHERE kind = 'webhook' AND name = '{ep_a}:current'")
        )
        .unwrap(),
        "1"
    );
    assert_eq!(
        val(
            &mut dba,
            &format!(
                "SELECT count(*) FROM tenant_guard.secrets WHERE position(convert_to('{}', 'UTF8') IN ciphertext) > 0",
                &secret_a[6..]
            )
        )
        .unwrap(),
        "0"
    );
    // Only the service role delivers.
    assert_eq!(
        sqlstate(&app.simple_query("SELECT * FROM tenant_guard.claim_webhook_deliveries(10)")).as_deref(),
        Some("42501")
    );
}

#[test]
fn claims_are_exclusive_and_failures_back_off() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    endpoint(&mut app, &w.org_a, ADMIN_A, "https://a.example.com/hook");
    begin_as(&mut app, &w.org_a, MEMBER_A);
    for i in 0..40 {
        exec(&mut app, &format!(r#"SELECT tenant_guard.enqueue_webhook('invoice.paid', '{{"n": {i}}}')"#));
    }
    exec(&mut app, "COMMIT");
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let mut svc = db.svc();
            std::thread::spawn(move || {
                let mut mine = vec![];
                loop {
                    svc.batch_execute("BEGIN").unwrap();
                    let got: Vec<String> = svc
                        .query("SELECT delivery_id::text FROM tenant_guard.claim_webhook_deliveries(3)", &[])
                        .unwrap()
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    svc.batch_execute("COMMIT").unwrap();
                    if got.is_empty() {
                        break;
                    }
                    mine.extend(got);
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<String> = workers.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert_eq!(all.len(), 40);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 40, "each delivery went to exactly one worker");

    let mut svc = db.svc();
    assert_eq!(
        val(&mut svc, &format!("SELECT tenant_guard.complete_webhook_delivery('{}', true, 200)", all[0])).unwrap(),
        "delivered"
    );
    assert_eq!(
        val(&mut svc, &format!("SELECT tenant_guard.complete_webhook_delivery('{}', false, 500, 'boom')", all[1]))
            .unwrap(),
        "pending"
    );
    assert_eq!(
        val(&mut svc, &format!("SELECT next_attempt_at > now() + interval '20 seconds' FROM tenant_guard.webhook_outbox WHERE id = '{}'", all[1])).unwrap(),
        "t",
        "retry is pushed back"
    );
    assert!(
        rows(&mut svc, "SELECT * FROM tenant_guard.claim_webhook_deliveries(100)").is_empty(),
        "nothing due: the retry waits"
    );
    let r = svc.simple_query(&format!("SELECT tenant_guard.complete_webhook_delivery('{}', true)", all[0]));
    assert_eq!(sqlstate(&r).as_deref(), Some("02000"), "completing twice");
    // Give up after max_attempts.
    let mut dba = db.dba();
    exec(
        &mut dba,
        &format!("UPDATE tenant_guard.webhook_outbox SET status = 'in_flight', attempts = 12 WHERE id = '{}'", all[1]),
    );
    assert_eq!(
        val(&mut svc, &format!("SELECT tenant_guard.complete_webhook_delivery('{}', false, 500)", all[1])).unwrap(),
        "failed"
    );
}

#[test]
fn secret_rotation_signs_with_both_during_grace() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let (ep, old) = endpoint(&mut app, &w.org_a, ADMIN_A, "https://a.example.com/hook");
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let new = val(&mut app, &format!("SELECT tenant_guard.rotate_webhook_secret('{ep}', '1 hour')")).unwrap();
    assert_ne!(new, old);
    exec(&mut app, r#"SELECT tenant_guard.enqueue_webhook('invoice.paid', '{"after": "rotation"}')"#);
    let d = val(&mut app, "SELECT id FROM tenant_guard.webhook_outbox").unwrap();
    let header = val(
        &mut app,
        &format!("SELECT headers->>'webhook-signature' FROM tenant_guard.webhook_outbox WHERE id = '{d}'"),
    )
    .unwrap();
    assert_eq!(header.split(' ').count(), 2, "{header}");
    assert!(receiver_accepts(&mut app, &old, &d), "receivers still on the old secret accept");
    assert!(receiver_accepts(&mut app, &new, &d), "receivers on the new secret accept");
    exec(&mut app, "COMMIT");
    // Grace over: new signatures only.
    db.dba().batch_execute(&format!("UPDATE tenant_guard.webhook_endpoints SET previous_secret_until = now() - interval '1 second' WHERE id = '{ep}'")).unwrap();
    begin_as(&mut app, &w.org_a, ADMIN_A);
    exec(&mut app, r#"SELECT tenant_guard.enqueue_webhook('invoice.paid', '{"later": true}')"#);
    let d2 = val(&mut app, "SELECT id FROM tenant_guard.webhook_outbox ORDER BY created_at DESC LIMIT 1").unwrap();
    assert!(!receiver_accepts(&mut app, &old, &d2));
    assert!(receiver_accepts(&mut app, &new, &d2));
    exec(&mut app, "ROLLBACK");
    // Another org cannot rotate it.
    begin_as(&mut app, &w.org_b, OWNER_B);
    assert_eq!(
        sqlstate(&app.simple_query(&format!("SELECT tenant_guard.rotate_webhook_secret('{ep}')"))).as_deref(),
        Some("02000")
    );
    exec(&mut app, "ROLLBACK");
}
