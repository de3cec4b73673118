//! Status codes. The numbers are part of the ABI: never change or reuse one.

/// What a libacb call did. `ACB_STATUS_OK` is 0; everything else is an error whose text
/// `acb_status_message` gives, and whose details `acb_error_message` gives right after the
/// failing call, on the same thread.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum acb_status {
    /// Success.
    Ok = 0,
    /// A pointer argument was NULL.
    NullParameter = 1,
    /// An argument is malformed or out of range (bad UTF-8, 0 GPUs, a bad address, ...).
    InvalidArgument = 2,
    /// The assigner cannot be reached (after the configured retries).
    Unavailable = 3,
    /// The request was not granted within its timeout; it was withdrawn.
    Timeout = 4,
    /// `acb_on_device_begin` while a GPU phase is already active or requested.
    AlreadyActive = 5,
    /// `acb_on_device_end` without a GPU phase.
    NotActive = 6,
    /// The assigner refused the request (more GPUs or memory than it has, ...).
    Rejected = 7,
    /// The assigner refused the caller's identity, or the client refused the assigner's: its
    /// socket is owned by a user other than root, the caller's or `ACB_ASSIGNER_UID`.
    PermissionDenied = 8,
    /// The lease's GPU was lost while in use.
    LeaseRevoked = 9,
    /// An output buffer was too small; the output was truncated.
    BufferTooSmall = 10,
    /// An index was out of range.
    OutOfRange = 11,
    /// An unexpected failure inside libacb or the assigner.
    Internal = 12,
    /// A panic inside libacb was caught (a bug).
    Panic = 13,
    /// A device allocation would pass the lease's memory, or memory ran out.
    OutOfMemory = 14,
    /// The CUDA memory backend was asked for, but there is no CUDA driver or GPU.
    NoCuda = 15,
    /// The client was made by another process: this one is a fork of it. Make a new client in
    /// the child; `acb_client_free` on the inherited one returns at once and only forgets it.
    Forked = 16,
}

impl acb_status {
    /// Every status (Rust only: cbindgen wrote it into acb.h as a macro naming the variants by
    /// their Rust names, which compiled nowhere).
    ///
    /// cbindgen:ignore
    pub const ALL: [acb_status; 17] = [
        acb_status::Ok,
        acb_status::NullParameter,
        acb_status::InvalidArgument,
        acb_status::Unavailable,
        acb_status::Timeout,
        acb_status::AlreadyActive,
        acb_status::NotActive,
        acb_status::Rejected,
        acb_status::PermissionDenied,
        acb_status::LeaseRevoked,
        acb_status::BufferTooSmall,
        acb_status::OutOfRange,
        acb_status::Internal,
        acb_status::Panic,
        acb_status::OutOfMemory,
        acb_status::NoCuda,
        acb_status::Forked,
    ];

    /// The status with this number, if any.
    pub fn from_u32(n: u32) -> Option<acb_status> {
        Self::ALL.into_iter().find(|s| *s as u32 == n)
    }

    /// A short fixed description.
    pub fn message(self) -> &'static str {
        match self {
            acb_status::Ok => "ok",
            acb_status::NullParameter => "a pointer argument was NULL",
            acb_status::InvalidArgument => "an argument is malformed or out of range",
            acb_status::Unavailable => "the assigner cannot be reached",
            acb_status::Timeout => "no GPU was granted within the timeout",
            acb_status::AlreadyActive => "a GPU phase is already active: call acb_on_device_end first",
            acb_status::NotActive => "no GPU phase is active: call acb_on_device_begin first",
            acb_status::Rejected => "the assigner refused the request",
            acb_status::PermissionDenied => {
                "permission denied: the assigner refused this client's identity, or the assigner's socket has an owner not allowed"
            }
            acb_status::LeaseRevoked => "the lease was revoked: a GPU it used was lost",
            acb_status::BufferTooSmall => "the output buffer is too small",
            acb_status::OutOfRange => "an index is out of range",
            acb_status::Internal => "an internal error in libacb or the assigner",
            acb_status::Panic => "a panic inside libacb (a bug)",
            acb_status::OutOfMemory => "out of device memory: the allocation would pass the lease's memory",
            acb_status::NoCuda => "no CUDA driver or GPU for the CUDA memory backend",
            acb_status::Forked => "the client was made by another process (before a fork): make a new client here",
        }
    }
}
