//! The client driver: the one tokio task that owns [`acb_core::ClientMachine`] and the session
//! with the assigner. It takes commands from [`crate::Client`]'s methods over a channel, feeds
//! the machine what happens (grants, yields, revocations, a lost session, timers), and performs
//! the machine's actions (requests, releases, phase reports, swaps). The callers' threads only
//! send commands and wait for replies: no lock is held across a blocking wait.
//!
//! It only does I/O: what arrives goes to the machine as it is (both copies of a grant, replies
//! of withdrawn requests and of ended sessions); which of it is current, and what to give back,
//! is the machine's to decide (see the polling order on [`ClientMachine`]).

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use acb_core::{
    Action, Affinity, ClientError, ClientMachine, GpuDemand, GpuId, Instant as CoreInstant, LeaseId, RequestTag,
    SessionEpoch, State,
};
use acb_proto::v1 as proto;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::connection::{self, Session};
use crate::error::Error;
use crate::group::Group;
use crate::lease::{Device, Lease};
use crate::memory::SharedMemory;

pub(crate) enum Cmd {
    /// Begin number `seq` (each begin of a client has its own) waits for a grant.
    Begin {
        seq: u64,
        demand: GpuDemand,
        reply: std_mpsc::Sender<Result<Lease, Error>>,
    },
    /// Begin number `seq` timed out: withdraw its request, or end the phase it never saw. Stale
    /// when another begin owns the machine by the time it arrives (see `Driver::owner`).
    Cancel {
        seq: u64,
    },
    /// An end with a yield pending: apply it now (see [`Kept`]).
    Wake,
    Close {
        reply: std_mpsc::Sender<()>,
    },
}

/// Results of spawned RPCs, with what the machine needs to tell a current one from a stale
/// one: the request's tag, or the session the call went out in.
pub(crate) enum Internal {
    Granted { tag: RequestTag, grant: proto::AllocateResponse },
    AllocFailed { tag: RequestTag, status: tonic::Status },
    ReleaseDone { session: SessionEpoch, lease: LeaseId },
}

/// Lets GPU phases on a kept GPU start and end on the caller's thread, without waking the
/// client thread: a wake-up costs tens of µs on a small or virtual machine, more than the rest
/// of a phase boundary. Protocol, all under the one mutex:
/// - the driver publishes `lease` only between events, while the machine is IdleHeld and not
///   asked to yield;
/// - `acb_on_device_begin` takes a published lease that fits and records its demand in
///   `claimed`; `acb_on_device_end` sets `end_pending`; neither wakes the driver, except an end
///   while a yield is pending (`yield_pending`, mirrored by the driver), so that the GPU goes
///   back at once;
/// - before handling any event the driver applies a claim (the phase begins) and then an end,
///   and withdraws the publication: nothing can move the machine between a caller's claim and
///   the driver seeing it. While it holds a lease the driver ticks every [`TICK`], so claims and
///   ends reach the machine (and the assigner hears busy or idle) within that time.
#[derive(Default)]
pub(crate) struct Kept {
    pub(crate) lease: Option<(GpuDemand, Lease)>,
    /// A begin's claim of the published lease, with the begin's number.
    pub(crate) claimed: Option<(GpuDemand, u64)>,
    pub(crate) end_pending: bool,
    pub(crate) yield_pending: bool,
    /// The lease of the phase still running when a new session did not keep it (the assigner
    /// restarted and did not resume the lost session: its grace ended, or it saved nothing):
    /// its GPU may have gone to another job during the phase. The phase's end says so.
    pub(crate) lost_mid_phase: Option<u64>,
}

pub(crate) type SharedKept = std::sync::Arc<std::sync::Mutex<Kept>>;

pub(crate) fn lock(k: &SharedKept) -> std::sync::MutexGuard<'_, Kept> {
    k.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How often the driver looks for claims and ends while it holds a lease.
const TICK: Duration = Duration::from_millis(2);

/// The first wait between attempts to resume a lost session (doubling up to [`RESUME_MAX`]).
const RESUME_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between attempts to resume a lost session: a restarted assigner holds the
/// lost session's leases for its grace period (30 s by default), well beyond it.
const RESUME_MAX: Duration = Duration::from_secs(2);

enum Event {
    Cmd(Option<Cmd>),
    Internal(Option<Internal>),
    Session(Option<proto::SessionEvent>),
    Timer,
}

pub(crate) struct Driver {
    cfg: Config,
    machine: ClientMachine,
    session: Option<Session>,
    start: tokio::time::Instant,
    begin_reply: Option<std_mpsc::Sender<Result<Lease, Error>>>,
    /// The begin (by number) that the machine's current request or phase belongs to. A cancel
    /// from any other begin is stale: without this, the cancel of a begin that timed out as its
    /// grant came could end the next begin's phase, taken meanwhile on the fast path, and the
    /// GPU would be given away under a running phase.
    owner: Option<u64>,
    /// The call waiting for the current request's grant.
    alloc_task: Option<JoinHandle<()>>,
    /// The devices of the lease held (their indexes and UUIDs, which the machine has no use for).
    granted: Option<proto::AllocateResponse>,
    /// The error the next `Action::Failed` reports (what the assigner said, precisely); only
    /// for the actions of the input that set it.
    fail_status: Option<fn(String) -> Error>,
    /// Shared with callers for phases on a kept GPU.
    kept: SharedKept,
    /// The demand of the current (or last) phase.
    last_demand: Option<GpuDemand>,
    internal: mpsc::UnboundedSender<Internal>,
    memory: SharedMemory,
    /// Why the last swap-in failed; the begin waiting for it gets the error.
    swap_failure: Option<String>,
    /// The token of the last session, to resume it once it is lost (see
    /// [`ClientMachine::wants_resume`]).
    last_token: String,
    /// When to try to resume next, and the wait after that.
    resume_at: Option<(tokio::time::Instant, Duration)>,
}

impl Driver {
    /// A driver for a client that is not connected yet (its first phase connects), started
    /// `start`; `internal` is the sender of the receiver [`Driver::run`] takes.
    pub(crate) fn new(
        cfg: Config,
        kept: SharedKept,
        memory: SharedMemory,
        internal: mpsc::UnboundedSender<Internal>,
        start: tokio::time::Instant,
    ) -> Driver {
        let mut machine =
            ClientMachine::new(acb_core::ClientConfig { release: cfg.release, idle_timeout: cfg.idle_timeout });
        if cfg.pin_gpus {
            machine = machine.with_pinned_gpus();
        }
        if !cfg.required_gpus.is_empty() {
            machine = machine.with_required_gpus(cfg.required_gpus.iter().map(|&g| acb_core::GpuId(g)).collect());
        }
        machine.handle_disconnect(CoreInstant::ZERO);
        let _ = machine.poll_action();
        Driver {
            cfg,
            machine,
            session: None,
            start,
            begin_reply: None,
            owner: None,
            alloc_task: None,
            granted: None,
            fail_status: None,
            kept,
            last_demand: None,
            internal,
            memory,
            swap_failure: None,
            last_token: String::new(),
            resume_at: None,
        }
    }

    fn now(&self) -> CoreInstant {
        CoreInstant::from_nanos(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    pub(crate) async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
    ) {
        loop {
            let mut deadline = self.machine.poll_timeout().map(|t| self.start + Duration::from_nanos(t.as_nanos()));
            if self.machine.lease().is_some() {
                let tick = tokio::time::Instant::now() + TICK;
                deadline = Some(deadline.map_or(tick, |d| d.min(tick)));
            }
            if let (true, Some((at, _))) = (self.session.is_none() && self.machine.wants_resume(), self.resume_at) {
                deadline = Some(deadline.map_or(at, |d| d.min(at)));
            }
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                cmd = cmds.recv() => Event::Cmd(cmd),
                msg = internal.recv() => Event::Internal(msg),
                ev = next_event(&mut self.session) => Event::Session(ev),
                () = timer => Event::Timer,
            };
            self.apply_callers();
            match event {
                Event::Cmd(cmd) => match cmd {
                    Some(Cmd::Close { reply }) => {
                        self.close().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.command(cmd),
                    None => {
                        self.close().await;
                        return;
                    }
                },
                Event::Internal(Some(msg)) => self.internal(msg),
                Event::Internal(None) => {}
                Event::Session(ev) => self.session_event(ev),
                Event::Timer => {
                    let now = self.now();
                    self.machine.handle_timeout(now);
                }
            }
            self.follow_session().await;
            self.perform().await;
            self.fail_status = None;
            self.publish_kept();
        }
    }

    /// Applies what callers did on their own threads (see [`Kept`]): a claim, then an end; and
    /// withdraws the published lease, before anything else may move the machine.
    fn apply_callers(&mut self) {
        let mut k = lock(&self.kept);
        k.lease = None;
        let claimed = k.claimed.take();
        let ended = std::mem::take(&mut k.end_pending);
        drop(k);
        let now = self.now();
        if let Some((demand, seq)) = claimed {
            // Published only while it fits; the caller already has the lease, so the machine's
            // Ready needs no reply.
            let _ = self.machine.begin(demand, now);
            self.owner = Some(seq);
        }
        if ended {
            self.owner = None;
            if let Err(e) = self.machine.end(now) {
                // The lease went away under the phase (revoked, or the assigner vanished): the
                // next begin starts afresh.
                tracing::debug!("a phase's end found no phase: {e}");
            }
        }
    }

    /// Publishes the kept lease while the machine keeps one, idle and unasked; mirrors whether
    /// a yield waits for the end of the active phase.
    fn publish_kept(&mut self) {
        let yield_pending = self.machine.state() == State::Active && self.machine.yield_asked();
        let publish = self.machine.state() == State::IdleHeld && !self.machine.yield_asked();
        let lease = match (publish, self.machine.lease(), self.last_demand.clone()) {
            (true, Some(l), Some(d)) => Some((d, self.lease_for(l))),
            _ => None,
        };
        let mut k = lock(&self.kept);
        k.yield_pending = yield_pending;
        k.lease = lease;
    }

    fn command(&mut self, cmd: Cmd) {
        let now = self.now();
        match cmd {
            Cmd::Begin { seq, demand, reply } => match self.machine.begin(demand.clone(), now) {
                Ok(()) => {
                    self.begin_reply = Some(reply);
                    self.last_demand = Some(demand);
                    self.owner = Some(seq);
                }
                Err(e) => {
                    let _ = reply.send(Err(failure(&e, None)));
                }
            },
            Cmd::Cancel { seq } if self.owner != Some(seq) => {}
            Cmd::Cancel { .. } => {
                self.begin_reply = None;
                self.owner = None;
                // A grant that raced the timeout is the machine's to end or give back.
                let _ = self.machine.cancel(now);
            }
            // The end itself was applied by apply_callers; this only woke the driver.
            Cmd::Wake => {}
            Cmd::Close { .. } => {}
        }
    }

    fn internal(&mut self, msg: Internal) {
        let now = self.now();
        match msg {
            Internal::Granted { tag, grant } => self.on_grant(tag, grant),
            Internal::AllocFailed { tag, status } => match status.code() {
                // A controller without this node's GPUs (its executor not registered, or lost):
                // the request cannot be served now; the caller is told, not left waiting.
                _ if acb_proto::reason_of(&status) == Some(acb_proto::ErrorReason::NodeUnavailable) => {
                    self.fail_status = Some(Error::Unavailable);
                    self.machine.handle_rejected(tag, status.message().to_string(), now);
                }
                // The session ended (the assigner restarted): the disconnect path handles it.
                tonic::Code::Aborted | tonic::Code::Unavailable | tonic::Code::Cancelled => {}
                // A restarted assigner does not know this session's token.
                _ if acb_proto::reason_of(&status) == Some(acb_proto::ErrorReason::UnknownToken) => {
                    self.machine.handle_session_expired(tag, now);
                }
                code => {
                    self.fail_status = Some(match code {
                        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Error::PermissionDenied,
                        tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted => Error::Rejected,
                        _ => Error::Internal,
                    });
                    self.machine.handle_rejected(tag, status.message().to_string(), now);
                }
            },
            Internal::ReleaseDone { session, lease } => self.machine.handle_release_acked(lease, session, now),
        }
    }

    /// A grant, from the call's reply or from the session (the assigner sends both; either may
    /// come first, and the reply is lost when the call was withdrawn as it was granted). The
    /// machine tells the copies apart; the driver keeps the devices of the one it takes.
    fn on_grant(&mut self, tag: RequestTag, grant: proto::AllocateResponse) {
        let gpus = grant.gpus.iter().map(|d| GpuId(d.id)).collect();
        let (lease, mem) = (LeaseId(grant.lease_id), grant.memory_per_gpu);
        let before = self.machine.lease();
        let now = self.now();
        self.machine.handle_granted(tag, lease, gpus, mem, now);
        if before != Some(lease) && self.machine.lease() == Some(lease) {
            self.granted = Some(grant);
        }
    }

    /// The session is gone: the machine saves what it holds; [`Driver::follow_session`] drops
    /// the session and reconnects a waiting phase.
    fn lose_session(&mut self) {
        let now = self.now();
        self.machine.handle_disconnect(now);
    }

    /// An event of the session; `None`: the session ended.
    fn session_event(&mut self, ev: Option<proto::SessionEvent>) {
        use proto::session_event::Event as E;
        let now = self.now();
        let Some(ev) = ev else {
            self.lose_session();
            return;
        };
        match ev.event {
            Some(E::YieldRequest(y)) => self.machine.handle_yield(LeaseId(y.lease_id), now),
            Some(E::Revoked(r)) => self.machine.handle_revoked(LeaseId(r.lease_id), now),
            Some(E::Granted(g)) => {
                if let Some(grant) = g.grant {
                    self.on_grant(RequestTag(g.request_tag), grant);
                }
            }
            Some(E::Welcome(_)) => {}
            Some(E::ShuttingDown(_)) => self.lose_session(),
            // An event from a newer assigner that this libacb does not know.
            None => {}
        }
    }

    /// Brings the session in line with the machine: while the machine counts on none, hold
    /// none (its calls die with it); when a phase waits for a connection, connect (with the
    /// configured retries), or fail the phase.
    ///
    /// A session lost while a lease was held is resumed without waiting for a phase (one
    /// attempt at a time, backing off while the assigner is away): the restarted assigner keeps
    /// the lease of a phase still running for this client, and frees at once one swapped out.
    async fn follow_session(&mut self) {
        if !self.machine.is_connected() && self.session.take().is_some() {
            self.abort_alloc();
        }
        if self.session.is_some() {
            return;
        }
        let phase_waits = self.machine.state() == State::Disconnected && self.begin_reply.is_some();
        if !phase_waits {
            if self.machine.wants_resume() {
                self.try_resume().await;
            }
            return;
        }
        match self.connect().await {
            Ok(s) => self.attach(s),
            Err(e) => {
                let now = self.now();
                let _ = self.machine.cancel(now);
                if let Some(r) = self.begin_reply.take() {
                    let _ = r.send(Err(e));
                }
            }
        }
    }

    /// One attempt to resume the lost session, when its time has come; the next is scheduled
    /// if it fails.
    async fn try_resume(&mut self) {
        let now = tokio::time::Instant::now();
        let (at, wait) = *self.resume_at.get_or_insert((now, RESUME_FIRST));
        if at > now {
            return;
        }
        match self.open_session().await {
            Ok(s) => self.attach(s),
            Err(e) => {
                tracing::debug!("resuming the session failed (retrying in {wait:?}): {e}");
                self.resume_at = Some((now + wait, (wait * 2).min(RESUME_MAX)));
            }
        }
    }

    /// Takes a session just opened: the machine hears of it, and of what it resumed.
    fn attach(&mut self, s: Session) {
        let now = self.now();
        let (resumed, kept) = (s.resumed, s.kept_leases.clone());
        let running = self.machine.resume_claim();
        self.last_token.clone_from(&s.token);
        self.session = Some(s);
        self.resume_at = None;
        self.machine.handle_reconnected(now);
        if let Some(lease) = running.filter(|l| !(resumed && kept.contains(&l.0))) {
            tracing::warn!(
                lease = lease.0,
                "the assigner did not keep the lease of the phase still running (its session was not resumed \
                 in time, or the assigner saved no leases): another job may be given its GPU before the phase ends"
            );
            lock(&self.kept).lost_mid_phase = Some(lease.0);
        }
        if resumed {
            let kept: Vec<LeaseId> = kept.into_iter().map(LeaseId).collect();
            tracing::debug!(?kept, "the assigner resumed this client's session");
            self.machine.handle_resumed(&kept, now);
        }
    }

    /// One attempt to open a session, resuming the last one (its token, and the lease of a
    /// phase still running).
    async fn open_session(&self) -> Result<Session, Error> {
        let rpc =
            connection::connect(&self.cfg.assigner, self.cfg.auth_token.as_deref(), self.cfg.connect_timeout).await?;
        let held: Vec<u64> = self.machine.resume_claim().map(|l| l.0).into_iter().collect();
        let open = Session::resume(rpc, &self.cfg.job, true, &self.last_token, &held);
        match tokio::time::timeout(self.cfg.connect_timeout, open).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(status)) => Err(Error::Unavailable(format!(
                "the assigner at {} refused the session: {}",
                self.cfg.assigner,
                status.message()
            ))),
            Err(_) => Err(Error::Unavailable(format!("the assigner at {} did not answer in time", self.cfg.assigner))),
        }
    }

    /// Opens a session, with the configured retries; [`Error::Unavailable`] with the last
    /// attempt's reason otherwise.
    async fn connect(&self) -> Result<Session, Error> {
        let mut last = String::new();
        for attempt in 0..=self.cfg.connect_retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            match self.open_session().await {
                Ok(s) => return Ok(s),
                Err(e) => last = e.to_string(),
            }
        }
        Err(Error::Unavailable(format!("{last} (after {} attempts)", self.cfg.connect_retries + 1)))
    }

    /// Performs the machine's actions, in order.
    async fn perform(&mut self) {
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::SendRequest { tag, demand } => self.send_request(tag, demand),
                Action::SendCancel => self.abort_alloc(),
                // Each swap completes before the next action: Ready after SwapIn, SendRelease
                // after SwapOut (the machine's contract).
                Action::SwapIn { lease, gpus, memory_per_gpu } => {
                    let (index, uuid) =
                        self.lease_for(lease).devices.first().map_or((0, String::new()), |d| (d.index, d.uuid.clone()));
                    let gpu = gpus.first().copied().unwrap_or(GpuId(0));
                    let swapped = {
                        let mut memory = self.memory.lock();
                        // The backend's own number for the granted GPU (CUDA's ordinal, by UUID).
                        let device = memory.device_for(index, &uuid);
                        memory.swap_in(gpu, device, memory_per_gpu)
                    };
                    if let Err(e) = swapped {
                        self.swap_failure = Some(e.to_string());
                    }
                    self.report_swap().await;
                }
                Action::SwapOut { .. } => {
                    if let Err(e) = self.memory.lock().swap_out() {
                        tracing::error!("swapping this job's memory out failed: {e}");
                    }
                    self.report_swap().await;
                }
                Action::Ready { lease } if self.swap_failure.is_some() => {
                    // The memory could not come back: fail the begin, give the GPU back.
                    let why = self.swap_failure.take().unwrap_or_default();
                    if let Some(r) = self.begin_reply.take() {
                        let _ = r.send(Err(Error::OutOfMemory(format!("cannot bring this job's memory back: {why}"))));
                    }
                    let now = self.now();
                    let _ = self.machine.end(now);
                    self.machine.handle_yield(lease, now);
                }
                Action::Ready { lease } => {
                    let l = self.lease_for(lease);
                    if let Some(r) = self.begin_reply.take()
                        && r.send(Ok(l)).is_err()
                    {
                        // The caller timed out as the grant came: it gave up the wait, and the
                        // machine ends the phase it never saw.
                        self.owner = None;
                        let now = self.now();
                        let _ = self.machine.cancel(now);
                    }
                }
                Action::ReportIdle { lease } | Action::ReportBusy { lease } => {
                    let idle = matches!(action, Action::ReportIdle { .. });
                    if let Some(s) = &self.session {
                        let _ = s.report_phase(lease.0, idle).await;
                    }
                }
                Action::SendRelease { lease } => self.send_release(lease),
                Action::Failed(e) => {
                    let status = self.fail_status.take();
                    if let Some(r) = self.begin_reply.take() {
                        let _ = r.send(Err(failure(&e, status)));
                    }
                }
                Action::Lost { .. } => {}
            }
        }
    }

    fn send_request(&mut self, tag: RequestTag, d: GpuDemand) {
        let Some(s) = &self.session else { return };
        let (mut rpc, token, tx) = (s.rpc(), s.token.clone(), self.internal.clone());
        self.abort_alloc();
        let req = allocate_request(token, tag, d, self.cfg.group.as_ref());
        self.alloc_task = Some(tokio::spawn(async move {
            let msg = match rpc.alloc_request(req).await {
                Ok(r) => Internal::Granted { tag, grant: r.into_inner() },
                Err(status) => Internal::AllocFailed { tag, status },
            };
            let _ = tx.send(msg);
        }));
    }

    fn send_release(&mut self, lease: LeaseId) {
        let tx = self.internal.clone();
        let session = self.machine.session();
        let Some(s) = &self.session else {
            // No connection: the assigner already dropped everything this session held.
            let _ = tx.send(Internal::ReleaseDone { session, lease });
            return;
        };
        let (mut rpc, token) = (s.rpc(), s.token.clone());
        tokio::spawn(async move {
            // Whatever the answer, the lease is no longer this client's to use.
            let _ = rpc.release(proto::ReleaseRequest { client_token: token, lease_id: lease.0 }).await;
            let _ = tx.send(Internal::ReleaseDone { session, lease });
        });
    }

    fn abort_alloc(&mut self) {
        if let Some(t) = self.alloc_task.take() {
            // Dropping the call cancels it; the assigner withdraws the request.
            t.abort();
        }
    }

    /// Tells the assigner what was swapped since the last report (its metrics count it).
    async fn report_swap(&self) {
        let (bytes_in, bytes_out) = self.memory.lock().take_unreported();
        if (bytes_in, bytes_out) != (0, 0)
            && let Some(s) = &self.session
        {
            let _ = s.report_swap(bytes_in, bytes_out).await;
        }
    }

    fn lease_for(&self, lease: LeaseId) -> Lease {
        let g = self.granted.as_ref().filter(|g| g.lease_id == lease.0);
        Lease {
            id: lease.0,
            devices: g
                .map(|g| g.gpus.iter().map(|d| Device { index: d.index, uuid: d.uuid.clone() }).collect())
                .unwrap_or_default(),
            memory_per_gpu: g.map_or(0, |g| g.memory_per_gpu),
        }
    }

    async fn close(&mut self) {
        self.abort_alloc();
        if let (Some(s), Some(lease)) = (&self.session, self.machine.lease()) {
            let mut rpc = s.rpc();
            let req = proto::ReleaseRequest { client_token: s.token.clone(), lease_id: lease.0 };
            let _ = tokio::time::timeout(Duration::from_secs(2), rpc.release(req)).await;
        }
        // Dropping the session ends it: the assigner releases anything left.
        self.session = None;
    }
}

async fn next_event(session: &mut Option<Session>) -> Option<proto::SessionEvent> {
    match session {
        Some(s) => s.events.message().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// The error a caller gets for what the machine refused; `rejected` says how the assigner's
/// refusal is reported (what the assigner said, precisely), `Rejected` by default.
fn failure(e: &ClientError, rejected: Option<fn(String) -> Error>) -> Error {
    let make = match e {
        ClientError::AlreadyActive | ClientError::AlreadyRequesting => Error::AlreadyActive,
        ClientError::NotActive | ClientError::NotRequesting => Error::NotActive,
        ClientError::Rejected(_) => rejected.unwrap_or(Error::Rejected),
        ClientError::Revoked(_) => Error::LeaseRevoked,
    };
    make(e.to_string())
}

/// What the assigner is asked for one phase: the demand, tagged, as a member of the client's
/// group if it has one (every request of a member names the group: after a lease is taken back,
/// the members ask again, together).
fn allocate_request(
    client_token: String,
    tag: RequestTag,
    d: GpuDemand,
    group: Option<&Group>,
) -> proto::AllocateRequest {
    let ids = |gpus: &[GpuId]| gpus.iter().map(|g| g.0).collect();
    let (required_gpus, preferred_gpus) = match &d.affinity {
        Affinity::Any => (Vec::new(), Vec::new()),
        Affinity::Required(gpus) => (ids(gpus), Vec::new()),
        Affinity::Preferred(gpus) => (Vec::new(), ids(gpus)),
    };
    proto::AllocateRequest {
        client_token,
        gpus: d.gpus,
        memory_per_gpu: d.memory_per_gpu,
        priority: d.priority,
        required_gpus,
        preferred_gpus,
        request_tag: tag.0,
        group: group.map(|g| g.name.clone()).unwrap_or_default(),
        group_size: group.map_or(0, |g| g.size),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_members_requests_name_its_group() {
        let d = GpuDemand {
            gpus: 2,
            memory_per_gpu: Some(1 << 30),
            priority: 3,
            affinity: Affinity::Preferred(vec![GpuId(1)]),
        };
        let g = Group { name: "torchrun:abc".into(), size: 4 };
        let r = allocate_request("t".into(), RequestTag(9), d.clone(), Some(&g));
        assert_eq!((r.group.as_str(), r.group_size), ("torchrun:abc", 4));
        assert_eq!((r.client_token.as_str(), r.gpus, r.memory_per_gpu, r.priority), ("t", 2, Some(1 << 30), 3));
        assert_eq!((r.preferred_gpus, r.required_gpus, r.request_tag), (vec![1], vec![], 9));
        let r = allocate_request("t".into(), RequestTag(9), d, None);
        assert_eq!((r.group.as_str(), r.group_size), ("", 0));
    }
}
