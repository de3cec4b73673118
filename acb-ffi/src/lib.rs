//! libacb: the stable C ABI of the acb client (`include/acb.h` is generated from this crate), a
//! thin shell over the `acb-client` crate: handles, status codes, the panic boundary, NULL
//! checks, and one conversion from [`::acb_client::Error`] to [`acb_status`] (`error::fail_with`).
//! Must never depend on daemon code (no NVML, Prometheus, axum, clap, reflection).
//!
//! Conventions, after rustls-ffi: opaque handles; `acb_<object>_<verb>` names; `_new`/`_free`
//! pairs, `_free(NULL)` does nothing; arguments are self, inputs, outputs; a `size_t` follows
//! every buffer; outputs are written only on success; every export runs inside a panic
//! boundary with NULL checks; statuses are a `#[repr(u32)]` enum with fixed numbers; details of
//! the last failure on a thread come from `acb_error_message`.
// Exports take raw pointers from C and check them (try_ref!/try_mut!/check_out!) before use;
// marking each `unsafe fn` would add nothing for C callers.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod panic;

pub mod allocator;
pub mod auto;

pub mod client;
pub mod config;
pub mod device_memory;
pub mod error;
pub mod lease;
mod log;
pub mod request;
pub mod status;

pub use client::acb_client;
pub use config::acb_config;
pub use device_memory::acb_memory_stats;
pub use lease::acb_lease;
pub use request::acb_request;
pub use status::acb_status;

/// The ABI version: bumped on any incompatible change of the C interface. It is also the
/// number in libacb.so's SONAME, `libacb.so.<ABI version>` (`build.rs` reads this line).
pub const ACB_ABI_VERSION: u32 = 1;

/// The ABI version this library implements (so a program can check the one it loaded).
#[unsafe(no_mangle)]
pub extern "C" fn acb_abi_version() -> u32 {
    ACB_ABI_VERSION
}
