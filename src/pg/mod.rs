//! The PostgreSQL layer: the few places that talk to the server through its
//! C API, each behind a safe wrapper. Capabilities use these and never
//! `pg_sys` for these concerns directly.
//!
//! - `settings`: every setting the extension defines, and setting values at
//!   superuser level;
//! - `index_lookup`: one row of a tenant_guard table through its unique
//!   index, as committed now;
//! - `errors`: raising an error with a SQLSTATE;
//! - `clock`: the one clock.

pub mod clock;
pub mod errors;
pub mod index_lookup;
pub mod settings;
