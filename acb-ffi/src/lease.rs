//! `acb_lease`: the GPUs of a granted phase.

use std::ffi::c_char;

use crate::error::{copy_out, fail};
use crate::panic::{check_out, ffi_panic_boundary, try_ref};
use crate::status::acb_status;

/// The GPUs of a granted GPU phase: a copy the caller owns and frees with `acb_lease_free`.
#[allow(non_camel_case_types)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct acb_lease(pub(crate) ::acb_client::Lease);

/// Frees a lease. `acb_lease_free(NULL)` does nothing.
#[unsafe(no_mangle)]
pub extern "C" fn acb_lease_free(lease: *mut acb_lease) {
    ffi_panic_boundary! {
        if !lease.is_null() {
            // SAFETY: made by acb_on_device_begin, freed once.
            drop(unsafe { Box::from_raw(lease) });
        }
    }
}

/// The lease's id (0 for NULL).
#[unsafe(no_mangle)]
pub extern "C" fn acb_lease_id(lease: *const acb_lease) -> u64 {
    ffi_panic_boundary! { try_ref!(lease).0.id }
}

/// How many GPUs the lease has (0 for NULL).
#[unsafe(no_mangle)]
pub extern "C" fn acb_lease_device_count(lease: *const acb_lease) -> usize {
    ffi_panic_boundary! { try_ref!(lease).0.devices.len() }
}

/// The memory the lease may use on each GPU, in bytes (0 for NULL).
#[unsafe(no_mangle)]
pub extern "C" fn acb_lease_memory_per_gpu(lease: *const acb_lease) -> u64 {
    ffi_panic_boundary! { try_ref!(lease).0.memory_per_gpu }
}

/// The node-local index (what `CUDA_VISIBLE_DEVICES` uses) of the lease's GPU number `i`.
#[unsafe(no_mangle)]
pub extern "C" fn acb_lease_device_index(lease: *const acb_lease, i: usize, index_out: *mut u32) -> acb_status {
    ffi_panic_boundary! {
        let l = &try_ref!(lease).0;
        check_out!(index_out);
        match l.devices.get(i) {
            Some(d) => {
                // SAFETY: checked non-NULL.
                unsafe { *index_out = d.index };
                acb_status::Ok
            }
            None => fail(acb_status::OutOfRange, format!("the lease has {} GPUs, not {}", l.devices.len(), i + 1)),
        }
    }
}

/// Copies the uuid of the lease's GPU number `i` into `buf` (room for `len` bytes, NUL
/// included); `*written` gets its length.
#[unsafe(no_mangle)]
pub extern "C" fn acb_lease_device_uuid(
    lease: *const acb_lease,
    i: usize,
    buf: *mut c_char,
    len: usize,
    written: *mut usize,
) -> acb_status {
    ffi_panic_boundary! {
        let l = &try_ref!(lease).0;
        check_out!(buf);
        check_out!(written);
        match l.devices.get(i) {
            Some(d) => copy_out(&d.uuid, buf, len, written),
            None => fail(acb_status::OutOfRange, format!("the lease has {} GPUs, not {}", l.devices.len(), i + 1)),
        }
    }
}
