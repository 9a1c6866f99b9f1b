//! The webhook URL policy: any input; what is accepted is canonical (checking
//! it again gives it back), bounded, https and not a special address.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tenant_guard_core::url_policy;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(canonical) = url_policy::check(&s) {
        assert!(canonical.len() <= url_policy::MAX_URL_LEN);
        assert!(canonical.starts_with("https://"));
        assert_eq!(url_policy::check(&canonical).as_deref(), Ok(canonical.as_str()), "not idempotent");
    }
});
