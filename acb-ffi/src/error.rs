//! The thread-local error message: details of the last failure on this thread.

use std::cell::RefCell;

use crate::panic::{check_out, ffi_panic_boundary};
use crate::status::acb_status;

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

pub(crate) fn set_last_error(msg: impl Into<String>) {
    let msg = msg.into();
    LAST_ERROR.with(|e| *e.borrow_mut() = msg);
}

/// The last failure's message on this thread.
pub(crate) fn last_error() -> String {
    LAST_ERROR.with(|e| e.borrow().clone())
}

pub(crate) fn clear_last_error() {
    LAST_ERROR.with(|e| e.borrow_mut().clear());
}

/// Records the client error's message and returns its status: the one conversion from
/// [`::acb_client::Error`] to `acb_status`.
pub(crate) fn fail_with(e: &::acb_client::Error) -> acb_status {
    use ::acb_client::Error as E;
    let status = match e {
        E::InvalidArgument(_) => acb_status::InvalidArgument,
        E::Unavailable(_) => acb_status::Unavailable,
        E::Timeout(_) => acb_status::Timeout,
        E::AlreadyActive(_) => acb_status::AlreadyActive,
        E::NotActive(_) => acb_status::NotActive,
        E::Rejected(_) => acb_status::Rejected,
        E::PermissionDenied(_) => acb_status::PermissionDenied,
        E::LeaseRevoked(_) => acb_status::LeaseRevoked,
        E::OutOfMemory(_) => acb_status::OutOfMemory,
        E::NoCuda(_) => acb_status::NoCuda,
        E::Internal(_) => acb_status::Internal,
        E::Forked(_) => acb_status::Forked,
    };
    fail(status, e.to_string())
}

/// Records `msg` and returns `status`.
pub(crate) fn fail(status: acb_status, msg: impl Into<String>) -> acb_status {
    set_last_error(msg);
    status
}

/// Copies `msg` into `buf` (at most `len` bytes, NUL included); `*written` gets the bytes
/// copied without the NUL. Truncates and returns `BufferTooSmall` when it does not fit.
pub(crate) fn copy_out(msg: &str, buf: *mut std::ffi::c_char, len: usize, written: *mut usize) -> acb_status {
    if buf.is_null() || written.is_null() {
        return acb_status::NullParameter;
    }
    if len == 0 {
        // SAFETY: checked non-NULL above; the caller owns it.
        unsafe { *written = 0 };
        return if msg.is_empty() { acb_status::Ok } else { acb_status::BufferTooSmall };
    }
    let n = msg.len().min(len - 1);
    // SAFETY: `buf` has room for `len` bytes by the caller's contract; n + 1 <= len.
    unsafe {
        std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
        *written = n;
    }
    if n < msg.len() { acb_status::BufferTooSmall } else { acb_status::Ok }
}

/// Copies the fixed description of `status` (an `acb_status` value) into `buf`, which has room
/// for `len` bytes; `*written` gets the length copied, without the terminating NUL. An unknown
/// number gives `ACB_STATUS_OUT_OF_RANGE` and the text "unknown status".
#[unsafe(no_mangle)]
pub extern "C" fn acb_status_message(
    status: u32,
    buf: *mut std::ffi::c_char,
    len: usize,
    written: *mut usize,
) -> acb_status {
    ffi_panic_boundary! {
        check_out!(buf);
        check_out!(written);
        match acb_status::from_u32(status) {
            Some(s) => copy_out(s.message(), buf, len, written),
            None => {
                let _ = copy_out("unknown status", buf, len, written);
                acb_status::OutOfRange
            }
        }
    }
}

/// Copies the details of the last failure of a libacb call on this thread (empty if the last
/// call succeeded) into `buf`, as `acb_status_message` does.
#[unsafe(no_mangle)]
pub extern "C" fn acb_error_message(buf: *mut std::ffi::c_char, len: usize, written: *mut usize) -> acb_status {
    // Not through ffi_panic_boundary!, which would clear the message it is asked for.
    let msg = LAST_ERROR.with(|e| e.borrow().clone());
    std::panic::catch_unwind(|| copy_out(&msg, buf, len, written)).unwrap_or(acb_status::Panic)
}
