//! Signature headers of Standard Webhooks, Stripe, GitHub and Slack: any
//! header is parsed without panicking, and a random one never verifies.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tenant_guard_core::webhook_signature as webhook;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let key = b"fuzz-webhook-key-0123456789abcdef";
    assert!(!webhook::standard_verify(key, "msg_1", 1_700_000_000, b"{}", &s, None, 1_700_000_000));
    assert!(!webhook::stripe_verify("whsec_fuzz", b"{}", &s, None, 1_700_000_000));
    assert!(!webhook::github_verify("fuzz", b"{}", &s));
    assert!(!webhook::slack_verify("fuzz", 1_700_000_000, b"{}", &s, None, 1_700_000_000));
    let _ = webhook::standard_key(&s);
});
