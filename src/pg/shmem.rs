//! Large shared-memory arrays, zero-initialised in place.
//!
//! pgrx's `pg_shmem_init!` builds a value on the postmaster's stack and
//! copies it into shared memory: fine for small state, a crash for
//! megabytes (the log queue's entries). A [`Region`] is reserved at preload
//! and zeroed where it lies; what it holds must be valid as all-zero bytes,
//! and is guarded by a lock its user holds (see request_log/).

use pgrx::pg_sys;
use std::ffi::CStr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

/// A named block of shared memory of `size` bytes.
pub struct Region {
    name: &'static CStr,
    size: usize,
    ptr: AtomicPtr<u8>,
}

impl Region {
    pub const fn new(name: &'static CStr, size: usize) -> Region {
        Region { name, size, ptr: AtomicPtr::new(std::ptr::null_mut()) }
    }

    /// The block's address (attached at startup, in every process).
    pub fn ptr(&self) -> *mut u8 {
        let p = self.ptr.load(Ordering::Acquire);
        assert!(!p.is_null(), "shared memory region {:?} is not attached", self.name);
        p
    }
}

static REGIONS: OnceLock<&'static [&'static Region]> = OnceLock::new();
static PREV_REQUEST: OnceLock<pg_sys::shmem_request_hook_type> = OnceLock::new();
static PREV_STARTUP: OnceLock<pg_sys::shmem_startup_hook_type> = OnceLock::new();

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn request() {
    if let Some(Some(prev)) = PREV_REQUEST.get() {
        // SAFETY: the hook that was installed before ours, called as PostgreSQL would.
        unsafe { prev() };
    }
    for r in REGIONS.get().copied().unwrap_or_default() {
        // SAFETY: called from the shmem_request hook, where this is allowed.
        unsafe { pg_sys::RequestAddinShmemSpace(r.size) };
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup() {
    if let Some(Some(prev)) = PREV_STARTUP.get() {
        // SAFETY: the hook that was installed before ours, called as PostgreSQL would.
        unsafe { prev() };
    }
    for r in REGIONS.get().copied().unwrap_or_default() {
        // SAFETY: ShmemInitStruct under AddinShmemInitLock, as PostgreSQL's
        // own modules do; a block created here (not found) is zeroed before
        // the lock is released, so no process sees it uninitialised.
        unsafe {
            let lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
            pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            let mut found = false;
            let p = pg_sys::ShmemInitStruct(r.name.as_ptr(), r.size, &mut found).cast::<u8>();
            if !found {
                std::ptr::write_bytes(p, 0, r.size);
            }
            r.ptr.store(p, Ordering::Release);
            pg_sys::LWLockRelease(lock);
        }
    }
}

/// Reserve `regions` (from _PG_init, in the postmaster, once).
pub fn register(regions: &'static [&'static Region]) {
    if REGIONS.set(regions).is_err() {
        return;
    }
    // SAFETY: _PG_init runs once per process before any query; the hooks
    // are plain global pointers, chained to whatever was there.
    unsafe {
        let _ = PREV_REQUEST.set(pg_sys::shmem_request_hook);
        pg_sys::shmem_request_hook = Some(request);
        let _ = PREV_STARTUP.set(pg_sys::shmem_startup_hook);
        pg_sys::shmem_startup_hook = Some(startup);
    }
}
