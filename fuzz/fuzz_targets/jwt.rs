//! JWT verification: any token, with and without audience and issuer expectations.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tenant_guard_core::jwt;

const SECRET: &[u8] = b"fuzz-jwt-secret-0123456789-abcdefghij";

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let _ = jwt::verify(&s, SECRET, 1_700_000_000);
    let _ =
        jwt::verify_expecting(&s, SECRET, 1_700_000_000, jwt::Expect { audience: Some("app"), issuer: Some("idp") });
    // Whatever is accepted was signed with the secret: a random token never is.
    if let Ok(c) = jwt::verify(&s, b"another-secret-0123456789-abcdefghijkl", 1_700_000_000) {
        panic!("accepted under the wrong secret: {:?}", c.sub);
    }
});
