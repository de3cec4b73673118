//! The panic boundary and null checks every export goes through (rustls-ffi's pattern): a
//! panic never unwinds into C, and a NULL never reaches Rust code that would dereference it.

use crate::status::acb_status;

/// What an export returns when it caught a panic or got a NULL it cannot work with.
pub(crate) trait FfiDefault {
    fn panicked() -> Self;
    fn null_parameter() -> Self;
}

impl FfiDefault for acb_status {
    fn panicked() -> Self {
        acb_status::Panic
    }
    fn null_parameter() -> Self {
        acb_status::NullParameter
    }
}

impl FfiDefault for bool {
    fn panicked() -> Self {
        false
    }
    fn null_parameter() -> Self {
        false
    }
}

impl FfiDefault for () {
    fn panicked() -> Self {}
    fn null_parameter() -> Self {}
}

macro_rules! impl_zero_default {
    ($($t:ty),*) => {$(
        impl FfiDefault for $t {
            fn panicked() -> Self { 0 }
            fn null_parameter() -> Self { 0 }
        }
    )*};
}
impl_zero_default!(u32, u64, usize);

impl<T> FfiDefault for *mut T {
    fn panicked() -> Self {
        std::ptr::null_mut()
    }
    fn null_parameter() -> Self {
        std::ptr::null_mut()
    }
}

/// Runs the body of an export; a panic becomes [`FfiDefault::panicked`].
macro_rules! ffi_panic_boundary {
    ($($body:tt)*) => {
        $crate::error::clear_last_error();
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| { $($body)* })) {
            Ok(ret) => ret,
            Err(_) => {
                $crate::error::set_last_error("a panic inside libacb (a bug: please report it)");
                return $crate::panic::FfiDefault::panicked();
            }
        }
    };
}

/// `&T` from a `*const T`, or return [`FfiDefault::null_parameter`].
macro_rules! try_ref {
    ($ptr:expr) => {
        // SAFETY: the caller passes a pointer it got from this library (or NULL), as the
        // header requires; NULL is checked here.
        match unsafe { $ptr.as_ref() } {
            Some(r) => r,
            None => {
                $crate::error::set_last_error(concat!(stringify!($ptr), " is NULL"));
                return $crate::panic::FfiDefault::null_parameter();
            }
        }
    };
}

/// `&mut T` from a `*mut T`, or return [`FfiDefault::null_parameter`].
macro_rules! try_mut {
    ($ptr:expr) => {
        // SAFETY: as for try_ref!, and the header forbids concurrent use of one object.
        match unsafe { $ptr.as_mut() } {
            Some(r) => r,
            None => {
                $crate::error::set_last_error(concat!(stringify!($ptr), " is NULL"));
                return $crate::panic::FfiDefault::null_parameter();
            }
        }
    };
}

/// Checks an output pointer is not NULL before any work is done.
macro_rules! check_out {
    ($ptr:expr) => {
        if $ptr.is_null() {
            $crate::error::set_last_error(concat!(stringify!($ptr), " is NULL"));
            return $crate::panic::FfiDefault::null_parameter();
        }
    };
}

pub(crate) use {check_out, ffi_panic_boundary, try_mut, try_ref};
