//! The one place that drives [`acb_core::Scheduler`]: take a command, feed the scheduler, drain
//! its outputs, arm one timer, wake the waiters. Services talk to it through a [`Handle`];
//! no lock is shared, no scheduling decision is made anywhere else.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use acb_core::{
    Affinity, ClientId, Error as CoreError, GpuId, Health, Instant as CoreInstant, LeaseId, Output, Policy, Request,
    RequestId, Scheduler, SchedulerConfig,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use crate::discovery::FoundGpu;
use crate::metrics::Metrics;
use acb_core::record::{Event, EventKind, YieldReason};

/// How many events the record keeps (the oldest go first).
const HISTORY: usize = 200_000;

/// What went wrong, before it becomes a wire status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainError {
    /// The scheduler refused.
    Core(CoreError),
    /// The client token is not one the assigner gave out (or its client is gone).
    UnknownToken,
    /// The request was dropped because its client's session ended.
    SessionEnded,
    /// The assigner is shutting down.
    ShuttingDown,
    /// A malformed input, caught before the scheduler.
    Invalid(String),
}

impl std::fmt::Display for DomainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainError::Core(e) => write!(f, "{e}"),
            DomainError::UnknownToken => f.write_str("client token not recognised (open a session, or send none)"),
            DomainError::SessionEnded => f.write_str("the client's session ended"),
            DomainError::ShuttingDown => f.write_str("the assigner is shutting down"),
            DomainError::Invalid(why) => f.write_str(why),
        }
    }
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
        /// The GPU lost.
        gpu: u32,
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
    /// Only these GPU ids.
    pub required: Vec<u32>,
    /// These GPU ids if free.
    pub preferred: Vec<u32>,
    /// The client's tag for this request, echoed in [`ToClient::Granted`].
    pub tag: u64,
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
    /// Holders: (client, job, lease, idle, held for, memory).
    pub holders: Vec<(u64, String, u64, bool, Duration, u64)>,
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
}

/// One client in a status snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSnapshot {
    /// Client id.
    pub client: u64,
    /// Job.
    pub job: String,
    /// Process id it claimed.
    pub pid: u32,
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
}

type Reply<T> = oneshot::Sender<T>;

/// A command for the driver.
#[derive(Debug)]
pub enum Command {
    /// A session opened.
    Connect {
        /// Job name.
        job: String,
        /// Claimed pid.
        pid: u32,
        /// The session wants a copy of each grant ([`ToClient::Granted`]).
        grants: bool,
        /// Where to send what the assigner says.
        to_client: mpsc::UnboundedSender<ToClient>,
        /// (client id, token).
        reply: Reply<Result<(u64, String), DomainError>>,
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
        /// Done, or why not.
        reply: Reply<Result<(), DomainError>>,
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
    /// Tell every session the assigner stops, end every stream, stop.
    Shutdown,
}

/// A cloneable way to send commands to the driver.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    /// Sends a command; fails only when the driver has stopped.
    pub async fn send(&self, cmd: Command) -> Result<(), DomainError> {
        self.tx.send(cmd).await.map_err(|_| DomainError::ShuttingDown)
    }

    /// Sends without waiting (for drop guards); dropped if the queue is full or closed.
    pub fn try_send(&self, cmd: Command) {
        let _ = self.tx.try_send(cmd);
    }

    /// Sends a command built around a reply channel and waits for the reply.
    pub async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, DomainError> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| DomainError::ShuttingDown)
    }
}

#[derive(Debug)]
struct ClientInfo {
    job: String,
    pid: u32,
    token: String,
    one_off: bool,
    to_client: Option<mpsc::UnboundedSender<ToClient>>,
    /// The session asked for a copy of each grant.
    grants_on_session: bool,
    swap_in: u64,
    swap_out: u64,
}

struct Pending {
    key: u64,
    tag: u64,
    reply: Reply<Result<GrantInfo, DomainError>>,
}

/// The driver's state. Run it with [`spawn`].
pub struct Driver {
    sched: Scheduler,
    gpus: Vec<FoundGpu>,
    node: String,
    start: Instant,
    clients: HashMap<ClientId, ClientInfo>,
    tokens: HashMap<String, ClientId>,
    pending: HashMap<RequestId, Pending>,
    by_key: HashMap<u64, (ClientId, RequestId)>,
    next_client: u64,
    history: VecDeque<Event>,
    seq: u64,
    events: broadcast::Sender<Event>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("clients", &self.clients.len()).field("pending", &self.pending.len()).finish()
    }
}

/// Starts the driver on the current runtime. It stops after [`Command::Shutdown`] or when
/// every handle is dropped.
pub fn spawn(
    policy: Policy,
    quantum: Option<Duration>,
    node: String,
    gpus: Vec<FoundGpu>,
    metrics: Arc<Metrics>,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let mut config = SchedulerConfig::new(policy);
    config.quantum = quantum;
    let pool = crate::discovery::pool_of(&node, &gpus);
    let (tx, rx) = mpsc::channel(4096);
    let (events, _) = broadcast::channel(16_384);
    let driver = Driver {
        sched: Scheduler::new(config, pool),
        gpus,
        node,
        start: Instant::now(),
        clients: HashMap::new(),
        tokens: HashMap::new(),
        pending: HashMap::new(),
        by_key: HashMap::new(),
        next_client: 1,
        history: VecDeque::new(),
        seq: 0,
        events,
        metrics,
    };
    let task = tokio::spawn(driver.run(rx));
    (Handle { tx }, task)
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        self.metrics.update(&self.sched);
        loop {
            let deadline = self.sched.poll_timeout().map(|t| self.start + Duration::from_nanos(t.as_nanos()));
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Shutdown) | None => break,
                    Some(cmd) => self.handle(cmd),
                },
                () = timer => {
                    let now = self.now();
                    self.sched.handle_timeout(now);
                }
            }
            self.drain();
            self.metrics.update(&self.sched);
        }
        for info in self.clients.values_mut() {
            if let Some(tx) = info.to_client.take() {
                let _ = tx.send(ToClient::ShuttingDown);
            }
        }
        for (_, p) in self.pending.drain() {
            let _ = p.reply.send(Err(DomainError::ShuttingDown));
        }
        // Dropping `self` drops the event sender and every session sender: open streams end.
    }

    fn now(&self) -> CoreInstant {
        CoreInstant::from_nanos(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn record(&mut self, kind: EventKind) {
        if matches!(kind, EventKind::Released { .. }) {
            self.metrics.released();
        }
        self.seq += 1;
        let event = Event { seq: self.seq, at: self.start.elapsed(), kind };
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(event.clone());
        let _ = self.events.send(event);
    }

    fn handle(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Connect { job, pid, grants, to_client, reply } => {
                let r = self.connect(job, pid, false, Some((to_client, grants)), now);
                if let Err(Ok((client, _))) = reply.send(r.map(|(c, t)| (c.0, t))) {
                    // The session's opener went away before Welcome: nobody will end it.
                    self.disconnect(ClientId(client), now);
                }
            }
            Command::Disconnect { client } => self.disconnect(ClientId(client), now),
            Command::Allocate { key, spec, reply } => self.allocate(key, spec, reply, now),
            Command::Abandon { key } => {
                let Some((client, request)) = self.by_key.remove(&key) else { return };
                self.pending.remove(&request);
                if self.sched.cancel(client, request, now).is_ok() {
                    self.record(EventKind::Cancelled { client: client.0, request: request.0 });
                }
                self.end_one_off_if_idle(client, now);
            }
            Command::Release { token, lease, reply } => {
                let r = self.release(&token, LeaseId(lease), now);
                let _ = reply.send(r);
            }
            Command::Phase { client, lease, idle } => {
                let (c, l) = (ClientId(client), LeaseId(lease));
                let r = if idle { self.sched.report_idle(c, l, now) } else { self.sched.report_busy(c, l, now) };
                if let Err(e) = r {
                    tracing::debug!(client, lease, "phase report ignored: {e}");
                }
            }
            Command::Swap { client, bytes_in, bytes_out } => {
                if let Some(info) = self.clients.get_mut(&ClientId(client)) {
                    info.swap_in = info.swap_in.saturating_add(bytes_in);
                    info.swap_out = info.swap_out.saturating_add(bytes_out);
                    self.metrics.swap(bytes_in, bytes_out);
                }
            }
            Command::Health { gpu, healthy, reply } => {
                let health = if healthy { Health::Healthy } else { Health::Lost };
                let r = self.sched.set_health(GpuId(gpu), health, now).map_err(DomainError::Core);
                if r.is_ok() {
                    self.record(EventKind::GpuHealth { gpu, healthy });
                }
                let _ = reply.send(r);
            }
            Command::Status { reply } => {
                let _ = reply.send(self.snapshot(now));
            }
            Command::Watch { replay, reply } => {
                let history = if replay { self.history.iter().cloned().collect() } else { Vec::new() };
                let _ = reply.send((history, self.events.subscribe()));
            }
            Command::Shutdown => {}
        }
    }

    /// A new client; `session`: where to send what the assigner says, and whether the session
    /// asked for a copy of each grant (none for a one-off client).
    fn connect(
        &mut self,
        job: String,
        pid: u32,
        one_off: bool,
        session: Option<(mpsc::UnboundedSender<ToClient>, bool)>,
        now: CoreInstant,
    ) -> Result<(ClientId, String), DomainError> {
        let client = ClientId(self.next_client);
        self.next_client += 1;
        self.sched.connect(client, now).map_err(DomainError::Core)?;
        let token = new_token();
        self.tokens.insert(token.clone(), client);
        self.record(EventKind::Connected { client: client.0, job: job.clone() });
        let (to_client, grants_on_session) = session.map_or((None, false), |(tx, grants)| (Some(tx), grants));
        let info = ClientInfo {
            job,
            pid,
            token: token.clone(),
            one_off,
            to_client,
            grants_on_session,
            swap_in: 0,
            swap_out: 0,
        };
        self.clients.insert(client, info);
        Ok((client, token))
    }

    fn disconnect(&mut self, client: ClientId, now: CoreInstant) {
        let Ok(gone) = self.sched.disconnect(client, now) else { return };
        for r in gone.requests {
            if let Some(p) = self.pending.remove(&r) {
                self.by_key.remove(&p.key);
                let _ = p.reply.send(Err(DomainError::SessionEnded));
            }
            self.record(EventKind::Cancelled { client: client.0, request: r.0 });
        }
        for l in gone.leases {
            self.record(EventKind::Released { client: client.0, lease: l.0, by_disconnect: true });
        }
        if let Some(info) = self.clients.remove(&client) {
            self.tokens.remove(&info.token);
        }
        self.record(EventKind::ClientGone { client: client.0 });
    }

    fn allocate(&mut self, key: u64, spec: AllocSpec, reply: Reply<Result<GrantInfo, DomainError>>, now: CoreInstant) {
        let client = if spec.token.is_empty() {
            let job = if spec.job.is_empty() { "one-off".to_string() } else { spec.job.clone() };
            match self.connect(job, 0, true, None, now) {
                Ok((c, _)) => c,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        } else {
            match self.tokens.get(&spec.token) {
                Some(c) => *c,
                None => {
                    let _ = reply.send(Err(DomainError::UnknownToken));
                    return;
                }
            }
        };
        let job = self.clients.get(&client).map(|c| c.job.clone()).unwrap_or_default();
        let ids = |v: &[u32]| v.iter().map(|g| GpuId(*g)).collect::<Vec<_>>();
        let affinity = if !spec.required.is_empty() {
            Affinity::Required(ids(&spec.required))
        } else if !spec.preferred.is_empty() {
            Affinity::Preferred(ids(&spec.preferred))
        } else {
            Affinity::Any
        };
        let mut req = Request::new(client, job.clone(), spec.gpus).with_priority(spec.priority).with_affinity(affinity);
        req.memory_per_gpu = spec.memory_per_gpu;
        match self.sched.submit(req, now) {
            Ok(request) => {
                self.record(EventKind::Requested {
                    client: client.0,
                    job,
                    request: request.0,
                    gpus: spec.gpus,
                    memory_per_gpu: spec.memory_per_gpu,
                    priority: spec.priority,
                });
                self.pending.insert(request, Pending { key, tag: spec.tag, reply });
                self.by_key.insert(key, (client, request));
            }
            Err(e) => {
                let _ = reply.send(Err(DomainError::Core(e)));
                self.end_one_off_if_idle(client, now);
            }
        }
    }

    fn release(&mut self, token: &str, lease: LeaseId, now: CoreInstant) -> Result<(), DomainError> {
        let client = *self.tokens.get(token).ok_or(DomainError::UnknownToken)?;
        self.sched.release(client, lease, now).map_err(DomainError::Core)?;
        self.record(EventKind::Released { client: client.0, lease: lease.0, by_disconnect: false });
        self.end_one_off_if_idle(client, now);
        Ok(())
    }

    /// A one-off client lives as long as its lease or its request.
    fn end_one_off_if_idle(&mut self, client: ClientId, now: CoreInstant) {
        let one_off = self.clients.get(&client).is_some_and(|c| c.one_off);
        if one_off && self.sched.leases_of(client).next().is_none() && self.sched.queued_of(client).next().is_none() {
            self.disconnect(client, now);
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.sched.poll_output() {
            match out {
                Output::Granted(g) => {
                    let job = self.clients.get(&g.client).map(|c| c.job.clone()).unwrap_or_default();
                    self.metrics.granted(g.waited);
                    self.record(EventKind::Granted {
                        client: g.client.0,
                        job,
                        request: g.request.0,
                        lease: g.lease.0,
                        gpus: g.gpus.iter().map(|x| x.0).collect(),
                        memory_per_gpu: g.memory_per_gpu,
                        waited: g.waited,
                    });
                    let token = self.clients.get(&g.client).map(|c| c.token.clone()).unwrap_or_default();
                    let info = GrantInfo {
                        lease: g.lease.0,
                        gpus: g.gpus.iter().map(|id| self.granted_gpu(*id)).collect(),
                        memory_per_gpu: g.memory_per_gpu,
                        waited: g.waited,
                        token,
                    };
                    let delivered = match self.pending.remove(&g.request) {
                        Some(p) => {
                            self.by_key.remove(&p.key);
                            let tx = self
                                .clients
                                .get(&g.client)
                                .filter(|c| c.grants_on_session)
                                .and_then(|c| c.to_client.as_ref());
                            let copy = tx.map(|_| info.clone());
                            let sent = p.reply.send(Ok(info)).is_ok();
                            // The reply is handed over; it can still be lost if the call is
                            // cancelled now. The session's copy cannot.
                            if let (true, Some(tx), Some(grant)) = (sent, tx, copy) {
                                let _ = tx.send(ToClient::Granted { tag: p.tag, grant });
                            }
                            sent
                        }
                        None => false,
                    };
                    if !delivered {
                        // The caller went away as the grant was made: nobody will use it.
                        let now = self.now();
                        if self.sched.release(g.client, g.lease, now).is_ok() {
                            self.record(EventKind::Released {
                                client: g.client.0,
                                lease: g.lease.0,
                                by_disconnect: false,
                            });
                        }
                        self.end_one_off_if_idle(g.client, now);
                    }
                }
                Output::YieldAsked { client, lease, reason } => {
                    self.metrics.yielded();
                    self.record(EventKind::YieldAsked { client: client.0, lease: lease.0, reason });
                    if let Some(tx) = self.clients.get(&client).and_then(|c| c.to_client.as_ref()) {
                        let _ = tx.send(ToClient::Yield { lease: lease.0, reason });
                    }
                }
                Output::Revoked { client, lease, gpu } => {
                    self.record(EventKind::Released { client: client.0, lease: lease.0, by_disconnect: false });
                    if let Some(tx) = self.clients.get(&client).and_then(|c| c.to_client.as_ref()) {
                        let _ = tx.send(ToClient::Revoked { lease: lease.0, gpu: gpu.0 });
                    }
                    let now = self.now();
                    self.end_one_off_if_idle(client, now);
                }
                Output::Rejected { client, request, error } => {
                    self.record(EventKind::Rejected {
                        client: client.0,
                        request: request.0,
                        reason: error.to_string(),
                    });
                    if let Some(p) = self.pending.remove(&request) {
                        self.by_key.remove(&p.key);
                        let _ = p.reply.send(Err(DomainError::Core(error)));
                    }
                    let now = self.now();
                    self.end_one_off_if_idle(client, now);
                }
            }
        }
    }

    fn granted_gpu(&self, id: GpuId) -> GrantedGpu {
        let found = self.gpus.get(id.0 as usize);
        GrantedGpu {
            id: id.0,
            node: self.node.clone(),
            index: found.map_or(id.0, |g| g.index),
            uuid: found.map(|g| g.uuid.clone()).unwrap_or_default(),
            memory: found.map_or(0, |g| g.memory),
        }
    }

    fn snapshot(&self, now: CoreInstant) -> StatusSnapshot {
        let job = |c: ClientId| self.clients.get(&c).map(|i| i.job.clone()).unwrap_or_default();
        let gpus = self
            .sched
            .pool()
            .gpus()
            .iter()
            .map(|g| {
                let state = self.sched.gpu_state(g.id).cloned().unwrap_or_default();
                let found = self.gpus.get(g.id.0 as usize);
                let holders = state
                    .holders
                    .iter()
                    .filter_map(|l| self.sched.lease(*l).map(|lease| (*l, lease)))
                    .map(|(l, lease)| {
                        let mem = lease.gpus.iter().position(|x| *x == g.id).map_or(0, |i| lease.memory[i]);
                        (lease.client.0, job(lease.client), l.0, lease.idle, now - lease.granted_at, mem)
                    })
                    .collect();
                GpuSnapshot {
                    id: g.id.0,
                    node: self.node.clone(),
                    index: g.index,
                    uuid: g.uuid.clone(),
                    name: found.map(|f| f.name.clone()).unwrap_or_default(),
                    memory: g.memory,
                    healthy: g.health == Health::Healthy,
                    fake: found.is_some_and(|f| f.fake),
                    granted: state.granted,
                    reserved: state.reserved,
                    holders,
                }
            })
            .collect();
        let queue = self
            .sched
            .queued()
            .map(|q| QueuedSnapshot {
                request: q.id.0,
                client: q.request.client.0,
                job: q.request.job.clone(),
                gpus: q.request.gpus,
                memory_per_gpu: q.request.memory_per_gpu,
                priority: q.request.priority,
                waiting: now - q.enqueued_at,
            })
            .collect();
        let mut clients: Vec<ClientSnapshot> = self
            .clients
            .iter()
            .map(|(c, info)| ClientSnapshot {
                client: c.0,
                job: info.job.clone(),
                pid: info.pid,
                leases: self.sched.leases_of(*c).count() as u32,
                queued: self.sched.queued_of(*c).count() as u32,
                swap_in: info.swap_in,
                swap_out: info.swap_out,
                one_off: info.one_off,
            })
            .collect();
        clients.sort_by_key(|c| c.client);
        StatusSnapshot {
            scheduler: self.sched.config().policy.name(),
            gpus,
            queue,
            clients,
            uptime: self.start.elapsed(),
        }
    }
}

/// A fresh client token: 128 random bits, hex.
fn new_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy source at all is not something to run a daemon on, but never panic:
        // fall back to the clock mixed with the address of a stack value.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let a = &bytes as *const _ as usize as u128;
        bytes = (t ^ a.rotate_left(64)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
