//! Typed errors for everything a client or an operator can get wrong. Nothing a client sends
//! makes the core panic.

use alloc::string::String;
use core::fmt;

use crate::units::Bytes;
use crate::{ClientId, GpuId, LeaseId, NodeId, RequestId};

/// What went wrong, precisely enough for a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The client is not connected (never was, or disconnected).
    UnknownClient(ClientId),
    /// The client is already connected.
    ClientExists(ClientId),
    /// A request for zero GPUs.
    ZeroGpus,
    /// A request for zero bytes of memory per GPU (leave it unset for whole GPUs).
    ZeroMemory,
    /// More GPUs than the pool has healthy ones.
    TooManyGpus {
        /// What was asked.
        requested: u32,
        /// Healthy GPUs in the pool (or in the request's required set).
        available: u32,
    },
    /// The policy grants at most `max` GPUs per request (`simple` grants one).
    PolicyLimit {
        /// The policy's name.
        policy: &'static str,
        /// What was asked.
        requested: u32,
        /// The most it grants.
        max: u32,
    },
    /// More memory per GPU than any healthy GPU has.
    MemoryTooLarge {
        /// What was asked, in bytes.
        requested: u64,
        /// The largest healthy GPU, in bytes.
        largest: u64,
    },
    /// A GPU id that is not in the pool.
    UnknownGpu(GpuId),
    /// A node id that is not in the pool.
    UnknownNode(NodeId),
    /// The client already has as many requests queued and leases held, together, as allowed.
    TooManyQueued {
        /// The limit.
        limit: usize,
    },
    /// No such lease was ever granted.
    UnknownLease(LeaseId),
    /// The lease belongs to another client.
    NotOwner(LeaseId),
    /// The lease was already released (or revoked).
    AlreadyReleased(LeaseId),
    /// No such queued request (never made, already granted, or already cancelled).
    UnknownRequest(RequestId),
    /// The request belongs to another client.
    NotRequestOwner(RequestId),
    /// A group of an invalid size (0, or more than [`MAX_GROUP_SIZE`](crate::MAX_GROUP_SIZE)),
    /// or an empty group name.
    InvalidGroup {
        /// The size asked.
        size: u32,
    },
    /// A member of a group named another size than the members before it.
    GroupSizeMismatch {
        /// The group.
        group: String,
        /// The size its first member named.
        expected: u32,
        /// The size this request named.
        got: u32,
    },
    /// A group already has all its members waiting (or a member of this client).
    GroupFull {
        /// The group.
        group: String,
        /// Its size.
        size: u32,
    },
    /// A lease to restore has an id that is already held.
    LeaseExists(LeaseId),
    /// A lease to restore does not fit its GPU now: the GPU is lost, held by another lease
    /// under an exclusive policy, or has too little memory left.
    RestoreConflict {
        /// The lease.
        lease: LeaseId,
        /// The GPU it does not fit.
        gpu: GpuId,
    },
}

/// The class of an [`Error`], for mapping onto a wire protocol's status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input can never succeed as given.
    InvalidArgument,
    /// The thing named does not exist.
    NotFound,
    /// The thing named exists but is not the caller's.
    PermissionDenied,
    /// The input was fine once but the state has moved on.
    FailedPrecondition,
    /// Creating something that already exists.
    AlreadyExists,
    /// A limit was reached.
    ResourceExhausted,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::ZeroGpus
            | Error::ZeroMemory
            | Error::TooManyGpus { .. }
            | Error::PolicyLimit { .. }
            | Error::MemoryTooLarge { .. }
            | Error::UnknownGpu(_)
            | Error::UnknownNode(_)
            | Error::InvalidGroup { .. }
            | Error::GroupSizeMismatch { .. } => ErrorKind::InvalidArgument,
            Error::UnknownClient(_) | Error::UnknownLease(_) | Error::UnknownRequest(_) => ErrorKind::NotFound,
            Error::NotOwner(_) | Error::NotRequestOwner(_) => ErrorKind::PermissionDenied,
            Error::AlreadyReleased(_) | Error::RestoreConflict { .. } => ErrorKind::FailedPrecondition,
            Error::ClientExists(_) | Error::LeaseExists(_) | Error::GroupFull { .. } => ErrorKind::AlreadyExists,
            Error::TooManyQueued { .. } => ErrorKind::ResourceExhausted,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownClient(c) => write!(f, "{c} is not connected"),
            Error::ClientExists(c) => write!(f, "{c} is already connected"),
            Error::ZeroGpus => f.write_str("a request must ask for at least one GPU"),
            Error::ZeroMemory => {
                f.write_str("memory per GPU must be more than 0 bytes (leave it unset for whole GPUs)")
            }
            Error::TooManyGpus { requested, available } => {
                write!(f, "asked for {requested} GPUs but only {available} healthy GPUs can serve this request")
            }
            Error::PolicyLimit { policy, requested, max } => write!(
                f,
                "the {policy} scheduler grants at most {max} GPU(s) per request, {requested} were asked; \
                 use gpu-affinity for multi-GPU jobs"
            ),
            Error::MemoryTooLarge { requested, largest } => write!(
                f,
                "asked for {} of memory per GPU but the largest healthy GPU has {}",
                Bytes(*requested),
                Bytes(*largest)
            ),
            Error::UnknownGpu(g) => write!(f, "{g} is not in the pool"),
            Error::UnknownNode(n) => write!(f, "{n} is not in the pool"),
            Error::TooManyQueued { limit } => {
                write!(f, "this client already has {limit} requests queued and leases held together (the limit)")
            }
            Error::UnknownLease(l) => write!(f, "{l} was never granted"),
            Error::NotOwner(l) => write!(f, "{l} belongs to another client"),
            Error::AlreadyReleased(l) => write!(f, "{l} was already released"),
            Error::UnknownRequest(r) => write!(f, "{r} is not queued"),
            Error::NotRequestOwner(r) => write!(f, "{r} belongs to another client"),
            Error::LeaseExists(l) => write!(f, "{l} is already held"),
            Error::InvalidGroup { size } => {
                write!(f, "a group needs a name and a size from 1 to {} (got size {size})", crate::MAX_GROUP_SIZE)
            }
            Error::GroupSizeMismatch { group, expected, got } => {
                write!(f, "group {group:?} has {expected} members but this request says {got}")
            }
            Error::GroupFull { group, size } => {
                write!(f, "group {group:?} already has its {size} member(s) waiting")
            }
            Error::RestoreConflict { lease, gpu } => {
                write!(f, "{lease} cannot be restored on {gpu}: it is lost, held by another lease, or too full")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
