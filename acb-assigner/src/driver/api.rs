//! What the rest of the daemon says to the driver and hears back: the [`Command`]s a
//! [`Handle`] sends, the replies (grants, status snapshots, [`DomainError`]), and what the
//! assigner tells a session ([`ToClient`]). Plain data; the service converts it to the wire.

use std::time::Duration;

use acb_core::Error as CoreError;
use acb_core::record::{Event, YieldReason};
use tokio::sync::{broadcast, mpsc, oneshot};

/// What went wrong, before it becomes a wire status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The scheduler refused.
    #[error("{0}")]
    Core(CoreError),
    /// The client token is not one the assigner gave out (or its client is gone).
    #[error("client token not recognised (open a session, or send none)")]
    UnknownToken,
    /// The request was dropped because its client's session ended.
    #[error("the client's session ended")]
    SessionEnded,
    /// The assigner is shutting down.
    #[error("the assigner is shutting down")]
    ShuttingDown,
    /// A malformed input, caught before the scheduler.
    #[error("{0}")]
    Invalid(String),
    /// One of the assigner's limits was reached (the message names it).
    #[error("{0}")]
    LimitReached(String),
    /// The caller's uid (SO_PEERCRED) may not do this (the message says why).
    #[error("{0}")]
    PermissionDenied(String),
    /// A controller: the client's node has no GPUs in the pool now.
    #[error("{0}")]
    Unavailable(String),
}

/// What the assigner tells a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToClient {
    /// Give this lease back at the next safe point.
    Yield {
        /// The lease.
        lease: u64,
        /// Why.
        reason: YieldReason,
    },
    /// This lease is gone (a GPU was lost).
    Revoked {
        /// The lease.
        lease: u64,
        /// The GPU lost (the lease's first GPU when it was taken back otherwise).
        gpu: u32,
        /// Why, when not a lost GPU (an admin's release).
        why: Option<String>,
    },
    /// The assigner is stopping.
    ShuttingDown,
    /// A request of this session's was granted (sent beside the call's reply, which a client
    /// that cancelled the call in that instant never reads).
    Granted {
        /// The request's tag, as the client chose it.
        tag: u64,
        /// The grant.
        grant: GrantInfo,
    },
    /// The assigner ended this session (its last message; the stream ends with an error).
    Ended {
        /// Why, for people.
        reason: String,
    },
}

/// The most events a session may leave unread. A session that never reads its events would
/// otherwise grow the daemon without bound (~380 B a grant); past this many it is ended (its
/// leases released and its requests dropped, as when it disconnects) and told why.
pub const SESSION_EVENTS: usize = 1024;

/// Where the assigner sends what it tells a session: room for [`SESSION_EVENTS`] events and,
/// in the last slot, the [`ToClient::Ended`] that says the session fell too far behind.
pub type SessionSender = mpsc::Sender<ToClient>;

/// A session's event queue (see [`SessionSender`]).
pub fn session_channel() -> (SessionSender, mpsc::Receiver<ToClient>) {
    mpsc::channel(SESSION_EVENTS + 1)
}

/// A GPU of a grant, with what a client needs to use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantedGpu {
    /// Pool id.
    pub id: u32,
    /// Node name.
    pub node: String,
    /// Index on the node.
    pub index: u32,
    /// Uuid.
    pub uuid: String,
    /// Memory, bytes.
    pub memory: u64,
}

/// A grant, as the service returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantInfo {
    /// The lease.
    pub lease: u64,
    /// Its GPUs.
    pub gpus: Vec<GrantedGpu>,
    /// The fence per GPU.
    pub memory_per_gpu: u64,
    /// Time queued.
    pub waited: Duration,
    /// The token to release with.
    pub token: String,
    /// A one-off lease ends this long from now unless renewed; `None` for a session's.
    pub expires: Option<Duration>,
}

/// An allocation request as it arrives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocSpec {
    /// Session token, or empty for a one-off client.
    pub token: String,
    /// Job name (one-off clients).
    pub job: String,
    /// GPUs.
    pub gpus: u32,
    /// Bytes per GPU.
    pub memory_per_gpu: Option<u64>,
    /// Priority.
    pub priority: i32,
    /// The caller's uid and pid from SO_PEERCRED (Unix socket); no uid over TCP.
    pub peer: Peer,
    /// Only these GPU ids.
    pub required: Vec<u32>,
    /// These GPU ids if free.
    pub preferred: Vec<u32>,
    /// The client's tag for this request, echoed in [`ToClient::Granted`].
    pub tag: u64,
    /// The gang across processes this request is a member of: (name, size).
    pub group: Option<(String, u32)>,
    /// The node the caller runs on, when an executor forwarded the call; `None`: this
    /// daemon's own node.
    pub node: Option<String>,
}

/// One GPU in a status snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuSnapshot {
    /// Pool id.
    pub id: u32,
    /// Node.
    pub node: String,
    /// Index on the node.
    pub index: u32,
    /// Uuid.
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// Memory.
    pub memory: u64,
    /// Healthy.
    pub healthy: bool,
    /// Simulated.
    pub fake: bool,
    /// Memory granted.
    pub granted: u64,
    /// Reserved for the head of the queue.
    pub reserved: bool,
    /// Holders.
    pub holders: Vec<HolderSnapshot>,
    /// Memory in use on it, as its executor last read it (NVML; a controller's remote GPUs).
    pub memory_used: Option<u64>,
}

/// A lease on a GPU in a status snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderSnapshot {
    /// Client id.
    pub client: u64,
    /// Job.
    pub job: String,
    /// Lease id.
    pub lease: u64,
    /// Reported idle.
    pub idle: bool,
    /// Held for.
    pub held: Duration,
    /// Memory counted on this GPU.
    pub memory: u64,
    /// The holder's uid (SO_PEERCRED), when it connected over a Unix socket.
    pub uid: Option<u32>,
    /// The holder's pid.
    pub pid: u32,
    /// A one-off lease's time left unless renewed.
    pub expires: Option<Duration>,
}

/// Who called, as the Unix socket says (SO_PEERCRED); over TCP there are no credentials: no
/// uid, and the pid is what the client said (0 when it said nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// Uid, when known.
    pub uid: Option<u32>,
    /// Process id (0: unknown).
    pub pid: u32,
}

/// What a session's opener hears back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcomed {
    /// Client id.
    pub client: u64,
    /// Token.
    pub token: String,
    /// The session resumed a lost one (after a restart).
    pub resumed: bool,
    /// The leases of the resumed session kept for it.
    pub kept: Vec<u64>,
}

/// One queued request in a status snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedSnapshot {
    /// Request id.
    pub request: u64,
    /// Client id.
    pub client: u64,
    /// Job.
    pub job: String,
    /// GPUs.
    pub gpus: u32,
    /// Bytes per GPU.
    pub memory_per_gpu: Option<u64>,
    /// Priority.
    pub priority: i32,
    /// Waiting for.
    pub waiting: Duration,
    /// The group it is a member of, if any.
    pub group: Option<String>,
    /// Its client's node.
    pub node: String,
}

/// One client in a status snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSnapshot {
    /// Client id.
    pub client: u64,
    /// Job.
    pub job: String,
    /// Process id (SO_PEERCRED's over a Unix socket; what Hello said over TCP).
    pub pid: u32,
    /// Uid (SO_PEERCRED), when it connected over a Unix socket.
    pub uid: Option<u32>,
    /// A session of the previous run not resumed yet (restored after a restart).
    pub orphan: bool,
    /// The node it runs on.
    pub node: String,
    /// Leases held.
    pub leases: u32,
    /// Requests queued.
    pub queued: u32,
    /// Bytes swapped in, as reported.
    pub swap_in: u64,
    /// Bytes swapped out, as reported.
    pub swap_out: u64,
    /// One-off (no session).
    pub one_off: bool,
}

/// The whole state, for `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// Policy name.
    pub scheduler: &'static str,
    /// GPUs.
    pub gpus: Vec<GpuSnapshot>,
    /// Queue in service order.
    pub queue: Vec<QueuedSnapshot>,
    /// Clients.
    pub clients: Vec<ClientSnapshot>,
    /// Since start.
    pub uptime: Duration,
    /// standalone, controller or executor.
    pub role: &'static str,
    /// The pool's nodes.
    pub nodes: Vec<NodeSnapshot>,
}

/// One node in a status snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSnapshot {
    /// Its name.
    pub name: String,
    /// Its executor registered and heartbeating (always for the daemon's own node).
    pub up: bool,
    /// Since the controller last heard from it.
    pub last_seen: Duration,
    /// Its GPUs.
    pub gpus: u32,
    /// Why it is down.
    pub reason: String,
}

pub(super) type Reply<T> = oneshot::Sender<T>;

/// A command for the driver.
#[derive(Debug)]
pub enum Command {
    /// A session opened.
    Connect {
        /// Job name.
        job: String,
        /// The session wants a copy of each grant ([`ToClient::Granted`]).
        grants: bool,
        /// Where to send what the assigner says.
        to_client: SessionSender,
        /// Who connected.
        peer: Peer,
        /// The token of a lost session to resume (empty: none).
        resume_token: String,
        /// The leases of that session still in use.
        held: Vec<u64>,
        /// The node the client runs on, when an executor forwarded the session (a
        /// controller's remote client); `None`: this daemon's own node.
        node: Option<String>,
        /// Who the client is now.
        reply: Reply<Result<Welcomed, DomainError>>,
    },
    /// A session ended.
    Disconnect {
        /// The client.
        client: u64,
    },
    /// Ask for GPUs; the reply comes when granted.
    Allocate {
        /// The caller's key, to withdraw the request if the caller goes away.
        key: u64,
        /// The request.
        spec: AllocSpec,
        /// The grant, or why not.
        reply: Reply<Result<GrantInfo, DomainError>>,
    },
    /// The caller of `Allocate { key }` went away before its grant.
    Abandon {
        /// Its key.
        key: u64,
    },
    /// Give a lease back.
    Release {
        /// Token.
        token: String,
        /// Lease.
        lease: u64,
        /// The caller's uid (SO_PEERCRED), when known: it must be the holder's, or the admin's.
        uid: Option<u32>,
        /// The caller's node, when an executor forwarded the call (a uid means something only
        /// on its own node).
        node: Option<String>,
        /// Done, or why not.
        reply: Reply<Result<(), DomainError>>,
    },
    /// Keep a one-off lease alive.
    Renew {
        /// Token.
        token: String,
        /// Lease.
        lease: u64,
        /// The caller's uid, when known.
        uid: Option<u32>,
        /// The caller's node, when an executor forwarded the call.
        node: Option<String>,
        /// The time left now (`None`: a session's lease, which needs no renewal).
        reply: Reply<Result<Option<Duration>, DomainError>>,
    },
    /// A phase report from a session.
    Phase {
        /// Client.
        client: u64,
        /// Lease.
        lease: u64,
        /// Idle (true) or busy again (false).
        idle: bool,
    },
    /// Swap bytes from a session.
    Swap {
        /// Client.
        client: u64,
        /// In.
        bytes_in: u64,
        /// Out.
        bytes_out: u64,
    },
    /// A GPU's health changed (NVML events, an executor lost).
    Health {
        /// GPU id.
        gpu: u32,
        /// Healthy now.
        healthy: bool,
        /// Done, or why not.
        reply: Reply<Result<(), DomainError>>,
    },
    /// A status snapshot.
    Status {
        /// The snapshot.
        reply: Reply<StatusSnapshot>,
    },
    /// Subscribe to events, optionally with the record so far.
    Watch {
        /// Send the record first.
        replay: bool,
        /// (record, live events).
        reply: Reply<(Vec<Event>, broadcast::Receiver<Event>)>,
    },
    /// An executor registered its node (a controller).
    Register {
        /// The node's name.
        node: String,
        /// Its GPUs.
        gpus: Vec<super::nodes::ReportedGpu>,
        /// The link's id (a newer link of the same node replaces an older one).
        link: u64,
        /// The pool ids of its GPUs, in the order given.
        reply: Reply<Result<Vec<u32>, DomainError>>,
    },
    /// An executor's heartbeat: its GPUs' health by index.
    Heartbeat {
        /// The node.
        node: String,
        /// The link.
        link: u64,
        /// (index, healthy, memory in use).
        health: Vec<(u32, bool, Option<u64>)>,
        /// Whether the node is still registered on this link (else it must register again).
        reply: Reply<bool>,
    },
    /// An executor's link ended.
    LinkLost {
        /// The node.
        node: String,
        /// The link.
        link: u64,
        /// Why.
        reason: String,
    },
    /// The nodes the cluster file lists (a controller): shown as down until they register.
    ExpectNodes {
        /// Their names.
        nodes: Vec<String>,
    },
    /// Tell every session the assigner stops, end every stream, stop.
    Shutdown,
}

/// A cloneable way to send commands to the driver.
#[derive(Clone, Debug)]
pub struct Handle {
    pub(super) tx: mpsc::Sender<Command>,
    /// Commands from places that cannot wait (drop guards), on their way into `tx`.
    later: mpsc::UnboundedSender<Command>,
}

impl Handle {
    /// A handle on the driver's command queue `tx`. Spawns the task that moves
    /// [`Handle::send_later`]'s commands into it (on the current runtime).
    pub(super) fn new(tx: mpsc::Sender<Command>) -> Handle {
        let (later, mut waiting) = mpsc::unbounded_channel::<Command>();
        let to_driver = tx.clone();
        tokio::spawn(async move {
            // Waits for room in the driver's queue as long as it takes: back-pressure, never
            // a drop. Ends when every handle is gone (or the driver stopped).
            while let Some(cmd) = waiting.recv().await {
                if to_driver.send(cmd).await.is_err() {
                    break;
                }
            }
        });
        Handle { tx, later }
    }

    /// Sends a command; fails only when the driver has stopped.
    pub async fn send(&self, cmd: Command) -> Result<(), DomainError> {
        self.tx.send(cmd).await.map_err(|_| DomainError::ShuttingDown)
    }

    /// Sends a command that changes state (a withdrawal, a release) from a place that cannot
    /// wait, such as a drop guard: it is never dropped, even when the driver's queue is full
    /// (a client killed with 20,000 requests queued withdraws them all). It waits in an
    /// unbounded queue whose length is bounded by construction: each call waiting for a grant
    /// sends at most one, and those calls are capped (`--max-one-off-clients`, and the scheduler's
    /// 64 queued requests per client).
    pub fn send_later(&self, cmd: Command) {
        // Fails only when the forwarder has stopped, after the driver: nothing left to change.
        let _ = self.later.send(cmd);
    }

    /// Sends a command built around a reply channel and waits for the reply.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, DomainError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| DomainError::ShuttingDown)
    }
}
