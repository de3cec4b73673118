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

mod policy;

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::cmp::Reverse;
use core::time::Duration;

pub use self::policy::{Policy, UnknownPolicy};
use crate::{Affinity, ClientId, Error, GpuId, GpuPool, Health, Instant, LeaseId, Request, RequestId};

/// Scheduler settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// The policy.
    pub policy: Policy,
    /// The time slice: a busy holder that blocks the head of the queue, and whose priority is
    /// not above the head's, is asked to yield once it has held its lease this long. `None`:
    /// holders are only asked when idle.
    pub quantum: Option<Duration>,
    /// How many requests one client may have queued at once.
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

/// A granted lease, as the scheduler records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The holder.
    pub client: ClientId,
    /// The request it came from.
    pub request: RequestId,
    /// Its GPUs.
    pub gpus: Vec<GpuId>,
    /// Memory counted against each GPU, in bytes, in the order of `gpus`.
    pub memory: Vec<u64>,
    /// The memory fence (what [`Grant::memory_per_gpu`] said).
    pub memory_per_gpu: u64,
    /// The request's priority.
    pub priority: i32,
    /// When it was granted.
    pub granted_at: Instant,
    /// Whether the holder reported it idle (GPU phase over, GPU kept for later).
    pub idle: bool,
    /// Whether the holder has been asked to yield it.
    pub yield_asked: bool,
}

/// A request waiting in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedRequest {
    /// Its id.
    pub id: RequestId,
    /// What was asked.
    pub request: Request,
    /// When it was queued.
    pub enqueued_at: Instant,
    key: QueueKey,
    /// Leases asked to yield on this request's behalf; no more are asked while one is pending.
    reclaiming: Vec<LeaseId>,
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

/// Queue order: higher priority first, then arrival.
type QueueKey = (Reverse<i32>, u64);

#[derive(Clone, Debug)]
struct Reservation {
    request: RequestId,
    gpus: Vec<GpuId>,
}

/// What the healthy part of the pool can offer, cached so validation is O(1) for common
/// requests.
#[derive(Clone, Copy, Debug, Default)]
struct HealthySummary {
    count: u32,
    smallest: u64,
    largest: u64,
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
        if client.queued.len() >= self.config.max_queued_per_client {
            return Err(Error::TooManyQueued { limit: self.config.max_queued_per_client });
        }
        self.validate(&request)?;
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let key = (Reverse(request.priority), self.next_seq);
        self.next_seq += 1;
        if let Some(c) = self.clients.get_mut(&request.client) {
            c.queued.insert(id);
        }
        self.queue.insert(key, id);
        *self.queued_needs.entry(request.memory_per_gpu.unwrap_or(1)).or_insert(0) += 1;
        self.requests.insert(id, QueuedRequest { id, request, enqueued_at: now, key, reclaiming: Vec::new() });
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

    // ----- validation -----

    fn validate(&self, request: &Request) -> Result<(), Error> {
        let policy = self.config.policy;
        if request.gpus == 0 {
            return Err(Error::ZeroGpus);
        }
        if request.gpus > policy.max_gpus() {
            return Err(Error::PolicyLimit { policy: policy.name(), requested: request.gpus, max: policy.max_gpus() });
        }
        if request.memory_per_gpu == Some(0) {
            return Err(Error::ZeroMemory);
        }
        let ids: &[GpuId] = match &request.affinity {
            Affinity::Any => &[],
            Affinity::Preferred(ids) | Affinity::Required(ids) => ids,
        };
        if let Some(bad) = ids.iter().find(|g| self.pool.gpu(**g).is_none()) {
            return Err(Error::UnknownGpu(*bad));
        }
        let need = request.memory_per_gpu.unwrap_or(0);
        if need > self.healthy.largest {
            return Err(Error::MemoryTooLarge { requested: need, largest: self.healthy.largest });
        }
        let available = match &request.affinity {
            Affinity::Required(ids) => {
                let mut set: Vec<GpuId> = ids.clone();
                set.sort_unstable();
                set.dedup();
                set.iter().filter(|g| self.eligible(request, **g)).count() as u32
            }
            _ if need <= self.healthy.smallest => self.healthy.count,
            _ => self.pool.gpus().iter().filter(|g| self.eligible(request, g.id)).count() as u32,
        };
        if request.gpus > available {
            return Err(Error::TooManyGpus { requested: request.gpus, available });
        }
        Ok(())
    }

    /// Whether `gpu` could ever serve `request` (healthy, big enough, allowed), regardless of
    /// who holds it now.
    fn eligible(&self, request: &Request, gpu: GpuId) -> bool {
        let Some(g) = self.pool.gpu(gpu) else {
            return false;
        };
        g.health == Health::Healthy
            && g.memory > 0
            && g.memory >= request.memory_per_gpu.unwrap_or(0)
            && match &request.affinity {
                Affinity::Required(ids) => ids.contains(&gpu),
                _ => true,
            }
    }

    /// Memory `request` takes on `gpu`.
    fn need_on(&self, request: &Request, gpu: GpuId) -> u64 {
        let whole = self.pool.gpu(gpu).map_or(0, |g| g.memory);
        if self.config.policy.exclusive() { whole } else { request.memory_per_gpu.unwrap_or(whole) }
    }

    /// Whether `request` can be placed on `gpu` right now.
    fn usable_now(&self, request: &Request, gpu: GpuId, may_use_reserved: bool) -> bool {
        if !self.eligible(request, gpu) {
            return false;
        }
        let (Some(g), Some(s)) = (self.pool.gpu(gpu), self.gpus.get(gpu.index())) else {
            return false;
        };
        if s.reserved && !may_use_reserved {
            return false;
        }
        if self.config.policy.exclusive() {
            s.holders.is_empty()
        } else {
            g.memory - s.granted >= self.need_on(request, gpu)
        }
    }

    // ----- the pass -----

    /// Grants what can be granted, reserves for a blocked head, asks for yields.
    fn schedule(&mut self, now: Instant) {
        let mut depth = 0usize;
        let mut cursor: Option<QueueKey> = None;
        let mut head = true;
        // Free memory on the roomiest GPU outside the reservation; recomputed after a grant.
        let mut room: Option<u64> = None;
        loop {
            let next = match cursor {
                None => self.queue.iter().next(),
                Some(k) => self.queue.range((core::ops::Bound::Excluded(k), core::ops::Bound::Unbounded)).next(),
            };
            let Some((&key, &id)) = next else { break };
            if head {
                if self.reservation.as_ref().is_some_and(|r| r.request != id) {
                    self.clear_reservation();
                }
                if let Some(gpus) = self.place(id, true) {
                    self.grant(id, gpus, now);
                    continue; // the next request is the new head
                }
                if !self.reserve_for_head(id) {
                    continue; // the head was rejected; try the new head
                }
                self.ask_yields_for_head(id, now);
                if !self.config.policy.backfill() {
                    break;
                }
                head = false;
                cursor = Some(key);
                continue;
            }
            depth += 1;
            let space = *room.get_or_insert_with(|| self.largest_unreserved_room());
            let smallest_need = self.queued_needs.keys().next().copied().unwrap_or(u64::MAX);
            if depth > self.config.backfill_depth || (smallest_need > space && self.idle_unasked.is_empty()) {
                break;
            }
            cursor = Some(key);
            // Cheap skip: a request that fits on no grantable GPU needs no placement attempt.
            let need = self.requests.get(&id).map_or(0, |q| q.request.memory_per_gpu.unwrap_or(1));
            if need <= space
                && let Some(gpus) = self.place(id, false)
            {
                self.grant(id, gpus, now);
                room = None;
                continue;
            }
            self.reclaim_idle_for(id);
        }
    }

    /// The most free memory on any grantable GPU outside the reservation (0: none).
    fn largest_unreserved_room(&self) -> u64 {
        self.grantable.iter().rev().find(|(_, g)| !self.gpus[g.index()].reserved).map_or(0, |(free, _)| *free)
    }

    /// Chooses GPUs for a queued request among those usable now, or `None`.
    fn place(&self, id: RequestId, is_head: bool) -> Option<Vec<GpuId>> {
        let req = &self.requests.get(&id)?.request;
        let k = req.gpus as usize;
        let usable = |g: GpuId| self.usable_now(req, g, is_head);
        let mut chosen: Vec<GpuId> = Vec::with_capacity(k);
        for &g in self.preferences(req) {
            if chosen.len() == k {
                break;
            }
            if !chosen.contains(&g) && usable(g) {
                chosen.push(g);
            }
        }
        if chosen.len() == k {
            return Some(chosen);
        }
        let lo = if self.config.policy.exclusive() {
            req.memory_per_gpu.unwrap_or(0)
        } else {
            req.memory_per_gpu.unwrap_or(1)
        };
        let candidates = self.grantable.range((lo, GpuId(0))..).map(|(_, g)| *g).filter(|g| usable(*g));
        if k == 1 {
            return candidates.take(1).next().map(|g| alloc::vec![g]);
        }
        let all: Vec<GpuId> = candidates.filter(|g| !chosen.contains(g)).collect();
        if chosen.len() + all.len() < k {
            return None;
        }
        // A gang prefers one node: the node that has room for all of it, with most of the
        // preferred GPUs on it.
        let mut best_node: Option<(usize, crate::NodeId)> = None;
        for node in self.pool.nodes() {
            let on_node = |g: &GpuId| self.pool.gpu(*g).is_some_and(|x| x.node == node.id);
            let room = chosen.iter().filter(|g| on_node(g)).count() + all.iter().filter(|g| on_node(g)).count();
            if room >= k {
                let preferred = chosen.iter().filter(|g| on_node(g)).count();
                if best_node.is_none_or(|(p, _)| preferred > p) {
                    best_node = Some((preferred, node.id));
                }
            }
        }
        if let Some((_, node)) = best_node {
            let on_node = |g: &GpuId| self.pool.gpu(*g).is_some_and(|x| x.node == node);
            chosen.retain(on_node);
            chosen.extend(all.iter().copied().filter(on_node).take(k - chosen.len()));
        } else {
            chosen.extend(all.iter().copied().take(k - chosen.len()));
        }
        Some(chosen)
    }

    /// The GPUs `req` would like: the ones its client used last, then its preferred ones.
    fn preferences<'a>(&'a self, req: &'a Request) -> impl Iterator<Item = &'a GpuId> + 'a {
        let last = self.clients.get(&req.client).map(|c| c.last_gpus.as_slice()).unwrap_or(&[]);
        let preferred: &[GpuId] = match &req.affinity {
            Affinity::Preferred(ids) | Affinity::Required(ids) => ids,
            Affinity::Any => &[],
        };
        last.iter().chain(preferred.iter())
    }

    /// Makes sure the blocked head has a reservation. Returns false if the head can never be
    /// served and was rejected.
    fn reserve_for_head(&mut self, id: RequestId) -> bool {
        let Some(q) = self.requests.get(&id) else {
            return false;
        };
        let req = q.request.clone();
        let sticky = req.gpus > 1 || !self.config.policy.exclusive();
        // While holders asked to yield for the head have not let go, keep the reservation on
        // their GPUs: re-choosing would ask yet another holder.
        let pending = q.reclaiming.iter().any(|l| self.leases.contains_key(l));
        if (sticky || pending) && self.reservation.as_ref().is_some_and(|r| r.request == id) {
            return true;
        }
        let chosen = if !sticky {
            self.quick_single_reservation(&req)
        } else if req.gpus == 1 && !matches!(req.affinity, Affinity::Required(_)) {
            self.quick_shared_reservation(&req)
        } else {
            None
        };
        let chosen = match chosen {
            Some(c) => Some(c),
            None => self.costed_reservation(&req),
        };
        let Some(gpus) = chosen else {
            // Cannot happen while validation holds, but a request that can never be served must
            // leave the queue rather than block it.
            let error = self.validate(&req).err().unwrap_or(Error::TooManyGpus { requested: req.gpus, available: 0 });
            self.dequeue(id);
            self.outputs.push_back(Output::Rejected { client: req.client, request: id, error });
            return false;
        };
        if self.reservation.as_ref().is_some_and(|r| r.gpus == gpus && r.request == id) {
            return true;
        }
        self.clear_reservation();
        for g in &gpus {
            self.gpus[g.index()].reserved = true;
        }
        self.reservation = Some(Reservation { request: id, gpus });
        true
    }

    /// The cheap choice for a one-GPU head under an exclusive policy: an idle holder's GPU, else
    /// the GPU of the oldest grant that could serve it (the first to exhaust its quantum).
    fn quick_single_reservation(&self, req: &Request) -> Option<Vec<GpuId>> {
        if let Some(g) = self
            .idle_unasked
            .iter()
            .filter_map(|l| self.leases.get(l))
            .flat_map(|l| l.gpus.iter().copied())
            .find(|g| self.eligible(req, *g))
        {
            return Some(alloc::vec![g]);
        }
        // The oldest grant the time slice may preempt for this request, else the oldest grant.
        let oldest = |preemptible: bool| {
            self.leases
                .values()
                .filter(|l| !preemptible || l.priority <= req.priority)
                .flat_map(|l| l.gpus.iter().copied())
                .find(|g| self.eligible(req, *g))
        };
        oldest(true).or_else(|| oldest(false)).map(|g| alloc::vec![g])
    }

    /// The cheap choice for a one-GPU head under `gpu-sharing`: the GPU with the most free
    /// memory that could ever hold it (the least to wait for), if any GPU has free memory.
    fn quick_shared_reservation(&self, req: &Request) -> Option<Vec<GpuId>> {
        self.grantable.iter().rev().map(|(_, g)| *g).find(|g| self.eligible(req, *g)).map(|g| alloc::vec![g])
    }

    /// The general choice: the eligible GPUs that will be free soonest (no holder, then only
    /// idle holders, then fewest busy holders), preferring the client's own, all on one node if
    /// one node has enough.
    fn costed_reservation(&self, req: &Request) -> Option<Vec<GpuId>> {
        let k = req.gpus as usize;
        let preferred: Vec<GpuId> = self.preferences(req).copied().collect();
        // Lower is sooner: a busy holder counts twice an idle one (which yields at once).
        let cost = |g: GpuId| {
            let s = &self.gpus[g.index()];
            (s.busy_holders * 2 + s.idle_holders, !preferred.contains(&g), g)
        };
        let cheapest = |mut c: Vec<(u32, bool, GpuId)>| {
            if c.len() > k {
                c.select_nth_unstable(k - 1);
                c.truncate(k);
            }
            let total: u64 = c.iter().map(|x| u64::from(x.0)).sum();
            (total, c.into_iter().map(|x| x.2).collect::<Vec<_>>())
        };
        if let Affinity::Required(ids) = &req.affinity {
            let mut c: Vec<_> = ids.iter().copied().filter(|g| self.eligible(req, *g)).map(cost).collect();
            c.sort_unstable();
            c.dedup_by_key(|x| x.2);
            return (c.len() >= k).then(|| cheapest(c).1);
        }
        // The cheapest node that can hold the whole request, else the cheapest GPUs anywhere.
        let mut best: Option<(u64, Vec<GpuId>)> = None;
        let mut eligible_total = 0usize;
        for node in self.pool.nodes() {
            let c: Vec<_> = node.gpus.iter().copied().filter(|g| self.eligible(req, *g)).map(cost).collect();
            eligible_total += c.len();
            if c.len() >= k {
                let (total, gpus) = cheapest(c);
                if best.as_ref().is_none_or(|(b, _)| total < *b) {
                    best = Some((total, gpus));
                }
            }
        }
        if let Some((_, gpus)) = best {
            return Some(gpus);
        }
        if eligible_total < k {
            return None;
        }
        let c: Vec<_> = self.pool.gpus().iter().map(|g| g.id).filter(|g| self.eligible(req, *g)).map(cost).collect();
        Some(cheapest(c).1)
    }

    /// Asks the holders of the head's reserved GPUs to yield: idle ones at once, busy ones when
    /// their quantum is up.
    fn ask_yields_for_head(&mut self, id: RequestId, now: Instant) {
        let Some(r) = &self.reservation else { return };
        let Some(head) = self.requests.get(&id) else { return };
        if head.reclaiming.iter().any(|l| self.leases.contains_key(l)) {
            // Holders asked earlier on this request's behalf (perhaps while it was behind the
            // head) have not let go yet: asking more would swap jobs out for nothing.
            return;
        }
        let head_priority = head.request.priority;
        let mut asks: Vec<(LeaseId, YieldReason)> = Vec::new();
        for g in &r.gpus {
            for l in &self.gpus[g.index()].holders {
                let Some(lease) = self.leases.get(l) else {
                    continue;
                };
                if lease.yield_asked || asks.iter().any(|(a, _)| a == l) {
                    continue;
                }
                if lease.idle {
                    asks.push((*l, YieldReason::Contended));
                } else if lease.priority <= head_priority
                    && self.config.quantum.is_some_and(|q| now >= lease.granted_at + q)
                {
                    asks.push((*l, YieldReason::QuantumExpired));
                }
            }
        }
        for (l, reason) in asks {
            self.ask_yield(l, reason);
            if let Some(q) = self.requests.get_mut(&id) {
                q.reclaiming.push(l);
            }
        }
        let leases = &self.leases;
        if let Some(q) = self.requests.get_mut(&id) {
            q.reclaiming.retain(|l| leases.contains_key(l));
        }
    }

    /// A request behind the head that does not fit now: if idle leases outside the
    /// reservation would make room for it, ask them to yield (one batch at a time).
    fn reclaim_idle_for(&mut self, id: RequestId) {
        if self.idle_unasked.is_empty() {
            return; // no kept GPU to reclaim
        }
        let Some(q) = self.requests.get(&id) else {
            return;
        };
        if q.reclaiming.iter().any(|l| self.leases.contains_key(l)) {
            return; // yields already asked for this request are still pending
        }
        let req = &q.request;
        let k = req.gpus as usize;
        let mut gpus: Vec<GpuId> = Vec::with_capacity(k);
        let mut leases: Vec<LeaseId> = Vec::new();
        let lo = req.memory_per_gpu.unwrap_or(0);
        for g in self.grantable.range((lo, GpuId(0))..).map(|(_, g)| *g) {
            if gpus.len() == k {
                break;
            }
            if self.usable_now(req, g, false) {
                gpus.push(g);
            }
        }
        for &l in &self.idle_unasked {
            if gpus.len() == k {
                break;
            }
            let Some(lease) = self.leases.get(&l) else {
                continue;
            };
            for &g in &lease.gpus {
                if gpus.len() == k || gpus.contains(&g) || self.gpus[g.index()].reserved || !self.eligible(req, g) {
                    continue;
                }
                // Room on g once this lease (and any other idle-unasked holder) lets go.
                let s = &self.gpus[g.index()];
                let freed: u64 = s
                    .holders
                    .iter()
                    .filter(|h| self.idle_unasked.contains(h))
                    .filter_map(|h| self.leases.get(h))
                    .map(|h| h.gpus.iter().position(|x| *x == g).map_or(0, |i| h.memory[i]))
                    .sum();
                let all_idle = s.holders.iter().all(|h| self.idle_unasked.contains(h));
                let capacity = self.pool.gpu(g).map_or(0, |x| x.memory);
                let fits = if self.config.policy.exclusive() {
                    all_idle
                } else {
                    capacity - s.granted + freed >= self.need_on(req, g)
                };
                if fits {
                    gpus.push(g);
                    for h in &s.holders {
                        if self.idle_unasked.contains(h) && !leases.contains(h) {
                            leases.push(*h);
                        }
                    }
                }
            }
        }
        if gpus.len() < k || leases.is_empty() {
            return;
        }
        for &l in &leases {
            self.ask_yield(l, YieldReason::Contended);
        }
        if let Some(q) = self.requests.get_mut(&id) {
            q.reclaiming = leases;
        }
    }

    fn ask_yield(&mut self, lease: LeaseId, reason: YieldReason) {
        let Some(l) = self.leases.get_mut(&lease) else {
            return;
        };
        if l.yield_asked {
            return;
        }
        l.yield_asked = true;
        self.idle_unasked.remove(&lease);
        self.outputs.push_back(Output::YieldAsked { client: l.client, lease, reason });
    }

    // ----- state changes -----

    fn grant(&mut self, id: RequestId, gpus: Vec<GpuId>, now: Instant) {
        let Some(q) = self.dequeue(id) else { return };
        if self.reservation.as_ref().is_some_and(|r| r.request == id) {
            self.clear_reservation();
        }
        let lease = LeaseId(self.next_lease);
        self.next_lease += 1;
        let memory: Vec<u64> = gpus.iter().map(|g| self.need_on(&q.request, *g)).collect();
        for (g, m) in gpus.iter().zip(&memory) {
            let s = &mut self.gpus[g.index()];
            s.holders.push(lease);
            s.busy_holders += 1;
            s.granted += m;
            self.reindex(*g);
        }
        let memory_per_gpu = memory.iter().copied().min().unwrap_or(0);
        if let Some(c) = self.clients.get_mut(&q.request.client) {
            c.leases.insert(lease);
            c.last_gpus.clone_from(&gpus);
        }
        self.leases.insert(
            lease,
            Lease {
                client: q.request.client,
                request: id,
                gpus: gpus.clone(),
                memory,
                memory_per_gpu,
                priority: q.request.priority,
                granted_at: now,
                idle: false,
                yield_asked: false,
            },
        );
        self.outputs.push_back(Output::Granted(Grant {
            request: id,
            client: q.request.client,
            lease,
            gpus,
            memory_per_gpu,
            waited: now - q.enqueued_at,
        }));
    }

    fn dequeue(&mut self, id: RequestId) -> Option<QueuedRequest> {
        let q = self.requests.remove(&id)?;
        self.queue.remove(&q.key);
        let need = q.request.memory_per_gpu.unwrap_or(1);
        if let Some(n) = self.queued_needs.get_mut(&need) {
            *n -= 1;
            if *n == 0 {
                self.queued_needs.remove(&need);
            }
        }
        if let Some(c) = self.clients.get_mut(&q.request.client) {
            c.queued.remove(&id);
        }
        if self.reservation.as_ref().is_some_and(|r| r.request == id) {
            self.clear_reservation();
        }
        Some(q)
    }

    fn drop_lease(&mut self, lease: LeaseId) {
        let Some(l) = self.leases.remove(&lease) else {
            return;
        };
        self.idle_unasked.remove(&lease);
        for (g, m) in l.gpus.iter().zip(&l.memory) {
            let s = &mut self.gpus[g.index()];
            s.holders.retain(|h| *h != lease);
            if l.idle {
                s.idle_holders -= 1;
            } else {
                s.busy_holders -= 1;
            }
            s.granted -= m;
            self.reindex(*g);
        }
        if let Some(c) = self.clients.get_mut(&l.client) {
            c.leases.remove(&lease);
        }
    }

    fn owned_lease(&mut self, client: ClientId, lease: LeaseId) -> Result<&mut Lease, Error> {
        if !self.clients.contains_key(&client) {
            return Err(Error::UnknownClient(client));
        }
        let next = self.next_lease;
        match self.leases.get_mut(&lease) {
            Some(l) if l.client == client => Ok(l),
            Some(_) => Err(Error::NotOwner(lease)),
            None if lease.0 > 0 && lease.0 < next => Err(Error::AlreadyReleased(lease)),
            None => Err(Error::UnknownLease(lease)),
        }
    }

    fn clear_reservation(&mut self) {
        if let Some(r) = self.reservation.take() {
            for g in r.gpus {
                self.gpus[g.index()].reserved = false;
            }
        }
    }

    /// Puts `gpu` in the grantable index under its current free memory, or takes it out.
    fn reindex(&mut self, gpu: GpuId) {
        let (Some(g), Some(s)) = (self.pool.gpu(gpu), self.gpus.get_mut(gpu.index())) else {
            return;
        };
        if let Some(k) = s.index_key.take() {
            self.grantable.remove(&(k, gpu));
        }
        let free = g.memory - s.granted;
        let grantable =
            g.health == Health::Healthy && free > 0 && (!self.config.policy.exclusive() || s.holders.is_empty());
        if grantable {
            self.grantable.insert((free, gpu));
            s.index_key = Some(free);
        }
    }

    fn refresh_healthy(&mut self) {
        // A GPU with no memory can serve nobody: it does not count as healthy capacity.
        let healthy = self.pool.gpus().iter().filter(|g| g.health == Health::Healthy && g.memory > 0);
        let mut summary = HealthySummary { count: 0, smallest: u64::MAX, largest: 0 };
        for g in healthy {
            summary.count += 1;
            summary.smallest = summary.smallest.min(g.memory);
            summary.largest = summary.largest.max(g.memory);
        }
        if summary.count == 0 {
            summary.smallest = 0;
        }
        self.healthy = summary;
    }

    /// Checks the invariants the rest of the crate relies on; for tests. Returns what is
    /// broken, if anything.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), alloc::string::String> {
        use alloc::format;
        for (i, s) in self.gpus.iter().enumerate() {
            let gpu = GpuId(i as u32);
            let g = self.pool.gpu(gpu).ok_or("gpu state without a gpu")?;
            if s.granted > g.memory {
                return Err(format!("{gpu}: {} granted of {}", s.granted, g.memory));
            }
            if self.config.policy.exclusive() && s.holders.len() > 1 {
                return Err(format!("{gpu}: exclusive but held by {:?}", s.holders));
            }
            let sum: u64 = s
                .holders
                .iter()
                .map(|l| {
                    let l = &self.leases[l];
                    l.gpus.iter().position(|x| *x == gpu).map_or(0, |p| l.memory[p])
                })
                .sum();
            if sum != s.granted {
                return Err(format!("{gpu}: granted {} but holders sum to {sum}", s.granted));
            }
            let idle = s.holders.iter().filter(|l| self.leases[l].idle).count() as u32;
            if s.idle_holders != idle || s.busy_holders as usize + idle as usize != s.holders.len() {
                return Err(format!("{gpu}: holder counters {}/{} disagree", s.busy_holders, s.idle_holders));
            }
            if g.health == Health::Lost && !s.holders.is_empty() {
                return Err(format!("{gpu}: lost but held"));
            }
        }
        for (id, l) in &self.leases {
            if l.gpus.len() != l.memory.len() {
                return Err(format!("{id}: gpus and memory differ in length"));
            }
            for g in &l.gpus {
                if !self.gpus[g.index()].holders.contains(id) {
                    return Err(format!("{id}: not among the holders of {g}"));
                }
            }
            if !self.clients.get(&l.client).is_some_and(|c| c.leases.contains(id)) {
                return Err(format!("{id}: held by a client that does not know it"));
            }
        }
        if self.queued_needs.values().sum::<usize>() != self.requests.len() {
            return Err("queued needs and request table differ".into());
        }
        if self.queue.len() != self.requests.len() {
            return Err("queue and request table differ".into());
        }
        for (c, state) in &self.clients {
            for r in &state.queued {
                if self.requests.get(r).is_none_or(|q| q.request.client != *c) {
                    return Err(format!("{c}: queued {r} is not its own"));
                }
            }
        }
        if let Some(r) = &self.reservation
            && !self.requests.contains_key(&r.request)
        {
            return Err(format!("reservation for {} which is not queued", r.request));
        }
        let reserved = self.gpus.iter().filter(|s| s.reserved).count();
        if reserved != self.reservation.as_ref().map_or(0, |r| r.gpus.len()) {
            return Err("reserved flags and reservation differ".into());
        }
        Ok(())
    }
}
