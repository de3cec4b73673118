//! Gangs across processes: requests naming one group (torchrun ranks, Slurm tasks, one
//! process each, perhaps on different nodes) wait apart until the group is complete, are then
//! queued as one unit, and are granted together in one decision. The leases of one grant stay
//! linked: a yield asked of one is asked of all, a member that goes away breaks the others,
//! and a member that releases asks the others to yield.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Reverse;

use super::{Output, QueueKey, QueuedRequest, Scheduler, YieldReason};
use crate::{Affinity, ClientId, Error, GpuId, LeaseId, MAX_GROUP_SIZE, Request, RequestId};

/// A group with members waiting.
#[derive(Clone, Debug)]
pub(super) struct WaitingGroup {
    /// The size all its members named.
    pub(super) size: u32,
    /// Its waiting members, in arrival order.
    pub(super) members: Vec<RequestId>,
    /// Once complete: the unit's place in the queue, under the id of `members[0]`.
    pub(super) unit_key: Option<QueueKey>,
}

/// Leases granted together, in one decision.
#[derive(Clone, Debug)]
pub(super) struct GrantedGang {
    /// The group's name.
    pub(super) group: String,
    /// The leases still held.
    pub(super) leases: Vec<LeaseId>,
}

/// GPUs chosen for each member of an entry (one part for a plain request).
pub(super) type Placement = Vec<(RequestId, Vec<GpuId>)>;

/// Memory planned on each GPU by members placed earlier in the same decision.
pub(super) type Planned = BTreeMap<GpuId, u64>;

/// The group `request` is a member of, if it is a gang of more than one (a group of one is a
/// plain request).
pub(super) fn gang_name(request: &Request) -> Option<&str> {
    request.group.as_ref().filter(|g| g.size > 1).map(|g| g.name.as_str())
}

impl Scheduler {
    /// The checks a member passes at submit, besides those of any request.
    pub(super) fn validate_group(&self, request: &Request) -> Result<(), Error> {
        let Some(g) = &request.group else { return Ok(()) };
        if g.size == 0 || g.size > MAX_GROUP_SIZE || g.name.is_empty() {
            return Err(Error::InvalidGroup { size: g.size });
        }
        if g.size == 1 {
            return Ok(());
        }
        let Some(w) = self.groups.get(&g.name) else { return Ok(()) };
        if w.size != g.size {
            return Err(Error::GroupSizeMismatch { group: g.name.clone(), expected: w.size, got: g.size });
        }
        // One member per process: a second one from the same client would count it twice.
        let own = w.members.iter().any(|m| self.requests.get(m).is_some_and(|q| q.request.client == request.client));
        if w.members.len() >= w.size as usize || own {
            return Err(Error::GroupFull { group: g.name.clone(), size: g.size });
        }
        Ok(())
    }

    /// A validated member joins its group, outside the queue; the group, once complete, is
    /// queued as one unit. Returns the member's id.
    pub(super) fn join_group(&mut self, name: &str, size: u32, request: Request, now: crate::Instant) -> RequestId {
        let (id, _) = self.admit(request, now);
        let w =
            self.groups.entry(String::from(name)).or_insert(WaitingGroup { size, members: Vec::new(), unit_key: None });
        w.members.push(id);
        if w.members.len() == size as usize {
            self.queue_unit(name);
        }
        id
    }

    /// Queues a complete group as one unit: at the highest priority of its members, behind
    /// the entries of that priority already queued (its arrival is the moment it became
    /// complete, when it started to wait for GPUs as a whole). A unit that the healthy pool
    /// can never hold is rejected at once.
    fn queue_unit(&mut self, name: &str) {
        let Some(w) = self.groups.get(name) else { return };
        let members = w.members.clone();
        if let Err(error) = self.check_unit(&members) {
            self.reject_group(name, &error);
            return;
        }
        let priority = members.iter().filter_map(|m| self.requests.get(m)).map(|q| q.request.priority).max();
        let key = (Reverse(priority.unwrap_or(0)), self.next_seq);
        self.next_seq += 1;
        let Some(&lead) = members.first() else { return };
        if let Some(q) = self.requests.get_mut(&lead) {
            q.key = key;
            q.reclaiming.clear();
        }
        if let Some(w) = self.groups.get_mut(name) {
            w.unit_key = Some(key);
        }
        self.queue.insert(key, lead);
        let need = self.entry_need(lead);
        self.count_need(need);
    }

    /// Takes a complete group's unit out of the queue (its members keep waiting), with its
    /// reservation.
    fn unqueue_unit(&mut self, name: &str) {
        let Some(w) = self.groups.get(name) else { return };
        let (Some(key), Some(&lead)) = (w.unit_key, w.members.first()) else { return };
        let need = self.entry_need(lead);
        self.uncount_need(need);
        self.queue.remove(&key);
        if let Some(w) = self.groups.get_mut(name) {
            w.unit_key = None;
        }
        if self.reservation.as_ref().is_some_and(|r| r.request == lead) {
            self.clear_reservation();
        }
    }

    /// A member leaves its group (cancelled, its client gone, or granted): if the group was
    /// queued as a unit, the unit leaves the queue and the others wait for the group to be
    /// complete again.
    pub(super) fn leave_group(&mut self, id: RequestId) -> Option<QueuedRequest> {
        let name = self.requests.get(&id).and_then(|q| gang_name(&q.request)).map(String::from)?;
        self.unqueue_unit(&name);
        let q = self.requests.remove(&id)?;
        if let Some(c) = self.clients.get_mut(&q.request.client) {
            c.queued.remove(&id);
        }
        if let Some(w) = self.groups.get_mut(&name) {
            w.members.retain(|m| *m != id);
            if w.members.is_empty() {
                self.groups.remove(&name);
            }
        }
        Some(q)
    }

    /// Every waiting member of the group leaves, each told why with `Output::Rejected`.
    pub(super) fn reject_group(&mut self, name: &str, error: &Error) {
        let members = self.groups.get(name).map(|w| w.members.clone()).unwrap_or_default();
        for m in members {
            if let Some(q) = self.leave_group(m) {
                self.outputs.push_back(Output::Rejected { client: q.request.client, request: m, error: error.clone() });
            }
        }
    }

    /// The members of the unit queued under `id`, if `id` is a complete group's unit.
    pub(super) fn unit_members(&self, id: RequestId) -> Option<&[RequestId]> {
        let name = gang_name(&self.requests.get(&id)?.request)?;
        let w = self.groups.get(name)?;
        (w.unit_key.is_some() && w.members.first() == Some(&id)).then_some(w.members.as_slice())
    }

    /// The members of a queue entry: the unit's, or the request itself.
    pub(super) fn entry_members(&self, id: RequestId) -> Vec<RequestId> {
        self.unit_members(id).map_or_else(|| alloc::vec![id], <[RequestId]>::to_vec)
    }

    /// What a queue entry needs per GPU, as the queued-needs multiset counts it: for a unit,
    /// the least any member needs.
    pub(super) fn entry_need(&self, id: RequestId) -> u64 {
        let need = |m: &RequestId| self.requests.get(m).map(|q| super::index::queued_need(&q.request));
        match self.unit_members(id) {
            Some(members) => members.iter().filter_map(need).min().unwrap_or(1),
            None => need(&id).unwrap_or(1),
        }
    }

    /// Members in the order they are placed: the most constrained first (fewest GPUs to
    /// spare among those it may use), so a greedy choice rarely takes what another needs.
    fn placement_order(&self, members: &[RequestId]) -> Vec<RequestId> {
        let mut order: Vec<(usize, RequestId)> = members
            .iter()
            .filter_map(|m| self.requests.get(m))
            .map(|q| {
                let eligible = match &q.request.affinity {
                    Affinity::Required(ids) => ids.iter().filter(|g| self.eligible(&q.request, **g)).count(),
                    _ => self.pool.gpus().iter().filter(|g| self.eligible(&q.request, g.id)).count(),
                };
                (eligible.saturating_sub(q.request.gpus as usize), q.id)
            })
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, m)| m).collect()
    }

    /// Whether `gpu` can take `request` beside what earlier members of the same decision were
    /// given on it (memory counted from the GPU's capacity less `used`).
    pub(super) fn fits_beside(&self, request: &Request, gpu: GpuId, used: u64, planned: &Planned) -> bool {
        match planned.get(&gpu) {
            None => true,
            Some(_) if self.config.policy.exclusive() => false,
            Some(p) => {
                let capacity = self.pool.gpu(gpu).map_or(0, |g| g.memory);
                capacity.saturating_sub(used).saturating_sub(*p) >= self.need_on(request, gpu)
            }
        }
    }

    /// Places every member of a unit among the GPUs usable now, greedily, or none. A head
    /// unit's members prefer the GPUs reserved for each.
    pub(super) fn place_unit(&self, lead: RequestId, members: &[RequestId], is_head: bool) -> Option<Placement> {
        let reserved = self.reservation.as_ref().filter(|r| is_head && r.request == lead).map(|r| &r.parts);
        let mut planned = Planned::new();
        let mut placement = Placement::new();
        for m in self.placement_order(members) {
            let req = &self.requests.get(&m)?.request;
            let first = reserved.and_then(|p| p.iter().find(|(x, _)| *x == m)).map_or(&[][..], |(_, g)| g.as_slice());
            let gpus = self.place_one(req, is_head, first, &planned)?;
            for g in &gpus {
                *planned.entry(*g).or_insert(0) += self.need_on(req, *g);
            }
            placement.push((m, gpus));
        }
        Some(placement)
    }

    /// The GPUs each member of a unit will have next: each member's costed reservation beside
    /// those of the members before it. `None`: the healthy pool can never hold the unit.
    pub(super) fn unit_reservation(&self, members: &[RequestId]) -> Option<Placement> {
        let mut planned = Planned::new();
        let mut parts = Placement::new();
        for m in self.placement_order(members) {
            let req = &self.requests.get(&m)?.request;
            let gpus = self.costed_reservation_beside(req, &planned)?;
            for g in &gpus {
                *planned.entry(*g).or_insert(0) += self.need_on(req, *g);
            }
            parts.push((m, gpus));
        }
        Some(parts)
    }

    /// Whether a unit can ever be served by the healthy pool: each member alone, and all
    /// together.
    pub(super) fn check_unit(&self, members: &[RequestId]) -> Result<(), Error> {
        let mut asked = 0u32;
        for m in members {
            let Some(q) = self.requests.get(m) else { continue };
            self.validate(&q.request)?;
            asked = asked.saturating_add(q.request.gpus);
        }
        if self.unit_reservation(members).is_none() {
            let available = self.pool.gpus().iter().filter(|g| g.health == crate::Health::Healthy).count() as u32;
            return Err(Error::TooManyGpus { requested: asked, available });
        }
        Ok(())
    }

    /// Re-checks every waiting request after GPUs were lost: a plain request that can no
    /// longer be served is rejected; a member that cannot, or a complete unit that cannot,
    /// rejects every waiting member of its group.
    pub(super) fn revalidate_waiting(&mut self) {
        let ids: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in ids {
            let Some(q) = self.requests.get(&id) else { continue };
            let name = gang_name(&q.request).map(String::from);
            let error = match &name {
                Some(n) => match self.unit_members(id) {
                    Some(members) => self.check_unit(members).err(),
                    None if self.groups.get(n).is_some_and(|w| w.unit_key.is_none()) => self.validate(&q.request).err(),
                    None => None, // checked with its unit's lead
                },
                None => self.validate(&q.request).err(),
            };
            let Some(error) = error else { continue };
            match name {
                Some(n) => self.reject_group(&n, &error),
                None => {
                    let client = q.request.client;
                    self.dequeue(id);
                    self.outputs.push_back(Output::Rejected { client, request: id, error });
                }
            }
        }
    }

    /// Links the leases granted to a unit's members in one decision.
    pub(super) fn link_gang(&mut self, group: String, leases: Vec<LeaseId>) {
        let id = self.next_gang;
        self.next_gang += 1;
        for l in &leases {
            self.lease_gang.insert(*l, id);
        }
        self.gangs.insert(id, GrantedGang { group, leases });
    }

    /// The other leases still held of the grant `lease` was part of, and the group's name.
    pub(super) fn gang_peers(&self, lease: LeaseId) -> Option<(String, Vec<LeaseId>)> {
        let g = self.gangs.get(self.lease_gang.get(&lease)?)?;
        Some((g.group.clone(), g.leases.iter().copied().filter(|l| *l != lease).collect()))
    }

    /// Forgets a lease that is gone from its gang's record.
    pub(super) fn unlink_gang(&mut self, lease: LeaseId) {
        let Some(id) = self.lease_gang.remove(&lease) else { return };
        if let Some(g) = self.gangs.get_mut(&id) {
            g.leases.retain(|l| *l != lease);
            if g.leases.is_empty() {
                self.gangs.remove(&id);
            }
        }
    }

    /// The gang cannot go on without `lease`'s holder: every other lease of its grant is
    /// taken away, and its holder told (except holders that are `gone` themselves).
    pub(super) fn break_gang(&mut self, lease: LeaseId, gone: ClientId) {
        let Some((group, peers)) = self.gang_peers(lease) else { return };
        for p in peers {
            let Some(client) = self.leases.get(&p).map(|l| l.client) else { continue };
            self.drop_lease(p);
            if client != gone {
                self.outputs.push_back(Output::GroupBroken { client, lease: p, group: group.clone(), gone });
            }
        }
    }

    /// One member released its lease: the others are asked to give theirs back too, so the
    /// gang's GPUs come back as a whole.
    pub(super) fn release_gang(&mut self, lease: LeaseId) {
        let Some((_, peers)) = self.gang_peers(lease) else { return };
        for p in peers {
            self.ask_yield_one(p, YieldReason::Contended);
        }
    }

    /// The group and the leases granted together with `lease` (itself included), if it was
    /// granted as a member of a gang and is still held.
    pub fn gang_of(&self, lease: LeaseId) -> Option<(&str, &[LeaseId])> {
        let g = self.gangs.get(self.lease_gang.get(&lease)?)?;
        Some((g.group.as_str(), g.leases.as_slice()))
    }

    /// A group with members waiting: its size and the waiting members, in arrival order.
    pub fn group_waiting(&self, name: &str) -> Option<(u32, &[RequestId])> {
        self.groups.get(name).map(|w| (w.size, w.members.as_slice()))
    }
}
