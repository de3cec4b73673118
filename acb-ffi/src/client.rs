//! `acb_client` and the white paper's manual mode: `acb_on_device_begin` / `acb_on_device_end`,
//! as C handles over [`::acb_client::Client`]. No Rust or tokio type crosses the ABI.

use crate::config::acb_config;
use crate::error::{copy_out, fail_with};
use crate::lease::acb_lease;
use crate::panic::{check_out, ffi_panic_boundary, try_ref};
use crate::request::acb_request;
use crate::status::acb_status;

/// A client of the assigner: one job (or one rank of a job). Any thread may call its
/// functions; GPU phases are one at a time per client. Free it with `acb_client_free`, after
/// every other call on it has returned.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct acb_client(pub(crate) ::acb_client::Client);

/// The client `acb_allocator_malloc`/`_free` use (`allocator.rs`); `acb_client_free` unsets it
/// when it is the one freed.
pub(crate) static ALLOCATOR_CLIENT: std::sync::atomic::AtomicPtr<acb_client> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Makes a client from `config` (copied; free the config whenever you like) into
/// `*client_out`. It connects to the assigner at its first GPU phase, not here, so it works
/// when the assigner starts later. Free it with `acb_client_free`. When `ACB_PROFILE` names a
/// file, the client appends a JSON line to it at each phase boundary (`agarun --profile`).
#[unsafe(no_mangle)]
pub extern "C" fn acb_client_new(config: *const acb_config, client_out: *mut *mut acb_client) -> acb_status {
    ffi_panic_boundary! {
        let cfg = try_ref!(config).0.clone();
        check_out!(client_out);
        crate::log::init_from_env();
        match ::acb_client::Client::new(cfg) {
            Ok(c) => {
                // SAFETY: checked non-NULL.
                unsafe { *client_out = Box::into_raw(Box::new(acb_client(c))) };
                acb_status::Ok
            }
            Err(e) => fail_with(&e),
        }
    }
}

/// Ends the client: a lease it holds is released, its session closed, its thread stopped.
/// `acb_client_free(NULL)` does nothing.
#[unsafe(no_mangle)]
pub extern "C" fn acb_client_free(client: *mut acb_client) {
    ffi_panic_boundary! {
        if client.is_null() {
            return;
        }
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        let _ = ALLOCATOR_CLIENT.compare_exchange(client, std::ptr::null_mut(), AcqRel, Acquire);
        // SAFETY: made by acb_client_new, freed once, no other call in flight (the contract).
        drop(unsafe { Box::from_raw(client) });
    }
}

/// Starts a GPU phase: blocks until the GPUs `request` asks for are granted (or its timeout
/// passes) and writes the lease into `*lease_out` (free it with `acb_lease_free`). Under lazy
/// release a GPU kept from the previous phase is reused at once.
///
/// Errors: `ACB_STATUS_ALREADY_ACTIVE` (a phase is active or being requested),
/// `ACB_STATUS_UNAVAILABLE` (the assigner cannot be reached after the configured retries),
/// `ACB_STATUS_TIMEOUT` (request withdrawn), `ACB_STATUS_REJECTED` (the assigner refused the
/// request; `acb_error_message` says why).
#[unsafe(no_mangle)]
pub extern "C" fn acb_on_device_begin(
    client: *const acb_client,
    request: *const acb_request,
    lease_out: *mut *mut acb_lease,
) -> acb_status {
    ffi_panic_boundary! {
        let c = try_ref!(client);
        let r = try_ref!(request);
        check_out!(lease_out);
        match c.0.begin(&r.0) {
            Ok(lease) => {
                // SAFETY: checked non-NULL.
                unsafe { *lease_out = Box::into_raw(Box::new(acb_lease(lease))) };
                acb_status::Ok
            }
            Err(e) => fail_with(&e),
        }
    }
}

/// Ends the GPU phase. Under lazy release the GPU is kept until another job waits for it (or
/// the idle timeout passes); under eager release it goes back now.
#[unsafe(no_mangle)]
pub extern "C" fn acb_on_device_end(client: *const acb_client) -> acb_status {
    ffi_panic_boundary! {
        match try_ref!(client).0.end() {
            Ok(()) => acb_status::Ok,
            Err(e) => fail_with(&e),
        }
    }
}

/// Asks the assigner what it offers (its `status --json`: scheduler, GPUs with holders, queue,
/// clients) and copies the JSON into `buf` (room for `len` bytes, NUL included); `*written`
/// gets its length. Makes one connection attempt within the connect timeout:
/// `ACB_STATUS_UNAVAILABLE` if the assigner cannot be reached.
#[unsafe(no_mangle)]
pub extern "C" fn acb_client_status_json(
    client: *const acb_client,
    buf: *mut std::ffi::c_char,
    len: usize,
    written: *mut usize,
) -> acb_status {
    ffi_panic_boundary! {
        let c = try_ref!(client);
        check_out!(buf);
        check_out!(written);
        match c.0.status_json() {
            Ok(json) => copy_out(&json, buf, len, written),
            Err(e) => fail_with(&e),
        }
    }
}
