//! The scheduler: who holds which GPU, who waits, and who is asked to give a GPU back.
//!
//! # Driving it
//! The scheduler is a sans-IO state machine. Its owner (the assigner daemon, or the simulator)
//! feeds it inputs, each stamped with `now`:
//! [`connect`](Scheduler::connect), [`disconnect`](Scheduler::disconnect),
//! [`submit`](Scheduler::submit), [`cancel`](Scheduler::cancel),
//! [`release`](Scheduler::release), [`report_idle`](Scheduler::report_idle),
//! [`report_busy`](Scheduler::report_busy), [`set_health`](Scheduler::set_health) and
//! [`handle_timeout`](Scheduler::handle_timeout). After any input it must:
//! 1. drain [`poll_output`](Scheduler::poll_output) until `None` and act on each output
//!    (tell the client of its grant, ask a holder to yield, ...), in order;
//! 2. arm one timer at [`poll_timeout`](Scheduler::poll_timeout) and call
//!    `handle_timeout` when it fires. Calling it early, or twice, is harmless.
//!
//! # How grants are decided
//! The queue is ordered by priority (higher first), then arrival. The head of the queue is
//! granted as soon as GPUs that fit it are usable. When it cannot be, it gets a *reservation*:
//! the GPUs it will have next. Holders on those GPUs that are idle (their job is in a CPU phase)
//! are asked to yield at once; holders still busy are asked once they have held their lease
//! for the time-slice quantum, if one is configured. Policies with backfill then try the
//! requests behind the head on GPUs outside the reservation, so a small request may run
//! around a large one but never delays it: the head cannot starve.
//!
//! A one-GPU head under an exclusive policy needs no sticky reservation (any GPU that frees up
//! is offered to the head first, before any backfill), so it is re-chosen on every pass to
//! follow whichever holder will let go soonest. Gangs, and any head under `gpu-sharing`, keep
//! their reservation until they are granted.

mod index;
mod invariants;
mod lease;
mod output;
mod pass;
mod placement;
mod policy;
mod queue;
mod reclaim;
mod reservation;
mod restore;
mod validation;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::time::Duration;

pub use self::lease::Lease;
pub use self::output::{Grant, Output, YieldReason};
pub use self::policy::{Policy, UnknownPolicy};
use self::queue::QueueKey;
pub use self::queue::QueuedRequest;
use self::reservation::Reservation;
pub use self::restore::RestoredLease;
use self::validation::HealthySummary;
use crate::{ClientId, Error, GpuId, GpuPool, Health, Instant, LeaseId, Request, RequestId};

/// Scheduler settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// The policy.
    pub policy: Policy,
    /// The time slice: a busy holder that blocks the head of the queue, and whose priority is
    /// not above the head's, is asked to yield once it has held its lease this long. `None`:
    /// holders are only asked when idle.
    pub quantum: Option<Duration>,
    /// How many requests one client may have queued and leases held, together, at once.
    pub max_queued_per_client: usize,
    /// How many requests behind the head one pass tries to backfill (like Slurm's
    /// `bf_max_job_test`): bounds the cost of a pass when the queue is long.
    pub backfill_depth: usize,
}

impl SchedulerConfig {
    /// The defaults for `policy`: no quantum, 64 queued requests per client, backfill depth 256.
    pub fn new(policy: Policy) -> Self {
        SchedulerConfig { policy, quantum: None, max_queued_per_client: 64, backfill_depth: 256 }
    }

    /// The same settings with a time-slice quantum.
    pub fn with_quantum(mut self, quantum: Duration) -> Self {
        self.quantum = Some(quantum);
        self
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig::new(Policy::Simple)
    }
}

/// One GPU's scheduling state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuState {
    /// Leases holding this GPU (at most one under an exclusive policy).
    pub holders: Vec<LeaseId>,
    /// Memory granted on it, in bytes.
    pub granted: u64,
    /// Whether it is reserved for the head of the queue.
    pub reserved: bool,
    /// Holders in a GPU phase.
    pub busy_holders: u32,
    /// Holders between GPU phases (kept under lazy release).
    pub idle_holders: u32,
    /// Its key in the grantable index, if it is there.
    index_key: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct ClientState {
    leases: BTreeSet<LeaseId>,
    queued: BTreeSet<RequestId>,
    last_gpus: Vec<GpuId>,
}

/// What a disconnect took away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Disconnected {
    /// Leases the client held, now released.
    pub leases: Vec<LeaseId>,
    /// Requests it had queued, now dropped.
    pub requests: Vec<RequestId>,
}

/// The GPU scheduler. See the [module docs](self) for how to drive it.
#[derive(Clone, Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    pool: GpuPool,
    gpus: Vec<GpuState>,
    /// Healthy GPUs that can take a new grant now, keyed by free memory (best fit first).
    /// Under an exclusive policy only GPUs without a holder are here.
    grantable: BTreeSet<(u64, GpuId)>,
    clients: BTreeMap<ClientId, ClientState>,
    queue: BTreeMap<QueueKey, RequestId>,
    requests: BTreeMap<RequestId, QueuedRequest>,
    /// How many queued requests need each amount of memory per GPU (a multiset): when the
    /// smallest need fits nowhere, backfill stops at once.
    queued_needs: BTreeMap<u64, usize>,
    /// Ordered by id, which is grant order: the first is the oldest grant.
    leases: BTreeMap<LeaseId, Lease>,
    /// Idle leases not yet asked to yield: what lazy release keeps for later.
    idle_unasked: BTreeSet<LeaseId>,
    reservation: Option<Reservation>,
    healthy: HealthySummary,
    outputs: VecDeque<Output>,
    next_request: u64,
    next_lease: u64,
    next_seq: u64,
}

impl Scheduler {
    /// A scheduler owning `pool`.
    pub fn new(config: SchedulerConfig, pool: GpuPool) -> Self {
        let mut s = Scheduler {
            config,
            gpus: alloc::vec![GpuState::default(); pool.len()],
            pool,
            grantable: BTreeSet::new(),
            clients: BTreeMap::new(),
            queue: BTreeMap::new(),
            requests: BTreeMap::new(),
            queued_needs: BTreeMap::new(),
            leases: BTreeMap::new(),
            idle_unasked: BTreeSet::new(),
            reservation: None,
            healthy: HealthySummary::default(),
            outputs: VecDeque::new(),
            next_request: 1,
            next_lease: 1,
            next_seq: 0,
        };
        for i in 0..s.pool.len() {
            s.reindex(GpuId(i as u32));
        }
        s.refresh_healthy();
        s
    }

    // ----- getters -----

    /// The settings.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// The pool, with each GPU's health.
    pub fn pool(&self) -> &GpuPool {
        &self.pool
    }

    /// One GPU's scheduling state.
    pub fn gpu_state(&self, gpu: GpuId) -> Option<&GpuState> {
        self.gpus.get(gpu.index())
    }

    /// A lease, if it is held.
    pub fn lease(&self, lease: LeaseId) -> Option<&Lease> {
        self.leases.get(&lease)
    }

    /// All held leases, oldest first.
    pub fn leases(&self) -> impl Iterator<Item = (LeaseId, &Lease)> {
        self.leases.iter().map(|(id, l)| (*id, l))
    }

    /// The queue, in the order it is served.
    pub fn queued(&self) -> impl Iterator<Item = &QueuedRequest> {
        self.queue.values().filter_map(|id| self.requests.get(id))
    }

    /// A queued request, if it is still queued.
    pub fn queued_request(&self, request: RequestId) -> Option<&QueuedRequest> {
        self.requests.get(&request)
    }

    /// Number of queued requests.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// The connected clients.
    pub fn clients(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.clients.keys().copied()
    }

    /// Whether `client` is connected.
    pub fn is_connected(&self, client: ClientId) -> bool {
        self.clients.contains_key(&client)
    }

    /// The leases `client` holds.
    pub fn leases_of(&self, client: ClientId) -> impl Iterator<Item = LeaseId> + '_ {
        self.clients.get(&client).into_iter().flat_map(|c| c.leases.iter().copied())
    }

    /// The requests `client` has queued.
    pub fn queued_of(&self, client: ClientId) -> impl Iterator<Item = RequestId> + '_ {
        self.clients.get(&client).into_iter().flat_map(|c| c.queued.iter().copied())
    }

    /// The GPUs reserved for the head of the queue, and for which request.
    pub fn reservation(&self) -> Option<(RequestId, &[GpuId])> {
        self.reservation.as_ref().map(|r| (r.request, r.gpus.as_slice()))
    }

    // ----- inputs -----

    /// A client connected.
    pub fn connect(&mut self, client: ClientId, _now: Instant) -> Result<(), Error> {
        if self.clients.contains_key(&client) {
            return Err(Error::ClientExists(client));
        }
        self.clients.insert(client, ClientState::default());
        Ok(())
    }

    /// A client's session ended: everything it held is released and everything it queued is
    /// dropped, at once.
    pub fn disconnect(&mut self, client: ClientId, now: Instant) -> Result<Disconnected, Error> {
        let state = self.clients.remove(&client).ok_or(Error::UnknownClient(client))?;
        let leases: Vec<LeaseId> = state.leases.into_iter().collect();
        let requests: Vec<RequestId> = state.queued.into_iter().collect();
        for &r in &requests {
            self.dequeue(r);
        }
        for &l in &leases {
            self.drop_lease(l);
        }
        self.schedule(now);
        Ok(Disconnected { leases, requests })
    }

    /// Queues a request. It may be granted at once: drain [`poll_output`](Self::poll_output).
    pub fn submit(&mut self, request: Request, now: Instant) -> Result<RequestId, Error> {
        let client = self.clients.get(&request.client).ok_or(Error::UnknownClient(request.client))?;
        // Queued requests and held leases together: a client cannot pile up leases either
        // (with gpu-sharing, tiny requests could otherwise take thousands).
        if client.queued.len() + client.leases.len() >= self.config.max_queued_per_client {
            return Err(Error::TooManyQueued { limit: self.config.max_queued_per_client });
        }
        self.validate(&request)?;
        let id = self.enqueue(request, now);
        self.schedule(now);
        Ok(id)
    }

    /// Withdraws a queued request.
    pub fn cancel(&mut self, client: ClientId, request: RequestId, now: Instant) -> Result<(), Error> {
        if !self.clients.contains_key(&client) {
            return Err(Error::UnknownClient(client));
        }
        let q = self.requests.get(&request).ok_or(Error::UnknownRequest(request))?;
        if q.request.client != client {
            return Err(Error::NotRequestOwner(request));
        }
        self.dequeue(request);
        self.schedule(now);
        Ok(())
    }

    /// A holder gives a lease back.
    pub fn release(&mut self, client: ClientId, lease: LeaseId, now: Instant) -> Result<(), Error> {
        self.owned_lease(client, lease)?;
        self.drop_lease(lease);
        self.schedule(now);
        Ok(())
    }

    /// A holder's GPU phase ended but it keeps the lease (lazy release). If anyone waits for
    /// its GPUs it will be asked to yield.
    pub fn report_idle(&mut self, client: ClientId, lease: LeaseId, now: Instant) -> Result<(), Error> {
        let l = self.owned_lease(client, lease)?;
        if !l.idle {
            l.idle = true;
            let asked = l.yield_asked;
            for g in l.gpus.clone() {
                let s = &mut self.gpus[g.index()];
                s.busy_holders -= 1;
                s.idle_holders += 1;
            }
            if !asked {
                self.idle_unasked.insert(lease);
            }
            self.schedule(now);
        }
        Ok(())
    }

    /// A holder started another GPU phase on a lease it kept.
    pub fn report_busy(&mut self, client: ClientId, lease: LeaseId, _now: Instant) -> Result<(), Error> {
        let l = self.owned_lease(client, lease)?;
        if l.idle {
            l.idle = false;
            for g in l.gpus.clone() {
                let s = &mut self.gpus[g.index()];
                s.idle_holders -= 1;
                s.busy_holders += 1;
            }
        }
        self.idle_unasked.remove(&lease);
        Ok(())
    }

    /// A GPU's health changed. Losing a GPU revokes every lease on it and rejects queued
    /// requests that the remaining GPUs can never serve.
    pub fn set_health(&mut self, gpu: GpuId, health: Health, now: Instant) -> Result<(), Error> {
        let g = self.pool.gpu_mut(gpu).ok_or(Error::UnknownGpu(gpu))?;
        if g.health == health {
            return Ok(());
        }
        g.health = health;
        self.refresh_healthy();
        if health == Health::Lost {
            let holders = self.gpus[gpu.index()].holders.clone();
            for lease in holders {
                if let Some(l) = self.leases.get(&lease) {
                    let client = l.client;
                    self.drop_lease(lease);
                    self.outputs.push_back(Output::Revoked { client, lease, gpu });
                }
            }
            if self.reservation.as_ref().is_some_and(|r| r.gpus.contains(&gpu)) {
                self.clear_reservation();
            }
            let queued: Vec<RequestId> = self.queue.values().copied().collect();
            for id in queued {
                let Some(q) = self.requests.get(&id) else {
                    continue;
                };
                if let Err(error) = self.validate(&q.request) {
                    let client = q.request.client;
                    self.dequeue(id);
                    self.outputs.push_back(Output::Rejected { client, request: id, error });
                }
            }
        }
        self.reindex(gpu);
        self.schedule(now);
        Ok(())
    }

    /// Time passed: busy holders past their quantum may be asked to yield. Safe to call early
    /// or more than once.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.schedule(now);
    }

    // ----- outputs -----

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next, if ever: the moment
    /// the first busy holder blocking the head of the queue exhausts its quantum.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let quantum = self.config.quantum?;
        let r = self.reservation.as_ref()?;
        let head = self.requests.get(&r.request)?;
        if head.reclaiming.iter().any(|l| self.leases.contains_key(l)) {
            return None; // a release is on its way; it will run a pass
        }
        r.gpus
            .iter()
            .flat_map(|g| self.gpus[g.index()].holders.iter())
            .filter_map(|l| self.leases.get(l))
            // A holder of higher priority than the head is never preempted for it.
            .filter(|l| !l.idle && !l.yield_asked && l.priority <= head.request.priority)
            .map(|l| l.granted_at + quantum)
            .min()
    }
}
