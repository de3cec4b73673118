//! Entry points with the signatures of PyTorch's pluggable CUDA allocator
//! (`torch.cuda.memory.CUDAPluggableAllocator(path, "acb_allocator_malloc", "acb_allocator_free")`),
//! so that every allocation of a framework goes through one client's swappable memory. They
//! take no client: they use the one set with `acb_allocator_set_client`.

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use crate::client::{ALLOCATOR_CLIENT as CLIENT, acb_client};
use crate::device_memory::{acb_client_alloc, acb_client_dealloc};
use crate::error::fail;
use crate::panic::ffi_panic_boundary;
use crate::status::acb_status;

/// Makes `client` the one `acb_allocator_malloc`/`_free` use (NULL: none). The client must stay
/// alive while it is set; `acb_client_free` unsets it.
#[unsafe(no_mangle)]
pub extern "C" fn acb_allocator_set_client(client: *mut acb_client) -> acb_status {
    ffi_panic_boundary! {
        CLIENT.store(client, Ordering::Release);
        acb_status::Ok
    }
}

/// Whether a client is set (the `cudaMalloc` interposer sends allocations to libacb then).
#[unsafe(no_mangle)]
pub extern "C" fn acb_allocator_has_client() -> bool {
    ffi_panic_boundary! { !CLIENT.load(Ordering::Acquire).is_null() }
}

/// Frees `ptr` if it is memory of the set client: `ACB_STATUS_OK`; `ACB_STATUS_INVALID_ARGUMENT`
/// if it is not (the interposer then hands it to the real `cudaFree`), `ACB_STATUS_NOT_ACTIVE`
/// if no client is set.
#[unsafe(no_mangle)]
pub extern "C" fn acb_allocator_try_free(ptr: *mut c_void) -> acb_status {
    ffi_panic_boundary! {
        let client = CLIENT.load(Ordering::Acquire);
        if client.is_null() {
            return fail(acb_status::NotActive, "no client is set");
        }
        if ptr.is_null() {
            return acb_status::Ok;
        }
        acb_client_dealloc(client, ptr)
    }
}

/// PyTorch's `alloc_fn`: `size` bytes on the GPU of the set client's active phase, or NULL
/// (the framework then reports out of memory; `acb_error_message` says why). `device` and
/// `stream` are the framework's; the memory is on the lease's GPU.
#[unsafe(no_mangle)]
pub extern "C" fn acb_allocator_malloc(size: isize, device: i32, stream: *mut c_void) -> *mut c_void {
    let _ = (device, stream);
    ffi_panic_boundary! {
        let client = CLIENT.load(Ordering::Acquire);
        if client.is_null() {
            fail(acb_status::NotActive, "no client is set: call acb_allocator_set_client first");
            return std::ptr::null_mut();
        }
        let Ok(size) = usize::try_from(size) else {
            fail(acb_status::InvalidArgument, format!("a negative size ({size})"));
            return std::ptr::null_mut();
        };
        let mut p = std::ptr::null_mut();
        if acb_client_alloc(client, size, &mut p) == acb_status::Ok { p } else { std::ptr::null_mut() }
    }
}

/// `acb_allocator_malloc` for frameworks that do not check for NULL: PyTorch's
/// `CUDAPluggableAllocator` uses whatever its `alloc_fn` returns as device memory. So where
/// `acb_allocator_malloc` would return NULL for a non-zero size, this prints why on stderr and
/// aborts the process: a clear end rather than an illegal memory access later. 0 bytes give
/// NULL, as PyTorch expects.
#[unsafe(no_mangle)]
pub extern "C" fn acb_allocator_malloc_or_abort(size: isize, device: i32, stream: *mut c_void) -> *mut c_void {
    let p = acb_allocator_malloc(size, device, stream);
    if p.is_null() && size > 0 {
        eprintln!(
            "libacb: no device memory for {size} bytes: {}; aborting, since the framework would use NULL as memory",
            crate::error::last_error()
        );
        std::process::abort();
    }
    p
}

/// PyTorch's `free_fn`: frees memory from `acb_allocator_malloc` (NULL does nothing).
#[unsafe(no_mangle)]
pub extern "C" fn acb_allocator_free(ptr: *mut c_void, size: isize, device: i32, stream: *mut c_void) {
    let _ = (size, device, stream);
    ffi_panic_boundary! {
        let client = CLIENT.load(Ordering::Acquire);
        if !client.is_null() {
            let _ = acb_client_dealloc(client, ptr);
        }
    }
}
