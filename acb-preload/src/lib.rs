//! `libacb_preload.so`, for `LD_PRELOAD`: the CUDA interposer.
//!
//! **Driver API (automatic mode).** It sits between any CUDA program and libcuda: it exports the
//! driver functions that must be gated (kernel launches, copies, memsets, graph launches, stream
//! waits; see [`GATED`]) and wraps each real one in libacb's gate (`acb_auto_enter` /
//! `acb_auto_exit`): while the process holds its GPU phase a call passes after two atomic
//! additions; after a release, the first one blocks until a GPU is granted and the process's
//! memory is back on it. `cuMemAlloc`/`cuMemFree` (and their async forms) go to libacb's VMM
//! allocations, so every byte moves at a release and comes back at the same address. Programs
//! that find driver functions at run time are gated too: `cuGetProcAddress` (how the CUDA
//! runtime and frameworks find them) and `dlsym` hand out the wrappers in place of the real
//! entry points. Automatic mode starts at the first intercepted call when `ACB_MODE=auto`
//! (`agarun --mode auto` sets it); otherwise every call passes through unchanged.
//!
//! **Runtime API (manual mode).** `cudaMalloc`/`cudaFree`: while a client is set in the
//! process's libacb (`acb_allocator_set_client`), device allocations go to its swappable memory;
//! otherwise, and for pointers libacb did not hand out, the real functions run.
//!
//! libacb is found in the process (`RTLD_DEFAULT`), else loaded from beside this library (or
//! `ACB_LIBRARY`); the real CUDA functions after this library (`RTLD_NEXT`), else in libcuda
//! itself. This library never links libacb: a second copy of its state would be a second client.

use std::cell::Cell;
use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// `CUresult` / `cudaError_t` values this library returns itself.
const CUDA_SUCCESS: c_int = 0;
const CUDA_ERROR_INVALID_VALUE: c_int = 1;
const CUDA_ERROR_MEMORY_ALLOCATION: c_int = 2;
const CUDA_ERROR_INSUFFICIENT_DRIVER: c_int = 35;
const CUDA_ERROR_NOT_FOUND: c_int = 500;

type P = *mut c_void;
type D = u64;

// ---------------------------------------------------------------------------------------------
// Finding symbols without calling our own `dlsym`.

/// glibc's `dlsym`, once found (this library exports a `dlsym` of its own, so a plain call would
/// come back here).
static GLIBC_DLSYM: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A `dlsym` that finds nothing, for a libc without one (never on glibc).
unsafe extern "C" fn no_dlsym(_: P, _: *const c_char) -> P {
    std::ptr::null_mut()
}

/// Finds glibc's `dlsym` (`dlvsym` from here with `RTLD_NEXT` skips this library's), with no
/// lock and no allocation: sanitizer runtimes call `dlsym` before anything is initialised.
extern "C" fn find_glibc_dlsym() -> usize {
    for version in [c"GLIBC_2.34", c"GLIBC_2.2.5", c"GLIBC_2.17"] {
        // SAFETY: dlvsym with NUL-terminated strings and a pseudo-handle.
        let p = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
        if !p.is_null() {
            GLIBC_DLSYM.store(p as usize, Ordering::Release);
            return p as usize;
        }
    }
    no_dlsym as *const () as usize
}

/// Calls glibc's `dlsym` (for `RTLD_NEXT`, "next" counts from this library).
unsafe fn glibc_dlsym(handle: P, symbol: *const c_char) -> P {
    let mut f = GLIBC_DLSYM.load(Ordering::Acquire);
    if f == 0 {
        f = find_glibc_dlsym();
    }
    // SAFETY: glibc's dlsym (or no_dlsym), with the caller's arguments.
    unsafe { std::mem::transmute::<usize, unsafe extern "C" fn(P, *const c_char) -> P>(f)(handle, symbol) }
}

fn lookup(handle: P, name: &CStr) -> Option<P> {
    // SAFETY: glibc's dlsym with a handle or pseudo-handle and a NUL-terminated name. (For
    // RTLD_NEXT, "next" is counted from this library, which is what `real` wants.)
    let p = unsafe { glibc_dlsym(handle, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// libcuda, loaded (a program that `dlopen`s it privately keeps it out of `RTLD_NEXT`'s reach).
fn libcuda() -> Option<P> {
    static HANDLE: OnceLock<Option<usize>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            for name in [c"libcuda.so.1", c"libcuda.so"] {
                // SAFETY: dlopen with a NUL-terminated name.
                let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
                if !h.is_null() {
                    return Some(h as usize);
                }
            }
            None
        })
        .map(|h| h as P)
}

/// The real CUDA function `name`: the next definition after this library, else libcuda's.
fn real(name: &CStr) -> Option<P> {
    lookup(libc::RTLD_NEXT, name).or_else(|| lookup(libcuda()?, name))
}

// ---------------------------------------------------------------------------------------------
// libacb.

type VoidFn = unsafe extern "C" fn();
type StartFn = unsafe extern "C" fn() -> u32;
type BoolFn = unsafe extern "C" fn() -> bool;
type AcbMalloc = unsafe extern "C" fn(isize, i32, P) -> P;
type AcbTryFree = unsafe extern "C" fn(P) -> u32;

/// libacb's functions, found once.
struct Acb {
    enter: Option<VoidFn>,
    exit: Option<VoidFn>,
    auto_active: Option<BoolFn>,
    has_client: Option<BoolFn>,
    malloc: Option<AcbMalloc>,
    try_free: Option<AcbTryFree>,
}

thread_local! {
    /// Set while this thread is starting automatic mode: calls it makes meanwhile pass straight
    /// through (libacb's own CUDA set-up).
    static STARTING: Cell<bool> = const { Cell::new(false) };
}

/// The directory this library was loaded from.
fn own_dir() -> Option<std::path::PathBuf> {
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr on one of this library's functions; it fills `info`.
    if unsafe { libc::dladdr(own_dir as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated path from the loader.
    let path = unsafe { CStr::from_ptr(info.dli_fname) }.to_str().ok()?;
    std::path::Path::new(path).parent().map(std::path::Path::to_path_buf)
}

/// Loads libacb when the process has not (agarun preloads it too; this is for a bare
/// `LD_PRELOAD=libacb_preload.so`).
fn load_libacb() {
    let candidates: Vec<std::path::PathBuf> = match std::env::var_os("ACB_LIBRARY") {
        Some(p) => vec![p.into()],
        None => own_dir().map(|d| vec![d.join("libacb.so.1"), d.join("libacb.so")]).unwrap_or_default(),
    };
    for c in candidates {
        let Ok(path) = CString::new(c.as_os_str().as_encoded_bytes()) else { continue };
        // SAFETY: dlopen with a NUL-terminated path; RTLD_GLOBAL so that RTLD_DEFAULT finds it.
        if !unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) }.is_null() {
            return;
        }
    }
}

fn acb() -> &'static Acb {
    static ACB: OnceLock<Acb> = OnceLock::new();
    ACB.get_or_init(|| {
        let auto = std::env::var("ACB_MODE").is_ok_and(|m| m == "auto");
        if auto && lookup(libc::RTLD_DEFAULT, c"acb_auto_enter").is_none() {
            load_libacb();
        }
        let find = |name: &CStr| lookup(libc::RTLD_DEFAULT, name);
        // SAFETY: each symbol has the type acb.h declares.
        let acb = unsafe {
            Acb {
                enter: find(c"acb_auto_enter").map(|p| std::mem::transmute::<P, VoidFn>(p)),
                exit: find(c"acb_auto_exit").map(|p| std::mem::transmute::<P, VoidFn>(p)),
                auto_active: find(c"acb_auto_active").map(|p| std::mem::transmute::<P, BoolFn>(p)),
                has_client: find(c"acb_allocator_has_client").map(|p| std::mem::transmute::<P, BoolFn>(p)),
                malloc: find(c"acb_allocator_malloc").map(|p| std::mem::transmute::<P, AcbMalloc>(p)),
                try_free: find(c"acb_allocator_try_free").map(|p| std::mem::transmute::<P, AcbTryFree>(p)),
            }
        };
        if auto {
            match find(c"acb_auto_start") {
                Some(p) => {
                    // SAFETY: acb.h's acb_auto_start, no arguments; re-entrant calls from its
                    // set-up pass through (STARTING).
                    let start = unsafe { std::mem::transmute::<P, StartFn>(p) };
                    STARTING.with(|s| s.set(true));
                    // SAFETY: as above.
                    let _ = unsafe { start() };
                    STARTING.with(|s| s.set(false));
                }
                None => eprintln!(
                    "libacb_preload: ACB_MODE=auto but libacb was not found (preload it too, or set ACB_LIBRARY): \
                     the program runs unbrokered"
                ),
            }
        }
        acb
    })
}

/// The gate around one call: entered when made, left when dropped.
struct Gate(Option<VoidFn>);

impl Gate {
    #[inline]
    fn enter() -> Gate {
        if STARTING.with(Cell::get) {
            return Gate(None);
        }
        let a = acb();
        if let (Some(enter), Some(exit)) = (a.enter, a.exit) {
            // SAFETY: libacb's acb_auto_enter, no arguments.
            unsafe { enter() };
            Gate(Some(exit))
        } else {
            Gate(None)
        }
    }
}

impl Drop for Gate {
    #[inline]
    fn drop(&mut self) {
        if let Some(exit) = self.0 {
            // SAFETY: libacb's acb_auto_exit, paired with the enter above.
            unsafe { exit() };
        }
    }
}

fn auto_active() -> bool {
    !STARTING.with(Cell::get)
        && acb().auto_active.is_some_and(|f| {
            // SAFETY: libacb's acb_auto_active, no arguments.
            unsafe { f() }
        })
}

// ---------------------------------------------------------------------------------------------
// The gated driver functions.

macro_rules! stringify_c {
    ($name:ident) => {
        // SAFETY: a string literal with one NUL, at its end.
        unsafe { CStr::from_bytes_with_nul_unchecked(concat!(stringify!($name), "\0").as_bytes()) }
    };
}

macro_rules! gated {
    ($($name:ident ( $($arg:ident : $ty:ty),* );)*) => {
        $(
            #[doc = concat!("`", stringify!($name), "`, gated.\n\n# Safety\nAs the CUDA driver's.")]
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
                static REAL: OnceLock<Option<usize>> = OnceLock::new();
                let Some(f) = REAL.get_or_init(|| real(stringify_c!($name)).map(|p| p as usize)) else {
                    return CUDA_ERROR_NOT_FOUND;
                };
                // SAFETY: the real function of this name has this signature (the driver's).
                let f = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($ty),*) -> c_int>(*f) };
                let _gate = Gate::enter();
                // SAFETY: the caller's arguments, to the real function.
                unsafe { f($($arg),*) }
            }
        )*

        /// Every gated function, for `cuGetProcAddress` and `dlsym`.
        pub const GATED: &[&str] = &[$(stringify!($name)),*];

        fn gated_table() -> Vec<(&'static CStr, P)> {
            vec![$((stringify_c!($name), $name as *const () as P)),*]
        }
    };
}

gated! {
    cuLaunchKernel(f: P, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, shared: c_uint, stream: P, params: *mut P, extra: *mut P);
    cuLaunchKernel_ptsz(f: P, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, shared: c_uint, stream: P, params: *mut P, extra: *mut P);
    cuLaunchKernelEx(config: *const c_void, f: P, params: *mut P, extra: *mut P);
    cuLaunchKernelEx_ptsz(config: *const c_void, f: P, params: *mut P, extra: *mut P);
    cuLaunchCooperativeKernel(f: P, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, shared: c_uint, stream: P, params: *mut P);
    cuLaunchCooperativeKernel_ptsz(f: P, gx: c_uint, gy: c_uint, gz: c_uint, bx: c_uint, by: c_uint, bz: c_uint, shared: c_uint, stream: P, params: *mut P);
    cuLaunchHostFunc(stream: P, func: P, data: P);
    cuLaunchHostFunc_ptsz(stream: P, func: P, data: P);
    cuMemcpy(dst: D, src: D, n: usize);
    cuMemcpy_ptds(dst: D, src: D, n: usize);
    cuMemcpyAsync(dst: D, src: D, n: usize, stream: P);
    cuMemcpyAsync_ptsz(dst: D, src: D, n: usize, stream: P);
    cuMemcpyHtoD_v2(dst: D, src: *const c_void, n: usize);
    cuMemcpyHtoD_v2_ptds(dst: D, src: *const c_void, n: usize);
    cuMemcpyDtoH_v2(dst: P, src: D, n: usize);
    cuMemcpyDtoH_v2_ptds(dst: P, src: D, n: usize);
    cuMemcpyDtoD_v2(dst: D, src: D, n: usize);
    cuMemcpyDtoD_v2_ptds(dst: D, src: D, n: usize);
    cuMemcpyHtoDAsync_v2(dst: D, src: *const c_void, n: usize, stream: P);
    cuMemcpyHtoDAsync_v2_ptsz(dst: D, src: *const c_void, n: usize, stream: P);
    cuMemcpyDtoHAsync_v2(dst: P, src: D, n: usize, stream: P);
    cuMemcpyDtoHAsync_v2_ptsz(dst: P, src: D, n: usize, stream: P);
    cuMemcpyDtoDAsync_v2(dst: D, src: D, n: usize, stream: P);
    cuMemcpyDtoDAsync_v2_ptsz(dst: D, src: D, n: usize, stream: P);
    cuMemcpy2D_v2(copy: *const c_void);
    cuMemcpy2DAsync_v2(copy: *const c_void, stream: P);
    cuMemcpy3D_v2(copy: *const c_void);
    cuMemcpy3DAsync_v2(copy: *const c_void, stream: P);
    cuMemcpy2D_v2_ptds(copy: *const c_void);
    cuMemcpy2DAsync_v2_ptsz(copy: *const c_void, stream: P);
    cuMemcpy3D_v2_ptds(copy: *const c_void);
    cuMemcpy3DAsync_v2_ptsz(copy: *const c_void, stream: P);
    cuMemcpyPeer(dst: D, dst_ctx: P, src: D, src_ctx: P, n: usize);
    cuMemcpyPeer_ptds(dst: D, dst_ctx: P, src: D, src_ctx: P, n: usize);
    cuMemcpyPeerAsync(dst: D, dst_ctx: P, src: D, src_ctx: P, n: usize, stream: P);
    cuMemcpyPeerAsync_ptsz(dst: D, dst_ctx: P, src: D, src_ctx: P, n: usize, stream: P);
    cuMemsetD8_v2(dst: D, value: u8, n: usize);
    cuMemsetD8_v2_ptds(dst: D, value: u8, n: usize);
    cuMemsetD16_v2(dst: D, value: u16, n: usize);
    cuMemsetD16_v2_ptds(dst: D, value: u16, n: usize);
    cuMemsetD32_v2(dst: D, value: u32, n: usize);
    cuMemsetD32_v2_ptds(dst: D, value: u32, n: usize);
    cuMemsetD8Async(dst: D, value: u8, n: usize, stream: P);
    cuMemsetD8Async_ptsz(dst: D, value: u8, n: usize, stream: P);
    cuMemsetD16Async(dst: D, value: u16, n: usize, stream: P);
    cuMemsetD16Async_ptsz(dst: D, value: u16, n: usize, stream: P);
    cuMemsetD32Async(dst: D, value: u32, n: usize, stream: P);
    cuMemsetD32Async_ptsz(dst: D, value: u32, n: usize, stream: P);
    cuMemsetD2D8_v2(dst: D, pitch: usize, value: u8, w: usize, h: usize);
    cuMemsetD2D8_v2_ptds(dst: D, pitch: usize, value: u8, w: usize, h: usize);
    cuMemsetD2D16_v2(dst: D, pitch: usize, value: u16, w: usize, h: usize);
    cuMemsetD2D16_v2_ptds(dst: D, pitch: usize, value: u16, w: usize, h: usize);
    cuMemsetD2D32_v2(dst: D, pitch: usize, value: u32, w: usize, h: usize);
    cuMemsetD2D32_v2_ptds(dst: D, pitch: usize, value: u32, w: usize, h: usize);
    cuMemsetD2D8Async(dst: D, pitch: usize, value: u8, w: usize, h: usize, stream: P);
    cuMemsetD2D8Async_ptsz(dst: D, pitch: usize, value: u8, w: usize, h: usize, stream: P);
    cuMemsetD2D16Async(dst: D, pitch: usize, value: u16, w: usize, h: usize, stream: P);
    cuMemsetD2D16Async_ptsz(dst: D, pitch: usize, value: u16, w: usize, h: usize, stream: P);
    cuMemsetD2D32Async(dst: D, pitch: usize, value: u32, w: usize, h: usize, stream: P);
    cuMemsetD2D32Async_ptsz(dst: D, pitch: usize, value: u32, w: usize, h: usize, stream: P);
    cuGraphLaunch(exec: P, stream: P);
    cuGraphLaunch_ptsz(exec: P, stream: P);
    cuStreamWaitEvent(stream: P, event: P, flags: c_uint);
    cuStreamWaitEvent_ptsz(stream: P, event: P, flags: c_uint);
    cuStreamWaitValue32_v2(stream: P, addr: D, value: u32, flags: c_uint);
    cuStreamWaitValue32_v2_ptsz(stream: P, addr: D, value: u32, flags: c_uint);
    cuStreamWaitValue64_v2(stream: P, addr: D, value: u64, flags: c_uint);
    cuStreamWaitValue64_v2_ptsz(stream: P, addr: D, value: u64, flags: c_uint);
    cuStreamWriteValue32_v2(stream: P, addr: D, value: u32, flags: c_uint);
    cuStreamWriteValue32_v2_ptsz(stream: P, addr: D, value: u32, flags: c_uint);
    cuStreamWriteValue64_v2(stream: P, addr: D, value: u64, flags: c_uint);
    cuStreamWriteValue64_v2_ptsz(stream: P, addr: D, value: u64, flags: c_uint);
}

// ---------------------------------------------------------------------------------------------
// Device memory: to libacb's VMM allocations in automatic mode.

type MemAlloc = unsafe extern "C" fn(*mut D, usize) -> c_int;
type MemFree = unsafe extern "C" fn(D) -> c_int;
type MemAllocAsync = unsafe extern "C" fn(*mut D, usize, P) -> c_int;
type MemFreeAsync = unsafe extern "C" fn(D, P) -> c_int;
type CtxSync = unsafe extern "C" fn() -> c_int;
type StreamSync = unsafe extern "C" fn(P) -> c_int;

static REAL_MEM_ALLOC: OnceLock<Option<usize>> = OnceLock::new();
static REAL_MEM_FREE: OnceLock<Option<usize>> = OnceLock::new();
static REAL_MEM_ALLOC_ASYNC: OnceLock<Option<usize>> = OnceLock::new();
static REAL_MEM_FREE_ASYNC: OnceLock<Option<usize>> = OnceLock::new();

fn real_fn(cell: &OnceLock<Option<usize>>, name: &CStr) -> Option<usize> {
    *cell.get_or_init(|| real(name).map(|p| p as usize))
}

/// `size` bytes of the swappable memory of the client set in libacb (`acb_allocator_malloc`).
fn libacb_malloc(size: usize) -> Result<P, c_int> {
    let Some(malloc) = acb().malloc else { return Err(CUDA_ERROR_MEMORY_ALLOCATION) };
    let Ok(size) = isize::try_from(size) else { return Err(CUDA_ERROR_MEMORY_ALLOCATION) };
    // SAFETY: libacb's acb_allocator_malloc; NULL stream (the memory is the lease's).
    let p = unsafe { malloc(size, 0, std::ptr::null_mut()) };
    if p.is_null() { Err(CUDA_ERROR_MEMORY_ALLOCATION) } else { Ok(p) }
}

/// In automatic mode, `size` bytes of libacb's memory, in a GPU phase (the gate begins one).
/// `None` when automatic mode is off, or gave up while this call waited (no assigner): the
/// caller then uses the driver's (or the runtime's) own allocation.
fn auto_alloc(size: usize) -> Option<Result<P, c_int>> {
    if !auto_active() {
        return None;
    }
    let _gate = Gate::enter();
    auto_active().then(|| libacb_malloc(size))
}

/// Writes an allocation into `*out`: its status.
fn put<T>(out: *mut T, allocated: Result<T, c_int>) -> c_int {
    match allocated {
        Ok(p) => {
            // SAFETY: the caller checked `out` non-NULL; the API's contract makes it writable.
            unsafe { *out = p };
            CUDA_SUCCESS
        }
        Err(e) => e,
    }
}

static REAL_CTX_SYNC: OnceLock<Option<usize>> = OnceLock::new();
static REAL_STREAM_SYNC: OnceLock<Option<usize>> = OnceLock::new();

/// Frees `ptr` if it is libacb's, after the work queued on the current context (or `stream`)
/// is done with it; `None` if it is not libacb's.
fn acb_free(ptr: D, stream: Option<P>) -> Option<c_int> {
    let try_free = acb().try_free?;
    let _gate = Gate::enter();
    // Memory is unmapped at once when freed: nothing queued may still use it.
    // SAFETY: the real synchronisation functions, with the caller's stream.
    unsafe {
        match stream {
            Some(s) => {
                if let Some(f) = real_fn(&REAL_STREAM_SYNC, c"cuStreamSynchronize") {
                    std::mem::transmute::<usize, StreamSync>(f)(s);
                }
            }
            None => {
                if let Some(f) = real_fn(&REAL_CTX_SYNC, c"cuCtxSynchronize") {
                    std::mem::transmute::<usize, CtxSync>(f)();
                }
            }
        }
    }
    // SAFETY: libacb's acb_allocator_try_free; 0 is ACB_STATUS_OK (the pointer was its own).
    (unsafe { try_free(ptr as P) } == 0).then_some(CUDA_SUCCESS)
}

/// `cuMemAlloc_v2`: libacb's swappable memory in automatic mode, else the driver's.
///
/// # Safety
/// As the CUDA driver's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut D, size: usize) -> c_int {
    if dptr.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if let Some(allocated) = auto_alloc(size) {
        return put(dptr, allocated.map(|p| p as D));
    }
    match real_fn(&REAL_MEM_ALLOC, c"cuMemAlloc_v2") {
        // SAFETY: the real function, with the caller's arguments.
        Some(f) => unsafe { std::mem::transmute::<usize, MemAlloc>(f)(dptr, size) },
        None => CUDA_ERROR_NOT_FOUND,
    }
}

/// `cuMemFree_v2`: libacb's memory back to libacb, anything else to the driver.
///
/// # Safety
/// As the CUDA driver's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(ptr: D) -> c_int {
    if ptr != 0
        && auto_active()
        && let Some(r) = acb_free(ptr, None)
    {
        return r;
    }
    match real_fn(&REAL_MEM_FREE, c"cuMemFree_v2") {
        // SAFETY: the real function, with the caller's argument.
        Some(f) => unsafe { std::mem::transmute::<usize, MemFree>(f)(ptr) },
        None => CUDA_ERROR_NOT_FOUND,
    }
}

/// `cuMemAllocAsync`: in automatic mode, libacb's memory at once (not stream-ordered).
///
/// # Safety
/// As the CUDA driver's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync(dptr: *mut D, size: usize, stream: P) -> c_int {
    if dptr.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if let Some(allocated) = auto_alloc(size) {
        return put(dptr, allocated.map(|p| p as D));
    }
    match real_fn(&REAL_MEM_ALLOC_ASYNC, c"cuMemAllocAsync") {
        // SAFETY: the real function, with the caller's arguments.
        Some(f) => unsafe { std::mem::transmute::<usize, MemAllocAsync>(f)(dptr, size, stream) },
        None => CUDA_ERROR_NOT_FOUND,
    }
}

/// `cuMemFreeAsync`: in automatic mode, libacb's memory is freed once `stream`'s queued work
/// is done.
///
/// # Safety
/// As the CUDA driver's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync(ptr: D, stream: P) -> c_int {
    if ptr != 0
        && auto_active()
        && let Some(r) = acb_free(ptr, Some(stream))
    {
        return r;
    }
    match real_fn(&REAL_MEM_FREE_ASYNC, c"cuMemFreeAsync") {
        // SAFETY: the real function, with the caller's arguments.
        Some(f) => unsafe { std::mem::transmute::<usize, MemFreeAsync>(f)(ptr, stream) },
        None => CUDA_ERROR_NOT_FOUND,
    }
}

// ---------------------------------------------------------------------------------------------
// Contexts: libacb synchronises every one the program makes before a release.

type CtxCreate = unsafe extern "C" fn(*mut P, c_uint, c_int) -> c_int;
type CtxCreateV4 = unsafe extern "C" fn(*mut P, *const c_void, c_uint, c_int) -> c_int;
type PrimaryRetain = unsafe extern "C" fn(*mut P, c_int) -> c_int;
type CtxDestroy = unsafe extern "C" fn(P) -> c_int;
type CtxFn = unsafe extern "C" fn(P);

/// Tells libacb about a context made (`acb_auto_note_context`) or about to go
/// (`acb_auto_forget_context`).
fn tell_libacb(name: &CStr, ctx: P) {
    if ctx.is_null() || !auto_active() {
        return;
    }
    if let Some(f) = lookup(libc::RTLD_DEFAULT, name) {
        // SAFETY: libacb's function of this name takes a context.
        unsafe { std::mem::transmute::<P, CtxFn>(f)(ctx) };
    }
}

fn made(r: c_int, pctx: *mut P) -> c_int {
    if r == CUDA_SUCCESS && !pctx.is_null() {
        // SAFETY: the driver wrote the new context there.
        tell_libacb(c"acb_auto_note_context", unsafe { *pctx });
    }
    r
}

/// `cuCtxCreate_v2`: the driver's, and libacb learns of the context.
///
/// # Safety
/// As the CUDA driver's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v2(pctx: *mut P, flags: c_uint, dev: c_int) -> c_int {
    static REAL: OnceLock<Option<usize>> = OnceLock::new();
    let Some(f) = real_fn(&REAL, c"cuCtxCreate_v2") else { return CUDA_ERROR_NOT_FOUND };
    // SAFETY: the real function, with the caller's arguments.
    made(unsafe { std::mem::transmute::<usize, CtxCreate>(f)(pctx, flags, dev) }, pctx)
}

/// `cuCtxCreate_v4` (CUDA 12.5): the driver's, and libacb learns of the context.
///
/// # Safety
/// As the CUDA driver's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v4(pctx: *mut P, params: *const c_void, flags: c_uint, dev: c_int) -> c_int {
    static REAL: OnceLock<Option<usize>> = OnceLock::new();
    let Some(f) = real_fn(&REAL, c"cuCtxCreate_v4") else { return CUDA_ERROR_NOT_FOUND };
    // SAFETY: the real function, with the caller's arguments.
    made(unsafe { std::mem::transmute::<usize, CtxCreateV4>(f)(pctx, params, flags, dev) }, pctx)
}

/// `cuDevicePrimaryCtxRetain`: the driver's, and libacb learns of the context.
///
/// # Safety
/// As the CUDA driver's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut P, dev: c_int) -> c_int {
    static REAL: OnceLock<Option<usize>> = OnceLock::new();
    let Some(f) = real_fn(&REAL, c"cuDevicePrimaryCtxRetain") else { return CUDA_ERROR_NOT_FOUND };
    // SAFETY: the real function, with the caller's arguments.
    made(unsafe { std::mem::transmute::<usize, PrimaryRetain>(f)(pctx, dev) }, pctx)
}

/// `cuCtxDestroy_v2`: libacb forgets the context, then the driver destroys it.
///
/// # Safety
/// As the CUDA driver's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: P) -> c_int {
    static REAL: OnceLock<Option<usize>> = OnceLock::new();
    let Some(f) = real_fn(&REAL, c"cuCtxDestroy_v2") else { return CUDA_ERROR_NOT_FOUND };
    tell_libacb(c"acb_auto_forget_context", ctx);
    // SAFETY: the real function, with the caller's argument.
    unsafe { std::mem::transmute::<usize, CtxDestroy>(f)(ctx) }
}

/// Says once, on stderr, that memory of a kind acb cannot move stays on the GPU.
fn unmovable(what: &str, seen: &AtomicBool) {
    if auto_active() && !seen.swap(true, Ordering::Relaxed) {
        eprintln!(
            "libacb_preload: {what}: this memory cannot be swapped and stays on the GPU through releases \
             (said once; see the README's automatic-mode limits)"
        );
    }
}

macro_rules! reported {
    ($($name:ident ( $($arg:ident : $ty:ty),* ) $what:literal;)*) => {
        $(
            #[doc = concat!("`", stringify!($name), "`: passed through; in automatic mode, reported once as memory acb cannot move.\n\n# Safety\nAs the CUDA driver's.")]
            #[unsafe(no_mangle)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> c_int {
                static REAL: OnceLock<Option<usize>> = OnceLock::new();
                static SEEN: AtomicBool = AtomicBool::new(false);
                unmovable($what, &SEEN);
                let Some(f) = real_fn(&REAL, stringify_c!($name)) else { return CUDA_ERROR_NOT_FOUND };
                // SAFETY: the real function of this name has this signature (the driver's).
                let f = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($ty),*) -> c_int>(f) };
                // SAFETY: the caller's arguments, to the real function.
                unsafe { f($($arg),*) }
            }
        )*

        fn reported_table() -> Vec<(&'static CStr, P)> {
            vec![$((stringify_c!($name), $name as *const () as P)),*]
        }
    };
}

/// `CUipcMemHandle`: 64 opaque bytes, passed by value.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IpcHandle([u8; 64]);

reported! {
    cuMemAllocManaged(dptr: *mut D, size: usize, flags: c_uint) "cuMemAllocManaged (managed memory)";
    cuMemAllocPitch_v2(dptr: *mut D, pitch: *mut usize, width: usize, height: usize, elem: c_uint) "cuMemAllocPitch (pitched memory)";
    cuMemHostRegister_v2(p: P, size: usize, flags: c_uint) "cuMemHostRegister (registered host memory)";
    cuIpcGetMemHandle(handle: P, dptr: D) "cuIpcGetMemHandle (memory shared with another process)";
    cuIpcOpenMemHandle_v2(dptr: *mut D, handle: IpcHandle, flags: c_uint) "cuIpcOpenMemHandle (another process's memory)";
}

/// Every function this library stands in for, with its wrapper.
fn wrappers() -> &'static [(&'static CStr, usize)] {
    static TABLE: OnceLock<Vec<(&'static CStr, usize)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t: Vec<(&'static CStr, usize)> =
            gated_table().into_iter().chain(reported_table()).map(|(n, p)| (n, p as usize)).collect();
        t.push((c"cuMemAlloc_v2", cuMemAlloc_v2 as *const () as usize));
        t.push((c"cuMemFree_v2", cuMemFree_v2 as *const () as usize));
        t.push((c"cuMemAllocAsync", cuMemAllocAsync as *const () as usize));
        t.push((c"cuMemFreeAsync", cuMemFreeAsync as *const () as usize));
        t.push((c"cuCtxCreate_v2", cuCtxCreate_v2 as *const () as usize));
        t.push((c"cuCtxCreate_v4", cuCtxCreate_v4 as *const () as usize));
        t.push((c"cuDevicePrimaryCtxRetain", cuDevicePrimaryCtxRetain as *const () as usize));
        t.push((c"cuCtxDestroy_v2", cuCtxDestroy_v2 as *const () as usize));
        t.push((c"cuGetProcAddress", cuGetProcAddress as *const () as usize));
        t.push((c"cuGetProcAddress_v2", cuGetProcAddress_v2 as *const () as usize));
        t
    })
}

/// The wrapper standing in for the real entry point `p`, matched by address against the real
/// functions of every wrapped name.
fn wrapper_for_entry(p: P) -> Option<P> {
    static REALS: OnceLock<Vec<(usize, usize)>> = OnceLock::new();
    let reals =
        REALS.get_or_init(|| wrappers().iter().filter_map(|(name, w)| real(name).map(|r| (r as usize, *w))).collect());
    reals.iter().find(|(r, _)| *r == p as usize).map(|(_, w)| *w as P)
}

// ---------------------------------------------------------------------------------------------
// Finding functions at run time: cuGetProcAddress and dlsym.

type GetProcAddress = unsafe extern "C" fn(*const c_char, *mut P, c_int, u64) -> c_int;
type GetProcAddressV2 = unsafe extern "C" fn(*const c_char, *mut P, c_int, u64, *mut c_int) -> c_int;

/// Swaps a real entry point the driver handed out for its wrapper; says once when the driver
/// handed out an entry point of a gated function that the interposer does not recognise.
fn substitute(symbol: *const c_char, pfn: *mut P) {
    if pfn.is_null() {
        return;
    }
    // SAFETY: the driver wrote an entry point (or NULL) into *pfn.
    let p = unsafe { *pfn };
    if p.is_null() {
        return;
    }
    if let Some(w) = wrapper_for_entry(p) {
        // SAFETY: as above; the wrapper has the same signature.
        unsafe { *pfn = w };
        return;
    }
    if symbol.is_null() {
        return;
    }
    // SAFETY: the caller's NUL-terminated symbol name.
    let name = unsafe { CStr::from_ptr(symbol) }.to_string_lossy();
    let gated_base = GATED.iter().any(|g| g.split("_v2").next().is_some_and(|b| b.split("_pt").next() == Some(&*name)));
    static SAID: AtomicBool = AtomicBool::new(false);
    if gated_base && auto_active() && !SAID.swap(true, Ordering::Relaxed) {
        eprintln!(
            "libacb_preload: cuGetProcAddress({name:?}) gave an entry point that is none of the driver's exported \
             functions: calls through it are not gated (said once)"
        );
    }
}

/// `cuGetProcAddress`: the real driver's answer, with the wrappers in place of the gated
/// functions.
///
/// # Safety
/// As the CUDA driver's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(symbol: *const c_char, pfn: *mut P, version: c_int, flags: u64) -> c_int {
    static REAL: OnceLock<Option<usize>> = OnceLock::new();
    let Some(f) = real_fn(&REAL, c"cuGetProcAddress") else { return CUDA_ERROR_NOT_FOUND };
    // SAFETY: the real cuGetProcAddress, with the caller's arguments.
    let r = unsafe { std::mem::transmute::<usize, GetProcAddress>(f)(symbol, pfn, version, flags) };
    if r == CUDA_SUCCESS {
        substitute(symbol, pfn);
    }
    r
}

/// `cuGetProcAddress_v2` (CUDA 12), as [`cuGetProcAddress`].
///
/// # Safety
/// As the CUDA driver's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut P,
    version: c_int,
    flags: u64,
    status: *mut c_int,
) -> c_int {
    static REAL: OnceLock<Option<usize>> = OnceLock::new();
    let Some(f) = real_fn(&REAL, c"cuGetProcAddress_v2") else { return CUDA_ERROR_NOT_FOUND };
    // SAFETY: the real cuGetProcAddress_v2, with the caller's arguments.
    let r = unsafe { std::mem::transmute::<usize, GetProcAddressV2>(f)(symbol, pfn, version, flags, status) };
    if r == CUDA_SUCCESS {
        substitute(symbol, pfn);
    }
    r
}

/// `dlsym`: glibc's answer, except for the CUDA functions this library stands in for, which
/// get their wrappers (a program that `dlopen`s libcuda and looks functions up itself is gated
/// too). A few instructions in front of glibc's: `RTLD_NEXT` lookups jump straight to it with
/// their caller's return address (glibc counts "next" from the caller), and nothing else runs
/// for them (sanitizer runtimes look functions up that way before anything is initialised).
/// x86-64 glibc only; elsewhere `dlsym` is not interposed and only `cuGetProcAddress` and
/// direct calls are gated.
///
/// # Safety
/// As glibc's.
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(handle: P, symbol: *const c_char) -> P {
    core::arch::naked_asm!(
        "cmp rdi, -1", // RTLD_NEXT: straight to glibc's, with the caller's return address
        "jne {hook}",
        "mov rax, qword ptr [rip + {real}]",
        "test rax, rax",
        "jz 2f",
        "jmp rax",
        "2:",
        "push rdi",
        "push rsi",
        "sub rsp, 8",
        "call {find}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "jmp rax",
        hook = sym dlsym_hook,
        real = sym GLIBC_DLSYM,
        find = sym find_glibc_dlsym,
    )
}

/// `dlsym` for every handle but `RTLD_NEXT`.
unsafe extern "C" fn dlsym_hook(handle: P, symbol: *const c_char) -> P {
    // SAFETY: glibc's dlsym with the caller's arguments.
    let p = unsafe { glibc_dlsym(handle, symbol) };
    if p.is_null() || symbol.is_null() {
        return p;
    }
    // SAFETY: the caller's NUL-terminated name.
    let name = unsafe { CStr::from_ptr(symbol) };
    if !name.to_bytes().starts_with(b"cu") {
        return p;
    }
    match wrappers().iter().find(|(n, _)| *n == name) {
        Some((_, w)) => *w as P,
        None => p,
    }
}

// ---------------------------------------------------------------------------------------------
// The CUDA runtime's allocation functions (manual mode).

type CudaMalloc = unsafe extern "C" fn(*mut P, usize) -> c_int;
type CudaFree = unsafe extern "C" fn(P) -> c_int;

/// `cudaMalloc`, through libacb while it has a client.
///
/// # Safety
/// As the CUDA runtime's: `dev_ptr` is NULL or points to writable memory for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaMalloc(dev_ptr: *mut P, size: usize) -> c_int {
    if dev_ptr.is_null() {
        return CUDA_ERROR_INVALID_VALUE;
    }
    // Automatic mode: in a GPU phase, as cuMemAlloc.
    if let Some(allocated) = auto_alloc(size) {
        return put(dev_ptr, allocated);
    }
    // SAFETY: libacb's function, no arguments.
    if acb().has_client.is_some_and(|has_client| unsafe { has_client() }) {
        return put(dev_ptr, libacb_malloc(size));
    }
    match lookup(libc::RTLD_NEXT, c"cudaMalloc") {
        // SAFETY: the real cudaMalloc, with the caller's arguments.
        Some(real) => unsafe { std::mem::transmute::<P, CudaMalloc>(real)(dev_ptr, size) },
        None => CUDA_ERROR_INSUFFICIENT_DRIVER,
    }
}

/// `cudaFree`: libacb's memory back to libacb, anything else to the real `cudaFree`.
///
/// # Safety
/// As the CUDA runtime's: `ptr` is NULL or a live device allocation.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cudaFree(ptr: P) -> c_int {
    if ptr.is_null() {
        return CUDA_SUCCESS;
    }
    // Automatic mode: after the queued work, as cuMemFree.
    if auto_active()
        && let Some(r) = acb_free(ptr as D, None)
    {
        return r;
    }
    // SAFETY: libacb's function; 0 is ACB_STATUS_OK (the pointer was its own).
    if let Some(try_free) = acb().try_free
        && unsafe { try_free(ptr) } == 0
    {
        return CUDA_SUCCESS;
    }
    match lookup(libc::RTLD_NEXT, c"cudaFree") {
        // SAFETY: the real cudaFree, with the caller's pointer.
        Some(real) => unsafe { std::mem::transmute::<P, CudaFree>(real)(ptr) },
        None => CUDA_ERROR_INVALID_VALUE,
    }
}
