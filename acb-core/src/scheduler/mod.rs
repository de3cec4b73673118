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
//!
//! # Gangs across processes
//! A request naming a [`Group`](crate::Group) of `size` > 1 is one *member* of a gang whose
//! other members are other processes (torchrun ranks, Slurm tasks), perhaps on other nodes.
//! Members wait outside the queue, blocking and holding nothing, until `size` of them wait
//! (a member naming another size, or a second member from one client, is refused). The
//! complete group is then queued as **one unit**, under its first member's id, at the
//! **highest priority of its members**, and **arriving when it became complete** (the last
//! member's arrival): it starts to wait for GPUs as a whole only then. From there it goes
//! through the same machinery as any request: granted when every member fits now (each
//! member on GPUs its own request allows, e.g. its own node, preferring the GPUs its client
//! used last, members placed one beside another); otherwise, at the head, a reservation
//! covering every member's GPUs (so backfill never delays it) and yields asked of their
//! holders. A grant is one lease per member, all output consecutively from one input; the
//! group's name is free again at once (the job's next GPU phase assembles it again). If a
//! member leaves while waiting (cancel, disconnect), a complete unit leaves the queue and
//! the others wait for the group to be complete again; if a member or the unit can never be
//! served (GPUs lost), every waiting member is rejected.
//!
//! The leases of one grant stay linked: a yield asked of one is asked of all still held, at
//! once; a member releasing its lease asks the others to yield (the gang gives its GPUs back
//! as a whole); a member whose session ends, or whose lease is revoked by a lost GPU, breaks
//! the gang: every other lease of the grant is taken away with
//! [`Output::GroupBroken`](Output::GroupBroken). Leases restored after a restart are not
//! linked (saved state does not record gangs).

mod gang;
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
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use self::gang::{GrantedGang, WaitingGroup, gang_name};
pub use self::lease::Lease;
pub use self::output::{Grant, Output, YieldReason};
pub use self::policy::{Policy, UnknownPolicy};
use self::queue::QueueKey;
pub use self::queue::QueuedRequest;
use self::reservation::Reservation;
pub use self::restore::RestoredLease;
use self::validation::HealthySummary;
use crate::{ClientId, Error, GpuId, GpuPool, Health, Instant, LeaseId, NodeId, Request, RequestId};

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
    /// Groups with members waiting (members live in `requests`, outside the queue, until
    /// the group is complete and queued as one unit).
    groups: BTreeMap<String, WaitingGroup>,
    /// Leases granted together, by grant.
    gangs: BTreeMap<u64, GrantedGang>,
    /// The grant each gang member's lease belongs to.
    lease_gang: BTreeMap<LeaseId, u64>,
    healthy: HealthySummary,
    outputs: VecDeque<Output>,
    next_request: u64,
    next_lease: u64,
    next_seq: u64,
    next_gang: u64,
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
            groups: BTreeMap::new(),
            gangs: BTreeMap::new(),
            lease_gang: BTreeMap::new(),
            healthy: HealthySummary::default(),
            outputs: VecDeque::new(),
            next_request: 1,
            next_lease: 1,
            next_seq: 0,
            next_gang: 1,
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

    /// The queue, in the order it is served. A complete gang is one entry, under its first
    /// member's id (see [`queued_members`](Self::queued_members)); members of incomplete
    /// groups are not in the queue (they are in [`queued_request`](Self::queued_request)).
    pub fn queued(&self) -> impl Iterator<Item = &QueuedRequest> {
        self.queue.values().filter_map(|id| self.requests.get(id))
    }

    /// A queued request (or a waiting gang member), if it is still waiting.
    pub fn queued_request(&self, request: RequestId) -> Option<&QueuedRequest> {
        self.requests.get(&request)
    }

    /// The requests a queue entry stands for: a complete gang's members (placement order
    /// aside, in arrival order), or the request itself.
    pub fn queued_members(&self, entry: RequestId) -> Vec<RequestId> {
        self.entry_members(entry)
    }

    /// Number of queue entries (a complete gang counts once; incomplete ones not at all).
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

    /// The GPUs reserved for the head of the queue, and for which entry (for a gang, all its
    /// members' GPUs, under its first member's id).
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
            // A gang cannot go on without this member: the others' leases go too.
            self.break_gang(l, client);
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
        self.validate_group(&request)?;
        let id = match gang_name(&request).map(String::from) {
            Some(name) => {
                let size = request.group.as_ref().map_or(1, |g| g.size);
                self.join_group(&name, size, request, now)
            }
            None => self.enqueue(request, now),
        };
        self.schedule(now);
        Ok(id)
    }

    /// Withdraws a queued request. A gang member leaves its group; if the group was complete,
    /// the others wait for it to be complete again.
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

    /// A holder gives a lease back. The other members of its gang, if it was granted as one,
    /// are asked to yield theirs.
    pub fn release(&mut self, client: ClientId, lease: LeaseId, now: Instant) -> Result<(), Error> {
        self.owned_lease(client, lease)?;
        self.release_gang(lease);
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

    /// Adds a node to the pool (a controller's executor registered), or returns the node of
    /// that name if there is one. A node without GPUs serves nothing.
    pub fn add_node(&mut self, name: &str) -> NodeId {
        match self.pool.node_by_name(name) {
            Some(n) => n,
            None => self.pool.add_node(name),
        }
    }

    /// Adds a healthy GPU to `node`; queued requests may be granted on it at once (drain
    /// [`poll_output`](Self::poll_output)).
    pub fn add_gpu(&mut self, node: NodeId, uuid: String, memory: u64, now: Instant) -> Result<GpuId, Error> {
        if self.pool.node(node).is_none() {
            return Err(Error::UnknownNode(node));
        }
        let id = self.pool.add_gpu(node, uuid, memory);
        self.gpus.push(GpuState::default());
        self.reindex(id);
        self.refresh_healthy();
        self.schedule(now);
        Ok(id)
    }

    /// A GPU's health changed. Losing a GPU revokes every lease on it and rejects queued
    /// requests that the remaining GPUs can never serve. A revoked gang member breaks its
    /// gang: the other leases of its grant are taken away too (`Output::GroupBroken`, `gone`
    /// being the revoked holder); a member that can never be served rejects its whole group.
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
                    let peers = self.gang_peers(lease);
                    self.drop_lease(lease);
                    self.outputs.push_back(Output::Revoked { client, lease, gpu });
                    if let Some((group, peers)) = peers {
                        for p in peers {
                            let Some(holder) = self.leases.get(&p).map(|l| l.client) else { continue };
                            self.drop_lease(p);
                            let group = group.clone();
                            self.outputs.push_back(Output::GroupBroken {
                                client: holder,
                                lease: p,
                                group,
                                gone: client,
                            });
                        }
                    }
                }
            }
            if self.reservation.as_ref().is_some_and(|r| r.gpus.contains(&gpu)) {
                self.clear_reservation();
            }
            self.revalidate_waiting();
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
            .filter(|l| !l.idle && !l.yield_asked && l.priority <= head.priority())
            .map(|l| l.granted_at + quantum)
            .min()
    }
}
