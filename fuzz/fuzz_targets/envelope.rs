//! The envelope: parse and open arbitrary bytes; a random envelope never opens.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tenant_guard_core::envelope;

fuzz_target!(|data: &[u8]| {
    let key = [9u8; 32];
    let _ = envelope::key_id(data);
    assert!(envelope::open(&key, data, b"aad").is_err() || data.len() >= 33);
    // A round trip of the input as plaintext always works, and tampering is caught.
    let sealed = envelope::seal_with_nonce(&key, 1, [3; 12], data, b"aad");
    assert_eq!(envelope::open(&key, &sealed, b"aad").unwrap(), data);
    let mut bad = sealed.clone();
    let i = data.len() % bad.len();
    bad[i] ^= 1;
    assert!(envelope::open(&key, &bad, b"aad").is_err());
});
