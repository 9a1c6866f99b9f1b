//! tenant_guard's pure logic: no pgrx and no PostgreSQL, so the compiler
//! enforces that none of it touches the server, and `cargo test -p
//! tenant_guard_core` (and the fuzz targets in `fuzz/`) run it on their own.

/// The `tgk_` API-key format: generation, checksum, hash, display prefix.
pub mod api_key_format;
/// The audit trail's hash chain and its verification.
pub mod audit_chain;
/// The request context carried to Citus workers, and the claim rule.
pub mod carried_context;
/// The signed request context token (`v1.<claims>.<mac>`).
pub mod context_token;
/// How user input may appear in an error or notice.
pub mod echo;
/// The secrets envelope (AES-256-GCM, format version 1).
pub mod envelope;
/// GCRA rate limiting (redis-cell semantics).
pub mod gcra;
/// HS256 JWT verification.
pub mod jwt;
/// Key derivation from the passphrase (HKDF-SHA256), one subkey per purpose.
pub mod kdf;
/// What the server-log hook removes from a message.
pub mod log_redaction;
/// How far an RLS policy expression limits rows to the current org.
pub mod policy_shape;
/// The role ladder: owner > admin > member > viewer.
pub mod roles;
/// Which URLs a webhook endpoint may have.
pub mod url_policy;
/// Webhook signatures: Standard Webhooks, Stripe, GitHub, Slack.
pub mod webhook_signature;
