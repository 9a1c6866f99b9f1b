//! Log redaction and echoes: never longer than the input (the log hook
//! writes in place), never a secret-looking span left, echoes bounded ASCII.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tenant_guard_core::{echo, log_redaction as redact};

fuzz_target!(|data: &[u8]| {
    for out in [
        redact::secrets(data),
        redact::parameters(data),
        redact::literals(data),
        redact::setting_values(data),
        redact::known_values(data, &[b"SECRETVALUE", b"another-secret"]),
    ]
    .into_iter()
    .flatten()
    {
        assert!(out.len() <= data.len());
    }
    if let Some(out) = redact::secrets(data) {
        assert!(!redact::has_secret(&out), "a secret survived redaction");
    }
    let s = String::from_utf8_lossy(data);
    let e = echo::echo(&s);
    assert!(e.is_ascii() && e.len() <= echo::MAX_ECHO + 3);
});
