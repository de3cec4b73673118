//! Swappable device memory through the C ABI: allocations keep their addresses for their whole
//! life; while the client holds no GPU their bytes live in host memory, and they come back when
//! it holds one again (see `memory`).
//!
//! C handles over [`::acb_client::Client`]'s memory calls.

use std::ffi::c_void;

use crate::client::acb_client;
use crate::error::fail_with;
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

impl From<::acb_client::MemoryStats> for acb_memory_stats {
    fn from(s: ::acb_client::MemoryStats) -> acb_memory_stats {
        acb_memory_stats {
            allocations: s.allocations,
            resident_bytes: s.resident_bytes,
            swapped_bytes: s.swapped_bytes,
            swapped_out_total: s.swapped_out_total,
            swapped_in_total: s.swapped_in_total,
            host_pool_bytes: s.host_pool_bytes,
        }
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
        match c.0.alloc(size) {
            Ok(p) => {
                // SAFETY: checked non-NULL.
                unsafe { *ptr_out = p.as_ptr().cast() };
                acb_status::Ok
            }
            Err(e) => fail_with(&e),
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
        match c.0.free(ptr.cast()) {
            Ok(()) => acb_status::Ok,
            Err(e) => fail_with(&e),
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
        match c.0.set_read_only(ptr.cast(), read_only) {
            Ok(()) => acb_status::Ok,
            Err(e) => fail_with(&e),
        }
    }
}

/// Copies the client's memory figures into `*stats_out`.
#[unsafe(no_mangle)]
pub extern "C" fn acb_client_memory_stats(client: *const acb_client, stats_out: *mut acb_memory_stats) -> acb_status {
    ffi_panic_boundary! {
        let c = try_ref!(client);
        check_out!(stats_out);
        if let Err(e) = c.0.ensure_same_process() {
            return crate::error::fail_with(&e);
        }
        // SAFETY: checked non-NULL.
        unsafe { *stats_out = c.0.memory_stats().into() };
        acb_status::Ok
    }
}
