//! tenant_guard's pure logic: no pgrx and no PostgreSQL, so the compiler
//! enforces that none of it touches the server, and `cargo test -p
//! tenant_guard_core` (and the fuzz targets in `fuzz/`) run it on their own.

pub mod apikey;
pub mod echo;
pub mod envelope;
pub mod gcra;
pub mod jwt;
pub mod keys;
pub mod redact;
pub mod roles;
pub mod token;
pub mod url_policy;
pub mod webhook;
