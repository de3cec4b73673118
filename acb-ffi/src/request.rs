//! `acb_request`: what one GPU phase needs.

use std::time::Duration;

use ::acb_client::Request;

use crate::error::fail;
use crate::panic::{check_out, ffi_panic_boundary, try_mut};
use crate::status::acb_status;

/// What a GPU phase asks for. Defaults: 1 whole GPU, priority 0, no timeout.
#[allow(non_camel_case_types)]
#[derive(Clone, Debug)]
pub struct acb_request(pub(crate) Request);

/// Makes a request with the defaults into `*request_out`. Free it with `acb_request_free`.
#[unsafe(no_mangle)]
pub extern "C" fn acb_request_new(request_out: *mut *mut acb_request) -> acb_status {
    ffi_panic_boundary! {
        check_out!(request_out);
        let r = acb_request(Request::default());
        // SAFETY: checked non-NULL.
        unsafe { *request_out = Box::into_raw(Box::new(r)) };
        acb_status::Ok
    }
}

/// Frees a request. `acb_request_free(NULL)` does nothing.
#[unsafe(no_mangle)]
pub extern "C" fn acb_request_free(request: *mut acb_request) {
    ffi_panic_boundary! {
        if !request.is_null() {
            // SAFETY: made by acb_request_new, freed once.
            drop(unsafe { Box::from_raw(request) });
        }
    }
}

/// GPUs, granted together (at least 1).
#[unsafe(no_mangle)]
pub extern "C" fn acb_request_set_gpus(request: *mut acb_request, gpus: u32) -> acb_status {
    ffi_panic_boundary! {
        let r = &mut try_mut!(request).0;
        if gpus == 0 {
            return fail(acb_status::InvalidArgument, "a request asks for at least one GPU");
        }
        r.gpus = gpus;
        acb_status::Ok
    }
}

/// Memory per GPU in bytes (0: whole GPUs). Under `gpu-sharing` this is the job's fence.
#[unsafe(no_mangle)]
pub extern "C" fn acb_request_set_memory_per_gpu(request: *mut acb_request, bytes: u64) -> acb_status {
    ffi_panic_boundary! {
        let r = &mut try_mut!(request).0;
        r.memory_per_gpu = (bytes > 0).then_some(bytes);
        acb_status::Ok
    }
}

/// Priority: higher is served first (default 0).
#[unsafe(no_mangle)]
pub extern "C" fn acb_request_set_priority(request: *mut acb_request, priority: i32) -> acb_status {
    ffi_panic_boundary! {
        let r = &mut try_mut!(request).0;
        r.priority = priority;
        acb_status::Ok
    }
}

/// How long `acb_on_device_begin` waits for the grant, in milliseconds (0: as long as it
/// takes). When it runs out the request is withdrawn and begin gives `ACB_STATUS_TIMEOUT`.
#[unsafe(no_mangle)]
pub extern "C" fn acb_request_set_timeout_ms(request: *mut acb_request, ms: u32) -> acb_status {
    ffi_panic_boundary! {
        let r = &mut try_mut!(request).0;
        r.timeout = (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
        acb_status::Ok
    }
}
