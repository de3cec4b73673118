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
//! # Driving it
//! The owner (libacb's background runtime, or the simulator) calls the inputs below and after
//! each one drains [`poll_action`](ClientMachine::poll_action), performing every action in
//! order: a [`Action::SwapIn`] completes before the [`Action::Ready`] that follows it is
//! honoured, and a [`Action::SwapOut`] completes before the [`Action::SendRelease`] after it
//! is sent. It arms one timer at [`poll_timeout`](ClientMachine::poll_timeout) and calls
//! [`handle_timeout`](ClientMachine::handle_timeout) when it fires (early or twice is harmless).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use crate::{Affinity, GpuId, Instant, LeaseId};

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
    SendRequest(GpuDemand),
    /// Withdraw the queued request.
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
    /// Give the lease back to the assigner.
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

/// One job's session with the assigner. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct ClientMachine {
    config: ClientConfig,
    state: State,
    connected: bool,
    /// The connection dropped during the current phase: the assigner no longer knows the lease.
    orphaned: bool,
    held: Option<Held>,
    /// The demand of the phase being requested, or to request once a release or a reconnect
    /// completes.
    pending: Option<GpuDemand>,
    /// The demand the current lease was granted for.
    current: Option<GpuDemand>,
    yield_asked: bool,
    idle_since: Option<Instant>,
    actions: VecDeque<Action>,
}

impl ClientMachine {
    /// A connected session with nothing held.
    pub fn new(config: ClientConfig) -> Self {
        ClientMachine {
            config,
            state: State::Idle,
            connected: true,
            orphaned: false,
            held: None,
            pending: None,
            current: None,
            yield_asked: false,
            idle_since: None,
            actions: VecDeque::new(),
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

    /// Gives up waiting for a grant.
    pub fn cancel(&mut self, _now: Instant) -> Result<(), ClientError> {
        match self.state {
            State::Requesting => {
                self.state = State::Idle;
                self.pending = None;
                self.actions.push_back(Action::SendCancel);
                Ok(())
            }
            State::Releasing | State::Disconnected if self.pending.is_some() => {
                self.pending = None;
                Ok(())
            }
            _ => Err(ClientError::NotRequesting),
        }
    }

    /// The assigner granted the request.
    pub fn handle_granted(&mut self, lease: LeaseId, gpus: Vec<GpuId>, memory_per_gpu: u64, _now: Instant) {
        let fits = self.pending.as_ref().is_some_and(|d| {
            let held = Held { lease, gpus: gpus.clone(), memory_per_gpu };
            d.gpus as usize == gpus.len() && d.memory_per_gpu.is_none_or(|m| m <= held.memory_per_gpu)
        });
        if self.state != State::Requesting || !fits {
            // A grant that crossed a cancel (or a stale one that cannot serve this phase):
            // nobody wants it. If a request is waiting, its own grant is still to come.
            self.actions.push_back(Action::SendRelease { lease });
            return;
        }
        self.state = State::Active;
        self.yield_asked = false;
        self.current = self.pending.take();
        self.actions.push_back(Action::SwapIn { lease, gpus: gpus.clone(), memory_per_gpu });
        self.actions.push_back(Action::Ready { lease });
        self.held = Some(Held { lease, gpus, memory_per_gpu });
    }

    /// The assigner refused the request.
    pub fn handle_rejected(&mut self, why: alloc::string::String, _now: Instant) {
        if self.state == State::Requesting {
            self.state = State::Idle;
            self.pending = None;
            self.actions.push_back(Action::Failed(ClientError::Rejected(why)));
        }
    }

    /// The assigner asks for the lease back.
    pub fn handle_yield(&mut self, lease: LeaseId, _now: Instant) {
        if self.lease() != Some(lease) {
            return; // stale: that lease is already gone
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

    /// The assigner confirmed the release of `lease`.
    pub fn handle_release_acked(&mut self, lease: LeaseId, _now: Instant) {
        if self.state != State::Releasing || self.lease() != Some(lease) {
            return; // the ack of a lease given straight back, or a stale one
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

    /// The connection is back. A phase that was waiting asks again.
    pub fn handle_reconnected(&mut self, _now: Instant) {
        if self.connected {
            return;
        }
        self.connected = true;
        if self.state == State::Disconnected {
            self.state = State::Idle;
            if let Some(demand) = self.pending.take() {
                self.request(demand);
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
        self.state = State::Requesting;
        self.actions.push_back(Action::SendRequest(demand.clone()));
        self.pending = Some(demand);
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
