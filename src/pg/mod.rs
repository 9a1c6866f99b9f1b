//! The PostgreSQL layer: the few places that talk to the server through its
//! C API, each behind a safe wrapper. Capabilities use these and never
//! `pg_sys` for these concerns directly.
//!
//! - `settings`: every setting the extension defines, and setting values at
//!   superuser level;
//! - `index_lookup`: one row of a tenant_guard table through its unique
//!   index, as committed now;
//! - `errors`: raising an error with a SQLSTATE;
//! - `citus`: Citus, when it is loaded (found at run time);
//! - `clock`: the one clock;
//! - `shmem`: large shared-memory arrays, zeroed in place.

pub mod citus;
pub mod clock;
pub mod errors;
pub mod index_lookup;
pub mod settings;
pub mod shmem;

use pgrx::pg_sys;

/// The OID of the database this backend is connected to.
pub fn database_id() -> u32 {
    // SAFETY: set once when the backend connects, then only read.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// This backend's process id.
pub fn pid() -> i32 {
    // SAFETY: set once at process start, then only read.
    unsafe { pg_sys::MyProcPid }
}

/// Whether this session is a superuser's with `row_security = off`, as
/// pg_dump and pg_restore set it: a restore, whose rows are not new events
/// and whose tables get their row-level security a few statements later.
pub fn restoring() -> bool {
    // SAFETY: reads a setting by its NUL-terminated name (NULL if unknown),
    // and whether the session user is a superuser (a catalog lookup).
    unsafe {
        let v = pg_sys::GetConfigOption(c"row_security".as_ptr(), true, false);
        !v.is_null()
            && std::ffi::CStr::from_ptr(v).to_bytes() == b"off"
            && pg_sys::superuser_arg(pg_sys::GetSessionUserId())
    }
}

/// Whether a backend (or background worker) with this pid is running.
pub fn backend_alive(pid: i32) -> bool {
    // SAFETY: looks the pid up in the proc array under its lock.
    !unsafe { pg_sys::BackendPidGetProc(pid) }.is_null()
}

/// Whether this server is a standby in recovery.
pub fn in_recovery() -> bool {
    // SAFETY: reads shared state under PostgreSQL's own locking.
    unsafe { pg_sys::RecoveryInProgress() }
}
