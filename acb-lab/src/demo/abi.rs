//! Generated from include/acb.h by tests/abi.rs: the C ABI the demo's jobs load at run time.
//! Do not edit: `ACB_REGENERATE=1 cargo test -p acb-lab --test abi` rewrites it.

use std::ffi::{c_char, c_void};

/// An opaque libacb object (`acb_client *`, `acb_config *`, ...).
pub type Handle = *mut c_void;

/// `ACB_ABI_VERSION` of the header.
pub const ABI_VERSION: u32 = 1;

/// `acb_memory_stats`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryStats {
    /// `allocations`.
    pub allocations: u64,
    /// `resident_bytes`.
    pub resident_bytes: u64,
    /// `swapped_bytes`.
    pub swapped_bytes: u64,
    /// `swapped_out_total`.
    pub swapped_out_total: u64,
    /// `swapped_in_total`.
    pub swapped_in_total: u64,
    /// `host_pool_bytes`.
    pub host_pool_bytes: u64,
}

/// `acb_abi_version`.
pub type AbiVersion = unsafe extern "C" fn() -> u32;

/// `acb_config_new`.
pub type ConfigNew = unsafe extern "C" fn(*mut Handle) -> u32;

/// `acb_config_free`.
pub type ConfigFree = unsafe extern "C" fn(Handle);

/// `acb_client_new`.
pub type ClientNew = unsafe extern "C" fn(Handle, *mut Handle) -> u32;

/// `acb_client_free`.
pub type ClientFree = unsafe extern "C" fn(Handle);

/// `acb_request_new`.
pub type RequestNew = unsafe extern "C" fn(*mut Handle) -> u32;

/// `acb_request_free`.
pub type RequestFree = unsafe extern "C" fn(Handle);

/// `acb_on_device_begin`.
pub type OnDeviceBegin = unsafe extern "C" fn(Handle, Handle, *mut Handle) -> u32;

/// `acb_on_device_end`.
pub type OnDeviceEnd = unsafe extern "C" fn(Handle) -> u32;

/// `acb_lease_free`.
pub type LeaseFree = unsafe extern "C" fn(Handle);

/// `acb_lease_device_index`.
pub type LeaseDeviceIndex = unsafe extern "C" fn(Handle, usize, *mut u32) -> u32;

/// `acb_client_alloc`.
pub type ClientAlloc = unsafe extern "C" fn(Handle, usize, *mut *mut c_void) -> u32;

/// `acb_client_memory_stats`.
pub type ClientMemoryStats = unsafe extern "C" fn(Handle, *mut MemoryStats) -> u32;

/// `acb_error_message`.
pub type ErrorMessage = unsafe extern "C" fn(*mut c_char, usize, *mut usize) -> u32;

/// `acb_status_message`.
pub type StatusMessage = unsafe extern "C" fn(u32, *mut c_char, usize, *mut usize) -> u32;
