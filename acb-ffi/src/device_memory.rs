//! Swappable device memory through the C ABI: allocations keep their addresses for their whole
//! life; while the client holds no GPU their bytes live in host memory, and they come back when
//! it holds one again (see `memory`).
//!
//! The backend is the host-memory one (the CUDA VMM backend is not built yet): the memory is
//! host memory that behaves as swappable device memory does, and touching it while it is
//! swapped out faults.

use std::ffi::c_void;

use crate::client::{ACTIVE, acb_client, lock_memory};
use crate::error::fail;
use crate::memory::MemError;
use crate::panic::{check_out, ffi_panic_boundary, try_ref};
use crate::status::acb_status;

/// A client's memory figures, in bytes unless said otherwise.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct acb_memory_stats {
    /// Live allocations (a count).
    pub allocations: u64,
    /// Mapped on the device now.
    pub resident_bytes: u64,
    /// In host memory only now.
    pub swapped_bytes: u64,
    /// Copied device -> host since the client was made.
    pub swapped_out_total: u64,
    /// Copied host -> device since the client was made.
    pub swapped_in_total: u64,
    /// Host memory the client holds for swapped-out bytes (kept for reuse).
    pub host_pool_bytes: u64,
}

fn status_of(e: &MemError) -> acb_status {
    match e {
        MemError::OutOfMemory(_) => acb_status::OutOfMemory,
        MemError::NoLease => acb_status::NotActive,
        MemError::UnknownPointer(_) | MemError::ZeroSize => acb_status::InvalidArgument,
        MemError::Backend(_) => acb_status::Internal,
    }
}

/// Allocates `size` bytes of swappable device memory on the GPU of the active phase into
/// `*ptr_out`. The address stays valid until `acb_client_dealloc`, across swaps.
///
/// Errors: `ACB_STATUS_NOT_ACTIVE` outside a GPU phase, `ACB_STATUS_OUT_OF_MEMORY` past the
/// lease's memory per GPU (the fence), `ACB_STATUS_INVALID_ARGUMENT` for 0 bytes.
#[unsafe(no_mangle)]
pub extern "C" fn acb_client_alloc(client: *const acb_client, size: usize, ptr_out: *mut *mut c_void) -> acb_status {
    ffi_panic_boundary! {
        let c = try_ref!(client);
        check_out!(ptr_out);
        if c.phase.load(std::sync::atomic::Ordering::Acquire) != ACTIVE {
            return fail(acb_status::NotActive, MemError::NoLease.to_string());
        }
        match lock_memory(&c.memory).alloc(size) {
            Ok(addr) => {
                // SAFETY: checked non-NULL.
                unsafe { *ptr_out = addr as *mut c_void };
                acb_status::Ok
            }
            Err(e) => fail(status_of(&e), e.to_string()),
        }
    }
}

/// Frees memory from `acb_client_alloc`, resident or swapped out. `ptr` NULL does nothing; a
/// pointer libacb did not hand out (or a second free) gives `ACB_STATUS_INVALID_ARGUMENT`.
#[unsafe(no_mangle)]
pub extern "C" fn acb_client_dealloc(client: *const acb_client, ptr: *mut c_void) -> acb_status {
    ffi_panic_boundary! {
        let c = try_ref!(client);
        if ptr.is_null() {
            return acb_status::Ok;
        }
        match lock_memory(&c.memory).free(ptr as usize) {
            Ok(()) => acb_status::Ok,
            Err(e) => fail(status_of(&e), e.to_string()),
        }
    }
}

/// Marks an allocation read-only (weights): once copied to host memory its copy is kept, and
/// later swap-outs skip it. Writing it afterwards is the caller's error: mark it writable
/// first (`read_only` false).
#[unsafe(no_mangle)]
pub extern "C" fn acb_client_set_read_only(client: *const acb_client, ptr: *mut c_void, read_only: bool) -> acb_status {
    ffi_panic_boundary! {
        let c = try_ref!(client);
        match lock_memory(&c.memory).set_read_only(ptr as usize, read_only) {
            Ok(()) => acb_status::Ok,
            Err(e) => fail(status_of(&e), e.to_string()),
        }
    }
}

/// Copies the client's memory figures into `*stats_out`.
#[unsafe(no_mangle)]
pub extern "C" fn acb_client_memory_stats(client: *const acb_client, stats_out: *mut acb_memory_stats) -> acb_status {
    ffi_panic_boundary! {
        let c = try_ref!(client);
        check_out!(stats_out);
        let stats = lock_memory(&c.memory).stats();
        // SAFETY: checked non-NULL.
        unsafe { *stats_out = stats };
        acb_status::Ok
    }
}
