//! The one error type of the client: what a call failed with, and the message for people.
//! libacb turns each variant into the `acb_status` of the same name, and nothing else.

/// Why a client call failed. The text says what happened and, where it can, what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An argument or setting is malformed or out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// The assigner cannot be reached (after the configured retries).
    #[error("{0}")]
    Unavailable(String),
    /// No GPU was granted within the request's timeout; the request was withdrawn.
    #[error("{0}")]
    Timeout(String),
    /// A GPU phase is already active or being requested.
    #[error("{0}")]
    AlreadyActive(String),
    /// No GPU phase is active.
    #[error("{0}")]
    NotActive(String),
    /// The assigner refused the request.
    #[error("{0}")]
    Rejected(String),
    /// The assigner refused this client's identity, or the client refused the assigner's (its
    /// socket is owned by a user not allowed: see [`crate::socket_owner`]).
    #[error("{0}")]
    PermissionDenied(String),
    /// The lease was revoked: a GPU it used was lost.
    #[error("{0}")]
    LeaseRevoked(String),
    /// Out of device memory (the lease's fence), or of host memory for a swap.
    #[error("{0}")]
    OutOfMemory(String),
    /// No CUDA driver or GPU for the CUDA memory backend.
    #[error("{0}")]
    NoCuda(String),
    /// A fault inside the client or the assigner.
    #[error("{0}")]
    Internal(String),
    /// The client was made by another process: this one is a fork of it. The child cannot use
    /// its parent's connection or threads; it makes a client of its own.
    #[error("{0}")]
    Forked(String),
}

impl From<crate::memory::MemError> for Error {
    fn from(e: crate::memory::MemError) -> Error {
        use crate::memory::MemError as M;
        let make = match &e {
            M::OutOfMemory(_) => Error::OutOfMemory,
            M::NoLease => Error::NotActive,
            M::UnknownPointer(_) | M::ZeroSize => Error::InvalidArgument,
            M::Backend(_) => Error::Internal,
        };
        make(e.to_string())
    }
}
