//! The one place that drives [`acb_core::Scheduler`]: take a command, feed the scheduler, drain
//! its outputs, arm one timer, wake the waiters. Services talk to it through a [`Handle`];
//! no lock is shared, no scheduling decision is made anywhere else.
//!
//! `api` is what the rest of the daemon sends and hears back, `sessions` who is connected
//! and who waits for a grant, `history` the event record.

use std::sync::Arc;
use std::time::Duration;

use acb_core::record::EventKind;
use acb_core::{
    Affinity, ClientId, GpuId, Health, Instant as CoreInstant, LeaseId, Output, Policy, Request, Scheduler,
    SchedulerConfig,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::discovery::FoundGpu;
use crate::metrics::Metrics;

mod api;
mod bounds;
mod history;
mod nodes;
mod restart;
mod sessions;
mod state;

use api::Reply;
pub use api::{
    AllocSpec, ClientSnapshot, Command, DomainError, GpuSnapshot, GrantInfo, GrantedGpu, Handle, QueuedSnapshot,
    SESSION_EVENTS, SessionSender, StatusSnapshot, ToClient, session_channel,
};
pub use api::{HolderSnapshot, Peer, Welcomed};
use history::History;
pub use nodes::{MISSED_HEARTBEATS, ReportedGpu, Role};
pub use restart::Persistence;
use sessions::Sessions;
pub use state::{StateError, Store, default_dir as default_state_dir};

/// The driver's state. Run it with [`spawn`].
pub struct Driver {
    sched: Scheduler,
    gpus: Vec<FoundGpu>,
    node: String,
    start: Instant,
    sessions: Sessions,
    history: History,
    metrics: Arc<Metrics>,
    /// Saved leases, restart grace, one-off leases' time to live, the admin uid.
    keeping: restart::Keeping,
    /// Standalone or controller.
    role: Role,
    /// A controller's executors' nodes, by name.
    nodes: std::collections::BTreeMap<String, nodes::RemoteNode>,
    /// Memory in use on a node's GPUs, as its executor last read it (NVML).
    memory_used: std::collections::HashMap<GpuId, u64>,
    /// The nodes the cluster file lists.
    expected: Vec<String>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("sessions", &self.sessions).finish()
    }
}

/// Starts the driver on the current runtime. It stops after [`Command::Shutdown`] or when
/// every handle is dropped.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    role: Role,
    policy: Policy,
    quantum: Option<Duration>,
    node: String,
    gpus: Vec<FoundGpu>,
    metrics: Arc<Metrics>,
    mut persistence: Persistence,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let mut config = SchedulerConfig::new(policy);
    config.quantum = quantum;
    let pool = crate::discovery::pool_of(&node, &gpus);
    let (tx, rx) = mpsc::channel(4096);
    let mut driver = Driver {
        sched: Scheduler::new(config, pool),
        gpus,
        node,
        start: Instant::now(),
        sessions: Sessions::new(),
        history: History::new(),
        metrics,
        keeping: restart::Keeping::new(&mut persistence),
        role,
        nodes: std::collections::BTreeMap::new(),
        memory_used: std::collections::HashMap::new(),
        expected: Vec::new(),
    };
    if let Some(mut saved) = persistence.saved.take() {
        let pool = std::mem::take(&mut saved.pool);
        if driver.is_controller() {
            let grace = driver.keeping.grace;
            driver.restore_pool(&pool, grace);
        }
        driver.restore_state(saved);
    }
    driver.save_state();
    let task = tokio::spawn(driver.run(rx));
    (Handle::new(tx), task)
}
impl Driver {
    /// The loop: one command or the timer's deadline, fed to the scheduler; then every output
    /// drained (grants handed to their callers, sessions told); then the metrics, and the
    /// timer armed again at the scheduler's next deadline.
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        self.metrics.update(&self.sched, |c| self.sessions.job(c));
        loop {
            let sched_deadline = self.sched.poll_timeout().map(|t| self.start + Duration::from_nanos(t.as_nanos()));
            let deadline = [sched_deadline, self.keeping_deadline(), self.nodes_deadline()].into_iter().flatten().min();
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Shutdown) | None => break,
                    Some(cmd) => self.handle_command(cmd),
                },
                () = timer => {
                    let now = self.now();
                    self.sched.handle_timeout(now);
                    self.keeping_timers();
                    self.nodes_timers();
                }
            }
            self.drain_outputs();
            self.end_sessions_behind();
            self.schedule_save();
            self.metrics.update(&self.sched, |c| self.sessions.job(c));
        }
        if self.keeping.save_due.is_some() {
            self.save_state();
        }
        self.sessions.shut_down();
        // Dropping `self` drops the event sender and every session sender: open streams end.
    }

    fn now(&self) -> CoreInstant {
        CoreInstant::from_nanos(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    fn record(&mut self, kind: EventKind) {
        if matches!(kind, EventKind::Released { .. }) {
            self.metrics.released();
        }
        if matches!(kind, EventKind::Released { .. } | EventKind::Granted { .. }) {
            self.keeping.dirty = true;
        }
        self.history.record(self.start.elapsed(), kind);
    }

    fn handle_command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Connect { job, grants, to_client, peer, resume_token, held, node, reply } => {
                let node = node.unwrap_or_else(|| self.node.clone());
                let r = self.open_session(job, peer, &node, &resume_token, &held, (to_client, grants), now);
                if let Err(Ok(w)) = reply.send(r) {
                    // The session's opener went away before Welcome: nobody will end it.
                    self.disconnect(ClientId(w.client), now);
                }
            }
            Command::Disconnect { client } => self.disconnect(ClientId(client), now),
            Command::Allocate { key, spec, reply } => self.allocate(key, spec, reply, now),
            Command::Abandon { key } => {
                let Some((client, request)) = self.sessions.abandon(key) else { return };
                if self.sched.cancel(client, request, now).is_ok() {
                    self.record(EventKind::Cancelled { client: client.0, request: request.0 });
                }
                self.end_one_off_if_idle(client, now);
            }
            Command::Release { token, lease, uid, node, reply } => {
                let node = node.unwrap_or_else(|| self.node.clone());
                let r = if token.is_empty() {
                    self.admin_release(LeaseId(lease), uid, &node, now)
                } else {
                    self.release(&token, LeaseId(lease), uid, &node, now)
                };
                let _ = reply.send(r);
            }
            Command::Renew { token, lease, uid, node, reply } => {
                let node = node.unwrap_or_else(|| self.node.clone());
                let _ = reply.send(self.renew(&token, LeaseId(lease), uid, &node));
            }
            Command::Phase { client, lease, idle } => {
                let (c, l) = (ClientId(client), LeaseId(lease));
                let r = if idle { self.sched.report_idle(c, l, now) } else { self.sched.report_busy(c, l, now) };
                // Not saved for this alone: a client whose lease was idle when the assigner
                // stopped swaps out and frees it as it resumes; the idle flag saved with the next
                // grant or release is enough for one that never comes back.
                if let Err(e) = r {
                    tracing::debug!(client, lease, "phase report ignored: {e}");
                }
            }
            Command::Swap { client, bytes_in, bytes_out } => {
                if self.sessions.add_swap(ClientId(client), bytes_in, bytes_out) {
                    self.metrics.swap(&self.sessions.job(ClientId(client)), bytes_in, bytes_out);
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
            Command::Register { node, gpus, link, reply } => {
                let _ = reply.send(self.register_node(&node, gpus, link, now));
            }
            Command::Heartbeat { node, link, health, reply } => {
                let _ = reply.send(self.heartbeat(&node, link, &health, now));
            }
            Command::LinkLost { node, link, reason } => self.node_lost(&node, Some(link), reason, now),
            Command::Status { reply } => {
                let _ = reply.send(self.snapshot(now));
            }
            Command::Watch { replay, reply } => {
                let _ = reply.send(self.history.watch(replay));
            }
            Command::ExpectNodes { nodes } => self.expect_nodes(nodes),
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
        session: Option<(SessionSender, bool)>,
        now: CoreInstant,
    ) -> Result<(ClientId, String), DomainError> {
        let client = self.sessions.next_id();
        self.sched.connect(client, now).map_err(DomainError::Core)?;
        let token = self.sessions.add(client, job.clone(), pid, one_off, session);
        self.record(EventKind::Connected { client: client.0, job });
        Ok((client, token))
    }

    fn disconnect(&mut self, client: ClientId, now: CoreInstant) {
        let Ok(gone) = self.sched.disconnect(client, now) else { return };
        for r in gone.requests {
            if let Some(p) = self.sessions.take_waiting(r) {
                let _ = p.reply.send(Err(DomainError::SessionEnded));
            }
            self.record(EventKind::Cancelled { client: client.0, request: r.0 });
        }
        for l in gone.leases {
            self.keeping.expiry.remove(&l);
            self.record(EventKind::Released { client: client.0, lease: l.0, by_disconnect: true });
        }
        self.sessions.remove(client);
        self.record(EventKind::ClientGone { client: client.0 });
    }

    fn allocate(&mut self, key: u64, spec: AllocSpec, reply: Reply<Result<GrantInfo, DomainError>>, now: CoreInstant) {
        let client = if spec.token.is_empty() {
            if self.sessions.one_offs() >= self.keeping.max_one_off {
                let _ = reply.send(Err(DomainError::LimitReached(format!(
                    "{} one-off clients wait or hold leases already (--max-one-off-clients); retry later or open a \
                     session",
                    self.sessions.one_offs()
                ))));
                return;
            }
            let job = if spec.job.is_empty() { "one-off".to_string() } else { spec.job.clone() };
            match self.connect(job, spec.peer.pid, true, None, now) {
                Ok((c, _)) => {
                    self.sessions.set_peer(c, spec.peer.uid, spec.peer.pid);
                    self.sessions.set_node(c, spec.node.clone().unwrap_or_else(|| self.node.clone()));
                    c
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        } else {
            match self.sessions.by_token(&spec.token) {
                Some(c) => c,
                None => {
                    let _ = reply.send(Err(DomainError::UnknownToken));
                    return;
                }
            }
        };
        let job = self.sessions.job(client);
        let affinity = match self.affinity_for(client, &spec) {
            Ok(a) => a,
            Err(e) => {
                let _ = reply.send(Err(e));
                self.end_one_off_if_idle(client, now);
                return;
            }
        };
        let mut req = Request::new(client, job.clone(), spec.gpus).with_priority(spec.priority).with_affinity(affinity);
        req.memory_per_gpu = spec.memory_per_gpu;
        if let Some((name, size)) = &spec.group {
            req = req.with_group(name.clone(), *size);
        }
        match self.sched.submit(req, now) {
            Ok(request) => {
                self.record(EventKind::Requested {
                    client: client.0,
                    job,
                    request: request.0,
                    gpus: spec.gpus,
                    memory_per_gpu: spec.memory_per_gpu,
                    priority: spec.priority,
                    group: spec.group.as_ref().map(|g| g.0.clone()),
                });
                self.sessions.wait(key, client, request, spec.tag, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(DomainError::Core(e)));
                self.end_one_off_if_idle(client, now);
            }
        }
    }

    /// Where `client`'s request may go: its own wishes; on a controller, within its node's
    /// GPUs (the node known from its connection), the GPUs it prefers first.
    fn affinity_for(&self, client: ClientId, spec: &AllocSpec) -> Result<Affinity, DomainError> {
        let ids = |v: &[u32]| v.iter().map(|g| GpuId(*g)).collect::<Vec<_>>();
        if !self.is_controller() {
            return Ok(if !spec.required.is_empty() {
                Affinity::Required(ids(&spec.required))
            } else if !spec.preferred.is_empty() {
                Affinity::Preferred(ids(&spec.preferred))
            } else {
                Affinity::Any
            });
        }
        let node = self.sessions.node(client);
        let on_node = self.gpus_of_node(&node)?;
        if !spec.required.is_empty() {
            let outside: Vec<u32> = spec.required.iter().copied().filter(|g| !on_node.contains(&GpuId(*g))).collect();
            if !outside.is_empty() {
                return Err(DomainError::Invalid(format!(
                    "GPUs {outside:?} are not on node {node:?}, where this client runs; a client is granted only its \
                     own node's GPUs"
                )));
            }
            return Ok(Affinity::Required(ids(&spec.required)));
        }
        let mut list: Vec<GpuId> = ids(&spec.preferred).into_iter().filter(|g| on_node.contains(g)).collect();
        let rest: Vec<GpuId> = on_node.iter().copied().filter(|g| !list.contains(g)).collect();
        list.extend(rest);
        Ok(Affinity::Required(list))
    }

    fn release(
        &mut self,
        token: &str,
        lease: LeaseId,
        uid: Option<u32>,
        node: &str,
        now: CoreInstant,
    ) -> Result<(), DomainError> {
        let client = self.sessions.by_token(token).ok_or(DomainError::UnknownToken)?;
        self.check_uid(client, uid, node, "release")?;
        self.sched.release(client, lease, now).map_err(DomainError::Core)?;
        self.keeping.expiry.remove(&lease);
        self.record(EventKind::Released { client: client.0, lease: lease.0, by_disconnect: false });
        self.end_one_off_if_idle(client, now);
        Ok(())
    }

    /// A one-off client lives as long as its lease or its request.
    fn end_one_off_if_idle(&mut self, client: ClientId, now: CoreInstant) {
        if self.sessions.is_one_off(client)
            && self.sched.leases_of(client).next().is_none()
            && self.sched.queued_of(client).next().is_none()
        {
            self.disconnect(client, now);
        }
    }

    fn drain_outputs(&mut self) {
        while let Some(out) = self.sched.poll_output() {
            match out {
                Output::Granted(g) => {
                    let job = self.sessions.job(g.client);
                    self.metrics.granted(&job, g.waited);
                    self.record(EventKind::Granted {
                        client: g.client.0,
                        job,
                        request: g.request.0,
                        lease: g.lease.0,
                        gpus: g.gpus.iter().map(|x| x.0).collect(),
                        memory_per_gpu: g.memory_per_gpu,
                        waited: g.waited,
                    });
                    let info = GrantInfo {
                        lease: g.lease.0,
                        gpus: g.gpus.iter().map(|id| self.granted_gpu(*id)).collect(),
                        memory_per_gpu: g.memory_per_gpu,
                        waited: g.waited,
                        token: self.sessions.token(g.client),
                        expires: self.start_ttl(g.client, g.lease),
                    };
                    let delivered = match self.sessions.take_waiting(g.request) {
                        Some(p) => {
                            // Saved before the holder hears of it: a restarted assigner knows
                            // every lease a client may be using.
                            self.save_before_grant(g.lease);
                            let copy = self.sessions.wants_grant_copies(g.client).then(|| info.clone());
                            let sent = p.reply.send(Ok(info)).is_ok();
                            // The reply is handed over; it can still be lost if the call is
                            // cancelled now. The session's copy cannot.
                            if let (true, Some(grant)) = (sent, copy) {
                                self.sessions.tell(g.client, ToClient::Granted { tag: p.tag, grant });
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
                    self.sessions.tell(client, ToClient::Yield { lease: lease.0, reason });
                }
                Output::Revoked { client, lease, gpu } => {
                    self.record(EventKind::Released { client: client.0, lease: lease.0, by_disconnect: false });
                    self.sessions.tell(client, ToClient::Revoked { lease: lease.0, gpu: gpu.0, why: None });
                    let now = self.now();
                    self.end_one_off_if_idle(client, now);
                }
                Output::GroupBroken { client, lease, group, gone } => {
                    self.record(EventKind::Released { client: client.0, lease: lease.0, by_disconnect: false });
                    let why = format!("client#{} of group {group:?} went away: the group cannot go on", gone.0);
                    self.sessions.tell(client, ToClient::Revoked { lease: lease.0, gpu: u32::MAX, why: Some(why) });
                    let now = self.now();
                    self.end_one_off_if_idle(client, now);
                }
                Output::Rejected { client, request, error } => {
                    self.record(EventKind::Rejected {
                        client: client.0,
                        request: request.0,
                        reason: error.to_string(),
                    });
                    if let Some(p) = self.sessions.take_waiting(request) {
                        let _ = p.reply.send(Err(DomainError::Core(error)));
                    }
                    let now = self.now();
                    self.end_one_off_if_idle(client, now);
                }
            }
        }
    }

    fn snapshot(&self, now: CoreInstant) -> StatusSnapshot {
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
                        let info = self.sessions.info(lease.client);
                        HolderSnapshot {
                            client: lease.client.0,
                            job: self.sessions.job(lease.client),
                            lease: l.0,
                            idle: lease.idle,
                            held: now - lease.granted_at,
                            memory: mem,
                            uid: info.and_then(|i| i.uid),
                            pid: info.map_or(0, |i| i.pid),
                            expires: self.keeping.expiry.get(&l).map(|at| at.saturating_duration_since(Instant::now())),
                        }
                    })
                    .collect();
                GpuSnapshot {
                    id: g.id.0,
                    node: self.node_of(g.id),
                    index: found.map_or(g.index, |f| f.index),
                    uuid: g.uuid.clone(),
                    name: found.map(|f| f.name.clone()).unwrap_or_default(),
                    memory: g.memory,
                    healthy: g.health == Health::Healthy,
                    fake: found.is_some_and(|f| f.fake),
                    granted: state.granted,
                    reserved: state.reserved,
                    holders,
                    memory_used: self.memory_used.get(&g.id).copied(),
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
                group: q.request.group.as_ref().map(|g| g.name.clone()),
                node: self.sessions.node(q.request.client),
            })
            .collect();
        let mut clients: Vec<ClientSnapshot> = self
            .sessions
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
                uid: info.uid,
                orphan: info.orphan,
                node: info.node.clone(),
            })
            .collect();
        clients.sort_by_key(|c| c.client);
        StatusSnapshot {
            scheduler: self.sched.config().policy.name(),
            gpus,
            queue,
            clients,
            uptime: self.start.elapsed(),
            role: self.role.name(),
            nodes: self.node_snapshots(),
        }
    }
}
