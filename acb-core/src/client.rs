//! The client session machine: one job's view of its GPU phases and its lease.
//!
//! ```text
//!            begin                 granted                end (lazy)
//!   Idle ─────────────▶ Requesting ───────▶ Active ───────────────▶ IdleHeld
//!    ▲                                        │  ▲                     │
//!    │                      end (eager, or    │  └──── begin ──────────┤ (GPU kept: no swap)
//!    │                      yield asked)      ▼                        │ yield asked, idle
//!    └──────── release acked ─────────── Releasing ◀───────────────────┘ timeout
//! ```
//!
//! The machine holds all of the session's protocol state, so that its races can be told as
//! stories on a virtual clock (`tests/client_stories.rs`): which request is current (its
//! [`RequestTag`]), which session a result belongs to ([`SessionEpoch`]), which grants were
//! already handled (each comes twice), which GPUs the job is pinned to, and what to do with a
//! grant nobody waits for any more. Its owner only does I/O; see [`ClientMachine`] for how to
//! drive it.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use crate::{Affinity, GpuId, Instant, LeaseId};

/// How many granted leases the machine remembers to recognise a grant's second copy (it comes
/// within moments of the first).
const SEEN_GRANTS: usize = 16;

/// Names one allocation request. The machine chooses it (in [`Action::SendRequest`]) and the
/// assigner echoes it with the grant, so that a grant for a request since withdrawn is known for
/// what it is. Tags are never reused, not even across sessions; 0 means none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestTag(pub u64);

/// Names one session with the assigner: a new epoch begins at every disconnect and every
/// reconnect. The owner stamps each call it makes with [`ClientMachine::session`] and passes the
/// stamp back with the call's result, so that a result from a session since ended is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionEpoch(pub u64);

/// What one GPU phase needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuDemand {
    /// GPUs, granted together.
    pub gpus: u32,
    /// Memory per GPU in bytes; `None` for whole GPUs.
    pub memory_per_gpu: Option<u64>,
    /// Higher is served first.
    pub priority: i32,
    /// Placement wishes.
    pub affinity: Affinity,
}

impl GpuDemand {
    /// `gpus` whole GPUs.
    pub fn gpus(gpus: u32) -> Self {
        GpuDemand { gpus, ..Default::default() }
    }
}

/// When a lease goes back after a GPU phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReleaseMode {
    /// Keep the GPU (and the memory on it) until someone else waits, or the idle timeout: the
    /// next phase starts with no swap at all.
    #[default]
    Lazy,
    /// Swap out and give the GPU back at the end of every phase.
    Eager,
}

/// Client settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientConfig {
    /// Lazy or eager release.
    pub release: ReleaseMode,
    /// Under lazy release, give the GPU back after it was idle this long even if nobody waits.
    pub idle_timeout: Option<Duration>,
}

/// Where the session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No lease, nothing asked.
    Idle,
    /// Asked, waiting for a grant.
    Requesting,
    /// In a GPU phase, holding a lease.
    Active,
    /// Between GPU phases, still holding the lease and its memory on the GPU.
    IdleHeld,
    /// Swapping out and giving the lease back.
    Releasing,
    /// The assigner is unreachable; waiting to reconnect.
    Disconnected,
}

/// Something the owner must do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Send an allocation request to the assigner.
    SendRequest {
        /// The request's tag, sent with it (`request_tag`); its grant comes back with it.
        tag: RequestTag,
        /// What to ask for. When the job is pinned, its affinity requires the pinned GPUs.
        demand: GpuDemand,
    },
    /// Withdraw the queued request (drop the call that waits for its grant).
    SendCancel,
    /// Bring the job's device memory back onto these GPUs (at the same addresses).
    SwapIn {
        /// The lease.
        lease: LeaseId,
        /// Its GPUs.
        gpus: Vec<GpuId>,
        /// The memory fence per GPU, in bytes.
        memory_per_gpu: u64,
    },
    /// The GPU phase may start: `begin` returns this lease.
    Ready {
        /// The lease.
        lease: LeaseId,
    },
    /// Tell the assigner the lease is idle (kept under lazy release).
    ReportIdle {
        /// The lease.
        lease: LeaseId,
    },
    /// Tell the assigner the kept lease is busy again.
    ReportBusy {
        /// The lease.
        lease: LeaseId,
    },
    /// Copy the job's device memory to host memory and unmap it from the GPUs.
    SwapOut {
        /// The lease the memory was on.
        lease: LeaseId,
    },
    /// Give the lease back to the assigner: a lease this job held, or one granted that nobody
    /// wants (its request was withdrawn, or the phase cannot use it). Its acknowledgement
    /// goes to [`ClientMachine::handle_release_acked`], stamped with the session it was sent in.
    SendRelease {
        /// The lease.
        lease: LeaseId,
    },
    /// A waiting `begin` fails.
    Failed(ClientError),
    /// The lease is gone without a swap-out (its GPU was lost): what was on it is lost.
    Lost {
        /// The lease.
        lease: LeaseId,
    },
}

/// What a job did wrong, or what happened to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// `begin` while already in a GPU phase.
    AlreadyActive,
    /// `begin` while a request is already waiting.
    AlreadyRequesting,
    /// `end` outside a GPU phase.
    NotActive,
    /// `cancel` with no request waiting.
    NotRequesting,
    /// The assigner refused the request; the text says why.
    Rejected(alloc::string::String),
    /// The lease was revoked (its GPU was lost).
    Revoked(LeaseId),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::AlreadyActive => f.write_str("on_device_begin called twice without on_device_end"),
            ClientError::AlreadyRequesting => f.write_str("a request for GPUs is already waiting"),
            ClientError::NotActive => f.write_str("on_device_end called without on_device_begin"),
            ClientError::NotRequesting => f.write_str("no request for GPUs is waiting"),
            ClientError::Rejected(why) => write!(f, "the assigner refused the request: {why}"),
            ClientError::Revoked(l) => write!(f, "{l} was revoked: a GPU it used was lost"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ClientError {}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    lease: LeaseId,
    gpus: Vec<GpuId>,
    memory_per_gpu: u64,
}

/// One job's session with the assigner. See the [module docs](self) for its states.
///
/// # Polling order
/// The owner (libacb's driver, or the simulator) drives it from one place, in this order:
/// 1. Feed it what happened, each with the time it happened: the caller's commands
///    ([`begin`](Self::begin), [`end`](Self::end), [`safe_point`](Self::safe_point),
///    [`cancel`](Self::cancel)), the assigner's messages as they arrive, from either source and
///    in any order ([`handle_granted`](Self::handle_granted) for both the call's reply and the
///    session's copy; [`handle_rejected`](Self::handle_rejected),
///    [`handle_session_expired`](Self::handle_session_expired), [`handle_yield`](Self::handle_yield),
///    [`handle_revoked`](Self::handle_revoked), [`handle_release_acked`](Self::handle_release_acked)),
///    the connection's fate ([`handle_disconnect`](Self::handle_disconnect),
///    [`handle_reconnected`](Self::handle_reconnected)) and the timer
///    ([`handle_timeout`](Self::handle_timeout), harmless early or twice). Nothing needs
///    filtering first: stale and duplicate inputs are the machine's to recognise.
/// 2. Drain [`poll_action`](Self::poll_action) and perform every action in order: a
///    [`Action::SwapIn`] completes before the [`Action::Ready`] after it is honoured, and a
///    [`Action::SwapOut`] completes before the [`Action::SendRelease`] after it is sent. An
///    input fed while draining (a waiter gone when `Ready` is delivered: `cancel`) queues its
///    actions behind the ones left.
/// 3. Bring the I/O in line with the machine: while [`is_connected`](Self::is_connected) is
///    false, hold no session (drop the one it has; open one when a phase waits, then
///    `handle_reconnected`).
/// 4. Arm one timer at [`poll_timeout`](Self::poll_timeout).
#[derive(Clone, Debug)]
pub struct ClientMachine {
    config: ClientConfig,
    state: State,
    connected: bool,
    /// The connection dropped during the current phase: the assigner no longer knows the lease
    /// (unless a resumed session claims it back: [`ClientMachine::handle_resumed`]).
    orphaned: bool,
    /// The connection dropped while a lease was held: the next session should resume the old
    /// one soon, to claim the lease of a phase still running or to free one swapped out.
    resume_wanted: bool,
    held: Option<Held>,
    /// The demand of the phase being requested, or to request once a release or a reconnect
    /// completes.
    pending: Option<GpuDemand>,
    /// The demand the current lease was granted for.
    current: Option<GpuDemand>,
    yield_asked: bool,
    idle_since: Option<Instant>,
    actions: VecDeque<Action>,
    /// The tag of the request waiting for its grant (in `Requesting` only).
    request_tag: Option<RequestTag>,
    /// The tag the next request gets.
    next_tag: u64,
    /// The first tag issued in the current session: a grant for an earlier one is from a
    /// session that has ended, and its lease ended with it.
    session_first_tag: u64,
    /// The current session.
    epoch: SessionEpoch,
    /// The leases granted lately in this session, to know a grant's second copy.
    seen: VecDeque<LeaseId>,
    /// Whether later requests require the GPUs of the first grant.
    pin_gpus: bool,
    /// Those GPUs, once granted.
    pinned: Vec<GpuId>,
}

impl ClientMachine {
    /// A connected session with nothing held.
    pub fn new(config: ClientConfig) -> Self {
        ClientMachine {
            config,
            state: State::Idle,
            connected: true,
            orphaned: false,
            resume_wanted: false,
            held: None,
            pending: None,
            current: None,
            yield_asked: false,
            idle_since: None,
            actions: VecDeque::new(),
            request_tag: None,
            next_tag: 1,
            session_first_tag: 1,
            epoch: SessionEpoch(0),
            seen: VecDeque::new(),
            pin_gpus: false,
            pinned: Vec::new(),
        }
    }

    /// Pins the job to the GPUs of its first grant: every later request requires them (its
    /// memory, for instance, was allocated there by a framework that cannot move it).
    pub fn with_pinned_gpus(mut self) -> Self {
        self.pin_gpus = true;
        self
    }

    /// Confines the job to `gpus` from the start: every request requires them (a Kubernetes
    /// pod may use only the GPUs whose device nodes it was given). An empty list confines
    /// nothing.
    pub fn with_required_gpus(mut self, gpus: Vec<GpuId>) -> Self {
        self.pinned = gpus;
        self
    }

    /// The GPUs later requests require (empty until the first grant, or when not pinned).
    pub fn pinned_gpus(&self) -> &[GpuId] {
        &self.pinned
    }

    /// The current session: stamp each call with it, pass the stamp back with its result.
    pub fn session(&self) -> SessionEpoch {
        self.epoch
    }

    /// Whether the machine counts on a session with the assigner. While it does not, its owner
    /// holds none (see the polling order on [`ClientMachine`]).
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether a lost session held a lease: the owner should open a session soon (without
    /// waiting for a phase) and resume the old one, claiming [`resume_claim`](Self::resume_claim).
    /// A restarted assigner holds the old session's leases for a grace period; this lets it free
    /// a swapped-out one at once, and keep the GPU of a phase still running for it.
    pub fn wants_resume(&self) -> bool {
        !self.connected && self.resume_wanted
    }

    /// The lease a resumed session should claim: that of a phase still running since the
    /// session was lost (none when its memory was swapped out).
    pub fn resume_claim(&self) -> Option<LeaseId> {
        match (self.connected, self.state, self.orphaned) {
            (false, State::Active, true) => self.held.as_ref().map(|h| h.lease),
            _ => None,
        }
    }

    /// Where the session is.
    pub fn state(&self) -> State {
        self.state
    }

    /// The lease held, if any (in `Active`, `IdleHeld` and `Releasing`).
    pub fn lease(&self) -> Option<LeaseId> {
        self.held.as_ref().map(|h| h.lease)
    }

    /// The GPUs of the lease held.
    pub fn gpus(&self) -> &[GpuId] {
        self.held.as_ref().map_or(&[], |h| h.gpus.as_slice())
    }

    /// Whether the assigner asked for the lease back.
    pub fn yield_asked(&self) -> bool {
        self.yield_asked
    }

    /// The settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// A GPU phase starts: ask for GPUs, or take the kept lease back into use.
    pub fn begin(&mut self, demand: GpuDemand, _now: Instant) -> Result<(), ClientError> {
        match self.state {
            State::Active => Err(ClientError::AlreadyActive),
            State::Requesting => Err(ClientError::AlreadyRequesting),
            State::Releasing | State::Disconnected if self.pending.is_some() => Err(ClientError::AlreadyRequesting),
            State::Releasing | State::Disconnected => {
                self.pending = Some(demand);
                Ok(())
            }
            State::Idle => {
                self.request(demand);
                Ok(())
            }
            State::IdleHeld => {
                let fits = self.held.as_ref().is_some_and(|h| self.lease_serves(h, &demand));
                if fits && !self.yield_asked {
                    let lease = self.lease_id();
                    self.state = State::Active;
                    self.idle_since = None;
                    self.current = Some(demand);
                    self.actions.push_back(Action::ReportBusy { lease });
                    self.actions.push_back(Action::Ready { lease });
                } else {
                    // The kept lease is too small, or wanted elsewhere: give it back, then ask.
                    self.pending = Some(demand);
                    self.start_release();
                }
                Ok(())
            }
        }
    }

    /// The GPU phase ended.
    pub fn end(&mut self, now: Instant) -> Result<(), ClientError> {
        if self.state != State::Active {
            return Err(ClientError::NotActive);
        }
        if !self.connected || self.orphaned {
            // The assigner forgot the lease when the connection dropped: save the memory and
            // hold nothing.
            let lease = self.lease_id();
            self.actions.push_back(Action::SwapOut { lease });
            self.drop_held();
            self.state = if self.connected { State::Idle } else { State::Disconnected };
            return Ok(());
        }
        if self.yield_asked || self.config.release == ReleaseMode::Eager {
            self.start_release();
        } else {
            let lease = self.lease_id();
            self.state = State::IdleHeld;
            self.idle_since = Some(now);
            self.actions.push_back(Action::ReportIdle { lease });
        }
        Ok(())
    }

    /// A safe point inside a GPU phase. If the assigner asked for the lease back, it is given
    /// back now and the same demand is queued again; returns whether that happened (the phase
    /// continues once [`Action::Ready`] comes again).
    pub fn safe_point(&mut self, _now: Instant) -> bool {
        if self.state != State::Active || !self.yield_asked || !self.connected || self.orphaned {
            return false;
        }
        self.pending = self.current.clone();
        self.start_release();
        true
    }

    /// Gives up waiting for a grant (the waiting `begin` timed out, or its caller is gone). A
    /// grant that raced it is the machine's to deal with: one that arrives later is given back
    /// unused, and one that came first, whose phase the caller never saw, ends that phase now.
    pub fn cancel(&mut self, now: Instant) -> Result<(), ClientError> {
        match self.state {
            State::Requesting => {
                self.state = State::Idle;
                self.pending = None;
                self.request_tag = None;
                self.actions.push_back(Action::SendCancel);
                Ok(())
            }
            State::Active => self.end(now),
            State::Releasing | State::Disconnected if self.pending.is_some() => {
                self.pending = None;
                Ok(())
            }
            _ => Err(ClientError::NotRequesting),
        }
    }

    /// The assigner granted the request tagged `tag`. Each grant comes twice, as the call's
    /// reply and as the session's event, in either order: feed both; the second is ignored. A
    /// grant from a session that has ended is ignored (its lease ended with it); one for a
    /// request since withdrawn, or that cannot serve the phase, is given back unused.
    pub fn handle_granted(
        &mut self,
        tag: RequestTag,
        lease: LeaseId,
        gpus: Vec<GpuId>,
        memory_per_gpu: u64,
        _now: Instant,
    ) {
        if !self.connected || tag.0 < self.session_first_tag {
            return; // an earlier session's grant
        }
        if self.lease() == Some(lease) || self.seen.contains(&lease) {
            return; // the other copy of a grant already handled
        }
        if self.seen.len() == SEEN_GRANTS {
            self.seen.pop_front();
        }
        self.seen.push_back(lease);
        let fits = self
            .pending
            .as_ref()
            .is_some_and(|d| d.gpus as usize == gpus.len() && d.memory_per_gpu.is_none_or(|m| m <= memory_per_gpu));
        if self.state != State::Requesting || self.request_tag != Some(tag) || !fits {
            // A grant for a withdrawn request (it crossed a cancel), or one that cannot serve
            // this phase: nobody wants it, but the assigner thinks we hold it. If a request is
            // waiting, its own grant is still to come.
            self.actions.push_back(Action::SendRelease { lease });
            return;
        }
        if self.pin_gpus && self.pinned.is_empty() {
            self.pinned = gpus.clone();
        }
        self.state = State::Active;
        self.yield_asked = false;
        self.request_tag = None;
        self.current = self.pending.take();
        self.actions.push_back(Action::SwapIn { lease, gpus: gpus.clone(), memory_per_gpu });
        self.actions.push_back(Action::Ready { lease });
        self.held = Some(Held { lease, gpus, memory_per_gpu });
    }

    /// The assigner refused the request tagged `tag` (a refusal of a request since withdrawn
    /// is ignored).
    pub fn handle_rejected(&mut self, tag: RequestTag, why: alloc::string::String, _now: Instant) {
        if self.state == State::Requesting && self.request_tag == Some(tag) {
            self.state = State::Idle;
            self.request_tag = None;
            self.pending = None;
            self.actions.push_back(Action::Failed(ClientError::Rejected(why)));
        }
    }

    /// The assigner asks for the lease back.
    pub fn handle_yield(&mut self, lease: LeaseId, _now: Instant) {
        if self.lease() != Some(lease) {
            if self.connected && !self.seen.contains(&lease) {
                // A lease granted in this session that this job never saw (both copies of the
                // grant of a withdrawn request lost): the assigner thinks we hold it.
                self.actions.push_back(Action::SendRelease { lease });
            }
            return; // otherwise stale: that lease is already gone, or going
        }
        self.yield_asked = true;
        if self.state == State::IdleHeld {
            self.start_release();
        }
    }

    /// The assigner took the lease away (a GPU was lost).
    pub fn handle_revoked(&mut self, lease: LeaseId, _now: Instant) {
        if self.lease() != Some(lease) {
            return;
        }
        let was = self.state;
        self.drop_held();
        self.actions.push_back(Action::Lost { lease });
        self.state = State::Idle;
        match was {
            State::Active => self.actions.push_back(Action::Failed(ClientError::Revoked(lease))),
            State::Releasing => {
                if let Some(demand) = self.pending.take() {
                    self.request(demand);
                }
            }
            _ => {}
        }
    }

    /// The assigner confirmed the release of `lease`, sent in `session`.
    pub fn handle_release_acked(&mut self, lease: LeaseId, session: SessionEpoch, _now: Instant) {
        if session != self.epoch || self.state != State::Releasing || self.lease() != Some(lease) {
            // The ack of a lease given straight back, or a stale one: from a session since
            // ended, a restarted assigner may have granted the same lease id again.
            return;
        }
        self.drop_held();
        self.state = State::Idle;
        if let Some(demand) = self.pending.take() {
            self.request(demand);
        }
    }

    /// The connection to the assigner dropped. The assigner releases everything a session held
    /// when it ends, so whatever memory is on a GPU is saved to host and nothing is held.
    pub fn handle_disconnect(&mut self, _now: Instant) {
        if !self.connected {
            return;
        }
        self.connected = false;
        self.new_session();
        self.resume_wanted = self.held.is_some();
        match self.state {
            State::Idle => self.state = State::Disconnected,
            State::Requesting => {
                self.pending = self.pending.take().or_else(|| self.current.clone());
                self.state = State::Disconnected;
            }
            // Mid-phase: the kernels already running cannot be stopped; the phase ends
            // normally and `end` saves the memory.
            State::Active => self.orphaned = true,
            State::IdleHeld => {
                let lease = self.lease_id();
                self.actions.push_back(Action::SwapOut { lease });
                self.drop_held();
                self.state = State::Disconnected;
            }
            State::Releasing => {
                // The swap-out already went out; the release has nowhere to go.
                self.drop_held();
                self.state = State::Disconnected;
            }
            State::Disconnected => {}
        }
    }

    /// A reply to request `tag` says the assigner no longer knows this session (it restarted
    /// and the session's end has not reached us yet): the session is over, as at a
    /// disconnect. A reply from a session already over is ignored.
    pub fn handle_session_expired(&mut self, tag: RequestTag, now: Instant) {
        if self.connected && tag.0 >= self.session_first_tag {
            self.handle_disconnect(now);
        }
    }

    /// The connection is back. A phase that was waiting asks again.
    pub fn handle_reconnected(&mut self, _now: Instant) {
        if self.connected {
            return;
        }
        self.connected = true;
        self.resume_wanted = false;
        self.new_session();
        if self.state == State::Disconnected {
            self.state = State::Idle;
            if let Some(demand) = self.pending.take() {
                self.request(demand);
            }
        }
    }

    /// The session just opened (after [`handle_reconnected`](Self::handle_reconnected)) resumed
    /// the lost one: the assigner kept `kept` for this client. The phase that was running goes on
    /// under its lease, no longer orphaned (its end reports and releases as usual); any other
    /// lease kept is one this client no longer uses, and is given back.
    pub fn handle_resumed(&mut self, kept: &[LeaseId], _now: Instant) {
        if !self.connected {
            return;
        }
        let running = match (self.state, self.orphaned) {
            (State::Active, true) => self.held.as_ref().map(|h| h.lease),
            _ => None,
        };
        for lease in kept {
            if Some(*lease) == running {
                self.orphaned = false;
            } else {
                self.actions.push_back(Action::SendRelease { lease: *lease });
            }
        }
    }

    /// Time passed: a lease kept idle past the idle timeout is given back.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.poll_timeout()
            && now >= deadline
            && self.state == State::IdleHeld
        {
            self.start_release();
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.state, self.idle_since, self.config.idle_timeout) {
            (State::IdleHeld, Some(since), Some(timeout)) => Some(since + timeout),
            _ => None,
        }
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether the kept lease `h` can serve `demand` without asking the assigner again.
    fn lease_serves(&self, h: &Held, demand: &GpuDemand) -> bool {
        let memory_ok = match (demand.memory_per_gpu, self.current.as_ref().and_then(|c| c.memory_per_gpu)) {
            (Some(m), _) => m <= h.memory_per_gpu,
            // Whole GPUs: only a lease that was granted as whole GPUs.
            (None, None) => true,
            (None, Some(_)) => false,
        };
        let placement_ok = match &demand.affinity {
            Affinity::Required(ids) => h.gpus.iter().all(|g| ids.contains(g)),
            _ => true,
        };
        h.gpus.len() == demand.gpus as usize && memory_ok && placement_ok
    }

    fn request(&mut self, demand: GpuDemand) {
        if !self.connected {
            self.state = State::Disconnected;
            self.pending = Some(demand);
            return;
        }
        let tag = RequestTag(self.next_tag);
        self.next_tag += 1;
        self.state = State::Requesting;
        self.request_tag = Some(tag);
        let mut sent = demand.clone();
        if !self.pinned.is_empty() {
            sent.affinity = Affinity::Required(self.pinned.clone());
        }
        self.actions.push_back(Action::SendRequest { tag, demand: sent });
        self.pending = Some(demand);
    }

    /// A session ended or began: what was asked or granted in the last one is stale.
    fn new_session(&mut self) {
        self.epoch = SessionEpoch(self.epoch.0 + 1);
        self.session_first_tag = self.next_tag;
        self.request_tag = None;
        self.seen.clear();
    }

    fn start_release(&mut self) {
        let lease = self.lease_id();
        self.state = State::Releasing;
        self.idle_since = None;
        self.actions.push_back(Action::SwapOut { lease });
        self.actions.push_back(Action::SendRelease { lease });
    }

    fn drop_held(&mut self) {
        self.held = None;
        self.orphaned = false;
        self.current = None;
        self.yield_asked = false;
        self.idle_since = None;
    }

    fn lease_id(&self) -> LeaseId {
        // Only called in states that hold a lease.
        self.held.as_ref().map_or(LeaseId(0), |h| h.lease)
    }
}
