//! Restoring leases a previous run of the assigner granted (read back from its saved state
//! after a restart), so that a GPU a client still computes on is not granted to another.

use alloc::vec::Vec;

use super::{Lease, Scheduler};
use crate::{ClientId, Error, GpuId, Instant, LeaseId, RequestId};

/// A lease as a previous run granted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoredLease {
    /// Its id, kept: clients name it.
    pub lease: LeaseId,
    /// Its holder, connected first with [`Scheduler::connect`].
    pub client: ClientId,
    /// Its GPUs.
    pub gpus: Vec<GpuId>,
    /// Memory counted against each GPU, in bytes, in the order of `gpus`.
    pub memory: Vec<u64>,
    /// The request's priority.
    pub priority: i32,
    /// Whether its holder had reported it idle.
    pub idle: bool,
}

impl Scheduler {
    /// Puts back a lease a previous run granted, with the same id and GPUs, as if granted
    /// `now`. Refused, with nothing changed, when the holder is not connected, the id is held
    /// already, a GPU is unknown, lost, held by another lease under an exclusive policy or too
    /// full for the memory. No output comes of it; lease ids from now on are above the restored
    /// one. Restore before submitting requests: a queued request is not re-placed around it.
    pub fn restore_lease(&mut self, restored: RestoredLease, now: Instant) -> Result<(), Error> {
        let RestoredLease { lease, client, gpus, memory, priority, idle } = restored;
        if !self.clients.contains_key(&client) {
            return Err(Error::UnknownClient(client));
        }
        if self.leases.contains_key(&lease) {
            return Err(Error::LeaseExists(lease));
        }
        if gpus.is_empty() {
            return Err(Error::ZeroGpus);
        }
        if memory.len() != gpus.len() {
            return Err(Error::RestoreConflict { lease, gpu: gpus[0] });
        }
        for (i, (g, m)) in gpus.iter().zip(&memory).enumerate() {
            let pool_gpu = self.pool.gpu(*g).ok_or(Error::UnknownGpu(*g))?;
            let s = &self.gpus[g.index()];
            let conflict = pool_gpu.health != crate::Health::Healthy
                || gpus[..i].contains(g)
                || (self.config.policy.exclusive() && !s.holders.is_empty())
                || pool_gpu.memory - s.granted < *m
                || *m == 0;
            if conflict {
                return Err(Error::RestoreConflict { lease, gpu: *g });
            }
        }
        for (g, m) in gpus.iter().zip(&memory) {
            let s = &mut self.gpus[g.index()];
            s.holders.push(lease);
            if idle {
                s.idle_holders += 1;
            } else {
                s.busy_holders += 1;
            }
            s.granted += m;
            self.reindex(*g);
        }
        if idle {
            self.idle_unasked.insert(lease);
        }
        if let Some(c) = self.clients.get_mut(&client) {
            c.leases.insert(lease);
            c.last_gpus.clone_from(&gpus);
        }
        let memory_per_gpu = memory.iter().copied().min().unwrap_or(0);
        self.leases.insert(
            lease,
            Lease {
                client,
                request: RequestId(0),
                gpus,
                memory,
                memory_per_gpu,
                priority,
                granted_at: now,
                idle,
                yield_asked: false,
            },
        );
        self.next_lease = self.next_lease.max(lease.0.saturating_add(1));
        Ok(())
    }

    /// Lease ids from now on are at least `next` (a restarted assigner never reuses an id a
    /// previous run gave out).
    pub fn skip_lease_ids_to(&mut self, next: LeaseId) {
        self.next_lease = self.next_lease.max(next.0);
    }

    /// The id the next grant's lease gets.
    pub fn next_lease_id(&self) -> LeaseId {
        LeaseId(self.next_lease)
    }
}

impl Scheduler {
    /// Links restored leases that a previous run granted together (a gang's members, as
    /// [`gang_of`](Self::gang_of) named them when it saved them): from now on a yield asked of
    /// one is asked of all, and a member that goes away ends the others'. Leases that were not
    /// restored are left out; with fewer than two left there is nothing to link. Refused, with
    /// nothing changed, when a lease is named twice or is already in a gang.
    pub fn restore_gang(&mut self, group: &str, leases: &[LeaseId]) -> Result<(), Error> {
        let mut held: Vec<LeaseId> = Vec::with_capacity(leases.len());
        for l in leases {
            if held.contains(l) || self.gang_of(*l).is_some() {
                return Err(Error::LeaseExists(*l));
            }
            if self.leases.contains_key(l) {
                held.push(*l);
            }
        }
        if held.len() >= 2 {
            self.link_gang(alloc::string::String::from(group), held);
        }
        Ok(())
    }
}
