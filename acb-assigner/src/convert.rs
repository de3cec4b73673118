//! Domain <-> wire. Errors become `tonic::Status` here and only here.

use std::time::Duration;

use acb_core::ErrorKind;
use tonic::{Code, Status};

use crate::driver::{DomainError, GrantInfo, StatusSnapshot, ToClient};
use crate::proto;
use acb_core::record::{Event, EventKind, YieldReason};

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The gRPC status for a domain error, with its machine-readable reason
/// (`acb_proto::reason`): clients match the reason, never the text.
pub fn to_status(e: DomainError) -> Status {
    use acb_proto::ErrorReason as R;
    let (code, reason) = match &e {
        DomainError::Core(core) => match core.kind() {
            ErrorKind::InvalidArgument => (Code::InvalidArgument, R::InvalidArgument),
            ErrorKind::NotFound => (Code::NotFound, R::NotFound),
            ErrorKind::PermissionDenied => (Code::PermissionDenied, R::PermissionDenied),
            ErrorKind::FailedPrecondition => (Code::FailedPrecondition, R::FailedPrecondition),
            ErrorKind::AlreadyExists => (Code::AlreadyExists, R::AlreadyExists),
            ErrorKind::ResourceExhausted => (Code::ResourceExhausted, R::ResourceExhausted),
        },
        DomainError::UnknownToken => (Code::PermissionDenied, R::UnknownToken),
        DomainError::SessionEnded => (Code::Aborted, R::SessionEnded),
        DomainError::ShuttingDown => (Code::Unavailable, R::ShuttingDown),
        DomainError::Invalid(_) => (Code::InvalidArgument, R::InvalidArgument),
        DomainError::LimitReached(_) => (Code::ResourceExhausted, R::LimitReached),
        DomainError::PermissionDenied(_) => (Code::PermissionDenied, R::PermissionDenied),
        DomainError::Unavailable(_) => (Code::Unavailable, R::NodeUnavailable),
    };
    acb_proto::status_with_reason(code, e.to_string(), reason)
}

/// A malformed request, caught at the edge before the domain.
pub fn invalid(message: impl Into<String>) -> Status {
    acb_proto::status_with_reason(Code::InvalidArgument, message, acb_proto::ErrorReason::InvalidArgument)
}

/// A wire yield reason.
pub fn yield_reason(r: YieldReason) -> proto::YieldReason {
    match r {
        YieldReason::Contended => proto::YieldReason::Contended,
        YieldReason::QuantumExpired => proto::YieldReason::QuantumExpired,
    }
}

/// A grant on the wire.
pub fn grant_to_proto(g: GrantInfo) -> proto::AllocateResponse {
    proto::AllocateResponse {
        lease_id: g.lease,
        gpus: g
            .gpus
            .into_iter()
            .map(|x| proto::GrantedGpu { id: x.id, node: x.node, index: x.index, uuid: x.uuid, memory: x.memory })
            .collect(),
        memory_per_gpu: g.memory_per_gpu,
        waited_us: us(g.waited),
        client_token: g.token,
        expires_in_ms: g.expires.map_or(0, |d| ms(d).max(1)),
    }
}

/// What the assigner tells a session, on the wire; the session's end ([`ToClient::Ended`]) is
/// the error status its stream ends with.
pub fn to_client_to_proto(m: ToClient) -> Result<proto::SessionEvent, Status> {
    use proto::session_event::Event as E;
    let event = match m {
        ToClient::Yield { lease, reason } => {
            E::YieldRequest(proto::YieldRequest { lease_id: lease, reason: yield_reason(reason).into() })
        }
        ToClient::Revoked { lease, gpu, why } => {
            let reason = why.unwrap_or_else(|| format!("gpu#{gpu} was lost"));
            E::Revoked(proto::LeaseRevoked { lease_id: lease, gpu_id: gpu, reason })
        }
        ToClient::ShuttingDown => E::ShuttingDown(proto::ShuttingDown { reason: "the assigner is stopping".into() }),
        ToClient::Granted { tag, grant } => {
            E::Granted(proto::LeaseGranted { request_tag: tag, grant: Some(grant_to_proto(grant)) })
        }
        ToClient::Ended { reason } => return Err(to_status(DomainError::LimitReached(reason))),
    };
    Ok(proto::SessionEvent { event: Some(event) })
}

/// Queued requests and clients a status lists when the caller names no limit.
pub const STATUS_DEFAULT_LIMIT: u32 = 1_000;
/// The most of each a status lists, whatever the caller asks: 5,000 queued requests and 5,000
/// clients with 256-byte job names come to about 3 MB, under gRPC's 4 MiB message limit.
pub const STATUS_MAX_LIMIT: u32 = 5_000;

/// How many entries a status lists for a requested limit (0: the default).
pub fn status_limit(asked: u32) -> usize {
    let n = if asked == 0 { STATUS_DEFAULT_LIMIT } else { asked.min(STATUS_MAX_LIMIT) };
    n as usize
}

/// A status snapshot on the wire, listing the first queued requests and clients within the
/// request's limits; the totals count them all.
pub fn status_to_proto(mut s: StatusSnapshot, limits: &proto::StatusRequest) -> proto::StatusResponse {
    let total = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let (queue_total, clients_total) = (total(s.queue.len()), total(s.clients.len()));
    s.queue.truncate(status_limit(limits.queue_limit));
    s.clients.truncate(status_limit(limits.client_limit));
    // Holders share the clients' budget across the GPUs (a GPU shared by thousands of leases
    // must not push the reply past gRPC's limit either).
    let mut holders_left = status_limit(limits.client_limit);
    proto::StatusResponse {
        queue_total,
        clients_total,
        scheduler: s.scheduler.into(),
        gpus: s
            .gpus
            .into_iter()
            .map(|mut g| {
                let holders_total = total(g.holders.len());
                g.holders.truncate(holders_left);
                holders_left -= g.holders.len();
                proto::GpuStatus {
                    holders_total,
                    id: g.id,
                    node: g.node,
                    index: g.index,
                    uuid: g.uuid,
                    name: g.name,
                    memory: g.memory,
                    healthy: g.healthy,
                    fake: g.fake,
                    granted: g.granted,
                    reserved: g.reserved,
                    memory_used: g.memory_used,
                    holders: g
                        .holders
                        .into_iter()
                        .map(|h| proto::Holder {
                            client_id: h.client,
                            job: h.job,
                            lease_id: h.lease,
                            idle: h.idle,
                            held_ms: ms(h.held),
                            memory: h.memory,
                            uid: h.uid,
                            pid: h.pid,
                            expires_in_ms: h.expires.map_or(0, |d| ms(d).max(1)),
                        })
                        .collect(),
                }
            })
            .collect(),
        queue: s
            .queue
            .into_iter()
            .map(|q| proto::QueuedStatus {
                request_id: q.request,
                client_id: q.client,
                job: q.job,
                gpus: q.gpus,
                memory_per_gpu: q.memory_per_gpu,
                priority: q.priority,
                waiting_ms: ms(q.waiting),
                group: q.group.unwrap_or_default(),
                node: q.node,
            })
            .collect(),
        clients: s
            .clients
            .into_iter()
            .map(|c| proto::ClientStatus {
                client_id: c.client,
                job: c.job,
                pid: c.pid,
                leases: c.leases,
                queued: c.queued,
                swap_bytes_in: c.swap_in,
                swap_bytes_out: c.swap_out,
                one_off: c.one_off,
                uid: c.uid,
                orphan: c.orphan,
                node: c.node,
            })
            .collect(),
        uptime_ms: ms(s.uptime),
        version: env!("CARGO_PKG_VERSION").into(),
        role: s.role.into(),
        nodes: s
            .nodes
            .into_iter()
            .map(|n| proto::NodeStatus {
                name: n.name,
                up: n.up,
                last_seen_ms: ms(n.last_seen),
                gpus: n.gpus,
                reason: n.reason,
            })
            .collect(),
    }
}

/// An event on the wire.
pub fn event_to_proto(e: Event) -> proto::Event {
    use proto::event::Kind as K;
    let kind = match e.kind {
        EventKind::Connected { client, job } => K::Connected(proto::ClientConnected { client_id: client, job }),
        EventKind::Requested { client, job, request, gpus, memory_per_gpu, priority, group } => {
            K::Requested(proto::Requested {
                client_id: client,
                job,
                request_id: request,
                gpus,
                memory_per_gpu,
                priority,
                group: group.unwrap_or_default(),
            })
        }
        EventKind::Granted { client, job, request, lease, gpus, memory_per_gpu, waited } => {
            K::Granted(proto::Granted {
                client_id: client,
                job,
                request_id: request,
                lease_id: lease,
                gpu_ids: gpus,
                memory_per_gpu,
                waited_us: us(waited),
            })
        }
        EventKind::YieldAsked { client, lease, reason } => {
            K::YieldAsked(proto::YieldAsked { client_id: client, lease_id: lease, reason: yield_reason(reason).into() })
        }
        EventKind::Released { client, lease, by_disconnect } => {
            K::Released(proto::Released { client_id: client, lease_id: lease, by_disconnect })
        }
        EventKind::TakenBack { client, lease, reason } => {
            K::TakenBack(proto::TakenBack { client_id: client, lease_id: lease, reason })
        }
        EventKind::Cancelled { client, request } => {
            K::Cancelled(proto::Cancelled { client_id: client, request_id: request })
        }
        EventKind::Rejected { client, request, reason } => {
            K::Rejected(proto::Rejected { client_id: client, request_id: request, reason })
        }
        EventKind::ClientGone { client } => K::ClientGone(proto::ClientGone { client_id: client }),
        EventKind::GpuHealth { gpu, healthy } => K::GpuHealth(proto::GpuHealth { gpu_id: gpu, healthy }),
        EventKind::NodeUp { node, gpus } => K::NodeUp(proto::NodeUp { node, gpu_ids: gpus }),
        EventKind::NodeDown { node, reason } => K::NodeDown(proto::NodeDown { node, reason }),
    };
    proto::Event { seq: e.seq, at_us: us(e.at), kind: Some(kind) }
}
