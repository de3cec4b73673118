//! Leases: granting one, dropping one, and finding the one a client names.

use alloc::vec::Vec;

use super::gang::Placement;
use super::{Grant, Output, QueuedRequest, Scheduler};
use crate::{ClientId, Error, GpuId, Instant, LeaseId, RequestId};

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

impl Scheduler {
    /// Turns a queue entry into leases as `placement` says, and tells the owners: one lease
    /// for a request; one per member, granted together (consecutive outputs) and linked, for a
    /// gang's unit. The group's name is free again at once.
    pub(super) fn grant(&mut self, id: RequestId, placement: Placement, now: Instant) {
        let group = self.unit_members(id).and_then(|_| self.requests.get(&id)).and_then(|q| q.request.group.clone());
        let mut taken: Vec<QueuedRequest> = Vec::with_capacity(placement.len());
        for (member, _) in &placement {
            taken.extend(self.dequeue(*member));
        }
        if self.reservation.as_ref().is_some_and(|r| r.request == id) {
            self.clear_reservation();
        }
        let mut leases = Vec::with_capacity(placement.len());
        for (member, gpus) in placement {
            if let Some(i) = taken.iter().position(|q| q.id == member) {
                let q = taken.swap_remove(i);
                leases.push(self.grant_one(q, gpus, now));
            }
        }
        if let Some(g) = group {
            self.link_gang(g.name, leases);
        }
    }

    /// One lease for one request, told to its owner.
    fn grant_one(&mut self, q: QueuedRequest, gpus: Vec<GpuId>, now: Instant) -> LeaseId {
        let id = q.id;
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
        lease
    }

    /// Gives a lease's GPUs back (release, disconnect or revocation).
    pub(super) fn drop_lease(&mut self, lease: LeaseId) {
        let Some(l) = self.leases.remove(&lease) else {
            return;
        };
        self.idle_unasked.remove(&lease);
        self.unlink_gang(lease);
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

    /// The lease `client` names, if it holds it; else the error that says why not.
    pub(super) fn owned_lease(&mut self, client: ClientId, lease: LeaseId) -> Result<&mut Lease, Error> {
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
}
