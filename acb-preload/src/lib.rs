//! `cudaMalloc`/`cudaFree` for `LD_PRELOAD`: while a client is set in the process's libacb
//! (`acb_allocator_set_client`), device allocations go to its swappable memory; otherwise, and
//! for pointers libacb did not hand out, the real CUDA runtime functions run. libacb's
//! functions are found in the process (`dlsym(RTLD_DEFAULT)`), the real ones after this
//! library (`dlsym(RTLD_NEXT)`): a process without libacb, or without a CUDA runtime, gets the
//! behaviour it would have without this library (or a CUDA error, never a crash).

use std::ffi::{CStr, c_int, c_void};
use std::sync::OnceLock;

/// `cudaError_t` values this library returns itself.
const CUDA_SUCCESS: c_int = 0;
const CUDA_ERROR_INVALID_VALUE: c_int = 1;
const CUDA_ERROR_MEMORY_ALLOCATION: c_int = 2;
const CUDA_ERROR_INSUFFICIENT_DRIVER: c_int = 35;

type CudaMalloc = unsafe extern "C" fn(*mut *mut c_void, usize) -> c_int;
type CudaFree = unsafe extern "C" fn(*mut c_void) -> c_int;
type AcbHasClient = unsafe extern "C" fn() -> bool;
type AcbMalloc = unsafe extern "C" fn(isize, i32, *mut c_void) -> *mut c_void;
type AcbTryFree = unsafe extern "C" fn(*mut c_void) -> u32;

/// The functions found, once.
struct Found {
    real_malloc: Option<CudaMalloc>,
    real_free: Option<CudaFree>,
    has_client: Option<AcbHasClient>,
    malloc: Option<AcbMalloc>,
    try_free: Option<AcbTryFree>,
}

fn lookup(handle: *mut c_void, name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with a NUL-terminated name and a pseudo-handle.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

fn found() -> &'static Found {
    static FOUND: OnceLock<Found> = OnceLock::new();
    FOUND.get_or_init(|| {
        // SAFETY: each symbol has the type its library declares (the CUDA runtime's, acb.h's).
        unsafe {
            Found {
                real_malloc: lookup(libc::RTLD_NEXT, c"cudaMalloc")
                    .map(|p| std::mem::transmute::<*mut c_void, CudaMalloc>(p)),
                real_free: lookup(libc::RTLD_NEXT, c"cudaFree")
                    .map(|p| std::mem::transmute::<*mut c_void, CudaFree>(p)),
                has_client: lookup(libc::RTLD_DEFAULT, c"acb_allocator_has_client")
                    .map(|p| std::mem::transmute::<*mut c_void, AcbHasClient>(p)),
                malloc: lookup(libc::RTLD_DEFAULT, c"acb_allocator_malloc")
                    .map(|p| std::mem::transmute::<*mut c_void, AcbMalloc>(p)),
                try_free: lookup(libc::RTLD_DEFAULT, c"acb_allocator_try_free")
                    .map(|p| std::mem::transmute::<*mut c_void, AcbTryFree>(p)),
            }
        }
    })
}

/// `cudaMalloc`, through libacb while it has a client.
///
/// # Safety
/// As the CUDA runtime's: `dev_ptr` is NULL or points to writable memory for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaMalloc(dev_ptr: *mut *mut c_void, size: usize) -> c_int {
    if dev_ptr.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    let f = found();
    if let (Some(has_client), Some(malloc)) = (f.has_client, f.malloc)
        // SAFETY: libacb's function, no arguments.
        && unsafe { has_client() }
    {
        let Ok(size) = isize::try_from(size) else { return CUDA_ERROR_MEMORY_ALLOCATION };
        // SAFETY: libacb's function; NULL stream (the memory is the lease's).
        let p = unsafe { malloc(size, 0, std::ptr::null_mut()) };
        if p.is_null() {
            return CUDA_ERROR_MEMORY_ALLOCATION;
        }
        // SAFETY: checked non-NULL; the caller's contract.
        unsafe { *dev_ptr = p };
        return CUDA_SUCCESS;
    }
    match f.real_malloc {
        // SAFETY: the real cudaMalloc, with the caller's arguments.
        Some(real) => unsafe { real(dev_ptr, size) },
        None => CUDA_ERROR_INSUFFICIENT_DRIVER,
    }
}

/// `cudaFree`: libacb's memory back to libacb, anything else to the real `cudaFree`.
///
/// # Safety
/// As the CUDA runtime's: `ptr` is NULL or a live device allocation.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaFree(ptr: *mut c_void) -> c_int {
    if ptr.is_null() {
        return CUDA_SUCCESS;
    }
    let f = found();
    // SAFETY: libacb's function; 0 is ACB_STATUS_OK (the pointer was its own).
    if let Some(try_free) = f.try_free
        && unsafe { try_free(ptr) } == 0
    {
        return CUDA_SUCCESS;
    }
    match f.real_free {
        // SAFETY: the real cudaFree, with the caller's pointer.
        Some(real) => unsafe { real(ptr) },
        None => CUDA_ERROR_INVALID_VALUE,
    }
}
