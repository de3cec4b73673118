//! What libacb's CUDA interposer (automatic mode) needs from the client: whether a thread is
//! one of the client's own (its swap copies must pass the interposer's gate, which waits for a
//! GPU phase that those very copies are starting or ending), and the CUDA calls that end a
//! phase cleanly (the program's contexts synchronised).

use std::cell::Cell;

thread_local! {
    static INTERNAL: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one of the client's own (its runtime's threads, from
/// `on_thread_start`).
pub(crate) fn mark_this_thread() {
    INTERNAL.with(|c| c.set(true));
}

/// Runs `f` as one of the client's own threads would: its CUDA calls pass the interposer's
/// gate (for work the client does on a caller's thread, such as taking memory back).
pub fn as_internal<R>(f: impl FnOnce() -> R) -> R {
    let was = INTERNAL.with(|c| c.replace(true));
    let r = f();
    INTERNAL.with(|c| c.set(was));
    r
}

/// Whether the calling thread is one of a client's own threads.
pub fn is_internal_thread() -> bool {
    INTERNAL.with(Cell::get)
}

/// The CUDA context current on the calling thread, as an opaque address; `None` without a
/// CUDA driver or a current context.
pub fn current_cuda_context() -> Option<usize> {
    crate::memory::cuda::driver_present().ok()?;
    let mut ctx: cudarc::driver::sys::CUcontext = std::ptr::null_mut();
    // SAFETY: writes the current context (or NULL) into `ctx`; the driver library is loaded.
    let r = unsafe { cudarc::driver::sys::cuCtxGetCurrent(&mut ctx) };
    (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS && !ctx.is_null()).then_some(ctx as usize)
}

/// Waits until every operation queued in the context `ctx` (from [`current_cuda_context`]) has
/// finished, from any thread.
pub fn synchronize_cuda_context(ctx: usize) -> Result<(), String> {
    use cudarc::driver::sys::{self, CUresult};
    crate::memory::cuda::driver_present().map_err(|e| e.to_string())?;
    let ctx = ctx as sys::CUcontext;
    // SAFETY: `ctx` is a context the program made current on one of its threads (still alive:
    // the program has not destroyed it while it has work to broker); pushed and popped here.
    unsafe {
        let r = sys::cuCtxPushCurrent_v2(ctx);
        if r != CUresult::CUDA_SUCCESS {
            return Err(format!("cuCtxPushCurrent failed: {r:?}"));
        }
        let s = sys::cuCtxSynchronize();
        let mut popped: sys::CUcontext = std::ptr::null_mut();
        let _ = sys::cuCtxPopCurrent_v2(&mut popped);
        if s != CUresult::CUDA_SUCCESS {
            return Err(format!("cuCtxSynchronize failed: {s:?}"));
        }
    }
    Ok(())
}
