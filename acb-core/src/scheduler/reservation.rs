//! The reservation: the GPUs a blocked head of the queue will have next. Backfill never
//! touches them, so the head cannot starve. A gang's unit reserves for all its members.

use alloc::vec::Vec;

use super::gang::{Placement, Planned};
use super::{Output, Scheduler};
use crate::{Affinity, Error, GpuId, Request, RequestId};

/// GPUs kept for one queued request (the head).
#[derive(Clone, Debug)]
pub(super) struct Reservation {
    pub(super) request: RequestId,
    /// All the GPUs reserved (for a unit, every member's).
    pub(super) gpus: Vec<GpuId>,
    /// For a gang's unit, each member's share of `gpus`; empty otherwise.
    pub(super) parts: Placement,
}

impl Scheduler {
    /// Makes sure the blocked head has a reservation. Returns false if the head can never be
    /// served and was rejected.
    pub(super) fn reserve_for_head(&mut self, id: RequestId) -> bool {
        let Some(q) = self.requests.get(&id) else {
            return false;
        };
        if let Some(members) = self.unit_members(id) {
            return self.reserve_for_unit(id, members.to_vec());
        }
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
        self.reservation = Some(Reservation { request: id, gpus, parts: Placement::new() });
        true
    }

    /// `reserve_for_head` for a gang's unit: every member's GPUs, kept until it is granted.
    /// A unit the healthy pool can never hold is rejected, every member told.
    fn reserve_for_unit(&mut self, id: RequestId, members: Vec<RequestId>) -> bool {
        if self.reservation.as_ref().is_some_and(|r| r.request == id) {
            return true;
        }
        let Some(parts) = self.unit_reservation(&members) else {
            let error = self.check_unit(&members).err().unwrap_or(Error::TooManyGpus { requested: 0, available: 0 });
            if let Some(name) =
                self.requests.get(&id).and_then(|q| super::gang_name(&q.request)).map(alloc::string::String::from)
            {
                self.reject_group(&name, &error);
            }
            return false;
        };
        self.clear_reservation();
        let mut gpus: Vec<GpuId> = parts.iter().flat_map(|(_, g)| g.iter().copied()).collect();
        gpus.sort_unstable();
        gpus.dedup();
        for g in &gpus {
            self.gpus[g.index()].reserved = true;
        }
        self.reservation = Some(Reservation { request: id, gpus, parts });
        true
    }

    /// The cheap choice for a one-GPU head under an exclusive policy: an idle holder's GPU, else
    /// the GPU of the oldest grant that could serve it (the first to exhaust its quantum).
    pub(super) fn quick_single_reservation(&self, req: &Request) -> Option<Vec<GpuId>> {
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
    pub(super) fn quick_shared_reservation(&self, req: &Request) -> Option<Vec<GpuId>> {
        self.grantable.iter().rev().map(|(_, g)| *g).find(|g| self.eligible(req, *g)).map(|g| alloc::vec![g])
    }

    /// The general choice: the eligible GPUs that will be free soonest (no holder, then only
    /// idle holders, then fewest busy holders), preferring the client's own, all on one node if
    /// one node has enough.
    pub(super) fn costed_reservation(&self, req: &Request) -> Option<Vec<GpuId>> {
        self.costed_reservation_beside(req, &Planned::new())
    }

    /// `costed_reservation` among the GPUs that can hold `req` beside what earlier members of
    /// the same unit were given (`planned`, counted against each GPU's whole capacity).
    pub(super) fn costed_reservation_beside(&self, req: &Request, planned: &Planned) -> Option<Vec<GpuId>> {
        let k = req.gpus as usize;
        let ok = |g: GpuId| self.eligible(req, g) && self.fits_beside(req, g, 0, planned);
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
            let mut c: Vec<_> = ids.iter().copied().filter(|g| ok(*g)).map(cost).collect();
            c.sort_unstable();
            c.dedup_by_key(|x| x.2);
            return (c.len() >= k).then(|| cheapest(c).1);
        }
        // The cheapest node that can hold the whole request, else the cheapest GPUs anywhere.
        let mut best: Option<(u64, Vec<GpuId>)> = None;
        let mut eligible_total = 0usize;
        for node in self.pool.nodes() {
            let c: Vec<_> = node.gpus.iter().copied().filter(|g| ok(*g)).map(cost).collect();
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
        let c: Vec<_> = self.pool.gpus().iter().map(|g| g.id).filter(|g| ok(*g)).map(cost).collect();
        Some(cheapest(c).1)
    }

    /// Lets the reserved GPUs go.
    pub(super) fn clear_reservation(&mut self) {
        if let Some(r) = self.reservation.take() {
            for g in r.gpus {
                self.gpus[g.index()].reserved = false;
            }
        }
    }
}
