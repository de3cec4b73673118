//! What the scheduler tells its owner to do.

use alloc::vec::Vec;
use core::time::Duration;

use crate::{ClientId, Error, GpuId, LeaseId, RequestId};

/// What the scheduler tells its owner to do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Output {
    /// A queued request was granted: tell its client.
    Granted(Grant),
    /// Ask a holder to give its lease back at its next safe point.
    YieldAsked {
        /// The holder.
        client: ClientId,
        /// The lease to give back.
        lease: LeaseId,
        /// Why.
        reason: YieldReason,
    },
    /// A lease was taken away because one of its GPUs was lost; its client must stop using it.
    Revoked {
        /// The holder.
        client: ClientId,
        /// The lease, now gone.
        lease: LeaseId,
        /// The GPU that was lost.
        gpu: GpuId,
    },
    /// A lease of a gang was taken away because another member's holder went away (its
    /// session ended): the gang cannot go on. Its client must stop using it.
    GroupBroken {
        /// The holder.
        client: ClientId,
        /// The lease, now gone.
        lease: LeaseId,
        /// The group's name.
        group: alloc::string::String,
        /// The member whose session ended.
        gone: ClientId,
    },
    /// A queued request can no longer be served (GPUs it needs were lost): it left the queue.
    Rejected {
        /// The client that asked.
        client: ClientId,
        /// The request, now gone.
        request: RequestId,
        /// Why.
        error: Error,
    },
}

/// A grant of GPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The request granted.
    pub request: RequestId,
    /// Its client.
    pub client: ClientId,
    /// The new lease.
    pub lease: LeaseId,
    /// The GPUs, one per GPU asked for.
    pub gpus: Vec<GpuId>,
    /// The memory the lease may use on each GPU, in bytes: what was asked under
    /// `gpu-sharing`, the whole (smallest) GPU otherwise.
    pub memory_per_gpu: u64,
    /// How long the request waited in the queue.
    pub waited: Duration,
}

/// Why a holder is asked to yield.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum YieldReason {
    /// The holder is idle (in a CPU phase) and someone waits for its GPU.
    Contended,
    /// The holder has used up its time slice and someone waits for its GPU.
    QuantumExpired,
}
