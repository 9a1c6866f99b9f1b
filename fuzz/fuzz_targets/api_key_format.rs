//! The API-key format: classify, hash and display any string without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tenant_guard_core::api_key_format as apikey;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let _ = apikey::classify(&s);
    let _ = apikey::hash(&s);
    let p = apikey::display_prefix(&s);
    assert!(p.chars().count() <= apikey::DISPLAY_LEN);
});
