//! The assigner's event record: what it decided and when. What `watch` prints, what the
//! timeline draws, what the metrics count, and what the simulator's runs are drawn from. Plain
//! data: the daemon maps it to the wire, `acb-client` maps it back and to JSON.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

pub use crate::scheduler::YieldReason;

/// One thing that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A client connected (a session, or a one-off client's first request).
    Connected {
        /// Client id.
        client: u64,
        /// Its job.
        job: String,
    },
    /// A request was queued.
    Requested {
        /// Client id.
        client: u64,
        /// Its job.
        job: String,
        /// Request id.
        request: u64,
        /// GPUs asked.
        gpus: u32,
        /// Bytes per GPU asked, if any.
        memory_per_gpu: Option<u64>,
        /// Priority.
        priority: i32,
        /// The gang across processes it is a member of (its name), if any.
        group: Option<String>,
    },
    /// A request was granted.
    Granted {
        /// Client id.
        client: u64,
        /// Its job.
        job: String,
        /// Request id.
        request: u64,
        /// The new lease.
        lease: u64,
        /// GPU ids.
        gpus: Vec<u32>,
        /// The fence per GPU, bytes.
        memory_per_gpu: u64,
        /// Time in the queue.
        waited: Duration,
    },
    /// A holder was asked to yield.
    YieldAsked {
        /// Client id.
        client: u64,
        /// The lease.
        lease: u64,
        /// Why.
        reason: YieldReason,
    },
    /// A lease ended.
    Released {
        /// Client id.
        client: u64,
        /// The lease.
        lease: u64,
        /// Ended because the client's session ended.
        by_disconnect: bool,
    },
    /// The assigner took a lease back without its holder's release (a `Released` event with
    /// `by_disconnect` follows): a one-off lease not renewed in time, a lease of a previous run
    /// not reclaimed within the grace period after a restart, or an admin's release.
    TakenBack {
        /// Client id.
        client: u64,
        /// The lease.
        lease: u64,
        /// Why, for people.
        reason: String,
    },
    /// A queued request was withdrawn (the caller gave up).
    Cancelled {
        /// Client id.
        client: u64,
        /// Request id.
        request: u64,
    },
    /// A queued request can no longer be served.
    Rejected {
        /// Client id.
        client: u64,
        /// Request id.
        request: u64,
        /// Why.
        reason: String,
    },
    /// A client is gone.
    ClientGone {
        /// Client id.
        client: u64,
    },
    /// A GPU's health changed.
    GpuHealth {
        /// GPU id.
        gpu: u32,
        /// Healthy now.
        healthy: bool,
    },
    /// A node's executor registered (first time, or again after a loss or a restart).
    NodeUp {
        /// The node's name.
        node: String,
        /// Its GPUs' ids in the pool.
        gpus: Vec<u32>,
    },
    /// A node's executor went away or stopped heartbeating: its GPUs are lost.
    NodeDown {
        /// The node's name.
        node: String,
        /// Why, for people.
        reason: String,
    },
}

/// An event with its place in the record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Sequence number, from 1.
    pub seq: u64,
    /// Time since the assigner started.
    pub at: Duration,
    /// What happened.
    pub kind: EventKind,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.at.as_secs_f64();
        write!(f, "{t:>10.3}s  ")?;
        match &self.kind {
            EventKind::Connected { client, job } => write!(f, "connected   client#{client} job={job}"),
            EventKind::Requested { client, job, request, gpus, memory_per_gpu, priority, group } => {
                write!(f, "requested   client#{client} job={job} request#{request} gpus={gpus}")?;
                if let Some(m) = memory_per_gpu {
                    write!(f, " memory={}", crate::Bytes(*m))?;
                }
                if *priority != 0 {
                    write!(f, " priority={priority}")?;
                }
                if let Some(g) = group {
                    write!(f, " group={g}")?;
                }
                Ok(())
            }
            EventKind::Granted { client, job, request, lease, gpus, waited, .. } => write!(
                f,
                "granted     client#{client} job={job} request#{request} lease#{lease} gpus={gpus:?} waited={:.3}s",
                waited.as_secs_f64()
            ),
            EventKind::YieldAsked { client, lease, reason } => {
                write!(f, "yield-asked client#{client} lease#{lease} reason={reason:?}")
            }
            EventKind::Released { client, lease, by_disconnect } => write!(
                f,
                "released    client#{client} lease#{lease}{}",
                if *by_disconnect { " (session ended)" } else { "" }
            ),
            EventKind::TakenBack { client, lease, reason } => {
                write!(f, "taken-back  client#{client} lease#{lease}: {reason}")
            }
            EventKind::Cancelled { client, request } => write!(f, "cancelled   client#{client} request#{request}"),
            EventKind::Rejected { client, request, reason } => {
                write!(f, "rejected    client#{client} request#{request}: {reason}")
            }
            EventKind::ClientGone { client } => write!(f, "gone        client#{client}"),
            EventKind::GpuHealth { gpu, healthy } => {
                write!(f, "gpu-health  gpu#{gpu} {}", if *healthy { "healthy" } else { "LOST" })
            }
            EventKind::NodeUp { node, gpus } => write!(f, "node-up     {node} gpus={gpus:?}"),
            EventKind::NodeDown { node, reason } => write!(f, "node-down   {node}: {reason}"),
        }
    }
}
